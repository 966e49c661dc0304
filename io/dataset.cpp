// MSD dataset loading, nnU-Net normalisation, padding, fold split and patch sampling (see dataset.h).
#include "io/dataset.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <stdexcept>

#include "engine/ops.h"
#include "io/atomic_file.h"
#include "io/config.h"
#include "io/dle.h"
#include "io/image.h"
#include "io/json.h"
#include "kernels/common/parallel.h"

namespace unet::io {
namespace {

// What is wrong with a listed file that is not a regular file: "file 'REL' does not exist (PATH)", or what it is
// (a FIFO, a directory) when it exists.
std::string missing_file(const std::string& rel, const std::string& path) {
  if (std::string why = regular_file_problem(path); !why.empty())
    return "file '" + rel + "' is " + why + " (" + path + "); expected a regular file";
  return "file '" + rel + "' does not exist (" + path + ")";
}

namespace fs = std::filesystem;
using json = nlohmann::json;

// A JSON object {"0": "...", "1": "...", ...} with consecutive integer keys, as MSD's modality and labels.
std::vector<std::string> read_indexed_names(const json& j, const std::string& key, const std::string& where) {
  auto fail = [&](const std::string& what) { throw std::runtime_error(where + ": key '" + key + "': " + what); };
  if (!j.contains(key)) fail("missing (expected an object like {\"0\": \"...\"})");
  const json& o = j[key];
  if (!o.is_object() || o.empty()) fail("expected a non-empty object like {\"0\": \"...\"}");
  std::vector<std::string> names(o.size());
  for (auto& [k, v] : o.items()) {
    size_t idx = 0;
    bool numeric = !k.empty() && k.size() < 6 && std::all_of(k.begin(), k.end(), ::isdigit);
    if (numeric) idx = std::stoul(k);
    if (!numeric || idx >= o.size() || k != std::to_string(idx))
      fail("entry '" + k + "' is not a consecutive index (expected the keys \"0\".. \"" + std::to_string(o.size() - 1) +
           "\")");
    if (!v.is_string()) fail("entry '" + k + "' must be a string");
    names[idx] = v.get<std::string>();  // JSON keys are unique, so "0".."n-1" are all present
  }
  return names;
}

std::string resolve(const std::string& dir, const std::string& rel) {
  fs::path p(rel);
  return (p.is_absolute() ? p : fs::path(dir) / p).lexically_normal().string();
}

bool is_ct(const std::string& modality) {
  std::string m = modality;
  for (char& ch : m) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return m == "CT";
}

}  // namespace

// ---- dataset.json ------------------------------------------------------------------------------------------------

namespace {

// dir/dataset.json, parsed: a JSON object, or std::runtime_error naming the file.
json load_dataset_json(const std::string& dir, DatasetInfo& info) {
  info.dir = dir;
  info.json_path = (fs::path(dir) / "dataset.json").string();
  const std::string& where = info.json_path;
  if (!fs::is_directory(dir)) throw std::runtime_error(dir + ": dataset directory does not exist");
  if (std::string why = regular_file_problem(where); !why.empty())
    throw std::runtime_error(where + ": " + why + "; expected the dataset.json of an MSD or nnU-Net v2 dataset");
  const std::string text = read_text_file(where);
  json j;
  try {
    j = parse_json(text);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(where + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw std::runtime_error(where + ": expected a JSON object at the top level");
  return j;
}

}  // namespace

DatasetInfo read_dataset(const std::string& dir) {
  if (!fs::exists(fs::path(dir) / "dataset.json") && fs::exists(fs::path(dir) / "train-volume.tif"))
    return read_isbi_dataset(dir);
  DatasetInfo probe;
  const json j = load_dataset_json(dir, probe);
  // nnU-Net v2's keys (MSD has neither): a v2 file missing one of them is then told which.
  return j.contains("channel_names") || j.contains("file_ending") ? read_nnunet_v2_dataset(dir) : read_msd_dataset(dir);
}

DatasetInfo read_isbi_dataset(const std::string& dir) {
  DatasetInfo info;
  info.format = "isbi2012";
  info.dir = dir;
  info.json_path = dir;  // no dataset.json: messages name the directory
  info.name = "ISBI 2012";
  info.modalities = {"EM"};
  info.labels = {"membrane", "cell"};
  info.label_divisor = 255;
  const std::string volume = (fs::path(dir) / "train-volume.tif").string(),
                    labels = (fs::path(dir) / "train-labels.tif").string();
  if (!fs::is_regular_file(labels))
    throw std::runtime_error(labels + ": missing (ISBI 2012 needs it beside " + volume + ")");
  const int64_t pages = read_image(volume).data.dim(0), label_pages = read_image(labels).data.dim(0);
  if (pages != label_pages)
    throw std::runtime_error(labels + ": " + std::to_string(label_pages) + " pages, but " + volume + " has " +
                             std::to_string(pages));
  for (int64_t p = 0; p < pages; ++p) {
    char id[64];
    std::snprintf(id, sizeof id, "train-volume_%02lld", static_cast<long long>(p));
    info.training.push_back({id, {volume}, labels, p});
  }
  const fs::path test = fs::path(dir) / "test-volume.tif";
  if (fs::is_regular_file(test)) info.test.push_back(test.string());
  return info;
}

DatasetInfo read_nnunet_v2_dataset(const std::string& dir) {
  DatasetInfo info;
  info.format = "nnunetv2";
  const json j = load_dataset_json(dir, info);
  const std::string& where = info.json_path;
  auto fail = [&](const std::string& key, const std::string& what) {
    throw std::runtime_error(where + ": key '" + key + "': " + what);
  };
  info.modalities = read_indexed_names(j, "channel_names", where);
  if (j.contains("name") && j["name"].is_string()) info.name = j["name"].get<std::string>();
  if (j.contains("description") && j["description"].is_string()) info.description = j["description"].get<std::string>();
  // labels: name -> consecutive integer values from 0 (background).
  if (!j.contains("labels") || !j["labels"].is_object() || j["labels"].empty())
    fail("labels", "expected an object like {\"background\": 0, \"organ\": 1}");
  const json& labels = j["labels"];
  if (labels.size() < 2) fail("labels", "needs at least two labels (background and one foreground class)");
  if (labels.size() > 256) fail("labels", "more than 256 labels are not supported (labels are stored as u8)");
  info.labels.assign(labels.size(), "");
  std::vector<bool> taken(labels.size(), false);
  for (auto& [name, v] : labels.items()) {
    if (name.empty()) fail("labels", "a label with an empty name (value " + v.dump() + "); expected a class name");
    if (v.is_array())
      fail("labels", "'" + name + "' is a region (a list of labels); region-based training is not supported");
    // nnU-Net v2's ignore label marks voxels left out of the loss; trained as a class it would be learned instead.
    if (name == "ignore")
      fail("labels", "'ignore' is nnU-Net v2's ignore label, which is not supported (its voxels would be trained as a "
                     "class); relabel them or drop the entry");
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= static_cast<int64_t>(labels.size()))
      fail("labels",
           "'" + name + "' = " + v.dump() + ": expected consecutive integers 0.." + std::to_string(labels.size() - 1));
    const auto value = static_cast<size_t>(v.get<int64_t>());
    if (taken[value]) fail("labels", "'" + name + "' and '" + info.labels[value] + "' have the same value " + v.dump());
    taken[value] = true;
    info.labels[value] = name;
  }
  // Value 0 is the background of the loss and of foreground sampling, as nnU-Net v2 requires of "background".
  if (labels.contains("background") && labels["background"] != 0)
    fail("labels", "'background' = " + labels["background"].dump() +
                       ": expected 0 (value 0 is the background; here "
                       "it is '" +
                       info.labels[0] + "')");
  if (j.contains("regions_class_order")) fail("regions_class_order", "region-based training is not supported");
  if (!j.contains("file_ending") || !j["file_ending"].is_string())
    fail("file_ending", "expected a string such as \".nii.gz\" or \".tif\"");
  const std::string ending = j["file_ending"].get<std::string>();
  if (!is_image_name("case" + ending))
    fail("file_ending", "'" + ending + "': expected .nii, .nii.gz, .tif or .tiff (the formats read here)");
  if (!j.contains("numTraining") || !j["numTraining"].is_number_integer())
    fail("numTraining", "expected the number of training cases");
  // The cases: the label files, each with one image file per channel.
  const fs::path labels_dir = fs::path(dir) / "labelsTr", images_dir = fs::path(dir) / "imagesTr";
  if (!fs::is_directory(labels_dir)) throw std::runtime_error(labels_dir.string() + ": no such directory");
  std::vector<std::string> ids;
  for (const auto& e : fs::directory_iterator(labels_dir)) {
    const std::string n = e.path().filename().string();
    if (!n.starts_with(".") && n.size() > ending.size() && n.ends_with(ending))
      ids.push_back(n.substr(0, n.size() - ending.size()));
  }
  std::sort(ids.begin(), ids.end());
  // The image files named ID_NNNN + file_ending: case ID's channel NNNN.
  std::map<std::string, std::map<size_t, std::string>> channel_files;
  if (fs::is_directory(images_dir))
    for (const auto& e : fs::directory_iterator(images_dir)) {
      const std::string n = e.path().filename().string();
      if (n.starts_with(".") || n.size() < ending.size() + 6 || !n.ends_with(ending)) continue;
      const std::string stem = n.substr(0, n.size() - ending.size());
      const std::string digits = stem.substr(stem.size() - 4);
      if (stem[stem.size() - 5] != '_' ||
          !std::all_of(digits.begin(), digits.end(), [](char d) { return d >= '0' && d <= '9'; }))
        continue;
      channel_files[stem.substr(0, stem.size() - 5)][std::stoul(digits)] = e.path().string();
    }
  for (const std::string& id : ids) {
    DatasetCase c;
    c.id = id;
    c.label_path = (labels_dir / (id + ending)).string();
    for (size_t ch = 0; ch < info.modalities.size(); ++ch) {
      char suffix[32];
      std::snprintf(suffix, sizeof suffix, "_%04zu", ch);
      const fs::path image = images_dir / (id + suffix + ending);
      if (!fs::is_regular_file(image)) {
        const std::string why = regular_file_problem(image.string());
        throw std::runtime_error(image.string() + ": " + (why.empty() ? "missing" : why) + " (channel " +
                                 std::to_string(ch) + " of case " + id + ", whose label is " + c.label_path + ")");
      }
      c.image_paths.push_back(image.string());
    }
    // A channel file beyond channel_names would be left out without a word (unet_infer refuses such a case): any
    // ID_NNNN file with NNNN past the listed channels, not only the next one.
    if (const auto it = channel_files.find(id); it != channel_files.end())
      for (const auto& [ch, image] : it->second)
        if (ch >= info.modalities.size())
          fail("channel_names", "lists " + std::to_string(info.modalities.size()) + " channel(s), but " + image +
                                    " is channel " + std::to_string(ch) + " of case " + id +
                                    "; expected one file per listed channel");
    info.training.push_back(std::move(c));
  }
  if (info.training.empty()) {
    size_t others = 0;
    for (const auto& e : fs::directory_iterator(labels_dir)) others += !e.path().filename().string().starts_with(".");
    fail("file_ending", "'" + ending + "': no label files *" + ending + " in " + labels_dir.string() +
                            (others > 0 ? " (it holds " + std::to_string(others) + " other file(s))" : ""));
  }
  if (j["numTraining"].get<int64_t>() != static_cast<int64_t>(info.training.size())) {
    // nnU-Net v2 matches file_ending exactly: a file that ends in it in another case is not a label file, and said so.
    std::string other_case;
    const auto lower = [](std::string t) {
      for (char& ch : t) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      return t;
    };
    const std::string lower_ending = lower(ending);
    for (const auto& e : fs::directory_iterator(labels_dir)) {
      const std::string n = e.path().filename().string();
      if (other_case.empty() && !n.ends_with(ending) && lower(n).ends_with(lower_ending))
        other_case = " (" + n + " ends in file_ending '" + ending + "' in another case: endings are matched exactly, " +
                     "as nnU-Net v2 does)";
    }
    fail("numTraining", "says " + std::to_string(j["numTraining"].get<int64_t>()) + " but " + labels_dir.string() +
                            " holds " + std::to_string(info.training.size()) + " label files *" + ending + other_case);
  }
  return info;
}

DatasetInfo read_msd_dataset(const std::string& dir) {
  DatasetInfo info;
  info.format = "msd";
  const json j = load_dataset_json(dir, info);
  const std::string& where = info.json_path;
  auto fail = [&](const std::string& key, const std::string& what) {
    throw std::runtime_error(where + ": key '" + key + "': " + what);
  };
  auto optional_string = [&](const std::string& key) {
    if (!j.contains(key)) return std::string();
    if (!j[key].is_string()) fail(key, "expected a string");
    return j[key].get<std::string>();
  };
  info.name = optional_string("name");
  info.description = optional_string("description");
  info.modalities = read_indexed_names(j, "modality", where);
  info.labels = read_indexed_names(j, "labels", where);
  if (info.labels.size() < 2) fail("labels", "needs at least two labels (background and one foreground class)");
  if (info.labels.size() > 256) fail("labels", "more than 256 labels are not supported (labels are stored as u8)");
  // As nnU-Net v2's: a class without a name would be written into the model card nameless.
  for (size_t k = 0; k < info.labels.size(); ++k)
    if (info.labels[k].empty())
      fail("labels", "entry '" + std::to_string(k) + "' is an empty name; expected a class name");

  if (!j.contains("training")) fail("training", "missing (expected a list of {\"image\": ..., \"label\": ...})");
  const json& tr = j["training"];
  if (!tr.is_array() || tr.empty()) fail("training", "expected a non-empty list of {\"image\": ..., \"label\": ...}");
  for (size_t i = 0; i < tr.size(); ++i) {
    std::string key = "training[" + std::to_string(i) + "]";
    if (!tr[i].is_object()) fail(key, "expected an object {\"image\": ..., \"label\": ...}");
    DatasetCase c;
    for (const char* field : {"image", "label"}) {  // the form of the entry first, then the files
      std::string k = key + "." + field;
      if (!tr[i].contains(field)) fail(k, "missing");
      if (!tr[i][field].is_string()) fail(k, "expected a path string relative to the dataset directory");
    }
    for (const char* field : {"image", "label"}) {
      std::string rel = tr[i][field].get<std::string>();
      // JSON allows \u0000, which the file system would cut the path at: another file, or an error naming none.
      if (rel.find('\0') != std::string::npos)
        fail(key + "." + field,
             "'" + rel.substr(0, rel.find('\0')) + "\\u0000...' holds a NUL character; expected a path");
      std::string path = resolve(dir, rel);
      if (!fs::is_regular_file(path)) fail(key + "." + field, missing_file(rel, path));
      if (std::strcmp(field, "image") == 0)
        c.image_paths = {path};
      else
        c.label_path = path;
    }
    if (std::error_code ec; fs::equivalent(c.image_paths[0], c.label_path, ec))
      fail(key, "image and label are the same file ('" + tr[i]["image"].get<std::string>() +
                    "'); expected an image and its label map");
    c.id = image_stem(c.image_paths[0]);
    // A case listed twice could land in a training fold and its validation fold at once (and shares a cache file);
    // two files with one name in different folders would share the cache file, the fold entry and the prediction.
    for (size_t k = 0; k < info.training.size(); ++k) {
      const DatasetCase& other = info.training[k];
      if (other.id != c.id) continue;
      std::error_code ec;
      if (fs::equivalent(other.image_paths[0], c.image_paths[0], ec))
        fail(key + ".image", "case '" + c.id + "' is listed again (first as training[" + std::to_string(k) +
                                 "]); expected each training case once");
      fail(key + ".image", "'" + tr[i]["image"].get<std::string>() + "' has the case name '" + c.id + "' of training[" +
                               std::to_string(k) + "] ('" + tr[k]["image"].get<std::string>() +
                               "'), in another folder; expected unique file names (the case name, the file name "
                               "without its extension, names the case's cache file, fold entry and prediction)");
    }
    info.training.push_back(std::move(c));
  }
  if (j.contains("test")) {
    const json& te = j["test"];
    if (!te.is_array()) fail("test", "expected a list of image paths");
    for (size_t i = 0; i < te.size(); ++i) {
      std::string key = "test[" + std::to_string(i) + "]";
      if (!te[i].is_string()) fail(key, "expected a path string relative to the dataset directory");
      std::string rel = te[i].get<std::string>();
      if (rel.find('\0') != std::string::npos)
        fail(key, "'" + rel.substr(0, rel.find('\0')) + "\\u0000...' holds a NUL character; expected a path");
      std::string path = resolve(dir, rel);
      if (!fs::is_regular_file(path)) fail(key, missing_file(rel, path));
      info.test.push_back(path);
    }
  }
  for (auto [key, n] :
       {std::pair<const char*, size_t>{"numTraining", info.training.size()}, {"numTest", info.test.size()}}) {
    if (!j.contains(key)) continue;
    if (!j[key].is_number_integer()) fail(key, "expected an integer");
    if (j[key].get<int64_t>() != static_cast<int64_t>(n))
      fail(key,
           "says " + std::to_string(j[key].get<int64_t>()) + " but the list holds " + std::to_string(n) + " cases");
  }
  return info;
}

// ---- cases -------------------------------------------------------------------------------------------------------

Case load_case(const DatasetInfo& info, size_t i) {
  if (i >= info.training.size())
    throw std::out_of_range(info.json_path + ": case " + std::to_string(i) + " requested, the dataset has " +
                            std::to_string(info.training.size()));
  const DatasetCase& dc = info.training[i];
  Image img = read_channel_images(dc.image_paths);  // nnU-Net v2: one file per channel
  const std::string& image_path = dc.image_paths[0];
  if (img.data.dim(3) != info.num_channels())
    throw std::runtime_error(image_path + ": has " + std::to_string(img.data.dim(3)) + " channels but '" +
                             (info.format == "nnunetv2" ? "channel_names" : "modality") + "' in " + info.json_path +
                             " lists " + std::to_string(info.num_channels()));
  Image lab = read_image(dc.label_path);
  check_exact_labels(lab);
  if (dc.page >= 0) {  // one page of the stacks
    for (Image* im : {&img, &lab}) {
      if (dc.page >= im->data.dim(0))
        throw std::runtime_error(im->path + ": has " + std::to_string(im->data.dim(0)) + " pages, case " + dc.id +
                                 " is page " + std::to_string(dc.page));
      const int64_t plane = im->data.numel() / im->data.dim(0);
      Tensor one = Tensor::empty({1, im->data.dim(1), im->data.dim(2), im->data.dim(3)});
      std::copy_n(im->data.data<float>() + dc.page * plane, plane, one.data<float>());
      im->data = one;
    }
  }
  const Shape& is = img.data.shape();
  const Shape& ls = lab.data.shape();
  if (ls[3] != 1) throw std::runtime_error(dc.label_path + ": a label map must have one channel, got " + shape_str(ls));
  if (std::string why = grid_mismatch(lab, img); !why.empty())
    throw std::runtime_error(dc.label_path + ": label " + why +
                             " (the image); a label map must lie on its image's grid");
  Case c;
  c.id = dc.id;
  c.spacing = img.spacing;
  c.image = img.data;
  c.label = Tensor::empty({is[0], is[1], is[2]}, DType::u8);
  const float* src = lab.data.data<float>();
  uint8_t* dst = c.label.data<uint8_t>();
  const int64_t n = c.label.numel();
  const float classes = static_cast<float>(info.num_classes());
  // the readers have already refused NaN and infinite voxels; a float label map must also hold whole class indices.
  const float divisor = static_cast<float>(info.label_divisor);
  for (int64_t v = 0; v < n; ++v) {
    float x = src[v] / divisor;
    if (!(x >= 0 && x < classes && x == std::floor(x))) {
      char value[32];
      std::snprintf(value, sizeof value, "%.9g", src[v]);  // 1.5 as "1.5", 1e20 as "1e+20"
      throw std::runtime_error(dc.label_path + ": voxel " + std::to_string(v) + " has label value " + value +
                               (info.format == "isbi2012"
                                    ? std::string("; ISBI 2012 labels are 0 (membrane) or 255 (cell)")
                                    : "; 'labels' in " + info.json_path + " allows the integers 0.." +
                                          std::to_string(info.num_classes() - 1)));
    }
    dst[v] = static_cast<uint8_t>(x);
  }
  return c;
}

// ---- intensity normalisation -------------------------------------------------------------------------------------

double percentile(std::vector<float>& values, double q) {
  if (values.empty()) throw std::invalid_argument("percentile of an empty set");
  double pos = std::clamp(q, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos));
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(lo), values.end());
  double a = values[lo];
  if (lo + 1 >= values.size()) return a;
  double b = *std::min_element(values.begin() + static_cast<std::ptrdiff_t>(lo) + 1, values.end());
  return a + (b - a) * (pos - static_cast<double>(lo));
}

