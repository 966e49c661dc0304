// preprocess_dataset (io/preprocess.h): the cache gives back bitwise what preprocessing makes, is used only while the
// source files and the plan are unchanged, and a damaged cache file is an error naming it.
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/nifti.h"
#include "io/preprocess.h"
#include "io/safetensors.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::io;
namespace fs = std::filesystem;

namespace {

bool same_cases(const PreprocessedDataset& a, const PreprocessedDataset& b) {
  if (a.cases.size() != b.cases.size()) return false;
  for (size_t i = 0; i < a.cases.size(); ++i) {
    const Case &x = a.cases[i], &y = b.cases[i];
    if (x.id != y.id || x.spacing != y.spacing || x.image.shape() != y.image.shape() ||
        x.image.to_vector() != y.image.to_vector() || x.label.to_vector() != y.label.to_vector())
      return false;
  }
  return true;
}

// A dataset of 3 mm cases plus one 2 mm case (resampled to the 3 mm target).
std::string mixed_dataset(const test::TempDir& tmp) {
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp / "data" +
                                           " --train 3 --test 0 --size 8,20,20 --spacing 3,1,1 --seed 1") == 0);
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp / "other" +
                                           " --train 1 --test 0 --size 12,20,20 --spacing 2,1,1 --seed 2") == 0);
  fs::copy_file(tmp / "other/imagesTr/case_000.nii.gz", tmp / "data/imagesTr/case_100.nii.gz");
  fs::copy_file(tmp / "other/labelsTr/case_000.nii.gz", tmp / "data/labelsTr/case_100.nii.gz");
  nlohmann::json j = nlohmann::json::parse(std::ifstream(tmp / "data/dataset.json"));
  j["training"].push_back({{"image", "./imagesTr/case_100.nii.gz"}, {"label", "./labelsTr/case_100.nii.gz"}});
  j["numTraining"] = 4;
  test::write_text(tmp / "data/dataset.json", j.dump(2));
  return tmp / "data";
}

}  // namespace

TEST_CASE("the preprocessing cache: bitwise the same cases, reused until a source file or the plan changes") {
  test::TempDir tmp("preprocess");
  const DatasetInfo info = read_msd_dataset(mixed_dataset(tmp));
  const PreprocessedDataset none = preprocess_dataset(info, {});
  CHECK(none.target == std::array<double, 3>{3, 1, 1});
  CHECK(none.resampled == 1);
  CHECK(none.cases[3].image.dim(0) == 8);  // 12 slices of 2 mm, 8 of 3 mm

  PreprocessOptions o;
  o.cache_dir = tmp / "cache";
  const PreprocessedDataset first = preprocess_dataset(info, o);
  CHECK(first.from_cache == 0);
  CHECK(same_cases(first, none));
  CHECK(fs::exists(tmp / "cache/fingerprint.json"));
  CHECK(fs::exists(tmp / "cache/case_100.preprocessed.safetensors"));
  const PreprocessedDataset second = preprocess_dataset(info, o);
  CHECK(second.from_cache == 4);
  CHECK(second.resampled == 1);
  CHECK(same_cases(second, none));

  // A source file touched: that case alone is made again.
  fs::last_write_time(tmp / "data/labelsTr/case_001.nii.gz",
                      fs::last_write_time(tmp / "data/labelsTr/case_001.nii.gz") + std::chrono::seconds(5));
  const PreprocessedDataset touched = preprocess_dataset(info, o);
  CHECK(touched.from_cache == 3);
  CHECK(same_cases(touched, none));

  // A source file rewritten with other labels, of the same size, its modification time put back (touch -r, cp -p,
  // rsync -t): that case made again, with the new labels. An uncompressed .nii keeps its size whatever it holds.
  {
    const fs::path gz = tmp / "data/labelsTr/case_002.nii.gz", raw = tmp / "data/labelsTr/case_002.nii";
    NiftiVolume v = read_nifti(gz.string());
    write_nifti(raw.string(), v.data, v);
    nlohmann::json j = nlohmann::json::parse(std::ifstream(tmp / "data/dataset.json"));
    for (auto& t : j["training"])
      if (t["label"] == "./labelsTr/case_002.nii.gz") t["label"] = "./labelsTr/case_002.nii";
    test::write_text(tmp / "data/dataset.json", j.dump(2));
    const DatasetInfo raw_info = read_msd_dataset(tmp / "data");
    REQUIRE(preprocess_dataset(raw_info, o).from_cache == 3);  // the label's path changed
    const auto size = fs::file_size(raw);
    const auto mtime = fs::last_write_time(raw);
    Tensor zeros = Tensor::zeros(v.data.shape(), v.data.dtype());
    write_nifti(raw.string(), zeros, v);
    fs::last_write_time(raw, mtime);
    REQUIRE(fs::file_size(raw) == size);
    const PreprocessedDataset rewritten = preprocess_dataset(raw_info, o);
    CHECK(rewritten.from_cache == 3);
    const std::vector<float> labels = rewritten.cases[2].label.to_vector();
    CHECK(std::all_of(labels.begin(), labels.end(), [](float l) { return l == 0; }));
  }

  // Another plan (a dataset of the 2 mm case alone sets the target): that case made again.
  DatasetInfo alone = info;
  alone.training = {info.training[3]};
  const PreprocessedDataset replanned = preprocess_dataset(alone, o);
  CHECK(replanned.target == std::array<double, 3>{2, 1, 1});
  CHECK(replanned.from_cache == 0);
  CHECK(replanned.resampled == 0);

  // A reader that must not write (ranks other than 0): reads what is valid, writes nothing.
  o.write_cache = false;
  fs::remove_all(tmp / "cache");
  CHECK(preprocess_dataset(info, o).from_cache == 0);
  CHECK_FALSE(fs::exists(tmp / "cache"));
}

