// Hostile inputs through the real tools (issue 17): FIFOs and directories where files are expected, output paths that
// cannot be written, garbage and oversized numbers, and corrupt cases in a batch. Per bad input: the exit status, a
// message naming what is at fault, no output left behind (no file in the output directory, no hidden ".tmp*"
// temporary anywhere) and the inputs unchanged, byte for byte.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <thread>
#include <tuple>

#include <nlohmann/json.hpp>

#include "engine/random.h"
#include "io/json.h"
#include "io/nifti.h"
#include "io/tiff.h"
#include "models/checkpoint.h"
#include "models/nnunet_plan.h"
#include "tests/test_util.h"

using namespace unet;
namespace fs = std::filesystem;

namespace {

std::string bytes_of(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Every regular file under `root` with its bytes (FIFOs are not opened: reading one would block).
std::map<std::string, std::string> snapshot(const std::string& root) {
  std::map<std::string, std::string> files;
  for (auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file()) files[e.path().string()] = bytes_of(e.path().string());
  return files;
}

// The hidden temporaries (io::AtomicFile's ".tmpPID.NAME", the tools' ".tmpPID.probe") anywhere under `root`.
std::vector<std::string> temporaries(const std::string& root) {
  std::vector<std::string> found;
  for (auto& e : fs::recursive_directory_iterator(root))
    if (e.path().filename().string().starts_with(".tmp")) found.push_back(e.path().string());
  return found;
}

// A small model card and random weights for `channels` input channels and an 8^3 patch (`edit` may change the card,
// `edit_net` the weights).
std::string write_random_model(const std::string& path, int channels,
                               const std::function<void(models::ModelCard&)>& edit = nullptr,
                               const std::function<void(models::DynUNet&)>& edit_net = nullptr) {
  models::ModelCard card;
  const std::vector<int> patch = {8, 8, 8};
  models::UNetPlan plan = models::plan_unet(patch, {1, 1, 1}, 2);
  card.net = {channels, 3, plan.kernels, plan.strides, {}};
  for (size_t i = 0; i < plan.kernels.size(); ++i) card.net.filters.push_back(4 << i);
  card.patch = patch;
  card.spacing = {1, 1, 1};
  card.normalization.channels.assign(static_cast<size_t>(channels), io::ChannelNormalization{});
  card.labels = {{0, "background"}, {1, "a"}, {2, "b"}};
  models::DynUNet net(card.net);
  net.initialize(3);
  if (edit) edit(card);
  if (edit_net) edit_net(net);
  models::save_weights(path, net, models::card_to_metadata(card));
  return path;
}

// A one-channel image [size]^3 of `values` repeated along z, at `spacing` mm.
void write_volume(const std::string& path, int64_t size, const std::vector<float>& values,
                  const std::array<double, 3>& spacing) {
  std::vector<float> v(static_cast<size_t>(size * size * size));
  for (size_t i = 0; i < v.size(); ++i) v[i] = values[i / static_cast<size_t>(size * size) % values.size()];
  io::write_nifti(path, Tensor::from_vector({size, size, size}, v), io::make_nifti_like({size, size, size}, spacing));
}

// A one-channel image of `size`^3 random intensities at 1 mm.
void write_image(const std::string& path, int64_t size, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(size * size * size));
  for (float& x : v) x = static_cast<float>(rng.uniform(0, 100));
  io::write_nifti(path, Tensor::from_vector({size, size, size}, v), io::make_nifti_like({size, size, size}, {1, 1, 1}));
}

// A label map [4, 4, 4] with 8 voxels of class 1.
void write_labels(const std::string& path) {
  std::vector<float> v(64, 0.f);
  for (int i = 0; i < 8; ++i) v[static_cast<size_t>(i)] = 1.f;
  io::write_nifti(path, Tensor::from_vector({4, 4, 4}, v, DType::u8), io::make_nifti_like({4, 4, 4}, {1, 1, 1}));
}

// A gzip file cut in half: its header reads, its voxels do not.
void truncate_to_half(const std::string& path) {
  const std::string bytes = bytes_of(path);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 2);
}

// test::run_tool with the tool held to 60 s and to files of at most 1 GiB (ulimit -f counts 512-byte blocks in dash,
// 1 KiB in bash): these cases give it inputs that a regression would read forever (a FIFO) or turn into terabytes
// (the oversized dataset), and a failing test must neither hang the suite nor fill the disk. Such a regression is
// one build away: the tools are targets of their own, so building only unet_tests can leave a stale one beside it.
int run_guarded(const std::string& tool, const std::string& args, std::string* output) {
  const fs::path exe = fs::read_symlink("/proc/self/exe").parent_path() / tool;
  REQUIRE_MESSAGE(fs::exists(exe), exe.string() << " is not built");
  const std::string cmd = "ulimit -f 2097152; exec timeout -k 5 60 " + exe.string() + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  REQUIRE(pipe != nullptr);
  output->clear();
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) output->append(buf, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;  // timeout's 124 when the tool ran out of time
}

// The fixture every bad-input case runs against: in DIR, a model, images/{a,b}.nii.gz, labels/ and pred/ with a.nii.gz
// each, a FIFO named like a NIfTI file, a FIFO named like a model, a directory named like a model, and a regular
// file (file.txt) to put "directories" under. Outputs go to DIR/out, which must never appear.
struct Fixture {
  test::TempDir tmp{"hostile_tools"};
  std::string dir = tmp.path, model = dir + "/model.safetensors", out = dir + "/out";
  Fixture() {
    write_random_model(model, 1);
    fs::create_directories(dir + "/images");
    write_image(dir + "/images/a.nii.gz", 8, 1);
    write_image(dir + "/images/b.nii.gz", 8, 2);
    for (const char* d : {"labels", "pred", "pred_fifo"}) fs::create_directories(dir + "/" + d);
    write_labels(dir + "/labels/a.nii.gz");
    write_labels(dir + "/pred/a.nii.gz");
    fs::create_directories(dir + "/model_dir.safetensors");
    std::ofstream(dir + "/file.txt") << "a regular file, not a directory\n";
    for (const char* f : {"fifo.nii.gz", "fifo.safetensors", "pred_fifo/a.nii.gz"})
      REQUIRE(::mkfifo((dir + "/" + f).c_str(), 0600) == 0);
  }
};

struct BadCase {
  std::string tool, args;
  int status;
  std::string message;  // a fragment of the output
};

// Runs each case and checks its exit status, its message, that DIR/out holds no file, that no temporary is left
// anywhere and that every input file is unchanged.
void check_cases(const Fixture& fx, const std::vector<BadCase>& cases) {
  const std::map<std::string, std::string> before = snapshot(fx.dir);
  for (const BadCase& c : cases) {
    CAPTURE(c.tool);
    CAPTURE(c.args);
    std::string output;
    const int status = run_guarded(c.tool, c.args, &output);
    CHECK_MESSAGE(status == c.status, output);
    CHECK_MESSAGE(output.find(c.message) != std::string::npos, "expected '" << c.message << "' in: " << output);
    CHECK_MESSAGE(output.find("std::") == std::string::npos, output);  // no "std::bad_alloc", "stoi" and the like
    CHECK_MESSAGE((!fs::exists(fx.out) || fs::is_empty(fx.out)), "files left in " << fx.out);
    CHECK(temporaries(fx.dir).empty());
    CHECK(snapshot(fx.dir) == before);
    std::error_code ec;
    fs::remove(fx.out, ec);  // an empty directory would hide the next case's leftovers from nothing
  }
}

}  // namespace

TEST_CASE("unet_infer refuses FIFOs, directories and unwritable outputs with status 2 before any work") {
  Fixture fx;
  const std::string& d = fx.dir;
  const std::string model = " --model " + fx.model, image = " --input " + d + "/images/a.nii.gz";
  const std::string file_out = " --output " + fx.out + "/a.nii.gz";  // out/ does not exist: see the cases
  fs::copy_file(fx.model, d + "/m.nii.gz");  // models with an image's name, which an output must not replace
  fs::copy_file(fx.model, d + "/p_probabilities.nii.gz");
  fs::create_symlink(d + "/gone.safetensors", d + "/dangling.safetensors");
  const std::vector<BadCase> cases = {
      {"unet_infer", model + " --input " + d + "/fifo.nii.gz --output " + d + "/x.nii.gz", 2,
       "--input " + d + "/fifo.nii.gz: not a regular file (a FIFO (named pipe))"},
      {"unet_infer", " --model " + d + "/m.nii.gz" + image + " --output " + d + "/m.nii.gz", 2,
       "--output " + d + "/m.nii.gz: would overwrite the model " + d + "/m.nii.gz"},
      {"unet_infer",
       " --model " + d + "/p_probabilities.nii.gz" + image + " --output " + d + "/p.nii.gz --save-probabilities", 2,
       "--output " + d + "/p.nii.gz: would overwrite the model " + d + "/p_probabilities.nii.gz"},
      {"unet_infer", " --model " + d + "/nope.safetensors" + image + file_out, 2,
       "--model " + d + "/nope.safetensors: no such file or directory; expected a model.safetensors file"},
      {"unet_infer", " --model " + d + "/dangling.safetensors" + image + file_out, 2,
       "--model " + d + "/dangling.safetensors: no such file or directory"},
      {"unet_infer", " --model " + d + "/model_dir.safetensors" + image + file_out, 2,
       "--model " + d + "/model_dir.safetensors: not a regular file (a directory)"},
      {"unet_infer", " --model " + d + "/fifo.safetensors" + image + file_out, 2,
       "--model " + d + "/fifo.safetensors: not a regular file (a FIFO (named pipe))"},
      {"unet_infer", model + image + file_out, 2, "the directory " + fx.out + " does not exist"},
      {"unet_infer", model + image + " --output " + d + "/new/", 2,
       "--output " + d +
           "/new/: expected a .nii, .nii.gz, .tif or .tiff name or a directory that exists (one input "
           "file is written into an existing directory only)"},
      {"unet_infer", model + image + " --output " + d + "/file.txt/a.nii.gz", 2, d + "/file.txt is not a directory"},
      {"unet_infer", model + " --input " + d + "/images --output " + d + "/file.txt/sub", 2,
       "--output " + d + "/file.txt/sub: cannot be created: " + d + "/file.txt is not a directory"},
      {"unet_infer", model + " --input " + d + "/images --output " + d + "/file.txt", 2,
       "must be a directory when --input is one"},
      {"unet_infer", model + " --input " + d + "/images --output " + fx.out + " --overlap nan", 2,
       "--overlap nan: expected a value in [0, 1)"},
      {"unet_infer", model + " --input " + d + "/images --output " + fx.out + " --overlap half", 2,
       "--overlap = half: expected a number (window overlap in [0, 1))"},
      {"unet_infer", model + " --input " + d + "/images --output " + fx.out + " --tta=garbage", 2,
       "--tta = garbage: --tta is a flag and takes no value; expected --tta alone"},
      {"unet_infer", model + " --input " + d + "/images --output " + fx.out + " --batch 0", 2,
       "--batch 0: expected 1..1024"},
      {"unet_infer", model + " --input " + d + "/images --output " + fx.out + " --batch 99999999999", 2,
       "--batch = 99999999999: expected a whole number (windows per forward pass, 1..1024)"},
      {"unet_infer", model + " --input " + d + "/images --output " + fx.out + " --batch 1000000", 2,
       "--batch 1000000: expected 1..1024"},
      // An empty value is refused for every option, not taken as "not given" (0.5) or as a checkpoint named "".
      {"unet_infer", model + image + file_out + " --overlap ''", 2,
       "--overlap '': expected a number (window overlap in [0, 1))"},
      {"unet_infer", " --model ''" + image + file_out, 2, "--model '': expected a non-empty value (weights file"},
      // "--model=" with nothing after it: not the next option ("--input") taken as its value.
      {"unet_infer", " --model=" + image + file_out, 2, "--model '': expected a non-empty value (weights file"},
      {"unet_infer", model + image + file_out + " --overlap= --batch 2", 2,
       "--overlap '': expected a number (window overlap in [0, 1))"},
      // An ending nifticlib cannot write, refused before the work (it failed at the write, after it).
      {"unet_infer", model + image + " --output " + d + "/seg.Nii.gz", 2,
       "--output " + d + "/seg.Nii.gz: the ending .Nii.gz mixes lower and upper case"},
      // A name over NAME_MAX (255), and one under it whose temporary ".tmpPID.NAME" is over it.
      {"unet_infer", model + image + " --output " + d + "/" + std::string(300, 'n') + ".nii.gz", 2,
       "a file name of 307 characters; at most "},
      {"unet_infer", model + image + " --output " + d + "/" + std::string(243, 'n') + ".nii.gz", 2,
       "a file name of 250 characters; at most "},
      // A label map's name that fits, whose probabilities' name does not.
      {"unet_infer", model + image + " --output " + d + "/" + std::string(235, 'n') + ".nii.gz --save-probabilities", 2,
       std::string(235, 'n') + "_probabilities.nii.gz: a file name of 256 characters; at most "},
  };
  check_cases(fx, cases);
}

TEST_CASE("unet_eval refuses FIFOs and unwritable result files with status 2 before scoring") {
  Fixture fx;
  const std::string& d = fx.dir;
  const std::string dirs = " --pred " + d + "/pred --label " + d + "/labels";
  // Predictions that are the references themselves, through a symbolic or a hard link: Dice 1 if scored.
  for (const char* links : {"pred_symlink", "pred_hardlink"}) fs::create_directories(d + "/" + links);
  fs::create_symlink(d + "/labels/a.nii.gz", d + "/pred_symlink/a.nii.gz");
  fs::create_hard_link(d + "/labels/a.nii.gz", d + "/pred_hardlink/a.nii.gz");
  std::ofstream(d + "/notes.ini") << "[data]\n";
  fs::create_directories(d + "/dir.json");
  REQUIRE(::mkfifo((d + "/fifo.json").c_str(), 0600) == 0);
  const std::vector<BadCase> cases = {
      {"unet_eval", " --pred " + d + "/pred_fifo --label " + d + "/labels --json " + fx.out + ".json", 2,
       d + "/pred_fifo/a.nii.gz: not a regular file (a FIFO (named pipe))"},
      {"unet_eval", " --pred " + d + "/pred_symlink --label " + d + "/labels --json " + fx.out + ".json", 2,
       d + "/pred_symlink/a.nii.gz is the reference " + d +
           "/labels/a.nii.gz itself (a link to it); expected a "
           "prediction"},
      {"unet_eval", " --pred " + d + "/pred_hardlink --label " + d + "/labels --json " + fx.out + ".json", 2,
       d + "/pred_hardlink/a.nii.gz is the reference " + d + "/labels/a.nii.gz itself"},
      {"unet_eval", dirs + " --json " + d + "/notes.ini", 2,
       "--json " + d + "/notes.ini: expected a file name ending in .json"},
      {"unet_eval", " --pred " + d + "/fifo.nii.gz --label " + d + "/labels", 2, d + "/fifo.nii.gz: not a directory"},
      {"unet_eval", dirs + " --json " + d + "/model_dir.safetensors", 2,
       "--json " + d + "/model_dir.safetensors: expected a file name ending in .json"},
      {"unet_eval", dirs + " --json " + d + "/dir.json", 2,
       "--json " + d + "/dir.json: not a regular file (a directory)"},
      {"unet_eval", dirs + " --json " + d + "/fifo.json", 2,
       "--json " + d + "/fifo.json: not a regular file (a FIFO (named pipe))"},
      {"unet_eval", dirs + " --json " + fx.out + "/dice.json", 2, "the directory " + fx.out + " does not exist"},
      {"unet_eval", dirs + " --json " + d + "/file.txt/dice.json", 2, d + "/file.txt is not a directory"},
      {"unet_eval", dirs + " --classes many", 2, "--classes = many: expected a whole number (number of classes"},
      {"unet_eval", dirs + " --classes -3", 2, "--classes -3: expected 2..1000"},
      {"unet_eval", " --pred " + d + "/pred/a.nii.gz --label " + d + "/fifo.nii.gz", 2,
       "--label " + d + "/fifo.nii.gz: not a regular file (a FIFO (named pipe)); expected a label map or a directory"},
      {"unet_eval", " --pred " + d + "/pred/a.nii.gz --label " + d + "/nosuch.nii.gz", 2,
       "--label " + d + "/nosuch.nii.gz: no such file or directory"},
      {"unet_eval", dirs + " --json ''", 2, "--json '': expected a non-empty value (write the results as JSON"},
      {"unet_eval", " --pred= --label " + d + "/labels", 2, "--pred '': expected a non-empty value"},
  };
  check_cases(fx, cases);
  CHECK_FALSE(fs::exists(d + "/pred/dice.json"));
}

