// unet_infer: segments NIfTI and TIFF volumes with a trained checkpoint by sliding-window inference (docs/reference.md,
// "Sliding window"): the command line, files and directories; the pipeline itself is models::Predictor
// (models/predictor.h).
// usage: unet_infer --model CKPT --input FILE|DIR --output FILE|DIR [--overlap F] [--blend gaussian|constant] [--tta]
//                   [--precision auto|fp32|tf32|fp16|bf16] [--device auto|cpu|cuda|cuda-emu] [--save-probabilities]
//                   [--batch N] [--keep-going]
// Each output label map is written in its name's format with its input's header (NIfTI: uint8; TIFF: the input's
// compression and tags, 8-bit, 16-bit above 255 classes); with --save-probabilities the per-class softmax (float32,
// 4D; in TIFF one sample per class) goes beside it as NAME_probabilities.nii.gz (or .tif for a TIFF output). Exit
// status 0 / 2 (usage) / 1 (runtime; with
// --keep-going, when any volume failed). Inputs and outputs are checked before the work, so a typo in a path costs a
// message, not the work.
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <thread>

#include "engine/comm.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/precision.h"
#include "io/image.h"
#include "kernels/common/parallel.h"
#include "models/predictor.h"
#include "tools/tool_main.h"

using namespace unet;
using tools::UsageError;
namespace fs = std::filesystem;

