// preprocess_dataset (io/preprocess.h): fingerprint, target spacing, then each case from the cache or made again.
#include "io/preprocess.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>

#include "engine/comm.h"
#include "io/atomic_file.h"
#include "io/image.h"
#include "io/json.h"
#include "io/resample.h"
#include "io/safetensors.h"

namespace unet::io {

namespace fs = std::filesystem;

namespace {
// The digest of a cache file's tensors, kept in its metadata: bytes changed inside them (a damaged disk, a partial
// restore) are found, and the case preprocessed again from its files.
std::string tensors_digest(const Tensor& image, const Tensor& label) {
  return std::to_string(content_digest(image.raw(), image.nbytes())) + " " +
         std::to_string(content_digest(label.raw(), label.nbytes()));
}

// 2: each entry of fingerprint.json carries a checksum, names are escaped to UTF-8, and the cases are
// CASE.preprocessed.safetensors (caches of format 1 are made again, with one warning). 3: each case file holds the
// digest of its tensors. 4: the stamps hold each file's status-change time and inode too.
constexpr const char* kFormat = "unet preprocessed case 4";

// The cache file of case `id`. Its own ending, so that a cache sharing a directory with a run (data.cache =
// output.dir, or another run's output.dir) never takes a run's file: a case named "checkpoint" or "model" would
// otherwise be checkpoint.safetensors / model.safetensors, and the cache and the run would overwrite each other.
// A case's cache file: ID.preprocessed.safetensors, written first as .tmpPID.ID.preprocessed.safetensors. An ID too
// long for that name within NAME_MAX (255 bytes) keeps its first 160 bytes and a hash of the whole.
fs::path case_file(const fs::path& dir, const std::string& id) {
  std::string name = id;
  if (name.size() > 200) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (unsigned char ch : id) h = (h ^ ch) * 1099511628211ull;
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
    name = id.substr(0, 160) + "-" + hex;
  }
  return dir / (name + ".preprocessed.safetensors");
}

// path:size:mtime:ctime:inode of each source file, as git's index stamps files: any change to a file changes it,
// even a rewrite of the same size whose modification time was put back (touch -r, cp -p, rsync -t, tar x of another
// version), since the status-change time (ctime) cannot be set and a copy is a new inode.
std::string source_stamp(const DatasetCase& c) {
  std::string s;
  std::vector<std::string> files = c.image_paths;
  files.push_back(c.label_path);
  for (const std::string& p : files) {
    struct stat st {};
    const bool ok = ::stat(p.c_str(), &st) == 0;
    const auto ns = [](const timespec& t) { return std::to_string(t.tv_sec) + "." + std::to_string(t.tv_nsec); };
    s +=
        p + ":" +
        (ok ? std::to_string(st.st_size) + ":" + ns(st.st_mtim) + ":" + ns(st.st_ctim) + ":" + std::to_string(st.st_ino)
            : std::string("missing")) +
        ";";
  }
  return json_safe(s);
}

std::string spacing_text(const std::array<double, 3>& s) {
  char b[96];
  std::snprintf(b, sizeof b, "%.17g,%.17g,%.17g", s[0], s[1], s[2]);
  return b;
}

struct Geometry {
  std::array<double, 3> spacing;
  std::array<int64_t, 3> size;  // after cropping
};

// The checksum of a fingerprint entry (FNV-1a, 64 bits, over its stamp, spacing and size as text): an entry edited by
// hand or damaged on disk (a spacing changed to 3, 3, 3 with the stamp kept) no longer matches it, and its case is
// preprocessed again instead of planning the target spacing from a value no file holds.
std::string entry_check(const std::string& stamp, const Geometry& g) {
  const std::string text = stamp + "|" + spacing_text(g.spacing) + "|" + std::to_string(g.size[0]) + "," +
                           std::to_string(g.size[1]) + "," + std::to_string(g.size[2]);
  uint64_t h = 1469598103934665603ull;
  for (const char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
  return b;
}

// The geometry fingerprint.json records for a case whose files are unchanged (same stamp), or nothing: no entry, a
// stale one, or a damaged one (not an object, a missing key, a value of the wrong type or out of range, values that
// do not match the entry's "check"), which is said in `warning` and makes the case be preprocessed again, like a
// stale one.
std::optional<Geometry> known_geometry(const nlohmann::json& cases, const std::string& id, const std::string& stamp,
                                       std::string* warning) {
  const auto it = cases.find(id);
  if (it == cases.end()) return std::nullopt;
  const nlohmann::json& k = *it;
  std::string why;
  if (!k.is_object())
    why = "is not an object";
  else if (!k.contains("stamp") || !k["stamp"].is_string())
    why = "has no string \"stamp\"";
  else if (k["stamp"].get<std::string>() != stamp)
    return std::nullopt;  // stale: a source file changed
  Geometry g{};
  const auto three = [&](const char* key, bool integer) {
    if (!why.empty()) return;
    const nlohmann::json* v = k.contains(key) ? &k[key] : nullptr;
    bool ok = v && v->is_array() && v->size() == 3;
    for (size_t a = 0; ok && a < 3; ++a) {
      const nlohmann::json& x = (*v)[a];
      if (integer) {
        ok = x.is_number_integer() && x.get<int64_t>() >= 1;
        if (ok) g.size[a] = x.get<int64_t>();
      } else {
        ok = x.is_number() && std::isfinite(x.get<double>()) && x.get<double>() > 0;
        if (ok) g.spacing[a] = x.get<double>();
      }
    }
    if (!ok) why = std::string("has no \"") + key + "\" of three " + (integer ? "integers >= 1" : "finite numbers > 0");
  };
  three("spacing", false);
  three("size", true);
  if (why.empty() && (!k.contains("check") || !k["check"].is_string()))
    why = "has no string \"check\"";
  else if (why.empty() && k["check"].get<std::string>() != entry_check(stamp, g))
    why = "does not match its \"check\" (edited or damaged: its spacing or size is not what was measured)";
  if (why.empty()) return g;
  *warning = "entry \"" + id + "\" " + why + "; the case is preprocessed again";
  return std::nullopt;
}

// A case loaded and cropped to its non-zero box.
Case load_cropped(const DatasetInfo& info, size_t i) {
  Case c = load_case(info, i);
  const Box box = nonzero_box(c.image);
  c.image = crop(c.image, box);
  c.label = crop(c.label, box);
  return c;
}

// Resampled to `target` when its spacing differs by more than 0.1%; returns whether it was.
// Whether a case at `spacing` is resampled to `target` (a spacing more than 0.1% off along an axis).
bool needs_resampling(const std::array<double, 3>& spacing, const std::array<double, 3>& target) {
  bool differs = false;
  for (size_t a = 0; a < 3; ++a) differs = differs || std::abs(spacing[a] - target[a]) > 1e-3 * target[a];
  return differs;
}

// The grid of a case cropped to `size` at `spacing` once preprocessed for `target`.
std::array<int64_t, 3> preprocessed_grid(const std::array<int64_t, 3>& size, const std::array<double, 3>& spacing,
                                         const std::array<double, 3>& target) {
  return needs_resampling(spacing, target) ? resampled_size(size, spacing, target) : size;
}

bool resample_case(Case& c, const std::array<double, 3>& target) {
  if (!needs_resampling(c.spacing, target)) return false;
  const std::array<int64_t, 3> size =
      resampled_size({c.label.dim(0), c.label.dim(1), c.label.dim(2)}, c.spacing, target);
  const int separate = separate_axis(c.spacing, target);
  c.image = resize_image(c.image, size, image_orders(separate));
  c.label = resize_label(c.label, size, label_orders(separate));
  c.spacing = target;
  return true;
}

}  // namespace

PreprocessedDataset preprocess_dataset(const DatasetInfo& info, const PreprocessOptions& o) {
  const size_t n = info.training.size();
  const bool cache = !o.cache_dir.empty();
  const fs::path dir = o.cache_dir;
  const std::string fingerprint_path = (dir / "fingerprint.json").string();
  nlohmann::json fingerprint = {{"format", kFormat}, {"cases", nlohmann::json::object()}};
  PreprocessedDataset out;
  // A FIFO there would block the read, a directory fail it, and either the write at the end (after the work).
  if (std::string why = cache ? regular_file_problem(fingerprint_path) : ""; !why.empty())
    throw std::runtime_error(fingerprint_path + ": " + why + "; expected the cache's fingerprint file (remove it, or " +
                             "choose another data.cache)");
  if (cache && fs::exists(fingerprint_path)) {
    const nlohmann::json old = nlohmann::json::parse(std::ifstream(fingerprint_path), nullptr, false);
    if (old.is_object() && old.contains("format") && old["format"] == kFormat && old.contains("cases") &&
        old["cases"].is_object())
      fingerprint = old;
    else  // rebuilt: every case is stale
      out.warnings.push_back(
          fingerprint_path + ": " +
          (old.is_discarded() ? "not valid JSON" : "not a fingerprint of format \"" + std::string(kFormat) + "\"") +
          "; every case is preprocessed again");
  }

  // 1. Each case's spacing and cropped size: from the fingerprint when its files are unchanged, else by loading it
  //    (kept in memory for step 3).
  std::vector<std::string> stamps(n), ids(n);  // as UTF-8 (json_safe)
  std::vector<Geometry> geometry(n);
  std::vector<std::optional<Case>> loaded(n);
  for (size_t i = 0; i < n; ++i) {
    const DatasetCase& dc = info.training[i];
    stamps[i] = source_stamp(dc);
    ids[i] = json_safe(dc.id);
    if (cache) {
      std::string warning;
      const std::optional<Geometry> known = known_geometry(fingerprint["cases"], ids[i], stamps[i], &warning);
      if (!warning.empty()) out.warnings.push_back(fingerprint_path + ": " + warning);
      if (known) {
        geometry[i] = *known;
        continue;
      }
    }
    loaded[i] = load_cropped(info, i);
    const Case& c = *loaded[i];
    geometry[i] = {c.spacing, {c.label.dim(0), c.label.dim(1), c.label.dim(2)}};
    fingerprint["cases"][ids[i]] = {{"stamp", stamps[i]},
                                    {"spacing", geometry[i].spacing},
                                    {"size", geometry[i].size},
                                    {"check", entry_check(stamps[i], geometry[i])}};
  }

  // 2. The plan, from every case (nnU-Net's dataset fingerprint), not the fold's training cases.
  std::vector<std::array<double, 3>> spacings;
  std::vector<std::array<int64_t, 3>> sizes;
  for (size_t i = 0; i < n; ++i) {
    spacings.push_back(geometry[i].spacing);
    sizes.push_back(geometry[i].size);
  }
  out.target = target_spacing(spacings, sizes);
  const std::string target = spacing_text(out.target);

  // 3. Each case: its cache file when made from the same files for the same target, else preprocessed (and cached).
  for (size_t i = 0; i < n; ++i) {
    const DatasetCase& dc = info.training[i];
    const std::string path = case_file(dir, dc.id).string();
    if (cache && !loaded[i] && fs::exists(path)) {
      const SafetensorsContent f = read_safetensors(path);
      const auto entry = [&](const char* key) {
        const auto it = f.metadata.find(key);
        return it == f.metadata.end() ? std::string() : it->second;
      };
      if (entry("format") == kFormat && entry("stamp") == stamps[i] && entry("target") == target) {
        Case c;
        c.id = dc.id;
        c.image = f.get("image");
        c.label = f.get("label");
        if (c.image.rank() != 4 || c.image.dtype() != DType::f32 || c.label.rank() != 3 ||
            c.label.dtype() != DType::u8 || c.image.dim(3) != info.num_channels())
          throw std::runtime_error(path + ": not a preprocessed case of " + info.json_path + " (image " +
                                   c.image.describe() + ", label " + c.label.describe() +
                                   "); delete the cache directory " + o.cache_dir);
        for (int a = 0; a < 3; ++a)
          if (c.image.dim(a) != c.label.dim(a))
            throw std::runtime_error(path + ": image and label grids differ; delete the cache directory " +
                                     o.cache_dir);
        // Made when dataset.json listed more classes: preprocessed again from its files, whose labels are checked
        // against the classes listed now (an error naming the label file).
        const uint8_t* l = c.label.data<uint8_t>();
        const bool labels_valid =
            std::all_of(l, l + c.label.numel(), [&](uint8_t v) { return v < info.num_classes(); });
        // A value that is not finite was never written by the preprocessing (its cases are checked): the file is
        // damaged, and the case is preprocessed again from its files.
        const bool finite = nonfinite_problem(c.image).empty();
        if (!finite)
          out.warnings.push_back(path + ": holds values that are not finite (a damaged cache file); case " + dc.id +
                                 " is preprocessed again from its files");
        // Its grid must be the one the fingerprint's cropped size and spacing give for this target: another shape
        // of the same byte count would be the case's voxels scrambled.
        const std::array<int64_t, 3> grid{c.label.dim(0), c.label.dim(1), c.label.dim(2)};
        const std::array<int64_t, 3> expected = preprocessed_grid(geometry[i].size, geometry[i].spacing, out.target);
        const bool fits = grid == expected;
        const bool whole = entry("digest") == tensors_digest(c.image, c.label);
        if (!whole && finite && fits)  // (one warning per file)
          out.warnings.push_back(path +
                                 ": its tensors do not match the digest written with them (a damaged cache "
                                 "file); case " +
                                 dc.id + " is preprocessed again from its files");
        if (!fits)
          out.warnings.push_back(path + ": holds a " + std::to_string(grid[0]) + " x " + std::to_string(grid[1]) +
                                 " x " + std::to_string(grid[2]) +
                                 " grid where the case's cropped size and spacing "
                                 "give " +
                                 std::to_string(expected[0]) + " x " + std::to_string(expected[1]) + " x " +
                                 std::to_string(expected[2]) + " (a damaged cache file); case " + dc.id +
                                 " is preprocessed again from its files");
        if (labels_valid && finite && fits && whole) {
          c.spacing = out.target;
          out.resampled += entry("resampled") == "1";
          ++out.from_cache;
          out.cases.push_back(std::move(c));
          continue;
        }
      }
    }
    Case c = loaded[i] ? std::move(*loaded[i]) : load_cropped(info, i);
    loaded[i].reset();
    bool resampled = false;
    try {  // a spacing that overflows or collapses the grid is the image file's fault: named
      resampled = resample_case(c, out.target);
    } catch (const std::exception& e) {
      throw std::runtime_error(dc.image_paths.at(0) + ": " + e.what());
    }
    out.resampled += resampled;
    if (cache && o.write_cache) {
      fs::create_directories(dir);
      write_safetensors(path, {{"image", c.image}, {"label", c.label}},
                        {{"format", kFormat},
                         {"stamp", stamps[i]},
                         {"target", target},
                         {"resampled", resampled ? "1" : "0"},
                         {"digest", tensors_digest(c.image, c.label)}});
    }
    out.cases.push_back(std::move(c));
  }
  if (cache && o.write_cache) {
    fs::create_directories(dir);
    write_file_atomically(fingerprint_path, fingerprint.dump(1) + "\n");
  }
  return out;
}

}  // namespace unet::io
