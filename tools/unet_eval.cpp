// unet_eval: Dice per class of predicted label maps against reference labels (docs/reference.md, "Dice metric").
// usage: unet_eval --pred DIR --label DIR [--classes K] [--label-scale S] [--missing-as-zero] [--ignore-geometry]
//                  [--json FILE]
//        unet_eval --pred FILE --label FILE ...   (one pair, such as an ISBI 2012 stack: pages = z)
// Cases are matched by file name; every reference must have a prediction. The class count comes from --classes, the
// dataset.json beside the label directory, or the references, never from the predictions. Prints a table (per case
// and the mean over cases, x100) and writes JSON. A prediction must lie on its reference's grid: extent, spacing, and
// for NIfTI the direction and origin (io::grid_mismatch); --ignore-geometry makes all but the extent a warning.
// Exit status 0 / 2 (usage) / 1 (runtime).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>

#include "engine/metrics.h"
#include "io/image.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "tools/tool_main.h"

using namespace unet;
namespace fs = std::filesystem;

using unet::tools::UsageError;

namespace {
constexpr int kMaxClasses = 1000;

// The classes of a label map whose class c is stored as the value c * scale (scale 255: ISBI 2012's 0 / 255).
Tensor as_labels(const io::Image& v, int scale) {
  if (v.data.dim(3) != 1)
    throw std::runtime_error(v.path + ": has " + std::to_string(v.data.dim(3)) +
                             " channels; expected a label map of one channel (a probabilities map or an image?)");
  io::check_exact_labels(v);
  Tensor t = Tensor::empty({v.data.dim(0), v.data.dim(1), v.data.dim(2)}, DType::i32);
  const float* s = v.data.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    float x = s[i * v.data.dim(3)];
    if (!(x >= 0 && x < 2147483648.0f) || x != static_cast<float>(static_cast<int32_t>(x))) {
      char shown[32];  // every digit an f32 holds: 1.00000012, not 1.000000
      std::snprintf(shown, sizeof shown, "%.9g", static_cast<double>(x));
      throw std::runtime_error(v.path + ": value " + shown + " is not a label (expected integers 0 to 2^31 - 1)");
    }
    const int32_t value = static_cast<int32_t>(x);
    if (value % scale != 0)
      throw std::runtime_error(v.path + ": value " + std::to_string(value) + " is not a multiple of --label-scale " +
                               std::to_string(scale));
    t.data<int32_t>()[i] = value / scale;
  }
  return t;
}
// Whether `file` is the NAME_probabilities map unet_infer --save-probabilities wrote beside a label map NAME.
bool is_probabilities_output(const fs::path& file) {
  const std::string stem = io::image_stem(file.string()), suffix = "_probabilities";
  if (!stem.ends_with(suffix) || stem.size() == suffix.size()) return false;
  const std::string name = stem.substr(0, stem.size() - suffix.size());
  std::error_code ec;
  for (const char* ext : {".nii", ".nii.gz", ".tif", ".tiff"})
    if (fs::exists(file.parent_path() / (name + ext), ec)) return true;
  return false;
}