std::string NormalizationPlan::to_json() const {
  json j = json::array();
  for (const auto& c : channels) {
    if (c.ct)
      j.push_back({{"scheme", "ct"}, {"mean", c.mean}, {"std", c.std}, {"lower", c.lower}, {"upper", c.upper}});
    else
      j.push_back({{"scheme", "zscore"}});
  }
  return j.dump();
}

NormalizationPlan NormalizationPlan::from_json(const std::string& text) {
  NormalizationPlan plan;
  try {
    json j = json::parse(text);
    if (!j.is_array()) throw std::runtime_error("expected a list of channels");
    for (size_t i = 0; i < j.size(); ++i) {
      const json& c = j[i];
      const std::string where = "channel " + std::to_string(i);
      // A named member of the channel's object, of the expected JSON type, with a message naming both.
      const auto member = [&](const char* key, bool number) -> const json& {
        if (!c.is_object() || !c.contains(key))
          throw std::runtime_error(where + ": no \"" + key + "\"; expected " +
                                   (number ? "a number" : "\"ct\" or \"zscore\""));
        const json& v = c[key];
        if (number ? !v.is_number() : !v.is_string())
          throw std::runtime_error(where + ": \"" + key + "\" is " + v.dump() + "; expected " +
                                   (number ? "a number" : "\"ct\" or \"zscore\""));
        return v;
      };
      ChannelNormalization n;
      std::string scheme = member("scheme", false).get<std::string>();
      if (scheme == "ct") {
        n.ct = true;
        n.mean = member("mean", true).get<double>();
        n.std = member("std", true).get<double>();
        n.lower = member("lower", true).get<double>();
        n.upper = member("upper", true).get<double>();
      } else if (scheme != "zscore") {
        throw std::runtime_error("unknown scheme '" + scheme + "' (expected ct or zscore)");
      }
      plan.channels.push_back(n);
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("normalisation plan: ") + e.what());
  }
  return plan;
}