TEST_CASE("unet_infer refuses damaged image headers and files with status 1, naming the file and the fault") {
  Fixture fx;
  const std::string& d = fx.dir;
  const auto damaged = [&](const std::string& name, std::streamoff offset, const std::string& bytes) {
    write_image(d + "/" + name, 8, 3);
    std::fstream f(d + "/" + name, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(offset);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return d + "/" + name;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::string no_magic = damaged("no_magic.nii", 344, std::string(4, '\0'));
  const std::string nan_pixdim = damaged("nan_pixdim.nii", 80, std::string(reinterpret_cast<const char*>(&nan), 4));
  const std::string bitpix = damaged("bitpix.nii", 72, std::string("\x08\x00", 2));  // float32 with bitpix 8
  io::TiffWriteOptions o;
  o.compression = io::TiffCompression::none;
  o.tags.description = "ImageJ=1.54f\nimages=8\nchannels=3\nslices=8\n";
  const Tensor pages = Tensor::zeros({8, 8, 8}, DType::u8);
  io::write_tiff(d + "/channels.tif", pages, o);
  o.tags.description.clear();
  io::write_tiff(d + "/cut.tif", pages, o);
  const std::string whole = bytes_of(d + "/cut.tif");
  std::ofstream(d + "/cut.tif", std::ios::binary | std::ios::trunc) << whole.substr(0, whole.size() * 6 / 10);
  const auto infer = [&](const std::string& input) {
    return " --model " + fx.model + " --input " + input + " --output " + d + "/seg.nii.gz";
  };
  check_cases(
      fx, {
              {"unet_infer", infer(no_magic), 1, no_magic + ": header magic is \"\\0\\0\\0\\0\"; expected \"n+1\\0\""},
              {"unet_infer", infer(nan_pixdim), 1,
               nan_pixdim + ": header field pixdim[1] (the voxel size along x) is nan; expected a finite size"},
              {"unet_infer", infer(bitpix), 1,
               bitpix + ": header field bitpix is 8 with datatype 16 (float32); expected 32"},
              {"unet_infer", infer(d + "/channels.tif"), 1,
               d + "/channels.tif: ImageJ description has channels=3 but the file has 8 pages"},
              {"unet_infer", infer(d + "/cut.tif"), 1, d + "/cut.tif: page "},
          });
}

TEST_CASE(
    "unet_synth into an empty directory another process writes into meanwhile: status 1 saying so, nothing left") {
  test::TempDir tmp("hostile_synth_race");
  const std::string& dir = tmp.path;
  fs::create_directories(dir + "/race");
  // Once the staging directory is there (the dataset takes a few seconds), another process puts a file in the
  // target. The message said only "cannot remove: Directory not empty" (red-team corpus 20, O2).
  std::string out;
  CHECK(test::shell("cd " + dir + " && { " + test::tool_path("unet_synth") +
                        " --output race --train 8 --test 0 --size 96,96,96 > synth.txt 2>&1; echo $? > rc.txt; } & "
                        "for i in $(seq 1000); do ls -d " +
                        dir +
                        "/.race.tmp* > /dev/null 2>&1 && break; sleep 0.01; "
                        "done; echo mine > " +
                        dir + "/race/notes.txt; wait",
                    &out) == 0);
  CHECK(io::read_text_file(dir + "/rc.txt") == "1\n");
  const std::string said = io::read_text_file(dir + "/synth.txt");
  CHECK_MESSAGE(
      said.find("unet_synth: error: race: cannot replace the empty directory (Directory not empty): another "
                "process wrote into it while the dataset was being made; nothing was written") != std::string::npos,
      said);
  CHECK(io::read_text_file(dir + "/race/notes.txt") == "mine\n");
  CHECK(temporaries(dir).empty());
  for (const auto& e : fs::directory_iterator(dir)) CHECK_FALSE(e.path().filename().string().starts_with(".race"));
}

TEST_CASE("unet_synth refuses garbage, negative and oversized numbers with status 2, naming the option") {
  Fixture fx;
  const std::string out = " --output " + fx.out;
  std::vector<BadCase> cases = {
      {"unet_synth", out + " --size 48,x,48", 2, "--size: 'x' in '48,x,48' is not a number"},
      {"unet_synth", out + " --size 99999999999999999999", 2, "is not a number (or is out of range)"},
      {"unet_synth", out + " --size 48,48", 2, "--size: expected one value or three (z,y,x), got '48,48'"},
      {"unet_synth", out + " --size 4096", 2, "--size: every dimension must be 8..1024 voxels, got 4096"},
      {"unet_synth", out + " --size -16", 2, "--size: every dimension must be 8..1024 voxels, got -16"},
      {"unet_synth", out + " --spacing nan", 2, "--spacing: 'nan' in 'nan' is not a number"},
      {"unet_synth", out + " --spacing 1e-7,1,1", 2, "--spacing: every spacing must be 0.01..100 mm, got 1e-07"},
      {"unet_synth", out + " --train -5", 2, "--train: expected 0..100000 cases, got -5"},
      {"unet_synth", out + " --test 4294967296", 2,
       "--test = 4294967296: expected a whole number (number of test cases, 0..100000)"},
      {"unet_synth", out + " --train lots", 2, "--train = lots: expected a whole number"},
      {"unet_synth", out + " --seed -1", 2, "--seed '-1': expected a whole number 0..18446744073709551615"},
      {"unet_synth", out + " --seed 18446744073709551616", 2, "--seed '18446744073709551616': expected a whole"},
      {"unet_synth", out + " --channels 0", 2, "--channels: expected 1..16, got 0"},
      {"unet_synth", out + " --dim 0", 2, "--dim 0: expected 2 or 3"},
      {"unet_synth", out + " --train ''", 2, "--train '': expected a whole number (number of training cases"},
      {"unet_synth", out + " --size ''", 2, "--size '': expected a non-empty value (volume size in voxels"},
      {"unet_synth", out + " --size 16,16,16,", 2, "--size: '16,16,16,' ends with a comma (an empty item)"},
      {"unet_synth", out + " --spacing 1,1,", 2, "--spacing: '1,1,' ends with a comma (an empty item)"},
      {"unet_synth", " --output " + fx.dir + "/file.txt/ds", 2,
       "--output " + fx.dir + "/file.txt/ds: " + fx.dir + "/file.txt is not a directory"},
  };
  // 1024^3 voxels of 16 channels: about 130 GiB for one case, which this machine must not have for the case to apply.
  const double memory = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
  if (memory < 120.0 * (1 << 30))
    cases.push_back({"unet_synth", out + " --size 1024 --channels 16 --train 1 --test 0", 2,
                     "--size 1024 with --channels 16: about 257.0 GiB of memory per case (1 made at once), more than "
                     "this machine's"});
  else
    MESSAGE("skipping the oversized-case case: this machine has over 120 GiB of memory");
  // 200000 cases of 1024x1024x128 voxels: about 122 TiB uncompressed (each case 640 MiB in memory).
  const double threads = std::max(1u, std::thread::hardware_concurrency());  // cases made at once
  if (fs::space(fx.dir).available < (uint64_t(10) << 40) && memory > threads * (640 << 20))
    cases.push_back({"unet_synth", out + " --size 1024,1024,128 --train 100000 --test 100000", 2,
                     "--train 100000 --test 100000 of --size 1024,1024,128 with --channels 1: about 125000.0 GiB "
                     "uncompressed, over ten times the "});
  else
    MESSAGE("skipping the oversized-dataset case: over 10 TiB free disk, or too little memory for its cases");
  check_cases(fx, cases);
}

TEST_CASE("unet_infer --keep-going skips a corrupt volume, segments the others, lists it and exits 1") {
  test::TempDir tmp("hostile_keep_going");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir + "/model.safetensors", 1);
  fs::create_directories(dir + "/images");
  for (const char* name : {"a", "b", "c"}) write_image(dir + "/images/" + name + ".nii.gz", 8, name[0]);
  truncate_to_half(dir + "/images/b.nii.gz");
  const std::map<std::string, std::string> before = snapshot(dir + "/images");
  const std::string bad = dir + "/images/b.nii.gz";
  std::string out;

  // Without --keep-going the first bad case stops the batch (a was segmented before it, c is not).
  CHECK(run_guarded("unet_infer", "--model " + model + " --input " + dir + "/images --output " + dir + "/stop", &out) ==
        1);
  CHECK_MESSAGE(out.find("unet_infer: error: " + bad + ": cannot read the voxel data") != std::string::npos, out);
  CHECK(fs::exists(dir + "/stop/a.nii.gz"));
  CHECK_FALSE(fs::exists(dir + "/stop/b.nii.gz"));
  CHECK_FALSE(fs::exists(dir + "/stop/c.nii.gz"));

  CHECK(run_guarded("unet_infer",
                    "--model " + model + " --input " + dir + "/images --output " + dir +
                        "/pred --keep-going --save-probabilities",
                    &out) == 1);
  CHECK_MESSAGE(out.find("unet_infer: error: " + bad + ": cannot read the voxel data") != std::string::npos, out);
  CHECK_MESSAGE(out.find("(skipped)") != std::string::npos, out);
  CHECK_MESSAGE(out.find("unet_infer: error: 1 of 3 volume(s) failed: " + bad) != std::string::npos, out);
  for (const char* name : {"a", "c"}) {
    CAPTURE(name);
    CHECK(io::read_nifti(dir + "/pred/" + name + ".nii.gz").data.dim(0) == 8);
    CHECK(fs::exists(dir + "/pred/" + name + "_probabilities.nii.gz"));
  }
  CHECK_FALSE(fs::exists(dir + "/pred/b.nii.gz"));
  CHECK_FALSE(fs::exists(dir + "/pred/b_probabilities.nii.gz"));
  CHECK(temporaries(dir).empty());
  CHECK(snapshot(dir + "/images") == before);

  // That output as an input: the probabilities beside a label map are not cases, and each one left out is named.
  CHECK(run_guarded("unet_infer", "--model " + model + " --input " + dir + "/pred --output " + dir + "/again", &out) ==
        0);
  for (const char* name : {"a", "c"})
    CHECK_MESSAGE(
        out.find("unet_infer: skipping " + dir + "/pred/" + name + "_probabilities.nii.gz: the probabilities of " +
                 dir + "/pred/" + name + "* (what --save-probabilities writes), not a case") != std::string::npos,
        out);
  CHECK_FALSE(fs::exists(dir + "/again/a_probabilities.nii.gz"));
  CHECK(fs::exists(dir + "/again/a.nii.gz"));
}

TEST_CASE("unet_infer refuses an output holding an earlier run's maps; --overwrite replaces them consistently") {
  test::TempDir tmp("hostile_infer_earlier");
  const std::string& dir = tmp.path;
  const std::string model_a = write_random_model(dir + "/a.safetensors", 1);
  const std::string model_b =
      write_random_model(dir + "/b.safetensors", 1, nullptr, [](models::DynUNet& net) { net.initialize(7); });
  fs::create_directories(dir + "/images");
  for (const char* name : {"x", "y"}) write_image(dir + "/images/" + name + ".nii.gz", 8, name[0]);
  const std::string pred = dir + "/pred", args = " --input " + dir + "/images --output " + pred;
  std::string out;
  REQUIRE_MESSAGE(run_guarded("unet_infer", "--model " + model_a + args + " --save-probabilities", &out) == 0, out);
  const std::map<std::string, std::string> first = snapshot(pred);
  // Model b into the same directory: refused before any work (it left a's probabilities beside b's maps).
  CHECK(run_guarded("unet_infer", "--model " + model_b + args, &out) == 2);
  CHECK_MESSAGE(out.find("unet_infer: --output " + pred + ": already holds 4 label map(s) or probabilities (" + pred +
                         "/x.nii.gz, ...) of an earlier run; expected a new or empty output, or --overwrite") !=
                    std::string::npos,
                out);
  CHECK(snapshot(pred) == first);
  // One file: the same.
  CHECK(run_guarded("unet_infer",
                    "--model " + model_b + " --input " + dir + "/images/x.nii.gz --output " + pred + "/x.nii.gz",
                    &out) == 2);
  CHECK_MESSAGE(
      out.find("already holds 2 label map(s) or probabilities (" + pred + "/x.nii.gz, ...)") != std::string::npos, out);
  // --overwrite: b's maps replace a's, and a's probabilities go (b writes none).
  CHECK(run_guarded("unet_infer", "--model " + model_b + args + " --overwrite", &out) == 0);
  CHECK_MESSAGE(out.find("unet_infer: removed the earlier " + pred + "/x_probabilities.nii.gz") != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(pred + "/x_probabilities.nii.gz"));
  CHECK_FALSE(fs::exists(pred + "/y_probabilities.nii.gz"));
  CHECK(bytes_of(pred + "/x.nii.gz") != first.at(pred + "/x.nii.gz"));
  // A case that fails loses its earlier map (unet_eval would score it); the others are replaced.
  truncate_to_half(dir + "/images/y.nii.gz");
  CHECK(run_guarded("unet_infer", "--model " + model_a + args + " --overwrite --keep-going", &out) == 1);
  CHECK_MESSAGE(out.find("unet_infer: removed the earlier " + pred + "/y.nii.gz") != std::string::npos, out);
  CHECK_FALSE(fs::exists(pred + "/y.nii.gz"));
  CHECK(bytes_of(pred + "/x.nii.gz") == first.at(pred + "/x.nii.gz"));  // a's map again
  // An output name taken by a directory is refused before any work, --overwrite or not.
  fs::create_directories(pred + "/y.nii.gz");
  CHECK(run_guarded("unet_infer", "--model " + model_a + args + " --overwrite", &out) == 2);
  CHECK_MESSAGE(
      out.find(pred + "/y.nii.gz is not a regular file (a directory); expected a file to write") != std::string::npos,
      out);
}

TEST_CASE("unet_infer: two runs into one output directory at once; one writes, the other is refused (exit 2)") {
  test::TempDir tmp("hostile_infer_concurrent");
  const std::string& dir = tmp.path;
  const std::string model_a = write_random_model(dir + "/a.safetensors", 1);
  const std::string model_b =
      write_random_model(dir + "/b.safetensors", 1, nullptr, [](models::DynUNet& net) { net.initialize(7); });
  fs::create_directories(dir + "/images");
  for (const char* name : {"x", "y", "z"}) write_image(dir + "/images/" + name + ".nii.gz", 16, name[0]);
  const std::string pred = dir + "/pred", args = " --input " + dir + "/images --output " + pred;
  // Another process holding the directory (as a running unet_infer does): refused before any work.
  fs::create_directories(pred);
  const int fd = ::open(pred.c_str(), O_RDONLY | O_DIRECTORY);
  REQUIRE(::flock(fd, LOCK_EX) == 0);
  std::string out;
  CHECK(run_guarded("unet_infer", "--model " + model_a + args, &out) == 2);
  CHECK_MESSAGE(out.find("unet_infer: --output " + pred +
                         ": another unet_infer is writing there now; expected it to end first (or another --output)") !=
                    std::string::npos,
                out);
  ::close(fd);
  CHECK(fs::is_empty(pred));
  fs::remove(pred);
  // Two started together into a new directory: whichever comes second is refused, by the lock or, when the first
  // has ended, by its maps; the output holds one model's maps, never a mix.
  const std::string infer = test::tool_path("unet_infer");
  REQUIRE(test::shell("(" + infer + " --model " + model_a + args + " > " + dir + "/a.txt 2>&1; echo $? > " + dir +
                      "/a.rc) & (" + infer + " --model " + model_b + args + " > " + dir + "/b.txt 2>&1; echo $? > " +
                      dir + "/b.rc) & wait") == 0);
  const std::string rc_a = io::read_text_file(dir + "/a.rc"), rc_b = io::read_text_file(dir + "/b.rc");
  CHECK_MESSAGE(((rc_a == "0\n" && rc_b == "2\n") || (rc_a == "2\n" && rc_b == "0\n")),
                std::string(rc_a + rc_b + io::read_text_file(dir + "/a.txt") + io::read_text_file(dir + "/b.txt")));
  const std::string winner = rc_a == "0\n" ? model_a : model_b;
  REQUIRE(run_guarded("unet_infer", "--model " + winner + " --input " + dir + "/images --output " + dir + "/alone",
                      &out) == 0);
  for (const char* name : {"x", "y", "z"})
    CHECK(bytes_of(pred + "/" + name + ".nii.gz") == bytes_of(dir + "/alone/" + name + ".nii.gz"));
}

TEST_CASE("unet_infer: two runs into one output file at once; the second is refused (exit 2), no mixed pair left") {
  test::TempDir tmp("hostile_infer_concurrent_file");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir + "/m.safetensors", 1);
  write_image(dir + "/a.nii.gz", 16, 1);
  const std::string seg = dir + "/out/seg.nii.gz", lock = dir + "/out/.seg.nii.gz.lock";
  const std::string args = "--model " + model + " --input " + dir + "/a.nii.gz --output " + seg;
  fs::create_directories(dir + "/out");
  // Another process holding the output file's lock (as a running unet_infer does): refused before any work. Both
  // runs used to pass the check for earlier outputs and exit 0, one's label map left beside the other's
  // probabilities (red-team corpus 19, D3).
  const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT, 0644);
  REQUIRE(::flock(fd, LOCK_EX) == 0);
  std::string out;
  CHECK(run_guarded("unet_infer", args + " --save-probabilities", &out) == 2);
  CHECK_MESSAGE(
      out.find(
          "unet_infer: --output " + seg +
          ": another unet_infer is writing it or its directory now; expected it to end first (or another --output)") !=
          std::string::npos,
      out);
  CHECK_FALSE(fs::exists(seg));
  ::close(fd);
  // The lock file left behind (a killed run's) is taken over, and removed at the end.
  REQUIRE_MESSAGE(run_guarded("unet_infer", args + " --save-probabilities", &out) == 0, out);
  CHECK(fs::exists(seg));
  CHECK(fs::exists(dir + "/out/seg_probabilities.nii.gz"));
  CHECK_FALSE(fs::exists(lock));
  // A refused run (the outputs are there) removes the lock it took.
  CHECK(run_guarded("unet_infer", args, &out) == 2);
  CHECK_FALSE(fs::exists(lock));
  // A run into another file of the same directory is not held up.
  const int other = ::open((dir + "/out/.other.nii.gz.lock").c_str(), O_RDWR | O_CREAT, 0644);
  REQUIRE(::flock(other, LOCK_EX) == 0);
  CHECK_MESSAGE(run_guarded("unet_infer", args + " --overwrite", &out) == 0, out);
  ::close(other);
  // One into a directory another run writes whole (its lock held): refused. It replaced that run's map of the same
  // name (red-team corpus 19, D3's variant).
  const int whole = ::open((dir + "/out").c_str(), O_RDONLY | O_DIRECTORY);
  REQUIRE(::flock(whole, LOCK_EX) == 0);
  CHECK(run_guarded("unet_infer", args + " --overwrite", &out) == 2);
  CHECK_MESSAGE(out.find("another unet_infer is writing it or its directory now") != std::string::npos, out);
  ::close(whole);
}