// The label files of a directory (NIfTI or TIFF; among predictions, not the NAME_probabilities maps unet_infer
// writes beside a NAME: every reference is scored, whatever its name), sorted. One that is not a regular file (a FIFO
// would block the read forever) is an error, not a case silently left out.
std::vector<fs::path> label_files(const std::string& dir, bool predictions) {
  std::vector<fs::path> files;
  for (auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    // The temporary of an interrupted write (io::AtomicFile's ".tmpPID.NAME") is no label map. Another hidden
    // reference is a reference like any other (left out, it would leave the mean over fewer cases without a word).
    const bool temporary = n.starts_with(".tmp") && n.find('.', 4) != std::string::npos &&
                           n.find_first_not_of("0123456789", 4) == n.find('.', 4) && n.find('.', 4) > 4;
    if (io::is_image_name(n) && (temporary || (predictions && n.starts_with(".")))) {
      if (!predictions) std::printf("unet_eval: skipping %s: the temporary file of an interrupted write\n", n.c_str());
      continue;
    }
    if (io::is_image_name(n) && !(predictions && is_probabilities_output(e.path()))) {
      if (std::string why = unet::tools::regular_file_problem(e.path().string()); !why.empty())
        throw UsageError(e.path().string() + ": " + why + "; expected a NIfTI or TIFF label map");
      files.push_back(e.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

// The dataset.json beside the label directory (as in the Medical Segmentation Decathlon layout DATASET/labelsTs),
// whatever the spelling of the directory ("labelsTs", "labelsTs/", ".").
fs::path dataset_json_of(const std::string& label_dir) {
  fs::path dir = fs::absolute(label_dir.empty() ? "." : label_dir).lexically_normal();
  if (!dir.has_filename()) dir = dir.parent_path();  // "labelsTs/" -> "labelsTs"
  return dir.parent_path() / "dataset.json";
}

// The number of classes the dataset declares ("labels" of dataset_json_of(label_dir)), or 0 when there is none.
int dataset_classes(const std::string& label_dir, std::string* source) {
  const fs::path json = dataset_json_of(label_dir);
  if (std::error_code ec; !fs::exists(fs::symlink_status(json, ec))) return 0;
  if (std::string why = unet::tools::regular_file_problem(json.string()); !why.empty() || !fs::exists(json))
    throw UsageError(json.string() + ": " + (why.empty() ? "a dangling symbolic link" : why) +
                     "; expected the dataset's dataset.json (its labels give the classes)");
  nlohmann::json j;
  try {
    j = io::parse_json(io::read_text_file(json.string()));
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(json.string() + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.contains("labels") || !j["labels"].is_object())
    throw std::runtime_error(
        json.string() + ": " +
        (j.contains("labels") ? "\"labels\" is a JSON " + std::string(j["labels"].type_name()) : "no \"labels\"") +
        "; expected an object of the classes, such as {\"0\": \"background\", \"1\": \"tumour\"}");
  if (j["labels"].size() < 2)
    throw std::runtime_error(json.string() + ": \"labels\" lists " + std::to_string(j["labels"].size()) +
                             " class(es); expected at least 2 (background and one more)");
  // As training reads them (io/dataset.cpp): MSD's {"0": "background", ...} or nnU-Net v2's {"background": 0, ...},
  // the values 0..n-1 each once. A gap would add a class in no map, scored Dice 1 in every case.
  const nlohmann::json& labels = j["labels"];
  const int64_t n = static_cast<int64_t>(labels.size());
  if (n > kMaxClasses)
    throw std::runtime_error(json.string() + ": labels: " + std::to_string(n) + " classes; at most " +
                             std::to_string(kMaxClasses) + " are supported");
  std::vector<bool> seen(static_cast<size_t>(n), false);
  for (const auto& [key, v] : labels.items()) {
    if (v.is_array())
      throw std::runtime_error(json.string() + ": labels: '" + key +
                               "' is a region (a list of labels); expected one integer per class");
    // Its voxels are to be left out of the scores, which this evaluation does not do: as a class they would count
    // as misses and false positives.
    if (key == "ignore" && v.is_number_integer())
      throw std::runtime_error(json.string() +
                               ": labels: 'ignore' is nnU-Net v2's ignore label, which is not "
                               "supported (its voxels would be scored as a class)");
    int64_t value = -1;
    if (v.is_number_integer()) {
      value = v.get<int64_t>();
    } else if (v.is_string() && !key.empty() && key.find_first_not_of("0123456789") == std::string::npos &&
               key.size() < 10 && std::to_string(std::stoll(key)) == key) {  // "01" is refused, as training does
      value = std::stoll(key);
    }
    if (value < 0 || value >= n || seen[static_cast<size_t>(value)])
      throw std::runtime_error(json.string() + ": labels: '" + key + "': " + v.dump() +
                               ": expected each of the consecutive integers 0.." + std::to_string(n - 1) + " once");
    seen[static_cast<size_t>(value)] = true;
  }
  *source = json.string();
  return static_cast<int>(n);
}

int max_label(const Tensor& t) {
  int m = 0;
  const int32_t* p = t.data<int32_t>();
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, p[i]);
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  std::string pred_dir, label_dir, json_path;
  int classes = 0, label_scale = 1;
  bool missing_as_zero = false, ignore_geometry = false;
  CLI::App app{"Dice per class of predicted label maps against reference labels, matched by file name."};
  app.add_option("--pred", pred_dir, "directory of predicted label maps (.nii, .nii.gz, .tif, .tiff), or one such file")
      ->required();
  app.add_option("--label", label_dir,
                 "directory of reference label maps, every one needing a prediction of its name; or one file (then "
                 "--pred is one file too)")
      ->required();
  app.add_option("--classes", classes,
                 "number of classes including background, 2.." + std::to_string(kMaxClasses) +
                     " (default: the labels of LABEL/../dataset.json, else the largest reference label + 1)");
  app.add_option("--label-scale", label_scale,
                 "class c is stored as the value c * S in both (ISBI 2012 and unet_infer on it: 255), 1..255");
  app.add_flag("--missing-as-zero", missing_as_zero,
               "score a reference without a prediction as Dice 0 for every class (with a warning) instead of failing");
  app.add_flag("--ignore-geometry", ignore_geometry,
               "score a prediction whose spacing, direction or origin differs from its reference's (with a warning) "
               "instead of failing; the extents must still agree");
  app.add_option("--json", json_path, "write the results as JSON to this file (default: PRED/dice.json)");
  if (auto status = unet::tools::parse_command_line(app, argc, argv, "unet_eval")) return *status;
  return unet::tools::run_tool("unet_eval", [&] {
    // Two directories, or two files (one pair): --label says which, so it is checked first.
    std::error_code label_error;
    const fs::file_status label_status = fs::status(label_dir, label_error);
    if (label_status.type() == fs::file_type::not_found)
      throw UsageError("--label " + label_dir + ": no such file or directory");
    if (label_error) throw UsageError("--label " + label_dir + ": cannot be examined: " + label_error.message());
    if (!fs::is_regular_file(label_status) && !fs::is_directory(label_status))
      throw UsageError("--label " + label_dir + ": " + unet::tools::regular_file_problem(label_dir) +
                       "; expected a label map or a directory of them");
    const bool pair_of_files = fs::is_regular_file(label_status);
    std::error_code pred_error;
    const fs::file_status pred_status = fs::status(pred_dir, pred_error);
    if (pred_error && pred_status.type() != fs::file_type::not_found)
      throw UsageError("--pred " + pred_dir + ": cannot be examined: " + pred_error.message());
    if (pred_status.type() == fs::file_type::not_found)
      throw UsageError("--pred " + pred_dir + ": no such " + (pair_of_files ? "file" : "directory") + " (--label is " +
                       (pair_of_files ? "a file" : "a directory") + ", so --pred must be one)");
    if (pair_of_files ? !fs::is_regular_file(pred_status) : !fs::is_directory(pred_status))
      throw UsageError("--pred " + pred_dir +
                       (pair_of_files ? ": not a file (--label is a file, so --pred must be one)"
                                      : ": not a directory (--label is one, so --pred must be one)"));
    if (label_scale < 1 || label_scale > 255)
      throw UsageError("--label-scale " + std::to_string(label_scale) + ": expected 1..255");
    if ((classes != 0 || app.count("--classes") > 0) && (classes < 2 || classes > kMaxClasses))
      throw UsageError("--classes " + std::to_string(classes) + ": expected 2.." + std::to_string(kMaxClasses));
    // Only a .json name: a typo must not replace a model, a configuration or a label map with the results.
    if (std::string ending = fs::path(json_path).extension().string(); !json_path.empty()) {
      for (char& c : ending) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (ending != ".json")
        throw UsageError("--json " + json_path + ": expected a file name ending in .json" +
                         (io::is_image_name(json_path) ? " (this would overwrite a label map)" : ""));
    }
    // The results' file is checked before the scoring, so a bad path costs a message rather than the work.
    // The results go beside the predictions: into PRED, or PRED's directory for a file.
    const fs::path pred_home = pair_of_files ? fs::path(pred_dir).parent_path() : fs::path(pred_dir);
    if (json_path.empty()) {
      if (std::string why = unet::tools::output_file_problem(pred_home / "dice.json"); !why.empty())
        throw UsageError("--pred " + pred_dir + ": cannot write dice.json there: " + why + " (pass --json FILE)");
    } else if (std::string why = unet::tools::output_file_problem(json_path); !why.empty()) {
      throw UsageError("--json " + json_path + ": " + why);
    }
    const std::string label_home = pair_of_files ? fs::path(label_dir).parent_path().string() : label_dir;
    // Whether it exists yet or not: once written there, every later evaluation would read the results as classes.
    if (std::error_code ec, ec2; !json_path.empty() && (fs::equivalent(json_path, dataset_json_of(label_home), ec) ||
                                                        fs::weakly_canonical(json_path, ec) ==
                                                            fs::weakly_canonical(dataset_json_of(label_home), ec2)))
      throw UsageError("--json " + json_path +
                       ": is the dataset.json this evaluation reads its classes from; expected "
                       "another file");
    if (std::error_code ec; fs::equivalent(pred_dir, label_dir, ec))
      throw UsageError("--pred " + pred_dir + " and --label " + label_dir + " are the same " +
                       (pair_of_files ? "file" : "directory") + "; expected the predictions and their references");
    const std::vector<fs::path> refs = pair_of_files ? std::vector<fs::path>{label_dir} : label_files(label_dir, false);
    if (refs.empty()) throw UsageError(label_dir + ": no .nii, .nii.gz, .tif or .tiff label maps");
    if (!pair_of_files && !missing_as_zero && label_files(pred_dir, true).empty())
      throw UsageError(pred_dir + ": no .nii, .nii.gz, .tif or .tiff label maps");

    // Every reference is scored: a missing prediction fails the evaluation, or scores 0 with --missing-as-zero.
    struct Pair {
      std::string name;
      fs::path pred_path, ref_path;
      Tensor pred, ref;  // pred undefined: missing
    };
    std::vector<Pair> pairs;
    std::vector<std::string> missing;
    // Predictions by name with the ending in lower case: endings match in any case (unet_infer writes CASE.NII.GZ
    // for such an input, scored against CASE.nii.gz), the name itself exactly.
    const auto key = [](const fs::path& f) {
      const std::string name = f.filename().string(), stem = io::image_stem(name);
      std::string ending = name.substr(stem.size());
      for (char& c : ending) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      return stem + ending;
    };
    std::map<std::string, fs::path> predictions;
    if (!pair_of_files)
      for (const fs::directory_entry& e : fs::directory_iterator(pred_dir))
        if (io::is_image_name(e.path().string())) predictions.emplace(key(e.path()), e.path());
    for (const fs::path& r : refs) try {
        fs::path p = pair_of_files ? fs::path(pred_dir) : fs::path(pred_dir) / r.filename();
        if (std::error_code ec; !pair_of_files && !fs::exists(fs::symlink_status(p, ec)))
          if (const auto it = predictions.find(key(r)); it != predictions.end()) p = it->second;
        const io::Image lv = io::read_image(r.string());
        Pair pair{r.filename().string(), p, r, Tensor(), as_labels(lv, label_scale)};
        if (fs::exists(p)) {
          if (std::string why = unet::tools::regular_file_problem(p.string()); !why.empty())
            throw UsageError(p.string() + ": " + why + "; expected a NIfTI or TIFF label map");
          // A link to the reference would score Dice 1 (as --pred and --label naming one file are refused).
          if (std::error_code ec; fs::equivalent(p, r, ec))
            throw UsageError(p.string() + " is the reference " + r.string() +
                             " itself (a link to it); expected a prediction");
          const io::Image pv = io::read_image(p.string());
          if (std::string why = io::grid_mismatch(pv, lv); !why.empty()) {
            const Shape &ps = pv.data.shape(), &ls = lv.data.shape();
            const bool same_extent = ps[0] == ls[0] && ps[1] == ls[1] && ps[2] == ls[2];
            if (!(ignore_geometry && same_extent))
              throw std::runtime_error(p.string() + ": " + why +
                                       (same_extent ? " (--ignore-geometry scores it regardless)" : ""));
            std::fprintf(stderr, "unet_eval: warning: %s: %s; scored voxel for voxel (--ignore-geometry)\n",
                         p.string().c_str(), why.c_str());
          }
          pair.pred = as_labels(pv, label_scale);
        } else if (std::error_code ec; fs::is_symlink(fs::symlink_status(p, ec))) {
          throw UsageError(p.string() + ": a dangling symbolic link; expected a NIfTI or TIFF label map");
        } else {
          missing.push_back(r.filename().string());
        }
        pairs.push_back(std::move(pair));
      } catch (const std::bad_alloc&) {
        throw std::runtime_error(r.string() + ": out of memory reading it and its prediction");
      }
    if (!missing.empty()) {
      std::string list;
      for (const std::string& m : missing) list += (list.empty() ? "" : ", ") + m;
      if (!missing_as_zero)
        throw std::runtime_error(pred_dir + ": no prediction for " + std::to_string(missing.size()) + " of " +
                                 std::to_string(refs.size()) + " reference(s): " + list +
                                 " (--missing-as-zero scores them as Dice 0)");
      std::fprintf(stderr, "unet_eval: warning: no prediction for %s: scored as Dice 0\n", list.c_str());
    }

    // The class count comes from the user, the dataset or the references, never from the predictions: a stray
    // predicted label must not add a class (which would score 1 for every case without it).
    std::string source = "--classes";
    if (classes == 0) classes = dataset_classes(label_home, &source);
    if (classes == 0) {
      for (const Pair& pr : pairs) {
        const int m = max_label(pr.ref);
        if (m >= kMaxClasses)  // the file that holds it, not the directory
          throw std::runtime_error(pr.ref_path.string() + ": label value " + std::to_string(m) + " (at most " +
                                   std::to_string(kMaxClasses - 1) + " expected; pass --classes)");
        classes = std::max(classes, m + 1);
      }
      // Only background: no class to score, and nothing to infer the classes from (a Dice 1 for an imagined class 1
      // would say nothing).
      if (classes <= 1)
        throw UsageError("every reference label map in " + label_dir +
                         " holds background (0) only, so the classes cannot be inferred; expected --classes N or a "
                         "dataset.json beside " +
                         label_dir + " listing the labels");
      source = "the largest reference label in " + label_dir;
    }
    // Classes in no map score Dice 1 in every case and lift the mean: 0 / 255 maps read without --label-scale give
    // 254 of them; so do a --classes or a dataset.json with more classes than the maps hold.
    std::vector<bool> present(static_cast<size_t>(classes), false);
    for (const Pair& pr : pairs)
      for (const Tensor* t : {&pr.ref, &pr.pred})
        if (t->defined())
          for (int64_t i = 0; i < t->numel(); ++i)
            if (const int32_t v = t->data<int32_t>()[i]; v < classes) present[static_cast<size_t>(v)] = true;
    const int absent = static_cast<int>(std::count(present.begin() + 1, present.end(), false));
    // Labels that are all multiples of one value above 1 (ISBI's 0 / 255) read as class indices: the classes between
    // would each score Dice 1, and the mean would say little about the one real class. Refused unless told.
    int scale = 0;
    for (int v = 1; v < classes; ++v)
      if (present[static_cast<size_t>(v)]) scale = std::gcd(scale, v);
    if (absent > 0 && scale > 1 && source.starts_with("the largest"))
      throw UsageError("every label value in " + label_dir + " and the predictions is a multiple of " +
                       std::to_string(scale) + " (the largest reference label is " + std::to_string(classes - 1) +
                       "), so " + std::to_string(absent) + " of the " + std::to_string(classes - 1) +
                       " classes it implies are in no map and would each score Dice 1; expected --label-scale " +
                       std::to_string(scale) + " (labels stored as multiples of a scale, as ISBI's 0 / 255), or " +
                       "--classes to score the values as they are");
    // The same when the classes inferred from the largest label are mostly in no map, whatever the values (a stray
    // voxel of 1 in a 0 / 255 map breaks the multiple): more free Dice 1 than classes scored. Refused unless told.
    if (source.starts_with("the largest") && absent > classes - 1 - absent)
      throw UsageError(std::to_string(absent) + " of the " + std::to_string(classes - 1) +
                       " foreground classes implied by the largest label in " + label_dir + " (" +
                       std::to_string(classes - 1) +
                       ") are in no reference and no prediction and would each score Dice 1, more than the classes "
                       "scored; expected --classes N (the classes the maps hold, to score them as they are) or "
                       "--label-scale (labels stored as multiples of a scale, as ISBI's 0 / 255)");
    if (absent > 0)
      std::fprintf(stderr,
                   "unet_eval: warning: %d of the %d foreground classes %s %s are in no reference and no prediction; "
                   "each scores Dice 1 in every case%s\n",
                   absent, classes - 1, source.starts_with("the largest") ? "inferred from" : "of", source.c_str(),
                   source.starts_with("the largest")
                       ? " (labels stored as multiples of a scale? pass --label-scale, or --classes)"
                       : "");
    for (const Pair& pr : pairs)
      for (const auto& [t, path] : {std::pair{&pr.ref, &pr.ref_path}, std::pair{&pr.pred, &pr.pred_path}}) {
        if (!t->defined()) continue;
        const int m = max_label(*t);
        if (m >= classes)
          throw std::runtime_error(path->string() + ": label value " + std::to_string(m * label_scale) +
                                   (label_scale == 1 ? "" : " (class " + std::to_string(m) + ")") + " outside the " +
                                   std::to_string(classes) + " classes of " + source);
      }

    nlohmann::json result = {{"classes", classes}, {"cases", nlohmann::json::array()}};
    if (!missing.empty()) result["missing_predictions"] = missing;
    std::vector<double> sum(static_cast<size_t>(classes - 1), 0.0);
    std::printf("%-32s", "case");
    for (int c = 1; c < classes; ++c) std::printf("  class %-3d", c);
    std::printf("  mean\n");
    for (const Pair& pr : pairs) {
      std::vector<double> dice(static_cast<size_t>(classes - 1), 0.0);
      double mean = 0;
      if (pr.pred.defined()) {
        DiceCounts d;
        d.add(pr.pred, pr.ref, classes);
        dice = d.dice();
        mean = d.mean_dice();
      }
      std::printf("%-32s", pr.name.c_str());
      for (size_t c = 0; c < dice.size(); ++c) std::printf("  %9.2f", 100 * dice[c]), sum[c] += dice[c];
      std::printf("  %6.2f%s\n", 100 * mean, pr.pred.defined() ? "" : "  (no prediction)");
      result["cases"].push_back({{"case", pr.name}, {"dice", dice}, {"mean_dice", mean}});
    }
    std::vector<double> mean_per_class;
    double overall = 0;
    for (double s : sum) mean_per_class.push_back(s / pairs.size()), overall += s / pairs.size() / sum.size();
    std::printf("%-32s", "mean");
    for (double m : mean_per_class) std::printf("  %9.2f", 100 * m);
    std::printf("  %6.2f\n", 100 * overall);
    result["mean_dice_per_class"] = mean_per_class;
    result["mean_dice"] = overall;
    std::string out = json_path.empty() ? (pred_home / "dice.json").string() : json_path;
    io::write_file_atomically(out, result.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
    std::printf("mean Dice over %zu cases and %d foreground classes: %.4f\n", pairs.size(), classes - 1, overall);
    return 0;
  });
}