std::string ChannelNormalization::ct_problem() const {
  if (std::isfinite(mean) && std::isfinite(std) && std > 0 && std::isfinite(lower) && std::isfinite(upper) &&
      lower < upper && std::abs(mean) < 1e30 && std < 1e30)
    return "";
  // lower == upper clips every voxel to one value: no image would keep any contrast.
  return "ct mean " + real_text(mean) + ", std " + real_text(std) + ", lower " + real_text(lower) + ", upper " +
         real_text(upper) + "; expected finite values, std > 0, lower < upper and magnitudes below 1e30";
}

NormalizationPlan plan_normalization(const DatasetInfo& info, const std::vector<Case>& training_cases,
                                     int ct_sample_stride) {
  check_arg(ct_sample_stride >= 1, "plan_normalization: ct_sample_stride must be >= 1");
  NormalizationPlan plan;
  const int C = info.num_channels();
  for (int ch = 0; ch < C; ++ch) {
    ChannelNormalization n;
    n.ct = is_ct(info.modalities[static_cast<size_t>(ch)]);
    if (n.ct) {
      std::vector<float> voxels;
      for (const Case& c : training_cases) {
        check_arg(c.image.dim(3) == C,
                  c.id + ": image has " + std::to_string(c.image.dim(3)) + " channels, expected " + std::to_string(C));
        const float* img = c.image.data<float>();
        const uint8_t* lab = c.label.data<uint8_t>();
        int64_t k = 0;
        for (int64_t v = 0, nv = c.label.numel(); v < nv; ++v)
          if (lab[v] > 0 && (k++ % ct_sample_stride) == 0) voxels.push_back(img[v * C + ch]);
      }
      if (voxels.empty())
        throw std::runtime_error(info.json_path + ": channel " + std::to_string(ch) +
                                 " is CT, but the training labels have no foreground voxels to take statistics from");
      double sum = 0, sq = 0;
      for (float x : voxels) sum += x;
      n.mean = sum / static_cast<double>(voxels.size());
      for (float x : voxels) sq += (x - n.mean) * (x - n.mean);
      n.std = std::sqrt(sq / static_cast<double>(voxels.size()));
      n.lower = percentile(voxels, 0.5);
      n.upper = percentile(voxels, 99.5);
      // One foreground value everywhere (std 0), or magnitudes no f32 normalisation survives: a model trained on
      // them could not be used (unet_infer refuses such statistics), so the run stops here.
      if (std::string why = n.ct_problem(); !why.empty())
        throw std::runtime_error(info.json_path + ": channel " + std::to_string(ch) +
                                 " is CT, and the training cases' foreground voxels give " + why +
                                 " (the labelled voxels' intensities, over " + std::to_string(voxels.size()) +
                                 " samples)");
    }
    plan.channels.push_back(n);
  }
  return plan;
}