TEST_CASE("unet_infer --keep-going also skips a FIFO named like a volume in the input directory") {
  test::TempDir tmp("hostile_keep_going_fifo");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir + "/model.safetensors", 1);
  fs::create_directories(dir + "/images");
  write_image(dir + "/images/a.nii.gz", 8, 1);
  const std::string fifo = dir + "/images/b.nii.gz";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  std::string out;
  CHECK(run_guarded("unet_infer",
                    "--model " + model + " --input " + dir + "/images --output " + dir + "/pred --keep-going",
                    &out) == 1);
  CHECK_MESSAGE(out.find(fifo + ": not a regular file (a FIFO (named pipe)) (skipped)") != std::string::npos, out);
  CHECK_MESSAGE(out.find("1 of 2 volume(s) failed: " + fifo) != std::string::npos, out);
  CHECK(fs::exists(dir + "/pred/a.nii.gz"));
  CHECK_FALSE(fs::exists(dir + "/pred/b.nii.gz"));
  // A loop of symbolic links: named with the system's reason (it was std::filesystem's exception text).
  fs::remove(fifo);
  fs::create_symlink(dir + "/images/c.nii.gz", dir + "/images/c.nii.gz");
  CHECK(run_guarded("unet_infer",
                    "--model " + model + " --input " + dir + "/images --output " + dir + "/pred2 --keep-going",
                    &out) == 1);
  CHECK_MESSAGE(out.find(dir + "/images/c.nii.gz: not a file that can be examined (Too many levels of symbolic "
                               "links) (skipped)") != std::string::npos,
                out);
  CHECK(fs::exists(dir + "/pred2/a.nii.gz"));
}

TEST_CASE("unet_infer warns on stderr, before the work, when --overlap implies over 10000 windows") {
  test::TempDir tmp("hostile_windows");
  const std::string& dir = tmp.path;
  // A three-channel model against a one-channel image: the run fails at once on the channel count, after the
  // warning and before any window runs, so the test does not have to sit through the windows it warns about.
  const std::string model = write_random_model(dir + "/model.safetensors", 3);
  const std::string image = dir + "/big.nii.gz";
  write_image(image, 32, 7);
  const std::string run = "--model " + model + " --input " + image + " --output " + dir + "/x.nii.gz";
  std::string out;
  // 32 voxels, patch 8: step 1 gives 25^3 windows; step 4 (overlap 0.5) gives 7^3.
  CHECK(run_guarded("unet_infer", run + " --overlap 0.999", &out) == 1);
  CHECK_MESSAGE(out.find("unet_infer: warning: " + image +
                         ": --overlap 0.999 gives 15625 windows (step 1x1x1 voxels); this may take hours "
                         "(--overlap 0.5 gives 343)") != std::string::npos,
                out);
  CHECK_MESSAGE(out.find("the model expects 3") != std::string::npos, out);
  // Step 2: 13^3 = 2197 windows, each run 8 times by --tta: 17576 forward passes.
  CHECK(run_guarded("unet_infer", run + " --overlap 0.75 --tta", &out) == 1);
  CHECK_MESSAGE(
      out.find("--overlap 0.75 gives 2197 windows (step 2x2x2 voxels), each run 8 times by --tta") != std::string::npos,
      out);
  CHECK(run_guarded("unet_infer", run + " --overlap 0.75", &out) == 1);
  CHECK_MESSAGE(out.find("warning") == std::string::npos, out);  // 2197 windows: no warning
  CHECK_FALSE(fs::exists(dir + "/x.nii.gz"));
}

TEST_CASE("SIGTERM or SIGHUP during a write leaves no temporary file: unet_infer stopped while writing") {
  test::TempDir tmp("hostile_sigint");
  const std::string dir = tmp.path;
  const std::string model = write_random_model(dir + "/model.safetensors", 1);
  write_image(dir + "/big.nii.gz", 112, 3);  // 112^3 x 3 classes of float probabilities: a second of gzip
  for (const auto& [sig, status] : {std::pair<std::string, int>{"TERM", 143}, {"HUP", 129}}) {
    CAPTURE(sig);
    const std::string out = dir + "/out" + sig;
    fs::create_directories(out);
    // Start it, wait until a temporary file appears in the output directory, then the signal; the tool must end by
    // it (128 + its number, from the shell) and leave no hidden file. (SIGINT takes the same path, but a shell's
    // background job starts with it ignored, and then it stays ignored.)
    std::string output;
    const int rc =
        test::shell("(" + test::tool_path("unet_infer") + " --model " + model + " --input " + dir +
                        "/big.nii.gz --output " + out + "/big.nii.gz --save-probabilities --overlap 0 --batch 64 > " +
                        dir + "/log.txt 2>&1 & p=$!; for i in $(seq 3000); do ls -A " + out +
                        " | grep -q '^\\.tmp' && break; kill -0 $p 2>/dev/null || break; sleep 0.01; "
                        "done; kill -" +
                        sig + " $p; wait $p)",
                    &output);
    std::vector<std::string> left;
    for (const auto& e : fs::directory_iterator(out)) left.push_back(e.path().filename().string());
    CHECK(rc == status);
    for (const std::string& name : left) CHECK_MESSAGE(name.rfind(".tmp", 0) != 0, "left behind: " << name);
  }
}

TEST_CASE("unet_infer refuses values that turn NaN or infinite after resampling, naming the file, writing nothing") {
  test::TempDir tmp("hostile_nonfinite");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir + "/model.safetensors", 1);
  // +-3e38 at 2 mm: the cubic resampling to the model's 1 mm overshoots past the f32 limit (infinite, then NaN).
  const std::string image = dir + "/big.nii.gz";
  write_volume(image, 8, {3e38f, -3e38f}, {2, 2, 2});
  std::string out;
  CHECK(run_guarded("unet_infer",
                    "--model " + model + " --input " + image + " --output " + dir + "/seg.nii.gz --save-probabilities",
                    &out) == 1);
  CHECK_MESSAGE(out.find("unet_infer: error: " + image + ": after resampling and normalisation") != std::string::npos,
                out);
  CHECK_MESSAGE(out.find("NaN or infinite") != std::string::npos, out);
  CHECK_FALSE(fs::exists(dir + "/seg.nii.gz"));
  CHECK_FALSE(fs::exists(dir + "/seg_probabilities.nii.gz"));
}

TEST_CASE("unet_infer refuses voxel spacings that overflow or collapse the resampled grid, and bad card spacings") {
  test::TempDir tmp("hostile_spacing");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir + "/model.safetensors", 1);
  const std::string huge = dir + "/huge.nii.gz", tiny = dir + "/tiny.nii.gz", ok = dir + "/ok.nii.gz";
  write_volume(huge, 8, {1, 2, 3}, {1e30, 1e30, 1e30});
  write_volume(tiny, 8, {1, 2, 3}, {1e-30, 1e-30, 1e-30});
  write_image(ok, 8, 1);
  std::string out;
  CHECK(run_guarded("unet_infer", "--model " + model + " --input " + huge + " --output " + dir + "/a.nii.gz", &out) ==
        1);
  CHECK_MESSAGE(
      out.find("unet_infer: error: " + huge + ": resampling 8 x 8 x 8 voxels from spacing 1e+30") != std::string::npos,
      out);
  CHECK(run_guarded("unet_infer", "--model " + model + " --input " + tiny + " --output " + dir + "/a.nii.gz", &out) ==
        1);
  CHECK_MESSAGE(out.find(tiny + ": resampling 8 x 8 x 8 voxels from spacing 1e-30") != std::string::npos, out);
  for (const std::vector<double>& spacing :
       std::vector<std::vector<double>>{{-1, -1, -1}, {0, 0, 0}, {1, 1}, {1e30, 1, 1}}) {
    CAPTURE(spacing.size());
    CAPTURE(spacing[0]);
    const std::string bad =
        write_random_model(dir + "/bad.safetensors", 1, [&](models::ModelCard& c) { c.spacing = spacing; });
    CHECK(run_guarded("unet_infer", "--model " + bad + " --input " + ok + " --output " + dir + "/a.nii.gz", &out) == 1);
    const bool named =
        out.find(bad + ": plan.spacing") != std::string::npos || out.find(ok + ": resampling") != std::string::npos;
    CHECK_MESSAGE(named, out);
  }
  CHECK_FALSE(fs::exists(dir + "/a.nii.gz"));
}

TEST_CASE("unet_train names the training case whose values turn NaN or infinite after resampling") {
  test::TempDir tmp("hostile_nonfinite_train");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 3 --test 0 --size 8,8,8 --seed 2") == 0);
  // case_002 at 2 mm (the others at 1 mm, the target): +-3e38 overshoots the f32 limit in the cubic resampling.
  const std::string image = dir + "/data/imagesTr/case_002.nii.gz";
  write_volume(image, 8, {3e38f, -3e38f}, {2, 2, 2});
  std::vector<float> zeros(512, 0.f);
  io::write_nifti(dir + "/data/labelsTr/case_002.nii.gz", Tensor::from_vector({8, 8, 8}, zeros, DType::u8),
                  io::make_nifti_like({8, 8, 8}, {2, 2, 2}));
  const std::string ini = test::write_text(dir + "/train.ini", "[data]\ndataset = " + dir +
                                                                   "/data\nfolds = 1\npatch_size = 8,8,8\ncache = "
                                                                   "none\nworkers = 0\n[model]\nfilters = 4\ndepth = "
                                                                   "1\n[train]\nsteps = 2\n[output]\ndir = " +
                                                                   dir + "/run\n");
  std::string out;
  CHECK(run_guarded("unet_train", ini, &out) == 1);
  CHECK_MESSAGE(out.find("unet_train: error: " + image + ": training case case_002: after cropping, resampling") !=
                    std::string::npos,
                out);
  CHECK_MESSAGE(out.find("NaN or infinite") != std::string::npos, out);
  CHECK_FALSE(fs::exists(dir + "/run/model.safetensors"));
}

namespace {
// A small training configuration: DATASET, output.dir DIR/run, two steps on 8^3 patches, no cache.
std::string small_train_ini(const std::string& dir, const std::string& dataset, const std::string& extra = "") {
  return test::write_text(dir + "/train.ini", "[data]\ndataset = " + dataset +
                                                  "\nfolds = 1\npatch_size = 8,8,8\ncache = none\nworkers = "
                                                  "0\n[model]\nfilters = 4\ndepth = 1\n[train]\nsteps = 2\n" +
                                                  extra + "[output]\ndir = " + dir + "/run\n");
}
}  // namespace

TEST_CASE("unet_train --overwrite keeps the old run when the new configuration or data turn out bad") {
  test::TempDir tmp("hostile_overwrite");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 8,8,8 --seed 2") == 0);
  fs::create_directories(dir + "/run");
  for (const char* f : {"config.ini", "log.jsonl", "model.safetensors", "checkpoint.safetensors"})
    test::write_text(dir + "/run/" + f, "the old run's\n");
  const std::map<std::string, std::string> before = snapshot(dir + "/run");
  std::string out;
  // Bad data (no dataset), a bad key found after the run directory was looked at, an image that cannot be read.
  CHECK(run_guarded("unet_train", small_train_ini(dir, dir + "/nonexistent") + " --overwrite", &out) == 2);
  CHECK(snapshot(dir + "/run") == before);
  CHECK(run_guarded("unet_train", small_train_ini(dir, dir + "/data") + " --overwrite --set runtime.threads=100",
                    &out) == 2);
  CHECK(snapshot(dir + "/run") == before);
  truncate_to_half(dir + "/data/imagesTr/case_001.nii.gz");
  CHECK(run_guarded("unet_train", small_train_ini(dir, dir + "/data") + " --overwrite", &out) == 1);
  CHECK_MESSAGE(out.find(dir + "/data/imagesTr/case_001.nii.gz") != std::string::npos, out);
  CHECK(snapshot(dir + "/run") == before);
}

TEST_CASE("a resumed run whose finite weights overflow the loss stops with status 1 and keeps the last files") {
  test::TempDir tmp("hostile_huge_state");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 8,8,8 --seed 2") == 0);
  const std::string ini = small_train_ini(dir, dir + "/data");
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini, &out) == 0, out);
  // Every weight 1e30: finite, so the checkpoint loads (no bound holds weights as Adam's moments are held), but the
  // next forward pass overflows.
  const std::string checkpoint = dir + "/run/checkpoint.safetensors";
  io::SafetensorsContent c = io::read_safetensors(checkpoint);
  for (auto& [name, t] : c.tensors)
    if (name.starts_with("model.") && name.ends_with(".weight") && t.dtype() == DType::f32)
      t = Tensor::full(t.shape(), 1e30f);
  io::write_safetensors(checkpoint, c.tensors, c.metadata);
  const std::map<std::string, std::string> before = snapshot(dir + "/run");
  CHECK(run_guarded("unet_train", ini + " --resume " + dir + "/run --set train.steps=3", &out) == 1);
  CHECK_MESSAGE(out.find("training diverged: the loss of steps 3 to 3 is not finite") != std::string::npos, out);
  // The model and the checkpoint stay those of step 2 (the log may hold step 3's line).
  for (const char* f : {"/run/model.safetensors", "/run/checkpoint.safetensors"})
    CHECK(bytes_of(dir + f) == before.at(dir + f));
}