namespace {

// Hidden files (".tmpPID.NAME" is how io::AtomicFile names a file being written) are never inputs.
bool is_hidden(const fs::path& p) {
  return p.filename().string().starts_with(".");
}

// Where --save-probabilities writes the probabilities of the label map `out`: beside it, in its format.
fs::path probabilities_of(const fs::path& out) {
  return out.parent_path() /
         (io::image_stem(out.string()) + "_probabilities" + (io::is_tiff_name(out.string()) ? ".tif" : ".nii.gz"));
}

// Windows (times the flips of --tta) above which a volume gets a warning: an --overlap near 1 means a step of one
// voxel, and a run of hours that would otherwise start without a word.
constexpr int64_t kManyWindows = 10000;

// The number of windows sliding_window_predict cuts from a volume of `grid` voxels, the grid the network runs on
// (models::Predictor::grid: cropped and resampled; a smaller volume is padded to the patch: one window along that
// axis).
int64_t window_count(const std::array<int64_t, 3>& grid, const std::vector<int>& patch, double overlap) {
  int64_t n = 1;
  for (size_t a = 0; a < patch.size() && a < 3; ++a)
    n *= static_cast<int64_t>(window_starts(std::max<int64_t>(grid[a], patch[a]), patch[a], overlap).size());
  return n;
}

// An error's message naming the input it came from (the readers' and the predictor's already do; a std::bad_alloc or
// a write error may not).
std::string naming(const fs::path& input, const std::string& what) {
  return what.find(input.string()) != std::string::npos ? what : input.string() + ": " + what;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, input, output, blend = "gaussian", precision = "auto", device = "auto";
  double overlap = 0.5;
  bool tta = false, save_probabilities = false;
  int batch = 1;
  bool keep_going = false, overwrite = false;
  CLI::App app{
      "Segments NIfTI (.nii, .nii.gz) and TIFF (.tif, .tiff) volumes with a unet_train checkpoint by "
      "sliding-window inference."};
  app.add_option("--model", model_path, "weights file written by unet_train (model.safetensors)")->required();
  app.add_option("--input", input, "a NIfTI or TIFF file, or a directory of them")->required();
  app.add_option("--output", output, "output file (for one input file) or directory")->required();
  app.add_option("--overlap", overlap, "window overlap in [0, 1)")->capture_default_str();
  app.add_option("--blend", blend, "window blending: gaussian or constant")->capture_default_str();
  app.add_flag("--tta", tta, "test-time augmentation: average over all flips");
  app.add_option("--precision", precision,
                 "auto (bf16 on a GPU, fp32 elsewhere), fp32, tf32 (f32 convolutions on TF32 tensor cores on a CUDA "
                 "device), fp16 or bf16 (activations in 16 bits, f32 logits)")
      ->capture_default_str();
  app.add_option("--device", device, "auto, cpu, cuda or cuda-emu (the CUDA kernels under the CPU emulator)")
      ->capture_default_str();
  app.add_flag("--save-probabilities", save_probabilities, "also write the per-class probabilities (float32)");
  app.add_option("--batch", batch, "windows per forward pass, 1..1024")->capture_default_str();
  app.add_flag("--keep-going", keep_going,
               "skip a volume that fails (an error line names it), segment the others, list the failures at the end "
               "and exit with status 1");
  app.add_flag("--overwrite", overwrite,
               "write into an output that already holds label maps or probabilities: this run's replace theirs, "
               "its cases' earlier probabilities go when it writes none, and a case that fails loses its earlier "
               "output");
  if (auto status = tools::parse_command_line(app, argc, argv, "unet_infer")) return *status;
  return tools::run_tool("unet_infer", [&] {
    if (blend != "gaussian" && blend != "constant")
      throw UsageError("--blend '" + blend + "': expected gaussian or constant");
    if (!(overlap >= 0 && overlap < 1))
      throw UsageError("--overlap " + io::real_text(overlap) + ": expected a value in [0, 1)");
    if (batch < 1 || batch > 1024) throw UsageError("--batch " + std::to_string(batch) + ": expected 1..1024");
    Device dev = Device::cpu;
    try {
      dev = device::resolve_device(device, &std::cout);  // auto without a GPU: one line, then the CPU
    } catch (const std::exception& e) {
      throw UsageError("--device " + device + ": " + e.what());
    }
    std::cout << std::flush;  // that line before any error's
    Precision prec = Precision::fp32;
    try {
      prec = resolve_precision(precision, dev);
    } catch (const std::exception& e) {
      throw UsageError(std::string("--precision: ") + e.what());
    }
    if (prec == Precision::tf32 && dev == Device::cpu) {
      std::printf("unet_infer: --precision tf32 has no effect on the cpu backend: fp32\n");
      prec = Precision::fp32;  // what runs, and what the summary line says
    }
    ops::set_conv_allow_tf32(prec == Precision::tf32);
    if (std::error_code ec; !fs::exists(input, ec))
      throw UsageError("--input " + input + ": " + (ec ? ec.message() : "no such file or directory"));
    // A FIFO would block the read forever, a directory fail obscurely: the checkpoint must be a regular file that
    // exists (a dangling link included).
    if (std::error_code ec; !fs::exists(model_path, ec))
      throw UsageError("--model " + model_path + ": " + (ec ? ec.message() : "no such file or directory") +
                       "; expected a model.safetensors file");
    if (std::string why = tools::regular_file_problem(model_path); !why.empty())
      throw UsageError("--model " + model_path + ": " + why + "; expected a model.safetensors file");

    std::vector<std::pair<std::vector<fs::path>, fs::path>> jobs;  // input (one file per channel) -> output
    bool channel_files = false;  // nnU-Net v2's layout: a case is its files CASE_0000, CASE_0001, ...
    if (fs::is_directory(input)) {
      if (std::error_code ec; fs::exists(output, ec) && !fs::is_directory(output, ec))
        throw UsageError("--output " + output + ": must be a directory when --input is one");
      if (std::string why = tools::output_directory_problem(output); !why.empty())
        throw UsageError("--output " + output + ": " + why);
      // Every image name is a case, even one that is not a regular file: skipping it silently would drop a case
      // from the results; it fails when its turn comes (and --keep-going skips it with an error line).
      std::vector<fs::path> files;
      for (auto& e : fs::directory_iterator(input))
        if (io::is_image_name(e.path().string()) && !is_hidden(e.path())) files.push_back(e.path());
      // What --save-probabilities wrote beside a label map, NAME_probabilities.* next to a NAME.*, is not a case; a
      // NAME_probabilities.* alone is one (as unet_eval reads them).
      std::set<std::string> stems;
      for (const fs::path& f : files) stems.insert(io::image_stem(f.string()));
      std::erase_if(files, [&](const fs::path& f) {
        const std::string stem = io::image_stem(f.string());
        const bool skip = stem.ends_with("_probabilities") && stems.count(stem.substr(0, stem.size() - 14));
        if (skip)  // said, so that a case that happens to have such a name is not lost without a word
          std::printf(
              "unet_infer: skipping %s: the probabilities of %s* (what --save-probabilities writes), not a "
              "case; rename it to segment it\n",
              f.string().c_str(), (f.parent_path() / stem.substr(0, stem.size() - 14)).string().c_str());
        return skip;
      });
      std::sort(files.begin(), files.end());
      if (files.empty())
        throw UsageError("--input " + input + ": no .nii, .nii.gz, .tif or .tiff files in the directory");
      // nnU-Net v2's layout (every name CASE_XXXX, one file per channel, channel 0000 among them): a case of its
      // channel files in order, written as CASE, as nnUNetv2_predict does. Otherwise every file is a case (names that
      // merely end in four digits, such as ct_2019 and ct_2020, or a lone scan_0001).
      const auto channel_of = [](const fs::path& f) {
        const std::string stem = io::image_stem(f.string());
        const size_t n = stem.size();
        if (n < 6 || stem[n - 5] != '_') return -1;
        for (size_t i = n - 4; i < n; ++i)
          if (!std::isdigit(static_cast<unsigned char>(stem[i]))) return -1;
        return std::stoi(stem.substr(n - 4));
      };
      const bool v2 = channel_files =
          std::all_of(files.begin(), files.end(), [&](const fs::path& f) { return channel_of(f) >= 0; }) &&
          std::any_of(files.begin(), files.end(), [&](const fs::path& f) { return channel_of(f) == 0; });
      for (auto& f : files) {
        if (!v2) {
          jobs.push_back({{f}, fs::path(output) / f.filename()});
          continue;
        }
        const std::string stem = io::image_stem(f.string()), name = stem.substr(0, stem.size() - 5);
        const int channel = channel_of(f);
        if (channel == 0) {
          jobs.push_back({{f}, fs::path(output) / (name + f.filename().string().substr(stem.size()))});
        } else if (jobs.empty() || io::image_stem(jobs.back().first[0].string()) != name + "_0000" ||
                   static_cast<int>(jobs.back().first.size()) != channel) {
          throw UsageError("--input " + input + ": " + f.string() + " is channel " + std::to_string(channel) +
                           " of case " + name + ", whose channels 0.." + std::to_string(channel - 1) +
                           " are not all there (nnU-Net v2: CASE_0000, CASE_0001, ...)");
        } else {
          jobs.back().first.push_back(f);
        }
      }
    } else {
      if (std::string why = tools::regular_file_problem(input); !why.empty())
        throw UsageError("--input " + input + ": " + why +
                         "; expected a .nii, .nii.gz, .tif or .tiff file or a directory of them");
      if (!io::is_image_name(input))
        throw UsageError("--input " + input + ": expected a .nii, .nii.gz, .tif or .tiff file");
      std::error_code ec;  // a name too long to examine is output_file_problem's to report
      fs::path out = fs::is_directory(output, ec) ? fs::path(output) / fs::path(input).filename() : fs::path(output);
      if (!io::is_image_name(out.string()))
        throw UsageError("--output " + output + ": expected a .nii, .nii.gz, .tif or .tiff name or a directory" +
                         (output.ends_with("/") ? std::string(" that exists (one input file is written into an "
                                                              "existing directory only)")
                                                : ""));
      if (std::string why = io::nifti_case_problem(out.string()); !why.empty())
        throw UsageError("--output " + output + ": " + why);
      if (std::string why = tools::output_file_problem(out); !why.empty())
        throw UsageError("--output " + output + ": " + why);
      jobs.push_back({{fs::path(input)}, out});
    }
    // Every file the run writes, label maps and probabilities alike, must have a name short enough to write and a
    // name of its own: two spellings of a format (a.nii and a.nii.gz, a.tif and a.tiff) give one name, and so do a
    // case `y`'s probabilities and a case named `y_probabilities`. Refused before any work. a.nii.gz and a.tif are
    // two files of their own, except in nnU-Net v2's layout, where a_0000.nii.gz and a_0000.tif are channel 0 of case
    // `a` twice.
    std::map<std::string, fs::path> written;  // output directory / stem (and format) -> the input writing it
    for (const auto& [ins, out] : jobs)
      for (const fs::path& o : {out, probabilities_of(out)}) {
        if (o != out && !save_probabilities) continue;
        if (std::string why = tools::output_name_problem(o); !why.empty())
          throw UsageError("--output " + output + ": " + o.string() + ": " + why);
        const std::string stem = (o.parent_path() / io::image_stem(o.string())).string();
        const std::string format = channel_files ? "" : io::is_tiff_name(o.string()) ? " tiff" : " nifti";
        const auto [it, fresh] = written.emplace(stem + format, ins[0]);
        if (!fresh)
          throw UsageError("--input " + input + ": " + it->second.string() + " and " + ins[0].string() +
                           " would both be written as " + stem + ".* (" + o.filename().string() +
                           "); rename one of them");
      }
    // Never write over an input, this case's or another's, or the model: the label map (or its probabilities) would
    // replace an image before or after it is read. Files are compared by device and inode, so links and other
    // spellings count.
    std::set<std::pair<dev_t, ino_t>> inputs;
    for (const auto& job : jobs)
      for (const fs::path& in : job.first)
        if (struct stat st; ::stat(in.c_str(), &st) == 0) inputs.insert({st.st_dev, st.st_ino});
    std::pair<dev_t, ino_t> model_file{};
    if (struct stat st; ::stat(model_path.c_str(), &st) == 0) model_file = {st.st_dev, st.st_ino};
    for (const auto& [ins, out] : jobs)
      for (const fs::path& o : {out, probabilities_of(out)}) {
        if (o != out && !save_probabilities) continue;
        struct stat st;
        if (::stat(o.c_str(), &st) != 0) continue;
        if (inputs.count({st.st_dev, st.st_ino}))
          throw UsageError("--output " + output + ": would overwrite the input " + o.string());
        if (std::pair{st.st_dev, st.st_ino} == model_file)
          throw UsageError("--output " + output + ": would overwrite the model " + o.string());
      }
    // An output that already holds label maps or probabilities (an earlier run's) would mix them with this run's: a
    // stale NAME_probabilities beside a new NAME, the earlier map of a case that now fails, another model's cases.
    // Refused unless --overwrite; this run's names must be files it can replace either way.
    std::set<fs::path> ours;
    for (const auto& job : jobs) {
      ours.insert(job.second);
      ours.insert(probabilities_of(job.second));
    }
    // Two runs into one output directory at once would both pass this check and then mix their maps: rank 0 holds
    // the directory's lock (tools::lock_directory) from here to its end (from its making, when it is new, and the
    // check is made again then). Into one output file, the file's (tools::OutputFileLock): a label map of one run
    // was left beside the other's probabilities.
    const bool to_directory = fs::is_directory(input);
    const bool was_there = to_directory && fs::is_directory(output);
    std::optional<tools::OutputFileLock> file_lock;
    const auto take_output = [&] {
      if (world().rank() != 0) return;
      const bool busy = to_directory ? !tools::lock_directory(output)
                                     : (file_lock ? file_lock->busy() : file_lock.emplace(fs::path(output)).busy());
      if (busy)
        throw UsageError("--output " + output + ": another unet_infer is writing " +
                         (to_directory ? "there" : "it or its directory") +
                         " now; expected it to end first (or another --output)");
    };
    take_output();
    const auto earlier_outputs = [&] {
      std::vector<fs::path> earlier;
      std::error_code list_error;
      if (to_directory && fs::is_directory(output, list_error)) {
        for (const auto& e : fs::directory_iterator(output, list_error))
          if (io::is_image_name(e.path().string()) && !is_hidden(e.path())) earlier.push_back(e.path());
      } else {
        for (const fs::path& o : ours)
          if (std::error_code ec; fs::exists(fs::symlink_status(o, ec))) earlier.push_back(o);
      }
      std::sort(earlier.begin(), earlier.end());
      for (const fs::path& o : earlier)
        if (ours.count(o) != 0)
          if (std::string why = tools::regular_file_problem(o.string()); !why.empty())
            throw UsageError("--output " + output + ": " + o.string() + " is " + why + "; expected a file to write");
      if (!earlier.empty() && !overwrite)
        throw UsageError("--output " + output + ": already holds " + std::to_string(earlier.size()) +
                         " label map(s) or probabilities (" + earlier.front().string() +
                         (earlier.size() > 1 ? ", ..." : "") +
                         ") of an earlier run; expected a new or empty output, or --overwrite to replace this run's "
                         "outputs there");
      return earlier;
    };
    const std::vector<fs::path> earlier = earlier_outputs();
    const size_t others = static_cast<size_t>(
        std::count_if(earlier.begin(), earlier.end(), [&](const fs::path& o) { return ours.count(o) == 0; }));

    models::PredictorOptions po;
    po.overlap = overlap;
    po.blend = blend == "constant" ? Blend::constant : Blend::gaussian;
    po.tta = tta;
    po.batch = batch;
    po.device = dev;
    po.precision = prec;
    // Under mpirun or srun (engine/comm.h) the volumes are split over the ranks: volume k goes to rank k % ranks, each
    // rank with its share of this machine's cores. A volume's result does not depend on which rank made it.
    Comm& comm = world();
    // Ranks given other arguments, or finding other files in --input, would split different lists: volumes skipped,
    // segmented twice or written with other settings, without a word. Compared with rank 0's before any work.
    if (comm.size() > 1) {
      const auto flag = [](bool on) { return on ? "given" : "not given"; };
      std::vector<std::pair<std::string, std::string>> work = {{"--model", model_path},
                                                               {"--overlap", io::real_text(overlap)},
                                                               {"--blend", blend},
                                                               {"--tta", flag(tta)},
                                                               {"--precision", precision},
                                                               {"--device", device},
                                                               {"--batch", std::to_string(batch)},
                                                               {"--save-probabilities", flag(save_probabilities)},
                                                               {"--keep-going", flag(keep_going)},
                                                               {"--overwrite", flag(overwrite)}};
      // The files' contents too: the same relative path may name another model or image on each machine.
      work.emplace_back("--model's content", file_digest_text(model_path));
      for (size_t k = 0; k < jobs.size(); ++k) {
        std::string files;
        for (const fs::path& f : jobs[k].first)
          files += (files.empty() ? "" : " + ") + f.string() + " (" + file_digest_text(f.string()) + ")";
        work.emplace_back("volume " + std::to_string(k + 1), files + " -> " + jobs[k].second.string());
      }
      if (const auto d = comm.compare_with_rank0(work))
        throw UsageError(d->name + " = " + d->here + " on this rank, " + d->on_rank0 +
                         " on rank 0; expected every rank to be given the same arguments and to find the same input "
                         "files");
      comm.barrier();  // a rank that differs ends the run (its error aborts every rank) while the others wait here
    }
    if (comm.local_size() > 1)
      omp_set_num_threads(
          std::max(1, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) / comm.local_size()));
    const models::Predictor predictor = [&] {
      try {
        return models::Predictor(model_path, po);
      } catch (const models::NotAModelError& e) {
        throw UsageError(std::string("--model: ") + e.what());  // exit 2: the argument names the wrong file
      }
    }();
    // A case missing its last channel files (CASE_0001 of a two-channel model) is found now, before any volume, and
    // named by the first missing file; a case with more channel files than the model takes, by the first extra one.
    if (channel_files)
      for (const auto& [ins, out] : jobs) {
        const int64_t expected = predictor.card().image_channels();
        if (static_cast<int64_t>(ins.size()) > expected) {
          char last[16];
          std::snprintf(last, sizeof last, "%04lld", static_cast<long long>(expected - 1));
          throw UsageError("--input " + input + ": " + ins[static_cast<size_t>(expected)].string() +
                           " is a channel file beyond the model's " + std::to_string(expected) +
                           " (nnU-Net v2: CASE_0000 .. CASE_" + last +
                           "); expected as many channel files per case as the model was trained on");
        }
        if (static_cast<int64_t>(ins.size()) < expected) {
          const std::string first = ins[0].filename().string(), stem = io::image_stem(first);
          char missing[16];
          std::snprintf(missing, sizeof missing, "%04zu", ins.size());
          throw UsageError(
              "--input " + input + ": case " + stem.substr(0, stem.size() - 5) + " has " + std::to_string(ins.size()) +
              " channel file(s), the model expects " + std::to_string(expected) + ": " +
              (ins[0].parent_path() / (stem.substr(0, stem.size() - 4) + missing + first.substr(stem.size())))
                  .string() +
              " is missing (nnU-Net v2: CASE_0000, CASE_0001, ...)");
        }
      }
    // A card whose patch cannot fit (plan.patch = 1024^3: every volume padded to it) would only end in minutes of
    // silence and an allocation failure: refused with the estimate, as unet_train refuses such a patch. A lower bound:
    // the first level's two convolution outputs for --batch windows, in the activations' precision, and the f32
    // buffers at least one window large that blending keeps (the padded input, the summed logits and weights); on a
    // GPU the device's allocator reports what does not fit.
    if (dev == Device::cpu) {
      const models::ModelCard& card = predictor.card();
      const std::vector<int>& filters = card.model == "unet2d"      ? card.unet2d.filters
                                        : card.model == "unet3plus" ? card.unet3plus.filters
                                                                    : card.net.filters;
      const size_t spatial = card.model == "dynunet" ? card.patch.size() : std::min<size_t>(2, card.patch.size());
      double voxels = 1;
      for (size_t a = card.patch.size() - spatial; a < card.patch.size(); ++a) voxels *= card.patch[a];
      const double value_bytes = prec == Precision::fp16 || prec == Precision::bf16 ? 2.0 : 4.0;
      const double first_level = 2.0 * batch * voxels * (filters.empty() ? 1 : filters[0]) * value_bytes;
      const double blending = 4.0 * voxels * (card.image_channels() + card.out_channels() + 1);
      const double memory = tools::physical_memory_bytes();
      if (memory > 0 && first_level + blending > memory) {
        std::string patch;
        for (int p : card.patch) patch += (patch.empty() ? "" : ", ") + std::to_string(p);
        throw UsageError(
            "--model " + model_path + ": plan.patch = [" + patch + "] (the window) with --batch " +
            std::to_string(batch) + ": the first level's activations (" +
            std::to_string(filters.empty() ? 1 : filters[0]) + " filters) and the blending buffers alone take " +
            tools::gib_text(first_level + blending) + ", more than this machine's " + tools::gib_text(memory) +
            "; expected a model trained with a smaller patch" + (batch > 1 ? " or a smaller --batch" : ""));
      }
    }
    if (comm.rank() == 0) {
      std::printf("unet_infer: %zu volume(s) on the %s backend in %s (%d host threads", jobs.size(), device_name(dev),
                  precision_name(prec), num_threads());
      if (comm.size() > 1) std::printf(" per rank, %d ranks", comm.size());
      std::printf(")\n");
      if (others > 0)
        std::printf("unet_infer: note: %zu image file(s) in %s are not this run's outputs and stay there (%s)\n",
                    others, output.c_str(),
                    std::find_if(earlier.begin(), earlier.end(), [&](const fs::path& o) { return ours.count(o) == 0; })
                        ->string()
                        .c_str());
      std::fflush(stdout);
    }

    if (to_directory) {  // checked above; made once the model loaded (by every rank: one may be first)
      std::error_code ec;
      fs::create_directories(output, ec);
      if (!fs::is_directory(output))
        throw std::runtime_error("--output " + output + ": cannot create: " + ec.message());
      if (!was_there && comm.rank() == 0) {  // another run may have made it since
        take_output();
        earlier_outputs();
      }
      comm.barrier();  // no rank writes before rank 0 holds the directory
    }

    // With --overwrite, a case that fails must not keep an earlier run's output for unet_eval to score, nor a case
    // keep an earlier run's probabilities. NAME_probabilities may be this run's label map of a case of that name
    // (written by another rank perhaps): never removed as probabilities.
    std::set<fs::path> label_maps;
    for (const auto& job : jobs) label_maps.insert(job.second);
    const auto stale_probabilities = [&](const fs::path& out) {
      return overwrite && !save_probabilities && label_maps.count(probabilities_of(out)) == 0;
    };
    const auto remove_earlier = [&](const fs::path& out) {
      for (const fs::path& o : {out, probabilities_of(out)})
        if (std::error_code ec; overwrite && (o == out || label_maps.count(o) == 0) && fs::remove(o, ec))
          std::fprintf(stderr, "unet_infer: removed the earlier %s\n", o.string().c_str());
    };
    std::vector<std::string> failed;
    size_t mine = 0;  // this rank's volumes
    for (size_t k = static_cast<size_t>(comm.rank()); k < jobs.size(); k += static_cast<size_t>(comm.size())) {
      const auto& [ins, out] = jobs[k];
      const fs::path& in = ins[0];
      ++mine;
      try {
        auto t0 = std::chrono::steady_clock::now();
        std::vector<std::string> paths;
        for (const fs::path& f : ins) {
          if (std::string why = tools::regular_file_problem(f.string()); !why.empty())
            throw std::runtime_error(f.string() + ": " + why);
          paths.push_back(f.string());
        }
        const io::Image vol = io::read_channel_images(paths);
        const std::vector<int>& patch = predictor.card().patch;
        const std::array<int64_t, 3> model_grid = predictor.grid(vol);
        const int64_t windows = window_count(model_grid, patch, overlap);
        const int64_t passes = windows * (tta ? int64_t(1) << std::min<size_t>(patch.size(), 3) : 1);
        if (passes > kManyWindows) {
          std::string step;
          for (int p : patch)
            step += (step.empty() ? "" : "x") + std::to_string(std::max(1, static_cast<int>(p * (1.0 - overlap))));
          std::fprintf(stderr,
                       "unet_infer: warning: %s: --overlap %g gives %lld windows (step %s voxels)%s; this may take "
                       "hours (--overlap 0.5 gives %lld)\n",
                       in.string().c_str(), overlap, static_cast<long long>(windows), step.c_str(),
                       tta ? (", each run " + std::to_string(passes / windows) + " times by --tta").c_str() : "",
                       static_cast<long long>(window_count(model_grid, patch, 0.5)));
          std::fflush(stderr);
        }
        const models::Segmentation seg = predictor.segment(vol, in.string());
        // Probabilities first and the label map last, so that a volume that fails (a full disk, a file size limit)
        // leaves no label map behind for unet_eval to score; the probabilities it did write go with it.
        if (save_probabilities) io::write_image_like(probabilities_of(out).string(), seg.probabilities, vol);
        try {
          io::write_image_like(out.string(), seg.labels, vol);
        } catch (...) {
          std::error_code ec;
          if (save_probabilities) fs::remove(probabilities_of(out), ec);
          throw;
        }
        // An earlier run's probabilities beside the new label map would disagree with it.
        if (std::error_code ec; stale_probabilities(out) && fs::remove(probabilities_of(out), ec))
          std::printf("unet_infer: removed the earlier %s\n", probabilities_of(out).string().c_str());
        std::string grid =
            std::to_string(seg.grid[0]) + "x" + std::to_string(seg.grid[1]) + "x" + std::to_string(seg.grid[2]);
        if (seg.resampled)
          grid = "resampled to " + grid +
                 (predictor.card().pipeline == "dle_isbi" ? " (DLE's ISBI resize)" : " at the model's spacing");
        else
          grid = "segmented at " + grid;
        if (ins.size() > 1) grid += ", channels from " + std::to_string(ins.size()) + " files";
        std::printf("%s -> %s (%s, %.1f s)\n", in.string().c_str(), out.string().c_str(), grid.c_str(),
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      } catch (const std::bad_alloc&) {
        const std::string what = in.string() + ": out of memory (" +
                                 (batch > 1 ? "try a smaller --batch"
                                            : "the model's window (plan.patch) needs more memory than is available") +
                                 (tta ? ", or without --tta)" : ")");
        remove_earlier(out);
        if (!keep_going) throw std::runtime_error(what);
        std::fprintf(stderr, "unet_infer: error: %s (skipped)\n", what.c_str());
        failed.push_back(in.string());
      } catch (const std::exception& e) {
        remove_earlier(out);
        if (!keep_going) throw std::runtime_error(naming(in, e.what()));
        std::fprintf(stderr, "unet_infer: error: %s (skipped)\n", naming(in, e.what()).c_str());
        failed.push_back(in.string());
      }
      std::fflush(stdout);
    }
    if (!failed.empty()) {
      std::string list;
      for (const std::string& f : failed) list += (list.empty() ? "" : ", ") + f;
      std::fprintf(stderr, "unet_infer: error: %zu of %zu volume(s)%s failed: %s\n", failed.size(), mine,
                   comm.size() > 1 ? (" of rank " + std::to_string(comm.rank())).c_str() : "", list.c_str());
    }
    // Every rank exits 1 when any volume failed anywhere (with --keep-going; otherwise the failing rank ended the run).
    return comm.sum(static_cast<int64_t>(failed.size())) > 0 ? 1 : 0;
  });
}