void normalize_image(Tensor& image, const NormalizationPlan& plan) {
  check_arg(image.rank() == 4 && image.dtype() == DType::f32,
            "normalize_image: expected an f32 [Z, Y, X, C] image, got " + image.describe());
  const int64_t C = image.dim(3), nv = image.numel() / C;
  check_arg(static_cast<int64_t>(plan.channels.size()) == C, "normalize_image: the plan has " +
                                                                 std::to_string(plan.channels.size()) +
                                                                 " channels, the image " + image.describe());
  float* x = image.data<float>();
  std::vector<uint8_t>
      mask;  // nnU-Net's non-zero mask: any channel non-zero; built only when a z-score channel needs it
  int64_t mask_count = 0;
  for (int64_t ch = 0; ch < C; ++ch) {
    const ChannelNormalization& n = plan.channels[static_cast<size_t>(ch)];
    if (n.ct) {
      const double inv = 1.0 / std::max(n.std, 1e-8);
      for (int64_t v = 0; v < nv; ++v) {
        double y = std::clamp(static_cast<double>(x[v * C + ch]), n.lower, n.upper);
        x[v * C + ch] = static_cast<float>((y - n.mean) * inv);
      }
      continue;
    }
    if (mask.empty()) {
      mask.assign(static_cast<size_t>(nv), 0);
      for (int64_t v = 0; v < nv; ++v) {
        bool any = false;
        for (int64_t c = 0; c < C; ++c) any = any || x[v * C + c] != 0.0f;
        mask[static_cast<size_t>(v)] = any;
        mask_count += any;
      }
      if (mask_count == 0) return;  // an all-zero image stays zero
    }
    double sum = 0, sq = 0;
    for (int64_t v = 0; v < nv; ++v)
      if (mask[static_cast<size_t>(v)]) sum += x[v * C + ch];
    const double mean = sum / static_cast<double>(mask_count);
    for (int64_t v = 0; v < nv; ++v)
      if (mask[static_cast<size_t>(v)]) sq += (x[v * C + ch] - mean) * (x[v * C + ch] - mean);
    const double inv = 1.0 / (std::sqrt(sq / static_cast<double>(mask_count)) + 1e-8);
    for (int64_t v = 0; v < nv; ++v)
      x[v * C + ch] = mask[static_cast<size_t>(v)] ? static_cast<float>((x[v * C + ch] - mean) * inv) : 0.0f;
  }
}