TEST_CASE("a checkpoint that cannot be written (ulimit -f) leaves the model of the last save beside it") {
  test::TempDir tmp("hostile_checkpoint_full");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 8,8,8 --seed 2") == 0);
  const std::string ini = small_train_ini(dir, dir + "/data", "optimizer = adam\n");
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini, &out) == 0, out);
  const std::map<std::string, std::string> before = snapshot(dir + "/run");
  // A limit between the two files' sizes (the checkpoint holds Adam's two moments besides the weights): the model
  // fits, the checkpoint does not. The model was written first and went one save ahead of the checkpoint.
  const uintmax_t model = fs::file_size(dir + "/run/model.safetensors"),
                  checkpoint = fs::file_size(dir + "/run/checkpoint.safetensors");
  REQUIRE(checkpoint > model + 4096);
  const uintmax_t kib = (model + checkpoint) / 2 / 1024;  // bash's ulimit -f counts KiB
  CHECK(test::shell("bash -c \"trap '' XFSZ; ulimit -f " + std::to_string(kib) + "; " +
                        test::tool_path("unet_train") + " " + ini + " --resume " + dir + "/run --set train.steps=4\"",
                    &out) == 1);
  CHECK_MESSAGE(out.find(dir + "/run/checkpoint.safetensors") != std::string::npos, out);
  CHECK_MESSAGE(out.find("File too large") != std::string::npos, out);
  for (const char* f : {"/run/model.safetensors", "/run/checkpoint.safetensors"})
    CHECK_MESSAGE(bytes_of(dir + f) == before.at(dir + f), f);
  CHECK(temporaries(dir).empty());
}

TEST_CASE("unet_train refuses an unusable output.dir or data.cache with status 2 before loading the data") {
  test::TempDir tmp("hostile_train_dirs");
  const std::string& dir = tmp.path;
  std::ofstream(dir + "/file.txt") << "a regular file\n";
  // No dataset at all: the directories must be refused before the data is looked at.
  const std::string ini = small_train_ini(dir, dir + "/nonexistent");
  std::string out;
  CHECK(run_guarded("unet_train", ini + " --set output.dir=" + dir + "/file.txt/run", &out) == 2);
  CHECK_MESSAGE(out.find("unet_train: output.dir = " + dir + "/file.txt/run: cannot be created: " + dir +
                         "/file.txt is not a directory") != std::string::npos,
                out);
  CHECK(run_guarded("unet_train", ini + " --set output.dir=" + dir + "/file.txt", &out) == 2);
  CHECK_MESSAGE(out.find("output.dir = " + dir + "/file.txt: exists and is not a directory") != std::string::npos, out);
  CHECK(run_guarded("unet_train", ini + " --set output.dir=", &out) == 2);
  CHECK_MESSAGE(
      out.find("unet_train: output.dir: required (the directory the run writes to), got ''") != std::string::npos, out);
  CHECK(run_guarded("unet_train", ini + " --set data.cache=" + dir + "/file.txt/cache", &out) == 2);
  CHECK_MESSAGE(out.find("unet_train: data.cache = " + dir + "/file.txt/cache: cannot be created") != std::string::npos,
                out);
}

TEST_CASE("unet_train refuses a configuration kept as output.dir's config.ini, fresh or --overwrite (it is no run)") {
  test::TempDir tmp("hostile_config_in_run");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 8,8,8 --seed 2") == 0);
  fs::create_directories(dir + "/proj");
  const std::string ini = test::write_text(dir + "/proj/config.ini", "; my project\n[data]\ndataset = " + dir +
                                                                         "/data\nfolds = 1\npatch_size = 8,8,8\n"
                                                                         "[model]\nfilters = 4\ndepth = 1\n[train]\n"
                                                                         "steps = 2\n[output]\ndir = " +
                                                                         dir + "/proj\n");
  const std::string before = io::read_text_file(ini);
  std::string out;
  for (const char* how : {"", " --overwrite", " --overwrite --set train.steps=7"}) {
    CAPTURE(how);
    CHECK(run_guarded("unet_train", ini + how, &out) == 2);
    CHECK_MESSAGE(out.find("unet_train: " + ini +
                           ": is output.dir's config.ini, which the run writes (its effective configuration); "
                           "expected the configuration outside output.dir = " +
                           dir + "/proj") != std::string::npos,
                  out);
    CHECK(io::read_text_file(ini) == before);
    CHECK_FALSE(fs::exists(dir + "/proj/log.jsonl"));
  }
}

TEST_CASE("unet_train refuses --resume with --overwrite, and an empty --resume, with status 2") {
  test::TempDir tmp("hostile_resume_flags");
  const std::string& dir = tmp.path;
  const std::string ini = small_train_ini(dir, dir + "/nonexistent");
  std::string out;
  CHECK(run_guarded("unet_train", ini + " --resume " + dir + "/run --overwrite", &out) == 2);
  CHECK_MESSAGE(out.find("unet_train: --resume and --overwrite") != std::string::npos, out);
  CHECK(run_guarded("unet_train", ini + " --resume ''", &out) == 2);
  CHECK_MESSAGE(out.find("unet_train: --resume '': expected a non-empty value (continue the run in this directory") !=
                    std::string::npos,
                out);
}

TEST_CASE(
    "unet_train --resume refuses a damaged checkpoint, naming it: NaN weights, missing optimizer state, "
    "changed optimizer or seed") {
  test::TempDir tmp("hostile_resume_damaged");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 8,8,8 --seed 2") == 0);
  const std::string ini = small_train_ini(dir, dir + "/data");
  std::string out;
  REQUIRE_MESSAGE(run_guarded("unet_train", ini, &out) == 0, out);
  const std::string ck = dir + "/run/checkpoint.safetensors";
  const io::SafetensorsContent good = io::read_safetensors(ck);
  const auto damaged = [&](const std::function<void(io::NamedTensors&, io::Metadata&)>& edit) {
    io::NamedTensors tensors = good.tensors;
    io::Metadata metadata = good.metadata;
    edit(tensors, metadata);
    io::write_safetensors(ck, tensors, metadata);
    const int rc = run_guarded("unet_train", ini + " --resume " + dir + "/run --set train.steps=3", &out);
    return rc;
  };
  CHECK(damaged([](io::NamedTensors& t, io::Metadata&) {
          for (auto& [name, x] : t)
            if (name.starts_with("model.") && x.dtype() == DType::f32) {
              x = x.clone();
              x.data<float>()[0] = NAN;
              break;
            }
        }) == 1);
  CHECK_MESSAGE(out.find("unet_train: error: " + ck + ": tensor 'model.") != std::string::npos, out);
  CHECK_MESSAGE(out.find("NaN or infinite") != std::string::npos, out);
  CHECK(damaged([](io::NamedTensors& t, io::Metadata&) {
          std::erase_if(t, [](const auto& e) { return e.first.starts_with("optimizer."); });
        }) == 1);
  CHECK_MESSAGE(out.find(ck + ": no tensor 'optimizer.") != std::string::npos, out);
  CHECK(damaged([](io::NamedTensors&, io::Metadata& m) { m["optimizer"] = "SGD"; }) == 1);
  CHECK_MESSAGE(out.find(ck + ": metadata 'optimizer' = 'SGD'") != std::string::npos, out);
  CHECK(damaged([](io::NamedTensors&, io::Metadata& m) { m["seed"] = "5"; }) == 1);
  CHECK_MESSAGE(out.find(ck + ": metadata 'seed' = '5'") != std::string::npos, out);
  // A best Dice no validation can beat would keep model_best.safetensors from ever being written again.
  for (const char* best : {"nan", "1e999", "99999999999999999999", "-0.5"}) {
    CAPTURE(best);
    CHECK(damaged([&](io::NamedTensors&, io::Metadata& m) { m["best_val_mean_dice"] = best; }) == 1);
    CHECK_MESSAGE(out.find(ck + ": metadata 'best_val_mean_dice' = '" + std::string(best) +
                           "'; expected -1 (no validation yet) or a mean Dice in [0, 1]") != std::string::npos,
                  out);
  }
  CHECK(damaged([](io::NamedTensors&, io::Metadata& m) { m["skipped_steps"] = ""; }) == 1);
  CHECK_MESSAGE(out.find(ck + ": metadata 'skipped_steps' = '' is not a whole number >= 0") != std::string::npos, out);
  // A step count that is not the updated plus the skipped steps would continue from trained weights as from step 0.
  CHECK(damaged([](io::NamedTensors&, io::Metadata& m) { m["step"] = "0"; }) == 1);
  CHECK_MESSAGE(out.find(ck + ": metadata 'step' = 0, but 'optimizer_steps' = 2 and 'skipped_steps' = 0; expected "
                              "step = optimizer_steps + skipped_steps (a damaged checkpoint?)") != std::string::npos,
                out);
  // Adam's second moments are means of squares: a negative one is damage, not a diverged training.
  CHECK(damaged([](io::NamedTensors& t, io::Metadata&) {
          for (auto& [name, x] : t)
            if (name == "optimizer.exp_avg_sq.0") {
              x = x.clone();
              x.data<float>()[0] = -1;
            }
        }) == 1);
  CHECK_MESSAGE(out.find(ck + ": optimizer.exp_avg_sq.0 holds negative values; expected Adam's second moments") !=
                    std::string::npos,
                out);
  // Adam's per-parameter step counts: each is optimizer_steps (one removed or edited resumed to other weights).
  CHECK(damaged([](io::NamedTensors& t, io::Metadata&) {
          std::erase_if(t, [](const auto& e) { return e.first == "optimizer.step.3"; });
        }) == 1);
  CHECK_MESSAGE(out.find(ck + ": no one-element tensor 'optimizer.step.3'; expected parameter 3's Adam step count, 2 "
                              "as optimizer_steps") != std::string::npos,
                out);
  CHECK(damaged([](io::NamedTensors& t, io::Metadata&) {
          for (auto& [name, x] : t)
            if (name == "optimizer.step.0") x = Tensor::full({1}, 1.f);
        }) == 1);
  CHECK_MESSAGE(out.find(ck + ": 'optimizer.step.0' = 1; expected parameter 0's Adam step count, 2") !=
                    std::string::npos,
                out);
  // Finite first moments beyond what Adam's second moments allow (|m| <= 7.27 sqrt(v) for betas 0.9 / 0.999): one
  // resumed update of lr m / sqrt(v) would throw the weights to about 1e16.
  CHECK(damaged([](io::NamedTensors& t, io::Metadata&) {
          for (auto& [name, x] : t)
            if (name.starts_with("optimizer.exp_avg")) x = Tensor::full(x.shape(), 3e38f);
        }) == 1);
  CHECK_MESSAGE(out.find(ck + ": optimizer.exp_avg.0[0] = 3e+38 with optimizer.exp_avg_sq.0[0] = 3e+38: Adam's "
                              "moments cannot reach |exp_avg| > 7.27") != std::string::npos,
                out);
  // A configuration that is not one: said so, not compared key by key as '(absent)'.
  for (const char* config : {"steps = 3", "[train]\nsteps"}) {
    CHECK(damaged([&](io::NamedTensors&, io::Metadata& m) { m["config"] = config; }) == 1);
    CHECK_MESSAGE(
        out.find(ck + ": metadata 'config' is not the configuration a run writes (line '") != std::string::npos, out);
  }
  for (const char* config : {"[[[garbage", "; nothing\n"}) {
    CHECK(damaged([&](io::NamedTensors&, io::Metadata& m) { m["config"] = config; }) == 1);
    CHECK_MESSAGE(out.find(ck + ": metadata 'config' holds no configuration key") != std::string::npos, out);
  }
  // Loss sums of more steps than the log's last line leaves (step 2 of 2 was logged: none) would skew the next line.
  CHECK(damaged([](io::NamedTensors& t, io::Metadata& m) {
          m["loss_since_log_steps"] = "1";
          t.emplace_back("train.loss_since_log", Tensor::full({3}, 0.5f));
        }) == 1);
  CHECK_MESSAGE(
      out.find(ck + ": metadata 'loss_since_log_steps' = 1, but log.jsonl's last training line is at step 2; "
                    "expected at most 0, the steps since (a damaged checkpoint or log?)") != std::string::npos,
      out);
  // A run made with train.precision = auto where it resolved to bf16 (a GPU): refused with the value to set, and
  // resumed with it (the key is compared as resolved, not as written).
  CHECK(damaged([](io::NamedTensors&, io::Metadata& m) { m["precision"] = "bf16"; }) == 2);
  CHECK_MESSAGE(
      out.find("precision fp32 here, but bf16 in " + ck +
               " (train.precision = auto depends on the device: set train.precision = bf16)") != std::string::npos,
      out);
  CHECK_MESSAGE(
      run_guarded("unet_train", ini + " --resume " + dir + "/run --set train.steps=3 --set train.precision=bf16",
                  &out) == 0,
      out);
  // The checkpoint itself resumes.
  io::write_safetensors(ck, good.tensors, good.metadata);
  CHECK_MESSAGE(run_guarded("unet_train", ini + " --resume " + dir + "/run --set train.steps=3", &out) == 0, out);
}

TEST_CASE("unet_train checks cached cases' labels against the classes dataset.json lists now") {
  test::TempDir tmp("hostile_cache_labels");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 16,16,16 --seed 2") == 0);
  const std::string ini = small_train_ini(dir, dir + "/data");
  std::string out;
  REQUIRE_MESSAGE(run_guarded("unet_train", ini + " --set data.cache=" + dir + "/cache", &out) == 0, out);
  // Class 2 dropped from dataset.json; the cache was made with it (the image and label files are unchanged).
  const std::string json_path = dir + "/data/dataset.json";
  nlohmann::json j = nlohmann::json::parse(bytes_of(json_path));
  j["labels"].erase("2");
  test::write_text(json_path, j.dump(1));
  CHECK(run_guarded("unet_train", ini + " --set data.cache=" + dir + "/cache --set output.dir=" + dir + "/run2",
                    &out) == 1);
  CHECK_MESSAGE(out.find("unet_train: error: " + dir + "/data/labelsTr/case_00") != std::string::npos, out);
  CHECK_MESSAGE(out.find("allows the integers 0..1") != std::string::npos, out);
  CHECK_FALSE(fs::exists(dir + "/run2/model.safetensors"));
}

TEST_CASE(
    "unet_infer refuses an image without contrast (all zero, constant, one non-zero voxel, values near 1e-40) "
    "instead of segmenting nothing; --keep-going segments the others") {
  Fixture fx;
  const std::string in = fx.dir + "/blank";
  fs::create_directories(in);
  const auto write = [&](const std::string& name, const std::function<void(std::vector<float>&)>& fill,
                         double spacing = 1) {
    std::vector<float> v(8 * 8 * 8, 0.f);
    fill(v);
    io::write_nifti(in + "/" + name, Tensor::from_vector({8, 8, 8}, v),
                    io::make_nifti_like({8, 8, 8}, {spacing, spacing, spacing}));
  };
  write("zeros.nii.gz", [](std::vector<float>&) {});
  write("seven.nii.gz", [](std::vector<float>& v) { std::fill(v.begin(), v.end(), 7.f); });
  write("one_voxel.nii.gz", [](std::vector<float>& v) { v[100] = 5.f; });
  write("tiny.nii.gz", [](std::vector<float>& v) {
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(1 + i % 7) * 1e-40f;
  });
  // Contrast in every voxel, but 0.8 mm across: resampled to the model's 1 mm, one voxel.
  write(
      "small_fov.nii.gz",
      [](std::vector<float>& v) {
        for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(1 + i % 7);
      },
      0.1);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"zeros", "every voxel holds the value 0 (an empty or constant image); expected an image with contrast"},
      {"seven", "every voxel holds the value 7 (an empty or constant image)"},
      {"one_voxel", "after cropping to its non-zero voxels (1 x 1 x 1) and normalisation its values span 0"},
      {"tiny", "after cropping to its non-zero voxels (8 x 8 x 8) and normalisation its values span "},
      {"small_fov",
       "after cropping to its non-zero voxels (8 x 8 x 8), resampling from 0.1 x 0.1 x 0.1 mm to the model's 1 x 1 x 1 "
       "mm (1 x 1 x 1) and normalisation its values span 0 (resampling left one voxel along an axis: the field of view "
       "is under about one of the model's voxels); expected an image with contrast to segment"},
  };
  std::string out;
  for (const auto& [name, message] : cases) {
    CHECK(run_guarded("unet_infer",
                      "--model " + fx.model + " --input " + in + "/" + name + ".nii.gz --output " + fx.out + ".nii.gz",
                      &out) == 1);
    CHECK_MESSAGE(out.find(in + "/" + name + ".nii.gz: " + message) != std::string::npos, out);
    CHECK_FALSE(fs::exists(fx.out + ".nii.gz"));
  }
  // A CT model's clip window 133..493 and an image whose values all lie above it.
  const std::string ct = write_random_model(fx.dir + "/ct.safetensors", 1, [](models::ModelCard& card) {
    card.normalization.channels[0] = {true, 300, 100, 133, 493};
  });
  write("bright.nii.gz", [](std::vector<float>& v) {
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(1000 + i % 7);
  });
  CHECK(run_guarded("unet_infer", "--model " + ct + " --input " + in + "/bright.nii.gz --output " + fx.out + ".nii.gz",
                    &out) == 1);
  CHECK_MESSAGE(out.find(in + "/bright.nii.gz: after cropping to its non-zero voxels (8 x 8 x 8) and normalisation its "
                              "values span 0 (the model's CT normalisation clips channel 0 to 133..493: are the "
                              "image's values outside that window?)") != std::string::npos,
                out);
  fs::remove(in + "/bright.nii.gz");
  fs::copy(fx.dir + "/images/a.nii.gz", in + "/a.nii.gz");
  CHECK(run_guarded("unet_infer", "--model " + fx.model + " --input " + in + " --output " + fx.out + " --keep-going",
                    &out) == 1);
  CHECK(fs::exists(fx.out + "/a.nii.gz"));
  CHECK_FALSE(fs::exists(fx.out + "/zeros.nii.gz"));
}