TEST_CASE("a damaged cache file is an error naming it") {
  test::TempDir tmp("preprocess_damaged");
  const DatasetInfo info = read_msd_dataset(mixed_dataset(tmp));
  PreprocessOptions o;
  o.cache_dir = tmp / "cache";
  preprocess_dataset(info, o);
  fs::resize_file(tmp / "cache/case_001.preprocessed.safetensors", 40);
  CHECK_THROWS_WITH(preprocess_dataset(info, o), doctest::Contains("case_001.preprocessed.safetensors"));
}

namespace {
// Caches mixed_dataset's cases, replaces case `id`'s cache file by `damage` of its image and label (its stamp and the
// fingerprint still match), preprocesses again, checks that the case was made again from its files and the others
// read from the cache, and returns the one warning; `path` is the cache file.
std::string remade_warning(const std::string& id, const std::function<void(Tensor& image, Tensor& label)>& damage,
                           std::string* path) {
  test::TempDir tmp("preprocess_damaged");
  const DatasetInfo info = read_msd_dataset(mixed_dataset(tmp));
  PreprocessOptions o;
  o.cache_dir = tmp / "cache";
  const PreprocessedDataset first = preprocess_dataset(info, o);
  *path = tmp / ("cache/" + id + ".preprocessed.safetensors");
  const SafetensorsContent f = read_safetensors(*path);
  Tensor image = f.get("image").clone(), label = f.get("label").clone();
  damage(image, label);
  write_safetensors(*path, {{"image", image}, {"label", label}}, f.metadata);
  const PreprocessedDataset again = preprocess_dataset(info, o);
  CHECK(again.from_cache == 3);
  CHECK(same_cases(again, first));
  REQUIRE(again.warnings.size() == 1);
  return again.warnings[0];
}
}  // namespace

TEST_CASE("a cached case holding NaN is made again from its files, with a warning naming the cache file") {
  std::string path;  // one f32 of the image made NaN in place
  const std::string warning = remade_warning(
      "case_001", [](Tensor& image, Tensor&) { image.data<float>()[5] = std::numeric_limits<float>::quiet_NaN(); },
      &path);
  CHECK(warning == path + ": holds values that are not finite (a damaged cache file); case case_001 is " +
                       "preprocessed again from its files");
}

TEST_CASE("a cached case whose tensors changed on disk (labels zeroed, all still valid) is made again") {
  std::string path;
  const std::string warning = remade_warning(
      "case_001", [](Tensor&, Tensor& label) { label = Tensor::zeros(label.shape(), DType::u8); }, &path);
  CHECK(warning == path + ": its tensors do not match the digest written with them (a damaged cache file); case " +
                       "case_001 is preprocessed again from its files");
}