// ---- padding -----------------------------------------------------------------------------------------------------

void pad_case_to(Case& c, const std::array<int64_t, 3>& min_size) {
  const Shape& s = c.image.shape();
  const int64_t C = s[3];
  std::array<int64_t, 3> out{}, before{};
  bool needed = false;
  for (int a = 0; a < 3; ++a) {
    out[a] = std::max(s[a], min_size[a]);
    before[a] = (out[a] - s[a]) / 2;
    needed = needed || out[a] != s[a];
  }
  if (!needed) return;
  Tensor img = Tensor::zeros({out[0], out[1], out[2], C});
  Tensor lab = Tensor::zeros({out[0], out[1], out[2]}, DType::u8);
  const float* si = c.image.data<float>();
  const uint8_t* sl = c.label.data<uint8_t>();
  float* di = img.data<float>();
  uint8_t* dl = lab.data<uint8_t>();
  for (int64_t z = 0; z < s[0]; ++z)
    for (int64_t y = 0; y < s[1]; ++y) {
      int64_t src = z * s[1] + y, dst = ((z + before[0]) * out[1] + y + before[1]) * out[2] + before[2];
      std::memcpy(di + dst * C, si + src * s[2] * C, static_cast<size_t>(s[2] * C) * sizeof(float));
      std::memcpy(dl + dst, sl + src * s[2], static_cast<size_t>(s[2]));
    }
  if (c.unpadded_extent[0] == 0) c.unpadded_extent = {s[0], s[1], s[2]};  // padded again: from the first extent
  for (int a = 0; a < 3; ++a) c.pad_before[a] += before[a];
  c.image = img;  // (s is c.image's shape: used up before this)
  c.label = lab;
}