TEST_CASE("unet_infer whose probabilities cannot be written (a file size limit) leaves no label map to score") {
  Fixture fx;
  fs::create_directories(fx.out);
  std::string out;
  // A 2 KiB limit: the label map fits, the float probabilities do not (SIGXFSZ ignored, so the write fails instead).
  CHECK(test::shell("bash -c \"trap '' XFSZ; ulimit -f 2; " + test::tool_path("unet_infer") + " --model " + fx.model +
                        " --input " + fx.dir + "/images/a.nii.gz --output " + fx.out +
                        "/a.nii.gz --save-probabilities\"",
                    &out) == 1);
  CHECK_MESSAGE(out.find("File too large") != std::string::npos, out);
  CHECK_MESSAGE(fs::is_empty(fx.out), out);
}

TEST_CASE("unet_infer refuses, with status 2 before any work, inputs whose outputs would share a name") {
  Fixture fx;
  const std::string& d = fx.dir;
  fs::create_directories(d + "/two");
  write_image(d + "/two/a.nii", 8, 1);
  write_image(d + "/two/a.nii.gz", 8, 2);
  const std::vector<BadCase> cases = {
      {"unet_infer", " --model " + fx.model + " --input " + d + "/two --output " + fx.out + " --save-probabilities", 2,
       "--input " + d + "/two: " + d + "/two/a.nii and " + d + "/two/a.nii.gz would both be written as " + fx.out +
           "/a.* (a.nii.gz); rename one of them"},
      {"unet_infer", " --model " + fx.model + " --input " + d + "/two --output " + fx.out, 2,
       "would both be written as " + fx.out + "/a.*"},
      // nnU-Net v2 cases y and y_probabilities: y's probabilities and y_probabilities' label map share a name.
      {"unet_infer", " --model " + fx.model + " --input " + d + "/v2 --output " + fx.out + " --save-probabilities", 2,
       "--input " + d + "/v2: " + d + "/v2/y_0000.nii.gz and " + d + "/v2/y_probabilities_0000.nii.gz would both be " +
           "written as " + fx.out + "/y_probabilities.* (y_probabilities.nii.gz); rename one of them"},
      // nnU-Net v2's layout: channel 0 of case a twice, in two formats (two maps of case a were written, exit 0:
      // red-team corpus 20, M1). In a directory of cases, a.nii.gz and a.tif are two volumes (test_tools).
      {"unet_infer", " --model " + fx.model + " --input " + d + "/v2formats --output " + fx.out, 2,
       "--input " + d + "/v2formats: " + d + "/v2formats/a_0000.nii.gz and " + d +
           "/v2formats/a_0000.tif would both be written as " + fx.out + "/a.* (a.tif); rename one of them"},
      // Case x_0000 (file x_0000_0000) written into its own directory would replace case x's image x_0000.
      {"unet_infer", " --model " + fx.model + " --input " + d + "/v2x --output " + d + "/v2x", 2,
       "--output " + d + "/v2x: would overwrite the input " + d + "/v2x/x_0000.nii.gz"},
  };
  fs::create_directories(d + "/v2");
  write_image(d + "/v2/y_0000.nii.gz", 8, 1);
  write_image(d + "/v2/y_probabilities_0000.nii.gz", 8, 2);
  fs::create_directories(d + "/v2x");
  write_image(d + "/v2x/x_0000.nii.gz", 8, 1);
  write_image(d + "/v2x/x_0000_0000.nii.gz", 8, 2);
  io::TiffWriteOptions as_float;
  as_float.bits = 32;
  as_float.is_float = true;
  fs::create_directories(d + "/v2formats");
  write_image(d + "/v2formats/a_0000.nii.gz", 8, 1);
  io::write_tiff(d + "/v2formats/a_0000.tif", io::read_nifti(d + "/v2formats/a_0000.nii.gz").data.reshape({8, 8, 8, 1}),
                 as_float);
  check_cases(fx, cases);
}

TEST_CASE("unet_infer writes TIFF outputs of an ImageJ hyperstack with a description of their own pages") {
  test::TempDir tmp("hostile_imagej");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir + "/model.safetensors", 2);
  // 16 pages, 2 channels of 8 slices ("czt": channel fastest), 0.5 mm apart.
  std::vector<float> v(16 * 8 * 8);
  Rng rng(5);
  for (float& x : v) x = static_cast<float>(rng.uniform(0, 200));
  io::TiffWriteOptions o;
  o.tags = {true, 1, 1, 1, ""};  // 1 pixel per mm (the unit in the description)
  o.tags.description =
      "ImageJ=1.11a\nimages=16\nchannels=2\nslices=8\nhyperstack=true\nmode=grayscale\nunit=mm\n"
      "spacing=0.5\n";
  io::write_tiff(dir + "/in.tif", Tensor::from_vector({16, 8, 8}, v, DType::u8), o);
  REQUIRE(io::read_tiff(dir + "/in.tif").data.shape() == Shape{8, 8, 8, 2});
  std::string out;
  REQUIRE_MESSAGE(
      run_guarded("unet_infer",
                  "--model " + model + " --input " + dir + "/in.tif --output " + dir + "/out.tif --save-probabilities",
                  &out) == 0,
      out);
  const io::TiffVolume labels = io::read_tiff(dir + "/out.tif");
  CHECK(labels.data.shape() == Shape{8, 8, 8, 1});
  CHECK(labels.tags.description.find("channels=") == std::string::npos);
  CHECK(labels.tags.description.find("images=8\n") != std::string::npos);
  CHECK(labels.tags.description.find("spacing=0.5\n") != std::string::npos);
  CHECK(labels.spacing[0] == doctest::Approx(0.5));
  CHECK(io::read_tiff(dir + "/out_probabilities.tif").data.shape() == Shape{8, 8, 8, 3});
}

TEST_CASE(
    "unet_eval: one-channel maps only, classes whatever the --label spelling, --json never over dataset.json, "
    "only NAME_probabilities outputs skipped") {
  test::TempDir tmp("hostile_eval");
  const std::string& dir = tmp.path;
  fs::create_directories(dir + "/ds/labelsTs");
  fs::create_directories(dir + "/pred");
  const std::string dataset_json = test::write_text(
      dir + "/ds/dataset.json", R"({"labels": {"0": "background", "1": "a", "2": "b"}, "modality": {"0": "CT"}})");
  write_labels(dir + "/ds/labelsTs/a.nii.gz");
  write_labels(dir + "/pred/a.nii.gz");
  std::string out;
  // The classes of dataset.json (3), with or without a trailing slash.
  for (const std::string& label : {dir + "/ds/labelsTs", dir + "/ds/labelsTs/", dir + "/ds/labelsTs/."}) {
    CAPTURE(label);
    CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + label, &out) == 0);
    CHECK_MESSAGE(out.find("mean Dice over 1 cases and 2 foreground classes") != std::string::npos, out);
  }
  // --json over the dataset.json read for the classes.
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs/ --json " + dataset_json,
                    &out) == 2);
  CHECK_MESSAGE(out.find("--json " + dataset_json + ": is the dataset.json this evaluation reads") != std::string::npos,
                out);
  CHECK(bytes_of(dataset_json).starts_with("{\"labels\""));
  // The same when no dataset.json is there yet (written there, it would break every later evaluation), however it is
  // spelled.
  fs::rename(dataset_json, dir + "/ds/saved.json");
  CHECK(run_guarded(
            "unet_eval",
            "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs --json " + dir + "/ds/labelsTs/../dataset.json",
            &out) == 2);
  CHECK_MESSAGE(out.find(": is the dataset.json this evaluation reads") != std::string::npos, out);
  CHECK_FALSE(fs::exists(dataset_json));
  // labels as a list, or with one class: said as such.
  test::write_text(dataset_json, R"({"labels": ["background", "a", "b"]})");
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs", &out) == 1);
  CHECK_MESSAGE(
      out.find(dataset_json + ": \"labels\" is a JSON array; expected an object of the classes") != std::string::npos,
      out);
  test::write_text(dataset_json, R"({"labels": {"0": "background"}})");
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs", &out) == 1);
  CHECK_MESSAGE(out.find(dataset_json + ": \"labels\" lists 1 class(es); expected at least 2") != std::string::npos,
                out);
  fs::rename(dir + "/ds/saved.json", dataset_json);
  // A reference whose name merely contains "_probabilities" is scored.
  write_labels(dir + "/ds/labelsTs/x_probabilities_v2.nii.gz");
  write_labels(dir + "/pred/x_probabilities_v2.nii.gz");
  write_labels(dir + "/ds/labelsTs/y_probabilities.nii.gz");  // no y.* beside it: a reference too
  write_labels(dir + "/pred/y_probabilities.nii.gz");
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs", &out) == 0);
  CHECK_MESSAGE(out.find("mean Dice over 3 cases") != std::string::npos, out);
  fs::remove(dir + "/ds/labelsTs/x_probabilities_v2.nii.gz");
  fs::remove(dir + "/ds/labelsTs/y_probabilities.nii.gz");
  // Two-channel maps are refused, not scored on their first channel (which agree; the second ones do not).
  std::vector<float> two(128, 0.f);
  for (const std::string& f : {dir + "/pred/a.nii.gz", dir + "/ds/labelsTs/a.nii.gz"}) {
    two[1] = f.find("pred") != std::string::npos ? 1.f : 0.f;
    io::write_nifti(f, Tensor::from_vector({4, 4, 4, 2}, two, DType::u8), io::make_nifti_like({4, 4, 4, 2}, {1, 1, 1}));
  }
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs", &out) == 1);
  CHECK_MESSAGE(out.find("/a.nii.gz: has 2 channels; expected a label map of one channel") != std::string::npos, out);
}

TEST_CASE("unet_infer refuses a NIfTI file with a valid scl_slope and a NaN or infinite scl_inter, naming the field") {
  test::TempDir tmp("hostile_scl_inter");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir + "/model.safetensors", 1);
  for (const float inter : {NAN, INFINITY}) {
    CAPTURE(inter);
    const std::string image = dir + "/in.nii";
    write_image(image, 8, 1);
    std::string bytes = bytes_of(image);
    const float slope = 1;
    bytes.replace(112, 4, reinterpret_cast<const char*>(&slope), 4);  // scl_slope, then scl_inter (NIfTI-1)
    bytes.replace(116, 4, reinterpret_cast<const char*>(&inter), 4);
    std::ofstream(image, std::ios::binary | std::ios::trunc) << bytes;
    std::string out;
    CHECK(run_guarded("unet_infer", "--model " + model + " --input " + image + " --output " + dir + "/seg.nii.gz",
                      &out) == 1);
    CHECK_MESSAGE(out.find(image + ": header field scl_inter is " + std::string(std::isnan(inter) ? "nan" : "inf") +
                           " with scl_slope 1") != std::string::npos,
                  out);
    CHECK_FALSE(fs::exists(dir + "/seg.nii.gz"));
  }
}

TEST_CASE("a write beyond ulimit -f fails with 'File too large' and status 1, leaving no temporary file") {
  test::TempDir tmp("hostile_ulimit");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir + "/model.safetensors", 1);
  write_image(dir + "/big.nii.gz", 32, 4);  // 32^3 x 3 classes of float probabilities: far over 16 KiB
  fs::create_directories(dir + "/out");
  std::string out;
  // ulimit -f counts 512-byte blocks in dash, 1 KiB in bash: 32 of them, 16 or 32 KiB.
  const int infer = test::shell("ulimit -f 32; " + test::tool_path("unet_infer") + " --model " + model + " --input " +
                                    dir + "/big.nii.gz --output " + dir + "/out/big.nii.gz --save-probabilities",
                                &out);
  CHECK_MESSAGE(infer == 1, out);
  CHECK_MESSAGE(out.find("File too large") != std::string::npos, out);
  // The file named is the one asked for, not the hidden temporary it was being written under.
  CHECK_MESSAGE(out.find(dir + "/out/big_probabilities.nii.gz: writing the NIfTI file failed: File too large") !=
                    std::string::npos,
                out);
  CHECK_MESSAGE(out.find("/.tmp") == std::string::npos, out);
  CHECK(temporaries(dir).empty());
  CHECK_FALSE(fs::exists(dir + "/out/big_probabilities.nii.gz"));
  // unet_eval cannot write its dice.json at all.
  fs::create_directories(dir + "/labels");
  fs::create_directories(dir + "/pred");
  write_labels(dir + "/labels/a.nii.gz");
  write_labels(dir + "/pred/a.nii.gz");
  const int eval = test::shell("ulimit -f 0; " + test::tool_path("unet_eval") + " --pred " + dir + "/pred --label " +
                                   dir + "/labels --json " + dir + "/out/dice.json",
                               &out);
  CHECK_MESSAGE(eval == 1, out);
  CHECK_MESSAGE(out.find(dir + "/out/dice.json: write failed: File too large") != std::string::npos, out);
  CHECK(temporaries(dir).empty());
  CHECK_FALSE(fs::exists(dir + "/out/dice.json"));
}

TEST_CASE("every tool refuses an OMP_NUM_THREADS above twice the hardware threads with status 2, before any work") {
  test::TempDir tmp("hostile_omp_threads");
  const std::string& dir = tmp.path;
  const long cores = std::max(1u, std::thread::hardware_concurrency());
  const std::string expected = "(environment): expected 1.." + std::to_string(2 * cores) + " threads per process";
  // 100000 crashed libgomp at the first parallel region (SIGSEGV, no message); 1000 made a 2-second run take minutes.
  for (const std::string& n :
       {std::string("100000"), std::to_string(2 * cores + 1), std::string("99999999999999999999")})
    for (const auto& [tool, args] : std::vector<std::pair<std::string, std::string>>{
             {"unet_synth", "--output " + dir + "/data --train 1 --test 0 --size 8,8,8"},
             {"unet_train", small_train_ini(dir, dir + "/data")},
             {"unet_infer", "--model " + dir + "/m.safetensors --input " + dir + "/a.nii.gz --output " + dir + "/o"},
             {"unet_eval", "--pred " + dir + "/p --label " + dir + "/l"},
             {"unet_selftest", "--quick"}}) {
      CAPTURE(tool);
      CAPTURE(n);
      std::string out;
      CHECK(test::shell("OMP_NUM_THREADS=" + n + " timeout 60 " + test::tool_path(tool) + " " + args + " 2>&1", &out) ==
            2);
      CHECK_MESSAGE(out.find(tool + ": OMP_NUM_THREADS = " + n + " " + expected) != std::string::npos, out);
      CHECK_FALSE(fs::exists(dir + "/data"));
      CHECK_FALSE(fs::exists(dir + "/run"));
    }
  // Twice the hardware threads, a list (nested levels) and values OpenMP itself ignores with a warning are taken.
  for (const std::string& n : {std::to_string(2 * cores), std::to_string(cores) + ",1", std::string("abc")}) {
    CAPTURE(n);
    std::string out;
    CHECK(test::shell("OMP_NUM_THREADS=" + n + " " + test::tool_path("unet_synth") + " --output " + dir +
                          "/ok --train 1 --test 0 --size 8,8,8 2>&1",
                      &out) == 0);
    fs::remove_all(dir + "/ok");
  }
}