TEST_CASE("a cached case whose grid is not the one its fingerprint gives (the same bytes reshaped) is made again") {
  std::string path;
  Shape original, swapped;
  const std::string warning = remade_warning(
      "case_002",
      [&](Tensor& image, Tensor& label) {
        original = label.shape();
        swapped = {label.dim(1), label.dim(0), label.dim(2)};  // z and y exchanged: a scrambled volume
        REQUIRE(swapped[0] != swapped[1]);
        image = image.reshape({swapped[0], swapped[1], swapped[2], image.dim(3)});
        label = label.reshape(swapped);
      },
      &path);
  const auto size = [](const Shape& s) {
    return std::to_string(s[0]) + " x " + std::to_string(s[1]) + " x " + std::to_string(s[2]);
  };
  CHECK(warning == path + ": holds a " + size(swapped) + " grid where the case's cropped size and spacing give " +
                       size(original) + " (a damaged cache file); case case_002 is preprocessed again from its files");
}

TEST_CASE("a fingerprint.json that is a FIFO or a directory is an error naming it, before any case is read") {
  test::TempDir tmp("preprocess_fifo");
  const DatasetInfo info = read_msd_dataset(mixed_dataset(tmp));
  PreprocessOptions o;
  o.cache_dir = tmp / "cache";
  fs::create_directories(tmp / "cache");
  REQUIRE(::mkfifo((tmp / "cache/fingerprint.json").c_str(), 0600) == 0);  // reading it used to block forever
  CHECK_THROWS_WITH(preprocess_dataset(info, o),
                    (tmp / "cache/fingerprint.json" + ": not a regular file (a FIFO (named pipe)); expected the " +
                     "cache's fingerprint file (remove it, or choose another data.cache)")
                        .c_str());
  fs::remove(tmp / "cache/fingerprint.json");
  fs::create_directories(tmp / "cache/fingerprint.json");
  CHECK_THROWS_WITH(preprocess_dataset(info, o), doctest::Contains("not a regular file (a directory)"));
}

TEST_CASE("a case name too long for its cache file name within 255 bytes is cached under a shortened, hashed name") {
  test::TempDir tmp("preprocess_long");
  const std::string data = mixed_dataset(tmp);
  const std::string long_a(230, 'a'), long_b = std::string(229, 'a') + "b";  // the same first 160 bytes
  nlohmann::json j = nlohmann::json::parse(std::ifstream(data + "/dataset.json"));
  for (const auto& [i, name] : {std::pair{0, long_a}, std::pair{1, long_b}}) {
    const std::string from = "case_00" + std::to_string(i);
    fs::rename(data + "/imagesTr/" + from + ".nii.gz", data + "/imagesTr/" + name + ".nii.gz");
    fs::rename(data + "/labelsTr/" + from + ".nii.gz", data + "/labelsTr/" + name + ".nii.gz");
    j["training"][i] = {{"image", "./imagesTr/" + name + ".nii.gz"}, {"label", "./labelsTr/" + name + ".nii.gz"}};
  }
  test::write_text(data + "/dataset.json", j.dump(2));
  const DatasetInfo info = read_msd_dataset(data);
  PreprocessOptions o;
  o.cache_dir = tmp / "cache";
  const PreprocessedDataset first = preprocess_dataset(info, o);  // used to fail creating the file
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(tmp / "cache")) {
    CHECK(e.path().filename().string().size() <= 255 - 20);  // room for the temporary name's .tmpPID. prefix
    files += e.path().filename().string().ends_with(".preprocessed.safetensors");
  }
  CHECK(files == 4);  // two names alike in their first 160 bytes stay two files
  const PreprocessedDataset second = preprocess_dataset(info, o);
  CHECK(second.from_cache == 4);
  CHECK(same_cases(second, first));
}