Case unpadded(const Case& c) {
  const std::array<int64_t, 3>& e = c.unpadded_extent;
  if (e[0] == 0) return c;
  const Shape& s = c.image.shape();
  const int64_t C = s[3];
  Case out = c;
  out.image = Tensor::empty({e[0], e[1], e[2], C});
  out.label = Tensor::empty({e[0], e[1], e[2]}, DType::u8);
  out.pad_before = {};
  out.unpadded_extent = {};
  for (int64_t z = 0; z < e[0]; ++z)
    for (int64_t y = 0; y < e[1]; ++y) {
      const int64_t dst = z * e[1] + y,
                    src = ((z + c.pad_before[0]) * s[1] + y + c.pad_before[1]) * s[2] + c.pad_before[2];
      std::memcpy(out.image.data<float>() + dst * e[2] * C, c.image.data<float>() + src * C,
                  static_cast<size_t>(e[2] * C) * sizeof(float));
      std::memcpy(out.label.data<uint8_t>() + dst * e[2], c.label.data<uint8_t>() + src, static_cast<size_t>(e[2]));
    }
  return out;
}

// ---- cross-validation --------------------------------------------------------------------------------------------

FoldSplit kfold_split(size_t n, int fold, int folds, uint64_t seed) {
  check_arg(folds >= 2, "kfold_split: need at least 2 folds, got " + std::to_string(folds));
  check_arg(fold >= 0 && fold < folds,
            "kfold_split: fold " + std::to_string(fold) + " is outside 0.." + std::to_string(folds - 1));
  check_arg(n >= static_cast<size_t>(folds),
            "kfold_split: " + std::to_string(n) + " cases cannot be split into " + std::to_string(folds) + " folds");
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t(0));
  Rng rng(seed);
  for (size_t i = n - 1; i > 0; --i)
    std::swap(order[i], order[static_cast<size_t>(rng.below(static_cast<int64_t>(i + 1)))]);
  size_t begin = n * static_cast<size_t>(fold) / static_cast<size_t>(folds);
  size_t end = n * static_cast<size_t>(fold + 1) / static_cast<size_t>(folds);
  FoldSplit split;
  for (size_t i = 0; i < n; ++i) (i >= begin && i < end ? split.val : split.train).push_back(order[i]);
  std::sort(split.train.begin(), split.train.end());
  std::sort(split.val.begin(), split.val.end());
  return split;
}