TEST_CASE("a tool whose standard output cannot be written (> /dev/full, | head) exits 1 saying so, its files written") {
  if (!fs::exists("/dev/full")) return;
  test::TempDir tmp("hostile_dev_full");
  const std::string& dir = tmp.path;
  // Standard error into a file (test::shell sends the command's where its standard output goes).
  const auto run = [&](const std::string& tool, const std::string& args, const std::string& to) {
    const int status =
        test::shell("{ " + test::tool_path(tool) + " " + args + " > " + to + " 2> " + dir + "/stderr.txt; }");
    return std::pair{status, io::read_text_file(dir + "/stderr.txt")};
  };
  // The summary of unet_synth, the results table of unet_eval: lost without a word, exit 0.
  auto [status, err] = run("unet_synth", "--output " + dir + "/data --train 2 --test 1 --size 8,8,8", "/dev/full");
  CHECK(status == 1);
  CHECK_MESSAGE(err == "unet_synth: error: writing to standard output failed: No space left on device\n", err);
  fs::copy(dir + "/data/labelsTs", dir + "/pred");
  std::tie(status, err) = run("unet_eval", "--pred " + dir + "/pred --label " + dir + "/data/labelsTs", "/dev/full");
  CHECK(status == 1);
  CHECK_MESSAGE(err == "unet_eval: error: writing to standard output failed: No space left on device\n", err);
  // The same command into a file: exit 0, the table there.
  std::tie(status, err) =
      run("unet_eval", "--pred " + dir + "/pred --label " + dir + "/data/labelsTs", dir + "/table.txt");
  CHECK_MESSAGE(status == 0, err);
  CHECK(io::read_text_file(dir + "/table.txt").find("mean") != std::string::npos);
  // Into a pipe whose reader has gone (| head): SIGPIPE killed the tool (status 141, no message) before its
  // dice.json was written. Now the files are written and the failure said.
  REQUIRE(test::shell("{ sleep 0.5; " + test::tool_path("unet_eval") + " --pred " + dir + "/pred --label " + dir +
                      "/data/labelsTs --json " + dir + "/dice.json 2> " + dir + "/stderr.txt; echo $? > " + dir +
                      "/rc.txt; } | true") == 0);
  CHECK(io::read_text_file(dir + "/rc.txt") == "1\n");
  CHECK(io::read_text_file(dir + "/stderr.txt") ==
        "unet_eval: error: writing to standard output failed: Broken pipe\n");
  CHECK(fs::exists(dir + "/dice.json"));
}

TEST_CASE("unet_train refuses a FIFO or a directory where it reads a file, naming it: not a regular file") {
  test::TempDir tmp("hostile_train_fifo");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 8,8,8 --seed 2") == 0);
  const std::string ini = small_train_ini(dir, dir + "/data");
  REQUIRE(::mkfifo((dir + "/fifo.ini").c_str(), 0600) == 0);
  fs::create_directories(dir + "/dir.ini");
  std::string out;
  CHECK(run_guarded("unet_train", dir + "/fifo.ini", &out) == 2);
  CHECK_MESSAGE(
      out.find("unet_train: " + dir + "/fifo.ini: not a regular file (a FIFO (named pipe))") != std::string::npos, out);
  CHECK(run_guarded("unet_train", dir + "/dir.ini", &out) == 2);
  CHECK_MESSAGE(out.find(dir + "/dir.ini: not a regular file (a directory)") != std::string::npos, out);
  // dataset.json: a FIFO, then a directory.
  fs::create_directories(dir + "/ds_fifo");
  REQUIRE(::mkfifo((dir + "/ds_fifo/dataset.json").c_str(), 0600) == 0);
  CHECK(run_guarded("unet_train", ini + " --set data.dataset=" + dir + "/ds_fifo", &out) == 1);
  CHECK_MESSAGE(out.find(dir + "/ds_fifo/dataset.json: not a regular file (a FIFO (named pipe))") != std::string::npos,
                out);
  fs::create_directories(dir + "/ds_dir/dataset.json");
  CHECK(run_guarded("unet_train", ini + " --set data.dataset=" + dir + "/ds_dir", &out) == 1);
  CHECK_MESSAGE(out.find(dir + "/ds_dir/dataset.json: not a regular file (a directory)") != std::string::npos, out);
  // The checkpoint of --resume.
  fs::create_directories(dir + "/run");
  REQUIRE(::mkfifo((dir + "/run/checkpoint.safetensors").c_str(), 0600) == 0);
  CHECK(run_guarded("unet_train", ini + " --resume " + dir + "/run", &out) == 2);
  CHECK_MESSAGE(
      out.find(dir + "/run/checkpoint.safetensors: not a regular file (a FIFO (named pipe))") != std::string::npos,
      out);
}

TEST_CASE("unet_infer counts the windows of its many-windows warning on the grid it resamples to") {
  test::TempDir tmp("hostile_windows_resampled");
  const std::string& dir = tmp.path;
  // A three-channel model against a one-channel image: the run fails on the channel count after the warning.
  const std::string model = write_random_model(dir + "/model.safetensors", 3);
  const std::string image = dir + "/coarse.nii.gz";
  write_volume(image, 16, {1, 2, 3}, {4, 4, 4});  // 16^3 at 4 mm: 64^3 at the model's 1 mm
  std::string out;
  // Step 1 voxel: 57^3 windows on the resampled grid (9^3 = 729 on the file's own, no warning).
  CHECK(run_guarded("unet_infer",
                    "--model " + model + " --input " + image + " --output " + dir + "/x.nii.gz --overlap 0.9",
                    &out) == 1);
  CHECK_MESSAGE(out.find("unet_infer: warning: " + image + ": --overlap 0.9 gives 185193 windows") != std::string::npos,
                out);
}

TEST_CASE("unet_infer checks every field of the model card at load, naming the checkpoint and the key") {
  test::TempDir tmp("hostile_card");
  const std::string& dir = tmp.path;
  const std::string good = write_random_model(dir + "/good.safetensors", 1);
  const std::string image = dir + "/a.nii.gz";
  write_image(image, 8, 1);
  const std::string bad = dir + "/bad.safetensors";
  // The metadata entry `key` of good.safetensors with `field` replaced by `value` (JSON), as bad.safetensors.
  const auto edited = [&](const std::string& key, const std::string& field, const std::string& value) {
    io::SafetensorsContent c = io::read_safetensors(good);
    nlohmann::json j = nlohmann::json::parse(c.metadata.at(key));
    if (field.empty())
      j = nlohmann::json::parse(value);
    else
      j[field] = nlohmann::json::parse(value);
    c.metadata[key] = j.dump();
    io::write_safetensors(bad, c.tensors, c.metadata);
  };
  const std::vector<std::tuple<std::string, std::string, std::string, std::string>> cases = {
      {"labels", "", R"({"bg": "background", "1": "a", "2": "b"})", "labels key 'bg': expected a class index 0..2"},
      {"labels", "", R"({"0": "background", "1": "a", "7": "b"})", "labels key '7': expected a class index 0..2"},
      // "00" read as 0 renamed class 0 and left class 2 without a name.
      {"labels", "", R"({"0": "background", "00": "a", "1": "b"})", "labels key '00': expected a class index 0..2"},
      // Two names for three outputs: label 2 was written anyway.
      {"labels", "", R"({"0": "background", "1": "a"})",
       "labels: expected a JSON object of class index: name with one entry per output (model.out_channels 3)"},
      {"model", "negative_slope", "1e30", "model.negative_slope: 1e+30; expected a number in [0, 1]"},
      {"plan", "patch", "[0, 0, 0]", "plan.patch: [0, 0, 0]; expected sizes 1..1024"},
      {"plan", "patch", "[15, 15, 15]", "plan.patch: [15, 15, 15]; expected multiples of [2, 2, 2]"},
      {"plan", "normalization", "[]", "plan.normalization: 0 channel(s); the model takes 1 image channel(s)"},
      {"plan", "normalization", R"([{"scheme": "minmax"}])", "plan.normalization: normalisation plan: unknown scheme"},
      {"plan", "normalization", R"([{"scheme": "ct", "std": 1, "lower": 0, "upper": 1}])",
       "plan.normalization: normalisation plan: channel 0: no \"mean\"; expected a number"},
      {"plan", "normalization", R"([{"scheme": "ct", "mean": "0", "std": 1, "lower": 0, "upper": 1}])",
       "plan.normalization: normalisation plan: channel 0: \"mean\" is \"0\"; expected a number"},
      {"plan", "normalization", R"([{"scheme": "ct", "mean": 1e300, "std": 1, "lower": 0, "upper": 100}])",
       "plan.normalization: ct mean"},
      // A clip window of width 0 leaves one value in every image: no input would keep any contrast.
      {"plan", "normalization", R"([{"scheme": "ct", "mean": 100, "std": 3, "lower": 100, "upper": 100}])",
       "plan.normalization: ct mean 100, std 3, lower 100, upper 100; expected finite values, std > 0, lower < upper"},
      {"model", "filters", "[1000000000, 8]", "model.filters: [1000000000, 8]; expected counts 1..4096"},
      {"model", "strides", "[[1, 1, 1], [3, 3, 3]]", "model.strides: level 1 [3, 3, 3]; expected 1 or 2"},
      // Integers are not narrowed: 2^32 + 1 and 1.9 would both read as 1.
      {"model", "in_channels", "4294967297", "model.in_channels: expected an integer in 1..1024, got 4294967297"},
      {"model", "in_channels", "1.9", "model.in_channels: expected an integer in 1..1024, got 1.9"},
      {"model", "out_channels", "1000", "model.out_channels: expected an integer in 2..256, got 1000"},
      {"model", "type", "7", "model.type: expected a string, got 7"},
      {"model", "negative_slope", "\"nan\"", "model.negative_slope: expected a number, got \"nan\""},
      {"labels", "1", "5", "labels['1']: expected a string, got 5"},
      {"labels", "1", "\"\"", "labels['1']: an empty name; expected the class's name"},
      // (3 - 1) x 2^30 wraps a 32-bit int to a value that passed the check; every voxel was written as 0.
      {"plan", "label_scale", "1073741824", "plan.label_scale: expected an integer in 1..255, got 1073741824"},
      {"plan", "label_scale", "200", "plan.label_scale: 200 x the largest class 2 exceeds 255"},
      {"plan", "spacing", "[1e308, 1, 1]", "plan.spacing: [1e+308"},
      // A 3D DynUNet run through DLE's ISBI slice pipeline (x / 127.5 - 1, slices resized): exit 0, another result.
      {"plan", "pipeline", "\"dle_isbi\"",
       "plan.pipeline: 'dle_isbi' with model.type 'dynunet'; DLE's ISBI pipeline is for unet2d only"},
  };
  for (const auto& [key, field, value, message] : cases) {
    CAPTURE(value);
    edited(key, field, value);
    std::string out;
    CHECK(run_guarded("unet_infer", "--model " + bad + " --input " + image + " --output " + dir + "/seg.nii.gz",
                      &out) == 1);
    CHECK_MESSAGE(out.find("unet_infer: error: " + bad + ": " + message) != std::string::npos, out);
    CHECK_FALSE(fs::exists(dir + "/seg.nii.gz"));
  }
  // A first level that downsamples: its logits would be half the window, blamed on the input by the sliding window.
  {
    const nlohmann::json model = nlohmann::json::parse(io::read_safetensors(good).metadata.at("model"));
    nlohmann::json strides = model["strides"];
    strides[0] = {2, 2, 2};
    edited("model", "strides", strides.dump());
    std::string out;
    CHECK(run_guarded("unet_infer", "--model " + bad + " --input " + image + " --output " + dir + "/seg.nii.gz",
                      &out) == 1);
    CHECK_MESSAGE(out.find("unet_infer: error: " + bad +
                           ": model.strides: level 0 [2, 2, 2]; expected [1, 1, 1] (the first level keeps the "
                           "input's resolution)") != std::string::npos,
                  out);
    CHECK_FALSE(fs::exists(dir + "/seg.nii.gz"));
  }
  // A format this version does not write.
  {
    io::SafetensorsContent c = io::read_safetensors(good);
    c.metadata["format"] = "other/9";
    io::write_safetensors(bad, c.tensors, c.metadata);
    std::string out;
    CHECK(run_guarded("unet_infer", "--model " + bad + " --input " + image + " --output " + dir + "/seg.nii.gz",
                      &out) == 1);
    CHECK_MESSAGE(out.find("unet_infer: error: " + bad +
                           ": format: 'other/9'; expected unet-engine-weights/1 (a newer version or another tool "
                           "wrote it)") != std::string::npos,
                  out);
    CHECK_FALSE(fs::exists(dir + "/seg.nii.gz"));
  }
  // UNet 3+'s batch-norm parameters.
  for (const auto& [field, value] :
       std::vector<std::pair<std::string, std::string>>{{"bn_eps", "-1.0"}, {"bn_momentum", "5.0"}}) {
    CAPTURE(field);
    edited("model", "",
           R"({"type": "unet3plus", "in_channels": 1, "out_channels": 3, "filters": [4, 8, 16, 32, 64],
               "deep_supervision": false, "bn_eps": 0.001, "bn_momentum": 0.01, ")" +
               field + "\": " + value + "}");
    std::string out;
    CHECK(run_guarded("unet_infer", "--model " + bad + " --input " + image + " --output " + dir + "/seg.nii.gz",
                      &out) == 1);
    CHECK_MESSAGE(out.find(bad + ": model." + field + ": ") != std::string::npos, out);
  }
  // Tensors of no layer of the card's network: a junk tensor, and a residual DynUNet's projections under a card that
  // says plain blocks (they were dropped and another network run, exit 0).
  const auto refused = [&](const std::string& tensor) {
    std::string out;
    CHECK(run_guarded("unet_infer", "--model " + bad + " --input " + image + " --output " + dir + "/seg.nii.gz",
                      &out) == 1);
    CHECK_MESSAGE(out.find("unet_infer: error: " + bad + ": tensor '" + tensor +
                           "' belongs to no layer of the network its model card describes") != std::string::npos,
                  out);
    CHECK_FALSE(fs::exists(dir + "/seg.nii.gz"));
  };
  {
    io::SafetensorsContent c = io::read_safetensors(good);
    c.tensors.emplace_back("foo.weight", Tensor::zeros({2}));
    io::write_safetensors(bad, c.tensors, c.metadata);
    refused("foo.weight");
  }
  {
    models::ModelCard card = models::card_from_metadata(io::read_safetensors(good).metadata, good);
    card.net.res_block = true;
    models::DynUNet residual(card.net);
    residual.initialize(3);
    card.net.res_block = false;
    models::save_weights(bad, residual, models::card_to_metadata(card));
    std::string first;
    for (const auto& [name, p] : residual.named_state())
      if (first.empty() && name.find("conv3") != std::string::npos) first = name;
    REQUIRE_FALSE(first.empty());
    refused(first);
  }
  // (The training-only deep-supervision heads of a card that has them are the network's: the tools tests infer
  // with models trained with them.)
}

TEST_CASE("unet_train refuses a dynunet patch that the planned strides do not divide, naming the nearest valid one") {
  test::TempDir tmp("hostile_patch_strides");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 16,16,16 --seed 2") == 0);
  const std::string ini = small_train_ini(dir, dir + "/data");
  std::string out;
  CHECK(run_guarded("unet_train", ini + " --set data.patch_size=18,18,18 --set model.depth=2", &out) == 2);
  CHECK_MESSAGE(out.find("unet_train: data.patch_size = 18, 18, 18: the network planned for it (model.depth = 2) "
                         "downsamples by 4, 4, 4 (z, y, x), so each size must be a multiple of that; the nearest "
                         "valid patch is 20, 20, 20") != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(dir + "/run/model.safetensors"));
  // A patch no axis of which can be halved (4 or 7 voxels: halving would leave fewer than 4) plans a single level.
  for (const char* patch : {"4,4,4", "7,7,7"}) {
    CHECK(run_guarded("unet_train", ini + " --set data.patch_size=" + patch, &out) == 2);
    CHECK_MESSAGE(out.find(": too small to downsample (nnU-Net's plan halves an axis while it keeps at least 4 voxels "
                           "and its spacing is within 2x of the finest; target spacing 1, 1, 1 mm), so the network "
                           "would have a single level; expected a size of at least 8") != std::string::npos,
                  out);
  }
  CHECK(run_guarded("unet_train", ini + " --set data.patch_size=4,8,8 --set train.steps=1", &out) == 0);  // y, x halve
  CHECK(fs::exists(dir + "/run/model.safetensors"));
}