TEST_CASE("a damaged fingerprint entry makes its case stale with a warning naming the file and the entry") {
  test::TempDir tmp("preprocess_fingerprint");
  const DatasetInfo info = read_msd_dataset(mixed_dataset(tmp));
  PreprocessOptions o;
  o.cache_dir = tmp / "cache";
  const PreprocessedDataset first = preprocess_dataset(info, o);
  const std::string path = tmp / "cache/fingerprint.json";
  nlohmann::json j = nlohmann::json::parse(std::ifstream(path));
  j["cases"]["case_000"] = "garbage";
  j["cases"]["case_001"]["spacing"] = {"a", 1, 1};
  j["cases"]["case_002"].erase("size");
  j["cases"]["case_100"]["stamp"] = 7;
  test::write_text(path, j.dump());
  PreprocessedDataset again;
  REQUIRE_NOTHROW(again = preprocess_dataset(info, o));
  CHECK(again.from_cache == 0);
  CHECK(same_cases(again, first));
  REQUIRE(again.warnings.size() == 4);
  CHECK(again.warnings[0] == path + ": entry \"case_000\" is not an object; the case is preprocessed again");
  CHECK(again.warnings[1] ==
        path + ": entry \"case_001\" has no \"spacing\" of three finite numbers > 0; the case is preprocessed again");
  CHECK(again.warnings[2] ==
        path + ": entry \"case_002\" has no \"size\" of three integers >= 1; the case is preprocessed again");
  CHECK(again.warnings[3] == path + ": entry \"case_100\" has no string \"stamp\"; the case is preprocessed again");
  // Rewritten whole: the next run reads every case from the cache, without a word.
  const PreprocessedDataset repaired = preprocess_dataset(info, o);
  CHECK(repaired.from_cache == 4);
  CHECK(repaired.warnings.empty());

  for (const std::string& damaged : {std::string("{\"format\": "), std::string("{\"format\": 3, \"cases\": {}}")}) {
    CAPTURE(damaged);
    test::write_text(path, damaged);
    PreprocessedDataset rebuilt;
    REQUIRE_NOTHROW(rebuilt = preprocess_dataset(info, o));
    CHECK(rebuilt.from_cache == 0);
    CHECK(same_cases(rebuilt, first));
    REQUIRE(rebuilt.warnings.size() == 1);
    CHECK(rebuilt.warnings[0].find(path + ": not ") == 0);
  }
}

TEST_CASE("a case whose spacing cannot be resampled to the target is an error naming its image file") {
  test::TempDir tmp("preprocess_resample_error");
  const std::string data = mixed_dataset(tmp);
  // case_100 (image and label on one grid) at 1e-30 mm: 12 slices of it are far less than a voxel at 3 mm.
  for (const std::string sub : {"imagesTr", "labelsTr"}) {
    const std::string path = data + "/" + sub + "/case_100.nii.gz";
    const NiftiVolume v = read_nifti(path);
    write_nifti(path, v.data, make_nifti_like(v.data.shape(), {1e-30, 1e-30, 1e-30}));
  }
  const DatasetInfo info = read_msd_dataset(data);
  std::string what;
  try {
    preprocess_dataset(info, {});
  } catch (const std::runtime_error& e) {
    what = e.what();
  }
  CHECK_MESSAGE(what.find(data + "/imagesTr/case_100.nii.gz: resampling 12 x 20 x 20 voxels from spacing 1e-30") == 0,
                what);
}

TEST_CASE("an edited fingerprint entry (a spacing changed, the stamp kept) is not trusted: its case is made again") {
  test::TempDir tmp("preprocess_fingerprint_edited");
  const DatasetInfo info = read_msd_dataset(mixed_dataset(tmp));
  PreprocessOptions o;
  o.cache_dir = tmp / "cache";
  const PreprocessedDataset first = preprocess_dataset(info, o);
  const std::string path = tmp / "cache/fingerprint.json";
  for (const nlohmann::json spacing :
       {nlohmann::json{3, 3, 3}, nlohmann::json{1e300, 1e300, 1e300}, nlohmann::json{1e-300, 1e-300, 1e-300}}) {
    CAPTURE(spacing.dump());
    nlohmann::json j = nlohmann::json::parse(std::ifstream(path));
    for (auto& [id, entry] : j["cases"].items()) entry["spacing"] = spacing;
    test::write_text(path, j.dump());
    PreprocessedDataset again;
    REQUIRE_NOTHROW(again = preprocess_dataset(info, o));
    CHECK(again.target == first.target);  // planned from the files, not from the edited entries
    CHECK(again.from_cache == 0);
    CHECK(same_cases(again, first));
    REQUIRE(again.warnings.size() == 4);
    CHECK(again.warnings[0] == path +
                                   ": entry \"case_000\" does not match its \"check\" (edited or damaged: its spacing "
                                   "or size is not what was measured); the case is preprocessed again");
  }
}