// ---- patch sampling ----------------------------------------------------------------------------------------------

namespace {
// The seed of sample g of step `step`'s global batch: splitmix64 steps over the three keys (Rng spreads it further).
uint64_t sample_seed(uint64_t seed, int64_t step, int64_t g) {
  auto mix = [](uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  return mix(mix(mix(seed) ^ static_cast<uint64_t>(step)) ^ static_cast<uint64_t>(g));
}
}  // namespace

PatchSampler::PatchSampler(const std::vector<Case>& cases, std::vector<size_t> which, PatchSamplerOptions options)
    : opt_(options) {
  check_arg(!cases.empty(), "PatchSampler: no cases");
  for (int64_t p : opt_.patch) check_arg(p >= 1, "PatchSampler: patch size must be positive");
  check_arg(opt_.batch >= 1, "PatchSampler: batch must be >= 1, got " + std::to_string(opt_.batch));
  check_arg(opt_.foreground_prob >= 0 && opt_.foreground_prob <= 1, "PatchSampler: foreground_prob must be in [0, 1]");
  opt_.augment.check();
  check_arg(opt_.max_locations_per_class >= 1, "PatchSampler: max_locations_per_class must be >= 1");
  check_arg(opt_.ranks >= 1 && opt_.rank >= 0 && opt_.rank < opt_.ranks,
            "PatchSampler: rank " + std::to_string(opt_.rank) + " of " + std::to_string(opt_.ranks));
  if (which.empty()) {
    which.resize(cases.size());
    std::iota(which.begin(), which.end(), size_t(0));
  }
  for (size_t idx : which) {
    check_arg(idx < cases.size(), "PatchSampler: case index " + std::to_string(idx) + " out of range");
    const Case& c = cases[idx];
    check_arg(c.image.rank() == 4 && c.image.dtype() == DType::f32, c.id + ": expected an f32 [Z, Y, X, C] image");
    check_arg(c.label.rank() == 3 && c.label.dtype() == DType::u8, c.id + ": expected a u8 [Z, Y, X] label");
    for (int a = 0; a < 3; ++a) check_arg(c.image.dim(a) == c.label.dim(a), c.id + ": image and label grids differ");
    if (channels_ == 0) channels_ = static_cast<int>(c.image.dim(3));
    check_arg(c.image.dim(3) == channels_, c.id + ": channel count differs from the other cases");

    // Foreground locations per class, at most max_locations_per_class each, evenly spread over the voxel order:
    // voxel ordinal o of a class with n voxels is kept when (o * k) mod n < k, which keeps exactly k of them.
    CaseRef ref{&c, idx, {}};
    const uint8_t* lab = c.label.data<uint8_t>();
    const int64_t nv = c.label.numel();
    std::array<int64_t, 256> count{};
    for (int64_t v = 0; v < nv; ++v) ++count[lab[v]];
    std::array<int64_t, 256> seen{};
    std::array<int, 256> slot{};
    for (int cls = 1; cls < 256; ++cls) {
      slot[cls] = -1;
      if (count[cls] == 0) continue;
      slot[cls] = static_cast<int>(ref.fg.size());
      ref.fg.emplace_back();
      ref.fg.back().reserve(static_cast<size_t>(std::min<int64_t>(count[cls], opt_.max_locations_per_class)));
    }
    for (int64_t v = 0; v < nv; ++v) {
      int cls = lab[v];
      if (cls == 0) continue;
      int64_t n = count[cls], k = std::min<int64_t>(n, opt_.max_locations_per_class);
      if ((seen[cls]++ * k) % n < k) ref.fg[static_cast<size_t>(slot[cls])].push_back(v);
    }
    refs_.push_back(std::move(ref));
  }
}

namespace {

// The region of `size` voxels at `origin` (may stick out of the volume: zeros and background there) of a case.
Sample cut(const Case& c, const std::array<int64_t, 3>& origin, const std::array<int64_t, 3>& size) {
  const int64_t C = c.image.dim(3);
  Sample out(size, C);
  const Shape& s = c.label.shape();
  const float* image = c.image.data<float>();
  const uint8_t* label = c.label.data<uint8_t>();
  for (int64_t z = 0; z < size[0]; ++z) {
    const int64_t sz = origin[0] + z;
    if (sz < 0 || sz >= s[0]) continue;
    for (int64_t y = 0; y < size[1]; ++y) {
      const int64_t sy = origin[1] + y;
      if (sy < 0 || sy >= s[1]) continue;
      // The run of x inside the volume.
      const int64_t x0 = std::max<int64_t>(0, -origin[2]), x1 = std::min<int64_t>(size[2], s[2] - origin[2]);
      if (x0 >= x1) continue;
      const int64_t src = (sz * s[1] + sy) * s[2] + origin[2], dst = (z * size[1] + y) * size[2];
      std::copy(image + (src + x0) * C, image + (src + x1) * C, out.image.begin() + (dst + x0) * C);
      std::copy(label + src + x0, label + src + x1, out.label.begin() + dst + x0);
    }
  }
  return out;
}

}  // namespace

PatchSampler::Drawn PatchSampler::sample(int64_t step, int64_t b) const {
  const int64_t P[3] = {opt_.patch[0], opt_.patch[1], opt_.patch[2]};
  Rng rng(sample_seed(opt_.seed, step, opt_.rank * opt_.batch + b));
  const CaseRef& ref = refs_[static_cast<size_t>(rng.below(static_cast<int64_t>(refs_.size())))];
  const Shape& s = ref.c->label.shape();
  const bool foreground = rng.uniform() < opt_.foreground_prob && !ref.fg.empty();
  std::array<int64_t, 3> origin{}, voxel{};
  if (foreground) {
    const auto& locs = ref.fg[static_cast<size_t>(rng.below(static_cast<int64_t>(ref.fg.size())))];
    const int64_t v = locs[static_cast<size_t>(rng.below(static_cast<int64_t>(locs.size())))];
    voxel = {v / (s[1] * s[2]), (v / s[2]) % s[1], v % s[2]};
  }
  for (int a = 0; a < 3; ++a) {
    // Valid corners: the patch inside the volume, or (volume smaller than patch) the volume centred in the patch.
    const int64_t need = std::max<int64_t>(0, P[a] - s[a]);
    const int64_t lb = -(need / 2), ub = s[a] + need / 2 + need % 2 - P[a];
    origin[static_cast<size_t>(a)] =
        foreground ? std::clamp(voxel[static_cast<size_t>(a)] - P[a] / 2, lb, ub) : lb + rng.below(ub - lb + 1);
  }
  Drawn d{Sample(), ref.index, origin, draw_rotation(opt_.augment, rng), {}};
  if (d.rotation == std::array<double, 3>{0, 0, 0}) {
    d.sample = cut(*ref.c, origin, opt_.patch);
  } else {
    // A region centred on the patch, large enough for the rotated patch, rotated about the common centre.
    const std::array<double, 9> R = rotation_matrix(d.rotation);
    const std::array<int64_t, 3> extent = rotated_extent(R, opt_.patch);
    std::array<int64_t, 3> region{};
    for (int a = 0; a < 3; ++a)
      region[static_cast<size_t>(a)] = origin[static_cast<size_t>(a)] - (extent[static_cast<size_t>(a)] - P[a]) / 2;
    d.sample = rotate_crop(cut(*ref.c, region, extent), R, opt_.patch);
  }
  const AugmentOptions& a = opt_.augment;
  if (a.on_device && !a.dle_isbi) {
    // The parameters only (the same draws as augment()'s): io::augment_batch applies them.
    d.augment = draw_augment(a, rng);
  } else {
    d.augment = a.dle_isbi ? dle_isbi_augment(d.sample, a.flip_prob, a.zoom_prob, a.brightness_prob, a.classes, rng)
                           : augment(d.sample, a, rng);
  }
  return d;
}

PatchBatch PatchSampler::empty_batch() const {
  const int64_t B = opt_.batch;
  PatchBatch out;
  const Shape image{B, opt_.patch[0], opt_.patch[1], opt_.patch[2], channels_},
      label{B, opt_.patch[0], opt_.patch[1], opt_.patch[2]};
  out.image = opt_.pinned ? Tensor::empty_pinned(image) : Tensor::empty(image);
  out.label = opt_.pinned ? Tensor::empty_pinned(label, DType::i32) : Tensor::empty(label, DType::i32);
  out.case_index.resize(static_cast<size_t>(B));
  out.origin.resize(static_cast<size_t>(B));
  out.rotation.resize(static_cast<size_t>(B));
  out.augment.resize(static_cast<size_t>(B));
  return out;
}

void PatchSampler::put(PatchBatch& batch, int64_t b, const Drawn& d) {
  const size_t i = static_cast<size_t>(b);
  std::copy(d.sample.image.begin(), d.sample.image.end(),
            batch.image.data<float>() + b * static_cast<int64_t>(d.sample.image.size()));
  std::copy(d.sample.label.begin(), d.sample.label.end(),
            batch.label.data<int32_t>() + b * static_cast<int64_t>(d.sample.label.size()));
  batch.case_index[i] = d.case_index;
  batch.origin[i] = d.origin;
  batch.rotation[i] = d.rotation;
  batch.augment[i] = d.augment;
}

PatchBatch PatchSampler::batch(int64_t step) const {
  PatchBatch out = empty_batch();
  parallel_for(opt_.batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) put(out, b, sample(step, b));
  });
  return out;
}

PatchBatch PatchSampler::next() {
  return batch(step_++);
}

}  // namespace unet::io