TEST_CASE(
    "unet_train whose every step is skipped for inf gradients fails without writing a model; deep supervision "
    "the plan cannot have is said") {
  test::TempDir tmp("hostile_all_skipped");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 16,16,16 --seed 2") == 0);
  const std::string ini = small_train_ini(dir, dir + "/data");
  std::string out;
  // fp16 from a scale of 1e30: each skip halves it, still far above what f16 gradients hold after 3 steps.
  CHECK(run_guarded("unet_train",
                    ini + " --set train.steps=3 --set train.precision=fp16 --set train.loss_scale_init=1e30",
                    &out) == 1);
  CHECK_MESSAGE(out.find("unet_train: error: no optimizer step was taken: all 3 steps were skipped for inf or nan "
                         "gradients (loss scale now 1.25") != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(dir + "/run/model.safetensors"));
  // From 1e8, four steps are skipped before the scale fits (1e8 / 16 = 6250000) and the run goes on: it says so.
  REQUIRE(run_guarded("unet_train",
                      ini + " --set train.steps=20 --set train.precision=fp16 --set train.loss_scale_init=1e8 "
                            "--overwrite",
                      &out) == 0);
  CHECK_MESSAGE(out.find("unet_train: 4 of 20 steps skipped for inf or nan gradients (loss scale now 6250000)") !=
                    std::string::npos,
                out);
  // depth = 1 plans two levels: deep supervision's heads at 1/2 and 1/4 need four, and the run says it trains without.
  CHECK_MESSAGE(out.find("unet_train: model.deep_supervision: the planned network has 2 levels, and its heads at 1/2 "
                         "and 1/4 resolution need 4") != std::string::npos,
                out);
}

TEST_CASE("unet_train refuses a training case listed twice in dataset.json, naming the entry") {
  test::TempDir tmp("hostile_duplicate_case");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 3 --test 0 --size 8,8,8 --seed 2") == 0);
  const std::string json_path = dir + "/data/dataset.json";
  nlohmann::json j = nlohmann::json::parse(bytes_of(json_path));
  j["training"].push_back(j["training"][1]);
  j["numTraining"] = 4;
  test::write_text(json_path, j.dump(1));
  std::string out;
  CHECK(run_guarded("unet_train", small_train_ini(dir, dir + "/data"), &out) == 1);
  CHECK_MESSAGE(out.find(json_path + ": key 'training[3].image': case 'case_001' is listed again (first as "
                                     "training[1]); expected each training case once") != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(dir + "/run/model.safetensors"));
}

TEST_CASE(
    "unet_eval refuses 0 / 255 maps read as classes, and warns when its classes include some absent from every map") {
  test::TempDir tmp("hostile_eval_phantom");
  const std::string& dir = tmp.path;
  fs::create_directories(dir + "/labels");
  fs::create_directories(dir + "/pred");
  // ISBI-like 0 / 255 maps read without --label-scale: 255 classes, 254 of them in no map.
  std::vector<float> v(64, 0.f);
  for (int i = 0; i < 8; ++i) v[static_cast<size_t>(i)] = 255.f;
  for (const char* d : {"labels", "pred"})
    io::write_nifti(dir + "/" + d + "/a.nii.gz", Tensor::from_vector({4, 4, 4}, v, DType::u8),
                    io::make_nifti_like({4, 4, 4}, {1, 1, 1}));
  std::string out;
  // Inferred: the mean would be 254 free Dice 1 and the real class's (0.9967 for a real Dice of 0.15): refused.
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/labels", &out) == 2);
  CHECK_MESSAGE(out.find("every label value in " + dir + "/labels and the predictions is a multiple of 255 (the " +
                         "largest reference label is 255), so 254 of the 255 classes it implies are in no map") !=
                    std::string::npos,
                out);
  CHECK_MESSAGE(out.find("expected --label-scale 255") != std::string::npos, out);
  CHECK_FALSE(fs::exists(dir + "/pred/dice.json"));
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/labels --label-scale 255", &out) == 0);
  CHECK_MESSAGE(out.find("warning") == std::string::npos, out);
  // Asked for: scored as 255 classes, with the warning.
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/labels --classes 256", &out) == 0);
  CHECK_MESSAGE(out.find("unet_eval: warning: 254 of the 255 foreground classes of --classes are in no reference") !=
                    std::string::npos,
                out);
}

TEST_CASE(
    "unet_eval refuses a prediction on another grid than its reference; --ignore-geometry scores it with a "
    "warning") {
  test::TempDir tmp("hostile_eval_grid");
  const std::string& dir = tmp.path;
  fs::create_directories(dir + "/labels");
  fs::create_directories(dir + "/pred");
  // The same voxels: voxel for voxel a perfect score, but the prediction's voxels are 3 mm, the reference's 1 mm.
  std::vector<float> v(64, 0.f);
  for (int i = 0; i < 8; ++i) v[static_cast<size_t>(i)] = 1.f;
  const Tensor labels = Tensor::from_vector({4, 4, 4}, v, DType::u8);
  io::write_nifti(dir + "/labels/a.nii.gz", labels, io::make_nifti_like({4, 4, 4}, {1, 1, 1}));
  io::write_nifti(dir + "/pred/a.nii.gz", labels, io::make_nifti_like({4, 4, 4}, {3, 3, 3}));
  std::string out;
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/labels", &out) == 1);
  CHECK_MESSAGE(out.find(dir + "/pred/a.nii.gz: voxel spacing (3, 3, 3) mm (z, y, x) differs from (1, 1, 1) of " + dir +
                         "/labels/a.nii.gz (--ignore-geometry scores it regardless)") != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(dir + "/pred/dice.json"));
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/labels --ignore-geometry", &out) == 0);
  CHECK_MESSAGE(
      out.find("unet_eval: warning: " + dir + "/pred/a.nii.gz: voxel spacing (3, 3, 3) mm") != std::string::npos, out);
  CHECK(fs::exists(dir + "/pred/dice.json"));
  // Other extents stay an error whatever the flag.
  io::write_nifti(dir + "/pred/a.nii.gz", Tensor::zeros({4, 4, 5}, DType::u8),
                  io::make_nifti_like({4, 4, 5}, {1, 1, 1}));
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/labels --ignore-geometry", &out) == 1);
  CHECK_MESSAGE(out.find("grid [4, 4, 5] (z, y, x) differs from [4, 4, 4] of") != std::string::npos, out);
}

TEST_CASE("unet_infer skips NAME_probabilities.* only beside a NAME.*: a lone one is a case") {
  test::TempDir tmp("hostile_probabilities_name");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir + "/model.safetensors", 1);
  fs::create_directories(dir + "/in");
  write_image(dir + "/in/a.nii.gz", 8, 1);
  write_image(dir + "/in/a_probabilities.nii.gz", 8, 2);  // what --save-probabilities wrote for a: not a case
  write_image(dir + "/in/b_probabilities.nii.gz", 8, 3);  // no b.*: a case of its own
  std::string out;
  REQUIRE_MESSAGE(
      run_guarded("unet_infer", "--model " + model + " --input " + dir + "/in --output " + dir + "/out", &out) == 0,
      out);
  std::set<std::string> written;
  for (const auto& e : fs::directory_iterator(dir + "/out")) written.insert(e.path().filename().string());
  CHECK(written == std::set<std::string>{"a.nii.gz", "b_probabilities.nii.gz"});
}

TEST_CASE("unet_train refuses, before training, a run file of output.dir that is not a regular file") {
  test::TempDir tmp("hostile_run_files");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 16,16,16 --seed 2") == 0);
  const std::string ini = small_train_ini(dir, dir + "/data");
  std::string out;
  REQUIRE_MESSAGE(run_guarded("unet_train", ini + " --set output.dir=" + dir + "/run", &out) == 0, out);
  const std::string checkpoint = bytes_of(dir + "/run/checkpoint.safetensors");
  // model.safetensors a directory: a resumed run would train every step, then fail to save them.
  fs::remove(dir + "/run/model.safetensors");
  fs::create_directories(dir + "/run/model.safetensors");
  CHECK(run_guarded("unet_train", ini + " --set train.steps=50 --resume " + dir + "/run", &out) == 2);
  CHECK_MESSAGE(out.find("output.dir = " + dir + "/run: " + dir +
                         "/run/model.safetensors: not a regular file (a directory); expected the file the run writes "
                         "there") != std::string::npos,
                out);
  CHECK_MESSAGE(out.find("step ") == std::string::npos, out);  // no step was trained
  CHECK(bytes_of(dir + "/run/checkpoint.safetensors") == checkpoint);
  // A path component longer than NAME_MAX is found before the data is read (exit 2), not when creating it.
  CHECK(run_guarded("unet_train", ini + " --set output.dir=" + dir + "/" + std::string(300, 'a'), &out) == 2);
  CHECK_MESSAGE(out.find("a name of 300 characters in the path; at most 255 are allowed") != std::string::npos, out);
  // A symbolic link loop as --input of unet_infer: a usage error naming it, not a raw filesystem error.
  fs::create_symlink(dir + "/b.nii.gz", dir + "/a.nii.gz");
  fs::create_symlink(dir + "/a.nii.gz", dir + "/b.nii.gz");
  CHECK(run_guarded(
            "unet_infer",
            "--model " + dir + "/run/checkpoint.safetensors --input " + dir + "/a.nii.gz --output " + dir + "/o.nii.gz",
            &out) == 2);
  CHECK_MESSAGE(out.find("--input " + dir + "/a.nii.gz: Too many levels of symbolic links") != std::string::npos, out);
}

TEST_CASE("unet_eval names the reference file whose label value is beyond any class count") {
  test::TempDir tmp("hostile_eval_label_value");
  const std::string& dir = tmp.path;
  fs::create_directories(dir + "/labels");
  fs::create_directories(dir + "/pred");
  std::vector<float> v(64, 0.f);
  io::write_nifti(dir + "/labels/a.nii.gz", Tensor::from_vector({4, 4, 4}, v, DType::u8),
                  io::make_nifti_like({4, 4, 4}, {1, 1, 1}));
  io::write_nifti(dir + "/pred/a.nii.gz", Tensor::from_vector({4, 4, 4}, v, DType::u8),
                  io::make_nifti_like({4, 4, 4}, {1, 1, 1}));
  io::write_nifti(dir + "/pred/c.nii.gz", Tensor::from_vector({4, 4, 4}, v, DType::u8),
                  io::make_nifti_like({4, 4, 4}, {1, 1, 1}));
  v[3] = 1e9f;
  io::write_nifti(dir + "/labels/c.nii.gz", Tensor::from_vector({4, 4, 4}, v),
                  io::make_nifti_like({4, 4, 4}, {1, 1, 1}));
  std::string out;
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/labels", &out) == 1);
  CHECK_MESSAGE(out.find("unet_eval: error: " + dir +
                         "/labels/c.nii.gz: label value 1000000000 (at most 999 expected; "
                         "pass --classes)") != std::string::npos,
                out);
}

TEST_CASE(
    "unet_eval: dataset.json labels must be 0..n-1 once each, classes in no map are warned of whatever their source, "
    "--pred equal to --label is refused") {
  test::TempDir tmp("hostile_eval_labels");
  const std::string& dir = tmp.path;
  fs::create_directories(dir + "/ds/labelsTs");
  fs::create_directories(dir + "/pred");
  write_labels(dir + "/ds/labelsTs/a.nii.gz");  // classes 0 and 1
  write_labels(dir + "/pred/a.nii.gz");
  const std::string args = "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs";
  const std::string json = dir + "/ds/dataset.json";
  std::string out;
  // A gap (no 3, a 5): four classes, two of them in no map, each scored Dice 1 in every case without a word before.
  test::write_text(json, R"({"labels": {"0": "background", "1": "a", "2": "b", "5": "c"}})");
  CHECK(run_guarded("unet_eval", args, &out) == 1);
  CHECK_MESSAGE(
      out.find(json + ": labels: '5': \"c\": expected each of the consecutive integers 0..3 once") != std::string::npos,
      out);
  test::write_text(json, R"({"labels": {"background": 0, "a": 1, "b": 1}})");
  CHECK(run_guarded("unet_eval", args, &out) == 1);
  CHECK_MESSAGE(
      out.find(json + ": labels: 'b': 1: expected each of the consecutive integers 0..2 once") != std::string::npos,
      out);
  test::write_text(json, R"({"labels": {"background": 0, "a": 1, "both": [1, 2]}})");
  CHECK(run_guarded("unet_eval", args, &out) == 1);
  CHECK_MESSAGE(out.find(json + ": labels: 'both' is a region") != std::string::npos, out);
  // nnU-Net v2's ignore label: scored as a class, its voxels counted as misses (a Dice of 0.33 for a perfect model).
  test::write_text(json, R"({"labels": {"background": 0, "a": 1, "ignore": 2}})");
  CHECK(run_guarded("unet_eval", args, &out) == 1);
  CHECK_MESSAGE(
      out.find(json + ": labels: 'ignore' is nnU-Net v2's ignore label, which is not supported") != std::string::npos,
      out);
  // nnU-Net v2's form, valid, with a class in no map: scored, and said.
  test::write_text(json, R"({"labels": {"background": 0, "a": 1, "b": 2}})");
  CHECK(run_guarded("unet_eval", args, &out) == 0);
  CHECK_MESSAGE(
      out.find("unet_eval: warning: 1 of the 2 foreground classes of " + json +
               " are in no reference and no prediction; each scores Dice 1 in every case\n") != std::string::npos,
      out);
  fs::remove(json);
  CHECK(run_guarded("unet_eval", args + " --classes 5", &out) == 0);
  CHECK_MESSAGE(out.find("unet_eval: warning: 3 of the 4 foreground classes of --classes are in no reference") !=
                    std::string::npos,
                out);
  CHECK(run_guarded("unet_eval", args, &out) == 0);
  CHECK_MESSAGE(out.find("warning") == std::string::npos, out);
  CHECK(run_guarded("unet_eval", args + " --classes 0", &out) == 2);  // was taken as "not given"
  CHECK_MESSAGE(out.find("--classes 0: expected 2..1000") != std::string::npos, out);
  // The same directory twice (also spelled differently) would score 1.0.
  fs::remove(dir + "/pred/dice.json");
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/ds/labelsTs --label " + dir + "/ds/./labelsTs/", &out) == 2);
  CHECK_MESSAGE(out.find("are the same directory; expected the predictions and their references") != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(dir + "/ds/labelsTs/dice.json"));
}

TEST_CASE("unet_infer and unet_eval read NIfTI files of upper-case endings in directories, as TIFF's") {
  test::TempDir tmp("hostile_upper_case");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir + "/model.safetensors", 1);
  fs::create_directories(dir + "/in");
  write_image(dir + "/in/a.nii", 8, 1);
  write_image(dir + "/in/B.NII.GZ", 8, 2);
  CHECK(bytes_of(dir + "/in/B.NII.GZ").starts_with("\x1f\x8b"));  // gzip, as nifticlib reads ".GZ"
  std::string out;
  REQUIRE_MESSAGE(
      run_guarded("unet_infer", "--model " + model + " --input " + dir + "/in --output " + dir + "/out", &out) == 0,
      out);
  std::set<std::string> written;
  for (const auto& e : fs::directory_iterator(dir + "/out")) written.insert(e.path().filename().string());
  CHECK(written == std::set<std::string>{"a.nii", "B.NII.GZ"});  // the inputs' names
  CHECK(bytes_of(dir + "/out/B.NII.GZ").starts_with("\x1f\x8b"));
  CHECK(io::read_nifti(dir + "/out/B.NII.GZ").data.dim(0) == 8);

  // Every reference is scored, c2.NII included: its missing prediction is an error.
  fs::create_directories(dir + "/labels");
  fs::create_directories(dir + "/pred");
  for (const char* name : {"labels/c1.nii", "labels/c2.NII", "pred/c1.nii"}) write_labels(dir + "/" + name);
  CHECK(run_guarded("unet_eval", "--pred " + dir + "/pred --label " + dir + "/labels --json " + dir + "/d.json",
                    &out) == 1);
  CHECK_MESSAGE(out.find("no prediction for 1 of 2 reference(s): c2.NII") != std::string::npos, out);

  // nifticlib reads an ending in one case only: a mixed one is an error naming the file, not a case skipped.
  fs::create_directories(dir + "/mixed");
  fs::copy_file(dir + "/in/a.nii", dir + "/mixed/m.Nii");
  CHECK(run_guarded("unet_infer", "--model " + model + " --input " + dir + "/mixed --output " + dir + "/out2", &out) ==
        1);
  CHECK_MESSAGE(out.find(dir + "/mixed/m.Nii: the ending .Nii mixes lower and upper case, which nifticlib cannot "
                               "read; expected .nii or .NII") != std::string::npos,
                out);
}