TEST_CASE(
    "cache files cannot take a run's file names: a case named checkpoint is checkpoint.preprocessed.safetensors") {
  test::TempDir tmp("preprocess_case_names");
  const std::string data = mixed_dataset(tmp);
  for (const std::string sub : {"imagesTr", "labelsTr"}) {
    fs::rename(data + "/" + sub + "/case_000.nii.gz", data + "/" + sub + "/checkpoint.nii.gz");
    fs::rename(data + "/" + sub + "/case_001.nii.gz", data + "/" + sub + "/model.nii.gz");
  }
  nlohmann::json j = nlohmann::json::parse(std::ifstream(data + "/dataset.json"));
  j["training"][0] = {{"image", "./imagesTr/checkpoint.nii.gz"}, {"label", "./labelsTr/checkpoint.nii.gz"}};
  j["training"][1] = {{"image", "./imagesTr/model.nii.gz"}, {"label", "./labelsTr/model.nii.gz"}};
  test::write_text(data + "/dataset.json", j.dump(2));
  const DatasetInfo info = read_msd_dataset(data);
  PreprocessOptions o;
  o.cache_dir = tmp / "run";  // the run's output.dir
  fs::create_directories(o.cache_dir);
  test::write_text(tmp / "run/checkpoint.safetensors", "the run's checkpoint");
  test::write_text(tmp / "run/model.safetensors", "the run's model");
  preprocess_dataset(info, o);
  CHECK(fs::exists(tmp / "run/checkpoint.preprocessed.safetensors"));
  CHECK(fs::exists(tmp / "run/model.preprocessed.safetensors"));
  std::ifstream checkpoint(tmp / "run/checkpoint.safetensors"), model(tmp / "run/model.safetensors");
  CHECK(std::string(std::istreambuf_iterator<char>(checkpoint), {}) == "the run's checkpoint");
  CHECK(std::string(std::istreambuf_iterator<char>(model), {}) == "the run's model");
  CHECK(preprocess_dataset(info, o).from_cache == 4);
}

TEST_CASE("a case file name that is not UTF-8 (Latin-1 caf\\xe9) is cached, escaped as %E9 in fingerprint.json") {
  test::TempDir tmp("preprocess_latin1");
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp / "v2" +
                                           " --train 3 --test 0 --size 8,8,8 --seed 1 --format nnunetv2") == 0);
  const std::string latin1 = "caf\xe9", percent = "caf%E9";  // two names that the escaping must keep apart
  for (const auto& [from, to] :
       {std::pair{std::string("case_000"), latin1}, std::pair{std::string("case_001"), percent}}) {
    fs::rename(tmp / ("v2/labelsTr/" + from + ".nii.gz"), tmp / ("v2/labelsTr/" + to + ".nii.gz"));
    fs::rename(tmp / ("v2/imagesTr/" + from + "_0000.nii.gz"), tmp / ("v2/imagesTr/" + to + "_0000.nii.gz"));
  }
  const DatasetInfo info = read_dataset(tmp / "v2");
  std::vector<std::string> ids;
  for (const DatasetCase& c : info.training) ids.push_back(c.id);
  REQUIRE(std::find(ids.begin(), ids.end(), latin1) != ids.end());
  PreprocessOptions o;
  o.cache_dir = tmp / "cache";
  PreprocessedDataset first;
  REQUIRE_NOTHROW(first = preprocess_dataset(info, o));
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(tmp / "cache/fingerprint.json"));
  CHECK(j["cases"].contains("caf%E9"));
  CHECK(j["cases"].contains("caf%25E9"));
  CHECK(fs::exists(tmp / ("cache/" + latin1 + ".preprocessed.safetensors")));
  const PreprocessedDataset second = preprocess_dataset(info, o);
  CHECK(second.from_cache == 3);
  CHECK(same_cases(second, first));
}