TEST_CASE("unet_infer names the checkpoint as well as the image when finite weights overflow the logits") {
  test::TempDir tmp("hostile_huge_weights");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir + "/model.safetensors", 1, nullptr, [](models::DynUNet& net) {
    for (Tensor& p : net.parameters()) std::fill_n(p.data<float>(), p.numel(), 1e30f);
  });
  write_image(dir + "/a.nii.gz", 8, 1);
  std::string out;
  CHECK(run_guarded("unet_infer", "--model " + model + " --input " + dir + "/a.nii.gz --output " + dir + "/seg.nii.gz",
                    &out) == 1);
  CHECK_MESSAGE(out.find("unet_infer: error: " + dir + "/a.nii.gz: the network's output (logits) with the weights of " +
                         model + ": ") != std::string::npos,
                out);
  CHECK_MESSAGE(out.find(" NaN or infinite (first at ") != std::string::npos, out);
  CHECK_FALSE(fs::exists(dir + "/seg.nii.gz"));
  // Only the first convolution's weight times 1e19: finite, and the instance norm after it undoes any scale, but its
  // f32 sums of squares overflow. That must not flatten the channels into a quiet label map (it made one, exit 0).
  const std::string scaled = write_random_model(dir + "/scaled.safetensors", 1, nullptr, [](models::DynUNet& net) {
    Tensor first = net.parameters().front();
    for (int64_t i = 0; i < first.numel(); ++i) first.data<float>()[i] *= 1e19f;
  });
  CHECK(run_guarded("unet_infer", "--model " + scaled + " --input " + dir + "/a.nii.gz --output " + dir + "/seg.nii.gz",
                    &out) == 1);
  CHECK_MESSAGE(out.find("the network's output (logits) with the weights of " + scaled + ": ") != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(dir + "/seg.nii.gz"));
}

TEST_CASE("unet_infer refuses, with status 2 before any volume, a model card whose plan.patch cannot fit in memory") {
  test::TempDir tmp("hostile_card_patch_memory");
  const std::string& dir = tmp.path;
  // 256 filters on a 1024^3 window: the first level alone is 2 TiB (and 16 GiB of blending buffers), beyond any
  // machine this runs on.
  models::ModelCard card;
  models::UNetPlan plan = models::plan_unet({8, 8, 8}, {1, 1, 1}, 1);
  card.net = {1, 2, plan.kernels, plan.strides, {}};
  for (size_t i = 0; i < plan.kernels.size(); ++i) card.net.filters.push_back(256 << i);
  card.patch = {1024, 1024, 1024};
  card.spacing = {1, 1, 1};
  card.normalization.channels.assign(1, io::ChannelNormalization{});
  card.labels = {{0, "background"}, {1, "a"}};
  models::DynUNet net(card.net);
  net.initialize(3);
  const std::string model = dir + "/model.safetensors";
  models::save_weights(model, net, models::card_to_metadata(card));
  write_image(dir + "/a.nii.gz", 16, 1);
  std::string out;
  CHECK(run_guarded("unet_infer", "--model " + model + " --input " + dir + "/a.nii.gz --output " + dir + "/seg.nii.gz",
                    &out) == 2);
  CHECK_MESSAGE(out.find("unet_infer: --model " + model +
                         ": plan.patch = [1024, 1024, 1024] (the window) with --batch 1: the first level's "
                         "activations (256 filters) and the blending buffers alone take 2064.0 GiB, more than this "
                         "machine's ") != std::string::npos,
                out);
  CHECK_MESSAGE(out.find("expected a model trained with a smaller patch") != std::string::npos, out);
  CHECK_MESSAGE(out.find("--batch\n") == std::string::npos, out);  // no advice to lower a --batch of 1
  CHECK_FALSE(fs::exists(dir + "/seg.nii.gz"));
}

TEST_CASE("unet_train refuses a UNet 3+ patch and batch that leave batch norm one value per channel, before any work") {
  test::TempDir tmp("hostile_unet3plus_bottom");
  const std::string& dir = tmp.path;
  // No dataset: the setting alone is refused, before the data is looked at and before output.dir is written.
  const std::string ini = small_train_ini(dir, dir + "/nonexistent");
  std::string out;
  CHECK(run_guarded("unet_train",
                    ini + " --set model.name=unet3plus --set data.patch_size=16,16 --set data.batch_size=1",
                    &out) == 2);
  CHECK_MESSAGE(out.find("unet_train: data.patch_size = 16, 16 with data.batch_size = 1: UNet 3+'s bottom level (the "
                         "patch / 16) is then 1 x 1") != std::string::npos,
                out);
  CHECK_MESSAGE(out.find("expected data.batch_size >= 2 or a patch of at least 32 in H or W") != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(dir + "/run"));
  // Batch 2 or a 32 x 16 patch is taken (then refused only for the missing dataset).
  for (const std::string set : {" --set data.patch_size=16,16 --set data.batch_size=2",
                                " --set data.patch_size=32,16 --set data.batch_size=1"}) {
    CHECK(run_guarded("unet_train", ini + " --set model.name=unet3plus --set model.depth=5" + set, &out) == 2);
    CHECK_MESSAGE(out.find("data.dataset = " + dir + "/nonexistent: no such directory") != std::string::npos, out);
  }
}

TEST_CASE("data.cache = output.dir: a case named checkpoint or model never overwrites the run's files") {
  test::TempDir tmp("hostile_cache_in_run");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 8,8,8 --seed 2") == 0);
  std::string json = bytes_of(dir + "/data/dataset.json");
  for (const auto& [from, to] : {std::pair{"case_000", "checkpoint"}, std::pair{"case_001", "model"}}) {
    for (const std::string sub : {"/data/imagesTr/", "/data/labelsTr/"})
      fs::rename(dir + sub + from + ".nii.gz", dir + sub + to + ".nii.gz");
    for (size_t at; (at = json.find(from)) != std::string::npos;) json.replace(at, std::string(from).size(), to);
  }
  test::write_text(dir + "/data/dataset.json", json);
  const std::string ini = small_train_ini(dir, dir + "/data");
  std::string out;
  REQUIRE_MESSAGE(run_guarded("unet_train", ini + " --set data.cache=" + dir + "/run", &out) == 0, out);
  // The run's checkpoint and model are the run's (they load), and the cache's cases are files of their own.
  const std::string run_model = dir + "/run/model.safetensors";
  CHECK_NOTHROW(models::card_from_metadata(models::read_weights(run_model).metadata, run_model));
  CHECK(fs::exists(dir + "/run/checkpoint.preprocessed.safetensors"));
  CHECK(fs::exists(dir + "/run/model.preprocessed.safetensors"));
  CHECK_MESSAGE(
      run_guarded("unet_train", ini + " --set data.cache=" + dir + "/run --resume " + dir + "/run --set train.steps=3",
                  &out) == 0,
      out);
  CHECK_MESSAGE(out.find("2 read from the cache") != std::string::npos, out);
  // Another run's output.dir as the cache: its model is left alone.
  const std::string model = bytes_of(dir + "/run/model.safetensors");
  CHECK_MESSAGE(
      run_guarded("unet_train", ini + " --set data.cache=" + dir + "/run --set output.dir=" + dir + "/run2", &out) == 0,
      out);
  CHECK(bytes_of(dir + "/run/model.safetensors") == model);
}

TEST_CASE("unet_train caches an nnU-Net v2 case whose file name is not UTF-8 (data.cache = auto)") {
  test::TempDir tmp("hostile_latin1_case");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir +
                                           "/v2 --train 2 --test 0 --size 8,8,8 --seed 2 --format "
                                           "nnunetv2") == 0);
  fs::rename(dir + "/v2/labelsTr/case_000.nii.gz", dir + "/v2/labelsTr/caf\xe9.nii.gz");
  fs::rename(dir + "/v2/imagesTr/case_000_0000.nii.gz", dir + "/v2/imagesTr/caf\xe9_0000.nii.gz");
  const std::string ini = small_train_ini(dir, dir + "/v2");
  std::string out;
  CHECK_MESSAGE(run_guarded("unet_train", ini + " --set data.cache=auto", &out) == 0, out);
  CHECK_MESSAGE(out.find("json.exception") == std::string::npos, out);
  CHECK(fs::exists(dir + "/v2/unet_preprocessed/caf\xe9.preprocessed.safetensors"));
  CHECK_MESSAGE(run_guarded("unet_train", ini + " --set data.cache=auto --set output.dir=" + dir + "/run2", &out) == 0,
                out);
  CHECK_MESSAGE(out.find("2 read from the cache") != std::string::npos, out);
}

TEST_CASE("unet_train does not trust an edited fingerprint.json: the spacing comes from the files, with a warning") {
  test::TempDir tmp("hostile_fingerprint_edit");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 8,8,8 --seed 2") == 0);
  const std::string ini = small_train_ini(dir, dir + "/data");
  std::string out;
  REQUIRE_MESSAGE(run_guarded("unet_train", ini + " --set data.cache=" + dir + "/cache", &out) == 0, out);
  const std::string path = dir + "/cache/fingerprint.json";
  nlohmann::json j = nlohmann::json::parse(bytes_of(path));
  for (auto& [id, entry] : j["cases"].items()) entry["spacing"] = {3, 3, 3};
  test::write_text(path, j.dump());
  CHECK(run_guarded("unet_train", ini + " --set data.cache=" + dir + "/cache --set output.dir=" + dir + "/run2",
                    &out) == 0);
  CHECK_MESSAGE(out.find("unet_train: warning: " + path + ": entry \"case_000\" does not match its \"check\"") !=
                    std::string::npos,
                out);
  CHECK_MESSAGE(out.find("target spacing 1, 1, 1 mm") != std::string::npos, out);
}

TEST_CASE("unet_train warns of constant training images, naming them, and refuses when every one is (status 2)") {
  test::TempDir tmp("hostile_constant_images");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 3 --test 0 --size 8,8,8 --seed 2") == 0);
  const std::string ini = small_train_ini(dir, dir + "/data");
  const auto zero = [&](const std::string& id) {
    const std::string image = dir + "/data/imagesTr/" + id + ".nii.gz";
    const io::NiftiVolume v = io::read_nifti(image);  // rewritten on its own header: the label's grid
    io::write_nifti(image, Tensor::zeros(v.data.shape()), v);
    return image;
  };
  const std::string first = zero("case_000");
  std::string out;
  CHECK_MESSAGE(run_guarded("unet_train", ini, &out) == 0, out);
  CHECK_MESSAGE(out.find("unet_train: warning: 1 of 3 training image(s) constant (one value per channel), nothing to "
                         "learn from: " +
                         first) != std::string::npos,
                out);
  zero("case_001");
  zero("case_002");
  CHECK(run_guarded("unet_train", ini + " --set output.dir=" + dir + "/run2", &out) == 2);
  CHECK_MESSAGE(out.find("unet_train: data.dataset = " + dir +
                         "/data: every training image is constant (one value "
                         "per channel: " +
                         first) != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(dir + "/run2"));
  // One value in every non-zero voxel (the background kept): z-scored over those voxels, nothing is left, as
  // unet_infer says when it refuses such an image. One case: a warning; every case: refused.
  REQUIRE(test::run_tool("unet_synth",
                         "--output " + dir + "/flat --train 3 --test 0 --size 8,8,8 --seed 2 --overwrite") == 0);
  const auto flatten = [&](const std::string& id) {
    const std::string image = dir + "/flat/imagesTr/" + id + ".nii.gz";
    io::NiftiVolume v = io::read_nifti(image);
    Tensor x = v.data.clone();
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = i % 7 == 0 ? 0.f : 5.f;
    io::write_nifti(image, x, v);
    return image;
  };
  const std::string flat = flatten("case_000");
  const std::string flat_ini = small_train_ini(dir, dir + "/flat") + " --set output.dir=" + dir + "/run3";
  CHECK_MESSAGE(run_guarded("unet_train", flat_ini, &out) == 0, out);
  CHECK_MESSAGE(out.find("unet_train: warning: 1 of 3 training image(s) without contrast after cropping and "
                         "normalisation (one foreground value everywhere; unet_infer would refuse them): " +
                         flat) != std::string::npos,
                out);
  flatten("case_001");
  flatten("case_002");
  CHECK(run_guarded("unet_train", flat_ini + " --overwrite", &out) == 2);
  CHECK_MESSAGE(out.find("/flat: no training image has contrast after cropping to its non-zero voxels and "
                         "normalisation (one foreground value everywhere: " +
                         flat) != std::string::npos,
                out);
}

TEST_CASE("output directories that are dangling symbolic links and --pred on a link loop are refused with status 2") {
  Fixture fx;
  const std::string& d = fx.dir;
  fs::create_symlink(d + "/gone/x", d + "/dangling");  // its target's directory does not exist either
  test::TempDir loops("hostile_loops");  // outside DIR, whose snapshots would not get through a loop
  fs::create_symlink(loops / "loop1", loops / "loop2");
  fs::create_symlink(loops / "loop2", loops / "loop1");
  const std::string ini = small_train_ini(d, d + "/nowhere");
  const std::string link = "is a dangling symbolic link (to " + d + "/gone/x)";
  check_cases(fx, {
                      // All three used to do the work first, then fail with "File exists" and status 1.
                      {"unet_infer", "--model " + fx.model + " --input " + d + "/images --output " + d + "/dangling",
                       2, "--output " + d + "/dangling: " + link},
                      {"unet_infer",
                       "--model " + fx.model + " --input " + d + "/images --output " + d + "/dangling/sub", 2,
                       "--output " + d + "/dangling/sub: " + d + "/dangling " + link},
                      {"unet_train", ini + " --set output.dir=" + d + "/dangling", 2,
                       "output.dir = " + d + "/dangling: " + link},
                      {"unet_train", ini + " --set data.cache=" + d + "/dangling", 2,
                       "data.cache = " + d + "/dangling: " + link},
                      {"unet_synth", "--output " + d + "/dangling --train 1 --test 0 --size 8", 2,
                       "--output: " + d + "/dangling " + link},
                      {"unet_eval", "--pred " + loops / "loop1" + " --label " + d + "/labels", 2,
                       "--pred " + loops / "loop1" + ": cannot be examined: Too many levels of symbolic links"},
                  });
}

TEST_CASE("unet_train --resume names --resume for a directory name its config.ini cannot hold") {
  test::TempDir tmp("hostile_resume_name");
  const std::string ini = small_train_ini(tmp.path, tmp.path + "/nowhere");
  std::string out;
  CHECK(run_guarded("unet_train", ini + " --resume '" + tmp.path + "/my ;run'", &out) == 2);
  CHECK_MESSAGE(out.find("unet_train: --resume " + tmp.path + "/my ;run: the directory's name cannot be kept in the "
                         "run's config.ini as output.dir") != std::string::npos,
                out);
  CHECK_MESSAGE(out.find("--set") == std::string::npos, out);  // it used to blame --set, which was not given
}

TEST_CASE("unet_train warns when no training label holds foreground, or when a class is in none") {
  test::TempDir tmp("hostile_no_foreground");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 2 --test 0 --size 8,8,8 --seed 2") == 0);
  const std::string ini = small_train_ini(dir, dir + "/data");
  // Class 2 ('tubes') taken out of every label: one class in none.
  for (const char* id : {"case_000", "case_001"}) {
    const std::string label = dir + "/data/labelsTr/" + id + ".nii.gz";
    const io::NiftiVolume v = io::read_nifti(label);
    std::vector<float> l = v.data.to_vector();
    for (float& x : l) x = x == 2.f ? 1.f : x;
    io::write_nifti(label,
                    Tensor::from_vector(v.data.shape(), l).reshape({v.data.dim(0), v.data.dim(1), v.data.dim(2)}), v);
  }
  std::string out;
  CHECK_MESSAGE(run_guarded("unet_train", ini, &out) == 0, out);
  CHECK_MESSAGE(
      out.find("unet_train: warning: 1 of 2 foreground classes are in no training label: 2 (") != std::string::npos,
      out);
  for (const char* id : {"case_000", "case_001"}) {
    const std::string label = dir + "/data/labelsTr/" + id + ".nii.gz";
    const io::NiftiVolume v = io::read_nifti(label);
    io::write_nifti(label, Tensor::zeros({v.data.dim(0), v.data.dim(1), v.data.dim(2)}), v);
  }
  CHECK_MESSAGE(run_guarded("unet_train", ini + " --set output.dir=" + dir + "/run2", &out) == 0, out);
  CHECK_MESSAGE(out.find("unet_train: warning: no training label holds a foreground class (1 (") != std::string::npos,
                out);
}
