// MSD dataset loading (io/dataset.h): dataset.json validation, case loading, nnU-Net normalisation (z-score and CT),
// padding, the 5-fold split and the patch sampler (shape, foreground oversampling, flips, padding, determinism).
#include <sys/stat.h>

#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "io/dataset.h"
#include "io/nifti.h"
#include "io/synthetic.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::io;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// One synthetic dataset shared by the tests that only read it (10 training cases of 24^3, 3 classes).
const std::string& synthetic_dataset() {
  static test::TempDir dir("shared");
  static std::string path = [] {
    SynthOptions o;
    o.output = dir / "ds";
    o.train = 10;
    o.test = 1;
    o.size = {24, 24, 24};
    write_synthetic_dataset(o);
    return o.output;
  }();
  return path;
}

// A hand-made dataset: dataset.json with the given content plus NIfTI files written on request.
void write_json(const std::string& path, const json& j) {
  std::ofstream(path) << j.dump(2);
}

json minimal_json() {
  return json{{"name", "t"},
              {"modality", {{"0", "MRI"}}},
              {"labels", {{"0", "background"}, {"1", "thing"}}},
              {"numTraining", 1},
              {"training", json::array({{{"image", "./imagesTr/a.nii.gz"}, {"label", "./labelsTr/a.nii.gz"}}})}};
}

void write_volume(const std::string& path, const Tensor& t, std::array<double, 3> spacing = {1, 1, 1}) {
  fs::create_directories(fs::path(path).parent_path());
  write_nifti(path, t, make_nifti_like(t.shape(), spacing));
}

// Expects fn to throw a message that contains every one of `parts`.
template <class F>
void check_error_names(F&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    FAIL("no error was thrown");
  } catch (const std::exception& e) {
    std::string msg = e.what();
    for (const std::string& p : parts)
      CHECK_MESSAGE(msg.find(p) != std::string::npos, "'" << p << "' missing in: " << msg);
  }
}

Case make_case(Shape shape, int channels, std::function<float(int64_t, int64_t, int64_t, int64_t)> image,
               std::function<uint8_t(int64_t, int64_t, int64_t)> label) {
  Case c;
  c.id = "hand";
  c.spacing = {1, 1, 1};
  c.image = Tensor::empty({shape[0], shape[1], shape[2], channels});
  c.label = Tensor::empty({shape[0], shape[1], shape[2]}, DType::u8);
  float* x = c.image.data<float>();
  uint8_t* l = c.label.data<uint8_t>();
  for (int64_t z = 0; z < shape[0]; ++z)
    for (int64_t y = 0; y < shape[1]; ++y)
      for (int64_t xx = 0; xx < shape[2]; ++xx) {
        int64_t v = (z * shape[1] + y) * shape[2] + xx;
        l[v] = label(z, y, xx);
        for (int ch = 0; ch < channels; ++ch) x[v * channels + ch] = image(z, y, xx, ch);
      }
  return c;
}

}  // namespace

// ---- dataset.json and cases --------------------------------------------------------------------------------------

TEST_CASE("read_msd_dataset lists the training cases with paths resolved against the dataset directory") {
  DatasetInfo info = read_msd_dataset(synthetic_dataset());
  CHECK(info.name == "Synthetic");
  CHECK(info.modalities == std::vector<std::string>{"SYN"});
  CHECK(info.labels == std::vector<std::string>{"background", "ellipsoid", "tube"});
  REQUIRE(info.training.size() == 10);
  CHECK(info.training[3].id == "case_003");
  CHECK(info.training[3].image_paths ==
        std::vector<std::string>{(fs::path(synthetic_dataset()) / "imagesTr/case_003.nii.gz").string()});
  CHECK(info.training[3].label_path == (fs::path(synthetic_dataset()) / "labelsTr/case_003.nii.gz").string());
  REQUIRE(info.test.size() == 1);
  CHECK(fs::exists(info.test[0]));
}

TEST_CASE("load_case gives an f32 [Z, Y, X, C] image and the u8 label on the same grid") {
  DatasetInfo info = read_msd_dataset(synthetic_dataset());
  Case c = load_case(info, 2);
  CHECK(c.id == "case_002");
  CHECK(c.image.shape() == Shape{24, 24, 24, 1});
  CHECK(c.image.dtype() == DType::f32);
  CHECK(c.label.shape() == Shape{24, 24, 24});
  CHECK(c.label.dtype() == DType::u8);
  CHECK(c.spacing == std::array<double, 3>{1, 1, 1});
  SynthOptions o;
  o.output = "unused";
  o.train = 10;
  o.test = 1;
  o.size = {24, 24, 24};
  SynthCase expected = make_synthetic_case(o, 2);
  CHECK(c.image.to_vector() == expected.image.to_vector());
  CHECK(c.label.to_vector() == expected.label.to_vector());
}

TEST_CASE("an MSD label with an empty name is an error naming the file and the entry, as in nnU-Net v2's layout") {
  test::TempDir tmp("msd_empty_label");
  json j = minimal_json();
  j["labels"]["1"] = "";
  write_json(tmp / "dataset.json", j);
  check_error_names([&] { read_msd_dataset(tmp.path); },
                    {tmp / "dataset.json", "key 'labels': entry '1' is an empty name; expected a class name"});
}

TEST_CASE("a dataset.json missing a required key is an error naming the file and the key") {
  for (const char* key : {"modality", "labels", "training"}) {
    CAPTURE(key);
    test::TempDir tmp(std::string("missing_") + key);
    json j = minimal_json();
    j.erase(key);
    write_json(tmp / "dataset.json", j);
    check_error_names([&] { read_msd_dataset(tmp.path); }, {tmp / "dataset.json", std::string("'") + key + "'"});
  }
}

TEST_CASE("a dataset.json entry of the wrong form is an error naming the key") {
  test::TempDir tmp("malformed");
  json j = minimal_json();
  j["labels"] = {{"0", "background"}, {"2", "gap"}};
  write_json(tmp / "dataset.json", j);
  check_error_names([&] { read_msd_dataset(tmp.path); }, {tmp / "dataset.json", "'labels'", "'2'"});
  j = minimal_json();
  j["training"][0].erase("label");
  write_json(tmp / "dataset.json", j);
  check_error_names([&] { read_msd_dataset(tmp.path); }, {"training[0].label", "missing"});
  std::ofstream(tmp / "dataset.json") << "{ not json";
  check_error_names([&] { read_msd_dataset(tmp.path); }, {tmp / "dataset.json", "JSON"});
  // The parser's position, without the library's "[json.exception.parse_error.101]"; NaN (Python's json.dumps writes
  // it) is named as what JSON does not have.
  const auto message = [&] {
    try {
      read_msd_dataset(tmp.path);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_MESSAGE(message().find("not valid JSON: parse error at line 1, column 4: syntax error") != std::string::npos,
                message());
  CHECK(message().find("json.exception") == std::string::npos);
  std::ofstream(tmp / "dataset.json") << "{\"numTraining\": NaN}";
  CHECK(message().find("NaN and Infinity are not JSON numbers") != std::string::npos);
  std::ofstream(tmp / "dataset.json") << "{\"numTraining\": -Infinity}";
  CHECK(message().find("NaN and Infinity are not JSON numbers") != std::string::npos);
  // Two "labels" keys: which one a reader keeps differs between readers, so neither is chosen.
  std::string text = minimal_json().dump();
  std::ofstream(tmp / "dataset.json") << "{\"labels\": {\"0\": \"background\"}, " << text.substr(1);
  check_error_names([&] { read_msd_dataset(tmp.path); },
                    {tmp / "dataset.json", "not valid JSON", "the key \"labels\" appears twice in one object"});
}

TEST_CASE("a dataset.json path holding a NUL character is an error naming the key") {
  test::TempDir tmp("nul_path");
  write_volume(tmp / "imagesTr/a.nii.gz", Tensor::zeros({4, 4, 4}));
  write_volume(tmp / "labelsTr/a.nii.gz", Tensor::zeros({4, 4, 4}));
  json j = minimal_json();
  // The file system would read "./imagesTr/a.nii.gz", a file that exists: the case used to load under a wrong name.
  j["training"][0]["image"] = std::string("./imagesTr/a.nii.gz\0x", 21);
  write_json(tmp / "dataset.json", j);
  check_error_names([&] { read_msd_dataset(tmp.path); },
                    {tmp / "dataset.json", "training[0].image", "holds a NUL character"});
}

TEST_CASE("a dataset.json entry whose image is its own label file is an error naming the entry") {
  test::TempDir tmp("image_is_label");
  write_volume(tmp / "labelsTr/a.nii.gz", Tensor::zeros({4, 4, 4}));
  json j = minimal_json();
  j["training"][0]["image"] = "./labelsTr/a.nii.gz";
  write_json(tmp / "dataset.json", j);
  check_error_names([&] { read_msd_dataset(tmp.path); },
                    {tmp / "dataset.json", "training[0]", "image and label are the same file"});
}

TEST_CASE("a dataset.json naming a missing file is an error naming the key and the path") {
  test::TempDir tmp("missing_file");
  write_json(tmp / "dataset.json", minimal_json());
  write_volume(tmp / "imagesTr/a.nii.gz", Tensor::zeros({4, 4, 4}));
  check_error_names([&] { read_msd_dataset(tmp.path); },
                    {tmp / "dataset.json", "training[0].label", "./labelsTr/a.nii.gz", "does not exist"});
  // There, but a FIFO or a directory: said as what it is (it used to "not exist").
  fs::create_directories(tmp / "labelsTr");
  REQUIRE(::mkfifo((tmp / "labelsTr/a.nii.gz").c_str(), 0600) == 0);
  check_error_names([&] { read_msd_dataset(tmp.path); },
                    {"training[0].label", "./labelsTr/a.nii.gz", "is not a regular file (a FIFO (named pipe))"});
  fs::remove(tmp / "labelsTr/a.nii.gz");
  fs::create_directories(tmp / "labelsTr/a.nii.gz");
  check_error_names([&] { read_msd_dataset(tmp.path); }, {"training[0].label", "not a regular file (a directory)"});
}

TEST_CASE("two training cases with one file name are an error that tells a repeat from a name clash") {
  test::TempDir tmp("same_name");
  for (const char* f : {"imagesTr/a.nii.gz", "labelsTr/a.nii.gz", "other/a.nii.gz"})
    write_volume(tmp / f, Tensor::zeros({4, 4, 4}));
  json j = minimal_json();
  j["numTraining"] = 2;
  j["training"].push_back({{"image", "imagesTr/./a.nii.gz"}, {"label", "./labelsTr/a.nii.gz"}});
  write_json(tmp / "dataset.json", j);
  check_error_names([&] { read_msd_dataset(tmp.path); },
                    {tmp / "dataset.json", "training[1].image", "case 'a' is listed again (first as training[0])"});
  j["training"][1]["image"] = "other/a.nii.gz";
  write_json(tmp / "dataset.json", j);
  check_error_names(
      [&] { read_msd_dataset(tmp.path); },
      {tmp / "dataset.json", "training[1].image",
       "'other/a.nii.gz' has the case name 'a' of training[0] ('./imagesTr/a.nii.gz'), in another folder; "
       "expected unique file names"});
}

TEST_CASE("numTraining disagreeing with the training list is an error") {
  test::TempDir tmp("count");
  json j = minimal_json();
  j["numTraining"] = 3;
  write_json(tmp / "dataset.json", j);
  write_volume(tmp / "imagesTr/a.nii.gz", Tensor::zeros({4, 4, 4}));
  write_volume(tmp / "labelsTr/a.nii.gz", Tensor::zeros({4, 4, 4}, DType::u8));
  check_error_names([&] { read_msd_dataset(tmp.path); }, {"'numTraining'", "3", "1"});
}

TEST_CASE("a label on a different grid than its image is an error naming both files") {
  test::TempDir tmp("grid");
  write_json(tmp / "dataset.json", minimal_json());
  write_volume(tmp / "imagesTr/a.nii.gz", Tensor::zeros({4, 5, 6}));
  write_volume(tmp / "labelsTr/a.nii.gz", Tensor::zeros({4, 5, 7}, DType::u8));
  DatasetInfo info = read_msd_dataset(tmp.path);
  check_error_names([&] { load_case(info, 0); }, {tmp / "labelsTr/a.nii.gz", tmp / "imagesTr/a.nii.gz", "grid"});
  write_volume(tmp / "labelsTr/a.nii.gz", Tensor::zeros({4, 5, 6}, DType::u8), {2, 1, 1});
  check_error_names([&] { load_case(info, 0); }, {tmp / "labelsTr/a.nii.gz", "spacing"});
  // Same extent and spacing, but the label's origin is 4 mm off along z (sform's srow_z[3], byte 324 of the header).
  write_volume(tmp / "shifted.nii", Tensor::zeros({4, 5, 6}, DType::u8));
  {
    std::fstream f(tmp / "shifted.nii", std::ios::binary | std::ios::in | std::ios::out);
    const float z0 = 4;
    f.seekp(324);
    f.write(reinterpret_cast<const char*>(&z0), sizeof z0);
  }
  const io::NiftiVolume shifted = io::read_nifti(tmp / "shifted.nii");
  io::write_nifti(tmp / "labelsTr/a.nii.gz", shifted.data, shifted);
  check_error_names([&] { load_case(info, 0); },
                    {tmp / "labelsTr/a.nii.gz", "origin (0, 0, 4) mm (world x, y, z) differs from (0, 0, 0) of",
                     tmp / "imagesTr/a.nii.gz"});
}

TEST_CASE("label values outside the labels of dataset.json are an error naming the file") {
  test::TempDir tmp("values");
  write_json(tmp / "dataset.json", minimal_json());
  write_volume(tmp / "imagesTr/a.nii.gz", Tensor::zeros({4, 4, 4}));
  Tensor lab = Tensor::zeros({4, 4, 4}, DType::u8);
  lab.data<uint8_t>()[17] = 2;  // only 0 and 1 are listed
  write_volume(tmp / "labelsTr/a.nii.gz", lab);
  DatasetInfo info = read_msd_dataset(tmp.path);
  check_error_names([&] { load_case(info, 0); }, {tmp / "labelsTr/a.nii.gz", "value 2", "0..1"});
}

TEST_CASE("a float label map with a fractional or NaN value is an error naming the file") {
  test::TempDir tmp("float_labels");
  write_json(tmp / "dataset.json", minimal_json());
  write_volume(tmp / "imagesTr/a.nii.gz", Tensor::zeros({4, 4, 4}));
  Tensor lab = Tensor::zeros({4, 4, 4});  // f32: label maps saved as floats are common
  lab.data<float>()[9] = 1.0f;            // an integral float is a class index
  write_volume(tmp / "labelsTr/a.nii.gz", lab);
  DatasetInfo info = read_msd_dataset(tmp.path);
  CHECK(load_case(info, 0).label.data<uint8_t>()[9] == 1);
  lab.data<float>()[17] = 0.5f;
  write_volume(tmp / "labelsTr/a.nii.gz", lab);
  CHECK_THROWS_WITH_AS(load_case(info, 0),
                       (tmp / "labelsTr/a.nii.gz" + ": voxel 17 has label value 0.5; 'labels' in " + info.json_path +
                        " allows the integers 0..1")
                           .c_str(),
                       std::runtime_error);
  // A value f32 cannot hold (int32 16777217 reads as 16777216) is named as the file holds it.
  Tensor wide = Tensor::zeros({4, 4, 4}, DType::i32);
  wide.data<int32_t>()[5] = 16777217;
  write_volume(tmp / "labelsTr/a.nii.gz", wide);
  check_error_names([&] { load_case(info, 0); }, {tmp / "labelsTr/a.nii.gz", "holds 16777217", "cannot hold exactly"});
  lab.data<float>()[17] = std::nanf("");
  write_volume(tmp / "labelsTr/a.nii.gz", lab);
  CHECK_THROWS_WITH_AS(load_case(info, 0),
                       (tmp / "labelsTr/a.nii.gz" +
                        ": 1 voxel is NaN or infinite (first at index 17: x 1, y 0, z 1, channel 0); expected finite "
                        "values")
                           .c_str(),
                       std::runtime_error);
}

TEST_CASE("a NaN or infinite image voxel is an error naming the image file") {
  test::TempDir tmp("nan_image");
  write_json(tmp / "dataset.json", minimal_json());
  Tensor img = Tensor::zeros({4, 4, 4});
  img.data<float>()[63] = std::numeric_limits<float>::infinity();
  write_volume(tmp / "imagesTr/a.nii.gz", img);
  write_volume(tmp / "labelsTr/a.nii.gz", Tensor::zeros({4, 4, 4}, DType::u8));
  DatasetInfo info = read_msd_dataset(tmp.path);
  CHECK_THROWS_WITH_AS(load_case(info, 0),
                       (tmp / "imagesTr/a.nii.gz" +
                        ": 1 voxel is NaN or infinite (first at index 63: x 3, y 3, z 3, channel 0); expected finite "
                        "values")
                           .c_str(),
                       std::runtime_error);
}

TEST_CASE("an image with a different channel count than the modality list is an error") {
  test::TempDir tmp("channels");
  json j = minimal_json();
  j["modality"] = {{"0", "T1"}, {"1", "T2"}};
  write_json(tmp / "dataset.json", j);
  write_volume(tmp / "imagesTr/a.nii.gz", Tensor::zeros({4, 4, 4, 1}));
  write_volume(tmp / "labelsTr/a.nii.gz", Tensor::zeros({4, 4, 4}, DType::u8));
  DatasetInfo info = read_msd_dataset(tmp.path);
  check_error_names([&] { load_case(info, 0); }, {tmp / "imagesTr/a.nii.gz", "1 channels", "modality", "2"});
}

// ---- normalisation -----------------------------------------------------------------------------------------------

TEST_CASE("z-score normalisation gives each channel mean 0 and std 1 over the non-zero voxels, zeros elsewhere") {
  // Two channels; the corner z < 3 is zero in both (outside the "body"), single zeros inside stay in the mask.
  Case c = make_case(
      {8, 9, 10}, 2,
      [](int64_t z, int64_t y, int64_t x, int64_t ch) {
        if (z < 3) return 0.0f;
        if (ch == 0 && x == 4) return 0.0f;  // zero in one channel only: still inside the mask
        return static_cast<float>(ch == 0 ? 50 + z * 7 + y * y - x : 1000 - 3 * x * y + z);
      },
      [](int64_t, int64_t, int64_t) { return uint8_t(0); });
  Tensor original = c.image.clone();
  NormalizationPlan plan;
  plan.channels.resize(2);  // z-score both
  normalize_image(c.image, plan);
  const float* o = original.data<float>();
  const float* x = c.image.data<float>();
  const int64_t nv = c.label.numel();
  for (int ch = 0; ch < 2; ++ch) {
    // Direct computation over the mask, in double.
    double sum = 0, sq = 0, n = 0, got_sum = 0, got_sq = 0;
    for (int64_t v = 0; v < nv; ++v)
      if (o[v * 2] != 0 || o[v * 2 + 1] != 0) sum += o[v * 2 + ch], n += 1;
    double mean = sum / n;
    for (int64_t v = 0; v < nv; ++v)
      if (o[v * 2] != 0 || o[v * 2 + 1] != 0) sq += (o[v * 2 + ch] - mean) * (o[v * 2 + ch] - mean);
    double sd = std::sqrt(sq / n);
    for (int64_t v = 0; v < nv; ++v) {
      bool in = o[v * 2] != 0 || o[v * 2 + 1] != 0;
      if (!in) {
        CHECK(x[v * 2 + ch] == 0.0f);
        continue;
      }
      REQUIRE(x[v * 2 + ch] == doctest::Approx((o[v * 2 + ch] - mean) / sd).epsilon(1e-5));
      got_sum += x[v * 2 + ch];
      got_sq += x[v * 2 + ch] * x[v * 2 + ch];
    }
    CHECK(std::abs(got_sum / n) < 1e-5);
    CHECK(got_sq / n == doctest::Approx(1.0).epsilon(1e-5));
  }
}

TEST_CASE("z-score normalisation of a volume without zeros uses every voxel") {
  DatasetInfo info = read_msd_dataset(synthetic_dataset());
  Case c = load_case(info, 0);
  c.image.data<float>()[0] = 7;  // the synthetic images may clip a few voxels to 0; make sure none is
  for (int64_t v = 0; v < c.image.numel(); ++v)
    if (c.image.data<float>()[v] == 0) c.image.data<float>()[v] = 1;
  NormalizationPlan plan = plan_normalization(info, {});
  REQUIRE(plan.channels.size() == 1);
  CHECK(!plan.channels[0].ct);
  normalize_image(c.image, plan);
  double sum = 0, sq = 0;
  for (float v : c.image.to_vector()) sum += v, sq += double(v) * v;
  double n = static_cast<double>(c.image.numel());
  CHECK(std::abs(sum / n) < 1e-5);
  CHECK(sq / n == doctest::Approx(1.0).epsilon(1e-5));
}

TEST_CASE("CT normalisation clips to the foreground 0.5/99.5 percentiles and uses the foreground mean and std") {
  test::TempDir tmp("ct");
  // The synthetic dataset relabelled as CT.
  fs::copy(synthetic_dataset(), tmp / "ds", fs::copy_options::recursive);
  json j = json::parse(std::ifstream(tmp / "ds/dataset.json"));
  j["modality"] = {{"0", "CT"}};
  write_json(tmp / "ds/dataset.json", j);
  DatasetInfo info = read_msd_dataset(tmp / "ds");
  std::vector<Case> cases;
  for (size_t i = 0; i < 4; ++i) cases.push_back(load_case(info, i));
  NormalizationPlan plan = plan_normalization(info, cases, 1);
  REQUIRE(plan.channels.size() == 1);
  REQUIRE(plan.channels[0].ct);

  // Direct computation: every foreground voxel of the four cases, sorted, numpy's linear percentile.
  std::vector<double> fg;
  for (const Case& c : cases) {
    std::vector<float> x = c.image.to_vector(), l = c.label.to_vector();
    for (size_t v = 0; v < x.size(); ++v)
      if (l[v] > 0) fg.push_back(x[v]);
  }
  std::sort(fg.begin(), fg.end());
  auto pct = [&](double q) {
    double pos = q / 100 * static_cast<double>(fg.size() - 1);
    size_t lo = static_cast<size_t>(pos);
    return fg[lo] + (fg[std::min(lo + 1, fg.size() - 1)] - fg[lo]) * (pos - static_cast<double>(lo));
  };
  double mean = 0, sq = 0;
  for (double v : fg) mean += v;
  mean /= static_cast<double>(fg.size());
  for (double v : fg) sq += (v - mean) * (v - mean);
  double sd = std::sqrt(sq / static_cast<double>(fg.size()));
  CHECK(plan.channels[0].lower == doctest::Approx(pct(0.5)));
  CHECK(plan.channels[0].upper == doctest::Approx(pct(99.5)));
  CHECK(plan.channels[0].mean == doctest::Approx(mean));
  CHECK(plan.channels[0].std == doctest::Approx(sd));

  Tensor original = cases[0].image;
  Case c = cases[0];
  c.image = original.clone();  // Tensors are handles: normalise a copy, keep cases[0] for the check below
  normalize_image(c.image, plan);
  std::vector<float> before = original.to_vector(), after = c.image.to_vector();
  for (size_t v = 0; v < before.size(); ++v) {
    double clipped = std::clamp<double>(before[v], pct(0.5), pct(99.5));
    REQUIRE(after[v] == doctest::Approx((clipped - mean) / sd).epsilon(1e-4).scale(1.0));
  }
  // nnU-Net's default takes every 10th foreground voxel: statistics stay close.
  NormalizationPlan sampled = plan_normalization(info, cases);
  CHECK(sampled.channels[0].mean == doctest::Approx(mean).epsilon(0.02));
  // Statistics a model could not be used with (unet_infer refuses them) stop the planning, named: one foreground
  // value everywhere (std 0), or magnitudes past 1e30.
  for (const float scale : {1e31f, 0.f}) {
    for (Case& k : cases) {
      float* x = k.image.data<float>();
      for (int64_t v = 0; v < k.image.numel(); ++v) x[v] = scale == 0 ? 100.f : x[v] * scale;
    }
    check_error_names([&] { plan_normalization(info, cases, 1); },
                      {"channel 0 is CT", scale == 0 ? ", std 0," : "magnitudes below 1e30"});
  }
}

TEST_CASE("percentile interpolates linearly between order statistics like numpy") {
  std::vector<float> v{10, 1, 4, 3, 2};
  CHECK(percentile(v, 50) == doctest::Approx(3.0));
  CHECK(percentile(v, 99.5) == doctest::Approx(9.88));  // np.percentile([1,2,3,4,10], 99.5)
  CHECK(percentile(v, 0.5) == doctest::Approx(1.02));
  CHECK(percentile(v, 0) == doctest::Approx(1.0));
  CHECK(percentile(v, 100) == doctest::Approx(10.0));
}

TEST_CASE("a normalisation plan survives a round trip through JSON") {
  NormalizationPlan plan;
  plan.channels.push_back({true, -12.5, 80.25, -900, 1500});
  plan.channels.push_back({});
  NormalizationPlan back = NormalizationPlan::from_json(plan.to_json());
  REQUIRE(back.channels.size() == 2);
  CHECK(back.channels[0].ct);
  CHECK(back.channels[0].mean == -12.5);
  CHECK(back.channels[0].std == 80.25);
  CHECK(back.channels[0].lower == -900);
  CHECK(back.channels[0].upper == 1500);
  CHECK(!back.channels[1].ct);
  CHECK_THROWS(NormalizationPlan::from_json("[{\"scheme\": \"minmax\"}]"));
}

// ---- padding and folds -------------------------------------------------------------------------------------------

TEST_CASE("pad_case_to zero-pads image and label centred to at least the requested size") {
  Case c = make_case(
      {3, 5, 8}, 2, [](int64_t z, int64_t y, int64_t x, int64_t ch) { return float(1 + z + y + x + ch); },
      [](int64_t, int64_t, int64_t) { return uint8_t(1); });
  pad_case_to(c, {6, 4, 8});
  REQUIRE(c.image.shape() == Shape{6, 5, 8, 2});
  REQUIRE(c.label.shape() == Shape{6, 5, 8});
  const float* x = c.image.data<float>();
  const uint8_t* l = c.label.data<uint8_t>();
  for (int64_t z = 0; z < 6; ++z) {
    bool inside = z >= 1 && z < 4;  // 3 padding slices: 1 before, 2 after
    int64_t v = (z * 5 + 2) * 8 + 3;
    CHECK(l[v] == (inside ? 1 : 0));
    CHECK(x[v * 2 + 1] == (inside ? float(1 + (z - 1) + 2 + 3 + 1) : 0.0f));
  }
  Shape before = c.image.shape();
  pad_case_to(c, {2, 2, 2});
  CHECK(c.image.shape() == before);
  // unpadded gives back the case as it was, also after a second padding (what validation segments).
  const Case original = make_case(
      {3, 5, 8}, 2, [](int64_t z, int64_t y, int64_t x, int64_t ch) { return float(1 + z + y + x + ch); },
      [](int64_t z, int64_t y, int64_t x) { return uint8_t((z + y + x) % 3); });
  Case twice = original;
  pad_case_to(twice, {6, 4, 8});
  pad_case_to(twice, {7, 9, 11});
  REQUIRE(twice.image.shape() == Shape{7, 9, 11, 2});
  for (const Case* k : {static_cast<const Case*>(&twice), &original}) {
    const Case back = unpadded(*k);
    CHECK(back.image.shape() == original.image.shape());
    CHECK(back.image.to_vector() == original.image.to_vector());
    CHECK(back.label.shape() == original.label.shape());
    CHECK(std::equal(back.label.data<uint8_t>(), back.label.data<uint8_t>() + back.label.numel(),
                     original.label.data<uint8_t>()));
  }
}

TEST_CASE("the 5-fold split validates every case exactly once and never trains on a validation case") {
  for (size_t n : {5u, 13u, 24u, 101u}) {
    CAPTURE(n);
    std::vector<int> validated(n, 0);
    for (int k = 0; k < 5; ++k) {
      FoldSplit s = kfold_split(n, k);
      CHECK(s.train.size() + s.val.size() == n);
      CHECK(s.val.size() >= n / 5);
      CHECK(s.val.size() <= n / 5 + 1);
      std::set<size_t> train(s.train.begin(), s.train.end());
      CHECK(train.size() == s.train.size());
      for (size_t v : s.val) {
        CHECK(train.count(v) == 0);
        REQUIRE(v < n);
        ++validated[v];
      }
    }
    for (size_t i = 0; i < n; ++i) CHECK(validated[i] == 1);
  }
}

TEST_CASE("the fold split is fixed by its seed and shuffled") {
  CHECK(kfold_split(24, 2).val == kfold_split(24, 2).val);
  CHECK(kfold_split(24, 2, 5, 1).val != kfold_split(24, 2, 5, 2).val);
  FoldSplit s = kfold_split(24, 0);
  CHECK(s.val != std::vector<size_t>{0, 1, 2, 3});  // not the first fifth in file order
  CHECK_THROWS(kfold_split(4, 0));                  // fewer cases than folds
  CHECK_THROWS(kfold_split(24, 5));                 // fold out of range
}

// ---- patch sampler -----------------------------------------------------------------------------------------------

TEST_CASE("patches have the requested shape, an f32 image and an i32 label") {
  DatasetInfo info = read_msd_dataset(synthetic_dataset());
  std::vector<Case> cases{load_case(info, 0), load_case(info, 1)};
  PatchSamplerOptions opt;
  opt.patch = {16, 12, 20};
  opt.batch = 3;
  PatchSampler sampler(cases, {}, opt);
  PatchBatch b = sampler.next();
  CHECK(b.image.shape() == Shape{3, 16, 12, 20, 1});
  CHECK(b.image.dtype() == DType::f32);
  CHECK(b.label.shape() == Shape{3, 16, 12, 20});
  CHECK(b.label.dtype() == DType::i32);
  CHECK(b.case_index.size() == 3);
}

TEST_CASE("the patch sampler draws only from the cases it is given") {
  DatasetInfo info = read_msd_dataset(synthetic_dataset());
  std::vector<Case> cases{load_case(info, 0), load_case(info, 1), load_case(info, 2)};
  PatchSamplerOptions opt;
  opt.patch = {8, 8, 8};
  opt.batch = 4;
  PatchSampler sampler(cases, {0, 2}, opt);
  for (int i = 0; i < 20; ++i)
    for (size_t c : sampler.next().case_index) CHECK((c == 0 || c == 2));
}

TEST_CASE("foreground oversampling puts foreground in 0.4 + 0.6 p_uniform of the patches") {
  // A 2x2x2 foreground blob off-centre in a 40^3 volume; patches of 16^3.
  auto blob = [](int64_t z, int64_t y, int64_t x) {
    return z >= 5 && z <= 6 && y >= 30 && y <= 31 && x >= 18 && x <= 19;
  };
  Case c = make_case(
      {40, 40, 40}, 1, [](int64_t, int64_t, int64_t, int64_t) { return 1.0f; },
      [&](int64_t z, int64_t y, int64_t x) { return uint8_t(blob(z, y, x) ? 1 : 0); });
  // Probability that a uniformly placed patch (corner 0..24 per axis) overlaps the blob, per axis then combined.
  auto axis_p = [](int64_t lo, int64_t hi) {
    int hits = 0;
    for (int64_t o = 0; o <= 24; ++o) hits += o <= hi && o + 15 >= lo;
    return hits / 25.0;
  };
  double p_uniform = axis_p(5, 6) * axis_p(30, 31) * axis_p(18, 19);
  double expected = 0.4 + 0.6 * p_uniform;
  std::vector<Case> cases{c};
  PatchSamplerOptions opt;
  opt.patch = {16, 16, 16};
  opt.batch = 8;
  opt.seed = 42;
  opt.augment = AugmentOptions::none();  // the zoom's centre crop could cut the blob off
  PatchSampler sampler(cases, {}, opt);
  int with_fg = 0, total = 0;
  for (int i = 0; i < 500; ++i) {
    PatchBatch b = sampler.next();
    const int32_t* l = b.label.data<int32_t>();
    const int64_t per = 16 * 16 * 16;
    for (int64_t k = 0; k < 8; ++k) {
      with_fg += std::any_of(l + k * per, l + (k + 1) * per, [](int32_t v) { return v > 0; });
      ++total;
    }
  }
  double observed = static_cast<double>(with_fg) / total;
  CAPTURE(expected);
  CAPTURE(observed);
  // 4000 patches: the standard error is below 0.008, so 0.035 is over 4 sigma (and far below 0.4 - p_uniform).
  CHECK(std::abs(observed - expected) < 0.035);
}

TEST_CASE("with foreground probability 1 every patch contains foreground") {
  Case c = make_case(
      {30, 30, 30}, 1, [](int64_t, int64_t, int64_t, int64_t) { return 1.0f; },
      [](int64_t z, int64_t y, int64_t x) { return uint8_t((z == 29 && y == 0 && x == 29) ? 2 : 0); });
  std::vector<Case> cases{c};
  PatchSamplerOptions opt;
  opt.patch = {8, 8, 8};
  opt.batch = 4;
  opt.foreground_prob = 1.0;
  opt.augment = AugmentOptions::none();
  PatchSampler sampler(cases, {}, opt);
  for (int i = 0; i < 50; ++i) {
    PatchBatch b = sampler.next();
    const int32_t* l = b.label.data<int32_t>();
    for (int64_t k = 0; k < 4; ++k) CHECK(std::count(l + k * 512, l + (k + 1) * 512, 2) == 1);
  }
}

namespace {
// Image channel 0 encodes the source coordinates, channel 1 their negation; the label is a function of them.
Case coordinate_case(Shape s) {
  return make_case(
      s, 2,
      [](int64_t z, int64_t y, int64_t x, int64_t ch) { return float((ch ? -1 : 1) * (1 + z * 10000 + y * 100 + x)); },
      [](int64_t z, int64_t y, int64_t x) { return uint8_t((z + 2 * y + 3 * x) % 3); });
}
std::array<int64_t, 3> decode(float v) {
  int64_t c = static_cast<int64_t>(v) - 1;
  return {c / 10000, (c / 100) % 100, c % 100};
}
}  // namespace

TEST_CASE("flips reverse image and label together, and each axis flips about half the time") {
  std::vector<Case> cases{coordinate_case({10, 12, 14})};
  PatchSamplerOptions opt;
  opt.patch = {6, 7, 8};
  opt.batch = 4;
  opt.foreground_prob = 0;
  opt.seed = 5;
  opt.augment = AugmentOptions::none();
  opt.augment.flip_prob = 0.5;
  PatchSampler sampler(cases, {}, opt);
  std::array<int, 3> flips{};
  int n = 0;
  for (int i = 0; i < 100; ++i) {
    PatchBatch b = sampler.next();
    const float* x = b.image.data<float>();
    const int32_t* l = b.label.data<int32_t>();
    for (int64_t k = 0; k < 4; ++k, ++n) {
      const int64_t base = k * 6 * 7 * 8;
      auto at = [&](int64_t z, int64_t y, int64_t xx) { return base + (z * 7 + y) * 8 + xx; };
      // Direction of each axis from the first voxel and its neighbours; the whole patch must follow it.
      auto c0 = decode(x[at(0, 0, 0) * 2]);
      std::array<int64_t, 3> step{decode(x[at(1, 0, 0) * 2])[0] - c0[0], decode(x[at(0, 1, 0) * 2])[1] - c0[1],
                                  decode(x[at(0, 0, 1) * 2])[2] - c0[2]};
      for (int a = 0; a < 3; ++a) {
        REQUIRE((step[a] == 1 || step[a] == -1));
        CHECK((step[a] == -1) == b.augment[static_cast<size_t>(k)].flip[static_cast<size_t>(a)]);
        flips[static_cast<size_t>(a)] += step[a] == -1;
      }
      for (int64_t z = 0; z < 6; ++z)
        for (int64_t y = 0; y < 7; ++y)
          for (int64_t xx = 0; xx < 8; ++xx) {
            auto c = decode(x[at(z, y, xx) * 2]);
            REQUIRE(c[0] == c0[0] + step[0] * z);
            REQUIRE(c[1] == c0[1] + step[1] * y);
            REQUIRE(c[2] == c0[2] + step[2] * xx);
            REQUIRE(x[at(z, y, xx) * 2 + 1] == -x[at(z, y, xx) * 2]);
            REQUIRE(l[at(z, y, xx)] == (c[0] + 2 * c[1] + 3 * c[2]) % 3);
          }
    }
  }
  for (int a = 0; a < 3; ++a) {
    CAPTURE(a);
    CHECK(std::abs(flips[static_cast<size_t>(a)] / double(n) - 0.5) < 0.1);  // 400 patches, sd 0.025
  }
}

TEST_CASE("with flip probability 0 patches keep the volume's orientation") {
  std::vector<Case> cases{coordinate_case({10, 12, 14})};
  PatchSamplerOptions opt;
  opt.patch = {4, 4, 4};
  opt.batch = 8;
  opt.augment = AugmentOptions::none();
  PatchSampler sampler(cases, {}, opt);
  PatchBatch b = sampler.next();
  const float* x = b.image.data<float>();
  for (int64_t k = 0; k < 8; ++k) {
    auto c0 = decode(x[k * 64 * 2]), c1 = decode(x[(k * 64 + 4 * 4 + 4 + 1) * 2]);  // voxel (1, 1, 1)
    CHECK(c1 == std::array<int64_t, 3>{c0[0] + 1, c0[1] + 1, c0[2] + 1});
    CHECK(c0 == b.origin[static_cast<size_t>(k)]);
  }
}

TEST_CASE("a volume smaller than the patch is zero-padded and centred in it") {
  std::vector<Case> cases{coordinate_case({4, 12, 5})};
  PatchSamplerOptions opt;
  opt.patch = {8, 6, 8};  // z: 4 padding (2 + 2); y: 6 of 12 fit; x: 3 padding (1 + 2)
  opt.batch = 6;
  opt.augment = AugmentOptions::none();
  PatchSampler sampler(cases, {}, opt);
  for (int i = 0; i < 10; ++i) {
    PatchBatch b = sampler.next();
    const float* x = b.image.data<float>();
    const int32_t* l = b.label.data<int32_t>();
    for (int64_t k = 0; k < 6; ++k) {
      CHECK(b.origin[static_cast<size_t>(k)][0] == -2);
      CHECK(b.origin[static_cast<size_t>(k)][2] == -1);
      for (int64_t z = 0; z < 8; ++z)
        for (int64_t y = 0; y < 6; ++y)
          for (int64_t xx = 0; xx < 8; ++xx) {
            int64_t v = ((k * 8 + z) * 6 + y) * 8 + xx;
            bool inside = z >= 2 && z < 6 && xx >= 1 && xx < 6;
            if (!inside) {
              REQUIRE(x[v * 2] == 0.0f);
              REQUIRE(x[v * 2 + 1] == 0.0f);
              REQUIRE(l[v] == 0);
            } else {
              auto c = decode(x[v * 2]);
              REQUIRE(c[0] == z - 2);
              REQUIRE(c[2] == xx - 1);
            }
          }
    }
  }
}

TEST_CASE("the patch sampler gives the same batches for the same seed and different ones for another") {
  DatasetInfo info = read_msd_dataset(synthetic_dataset());
  std::vector<Case> cases{load_case(info, 0), load_case(info, 1), load_case(info, 2)};
  PatchSamplerOptions opt;
  opt.patch = {12, 12, 12};
  opt.batch = 2;
  opt.seed = 9;
  PatchSampler a(cases, {}, opt), b(cases, {}, opt);
  opt.seed = 10;
  PatchSampler c(cases, {}, opt);
  bool any_difference = false;
  for (int i = 0; i < 5; ++i) {
    PatchBatch ba = a.next(), bb = b.next(), bc = c.next();
    CHECK(ba.image.to_vector() == bb.image.to_vector());
    CHECK(ba.label.to_vector() == bb.label.to_vector());
    any_difference = any_difference || ba.image.to_vector() != bc.image.to_vector();
  }
  CHECK(any_difference);
}

// nnU-Net v2 raw data made from an MSD dataset of two channels: one file per channel, labels named by value.
namespace {
std::string write_v2_from_msd(const test::TempDir& tmp, const DatasetInfo& msd, const std::string& ending) {
  const fs::path root = tmp / "Dataset001_Synth";
  fs::create_directories(root / "imagesTr");
  fs::create_directories(root / "labelsTr");
  for (const DatasetCase& c : msd.training) {
    const NiftiVolume img = read_nifti(c.image_paths[0]), lab = read_nifti(c.label_path);
    for (int64_t ch = 0; ch < img.data.dim(3); ++ch) {
      Tensor one = Tensor::empty({img.data.dim(0), img.data.dim(1), img.data.dim(2), 1});
      for (int64_t v = 0; v < one.numel(); ++v) one.data<float>()[v] = img.data.data<float>()[v * img.data.dim(3) + ch];
      char suffix[8];
      std::snprintf(suffix, sizeof suffix, "_%04d", static_cast<int>(ch));
      write_nifti((root / "imagesTr" / (c.id + suffix + ending)).string(), one,
                  make_nifti_like(one.shape(), img.spacing()));
    }
    write_nifti((root / "labelsTr" / (c.id + ending)).string(), lab.data, lab);
  }
  nlohmann::json j = {{"channel_names", {{"0", "MR"}, {"1", "T2"}}},
                      {"labels", {{"background", 0}, {"tubes", 2}, {"ellipsoids", 1}}},
                      {"numTraining", msd.training.size()},
                      {"file_ending", ending},
                      {"name", "Synth"}};
  std::ofstream(root / "dataset.json") << j.dump(2);
  return root.string();
}
}  // namespace

TEST_CASE("nnU-Net v2 raw data: one file per channel, labels by value, read as the same cases as the MSD layout") {
  test::TempDir tmp("v2");
  SynthOptions o;
  o.output = tmp / "msd";
  o.train = 4;
  o.test = 0;
  o.size = {12, 14, 16};
  o.channels = 2;
  write_synthetic_dataset(o);
  const DatasetInfo msd = read_dataset(o.output);
  CHECK(msd.format == "msd");
  const std::string dir = write_v2_from_msd(tmp, msd, ".nii.gz");
  const DatasetInfo v2 = read_dataset(dir);
  CHECK(v2.format == "nnunetv2");
  CHECK(v2.modalities == std::vector<std::string>{"MR", "T2"});
  CHECK(v2.labels == std::vector<std::string>{"background", "ellipsoids", "tubes"});
  REQUIRE(v2.training.size() == 4);
  for (size_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    CHECK(v2.training[i].id == msd.training[i].id);
    CHECK(v2.training[i].image_paths.size() == 2);
    const Case a = load_case(msd, i), b = load_case(v2, i);
    CHECK(b.image.shape() == a.image.shape());
    CHECK(b.image.to_vector() == a.image.to_vector());
    CHECK(b.label.to_vector() == a.label.to_vector());
  }
  // What goes wrong is named.
  const fs::path missing = fs::path(dir) / "imagesTr" / (msd.training[2].id + "_0001.nii.gz");
  fs::rename(missing, tmp / "aside.nii.gz");
  check_error_names([&] { read_dataset(dir); }, {missing.string(), "channel 1"});
  fs::rename(tmp / "aside.nii.gz", missing);
  const auto rewrite = [&](const std::string& key, const nlohmann::json& value) {
    nlohmann::json j = nlohmann::json::parse(std::ifstream(fs::path(dir) / "dataset.json"));
    j[key] = value;
    std::ofstream(fs::path(dir) / "dataset.json") << j.dump();
  };
  rewrite("numTraining", 5);
  check_error_names([&] { read_dataset(dir); }, {"numTraining", "says 5", "4 label files"});
  rewrite("numTraining", 4);
  // file_ending is matched exactly, as nnU-Net v2 does: a label file ending in it in another case is not one, and the
  // count's error names it.
  const fs::path label = fs::path(dir) / "labelsTr" / (msd.training[3].id + ".nii.gz");
  const fs::path upper = fs::path(dir) / "labelsTr" / (msd.training[3].id + ".NII.GZ");
  fs::rename(label, upper);
  check_error_names([&] { read_dataset(dir); }, {"numTraining", "says 4",
                                                 "3 label files *.nii.gz (" + upper.filename().string() +
                                                     " ends in file_ending '.nii.gz' in another case"});
  fs::rename(upper, label);
  // The key at fault is named: the file ending that matches no label (not numTraining), the missing channel_names
  // of a file with file_ending (not MSD's modality).
  rewrite("file_ending", ".nii");
  check_error_names([&] { read_dataset(dir); }, {"key 'file_ending'", "'.nii': no label files *.nii", "4 other file"});
  rewrite("file_ending", ".nii.gz");
  {
    nlohmann::json j = nlohmann::json::parse(std::ifstream(fs::path(dir) / "dataset.json"));
    const nlohmann::json names = j["channel_names"];
    j.erase("channel_names");
    std::ofstream(fs::path(dir) / "dataset.json") << j.dump();
    check_error_names([&] { read_dataset(dir); }, {"key 'channel_names'", "missing"});
    rewrite("channel_names", names);
  }
  // One channel listed, two files per case: the second used to be left out without a word.
  rewrite("channel_names", {{"0", "MR"}});
  check_error_names([&] { read_dataset(dir); },
                    {"key 'channel_names'", "lists 1 channel(s), but", "_0001.nii.gz is channel 1 of case"});
  // Two listed, and a stray channel 7 of one case (not the next index): refused too, naming it.
  rewrite("channel_names", {{"0", "MR"}, {"1", "T2"}});
  const fs::path stray = fs::path(dir) / "imagesTr" / (msd.training[1].id + "_0007.nii.gz");
  fs::copy_file(fs::path(dir) / "imagesTr" / (msd.training[1].id + "_0000.nii.gz"), stray);
  check_error_names([&] { read_dataset(dir); },
                    {"key 'channel_names'", "lists 2 channel(s), but", stray.string() + " is channel 7 of case"});
  fs::remove(stray);
  rewrite("labels", {{"background", 0}, {"whole", {1, 2}}});
  check_error_names([&] { read_dataset(dir); }, {"'whole' is a region", "not supported"});
  rewrite("labels", {{"background", 0}, {"ellipsoids", 1}, {"tubes", 2}, {"ignore", 3}});
  check_error_names([&] { read_dataset(dir); }, {"'ignore' is nnU-Net v2's ignore label", "not supported"});
  rewrite("labels", {{"background", 0}, {"a", 2}});
  check_error_names([&] { read_dataset(dir); }, {"'a' = 2", "consecutive integers 0..1"});
  // A label with an empty name: refused, and it cannot hide a repeated value (it used to leave its slot "free").
  rewrite("labels", {{"", 0}, {"background", 0}, {"a", 1}});
  check_error_names([&] { read_dataset(dir); }, {"key 'labels'", "a label with an empty name (value 0)"});
  rewrite("labels", {{"background", 0}, {"a", 1}, {"b", 1}});
  check_error_names([&] { read_dataset(dir); }, {"'b' and 'a' have the same value 1"});
  // Value 0 would be trained as the background under another name, and "background" as a foreground class.
  rewrite("labels", {{"background", 1}, {"a", 0}, {"b", 2}});
  check_error_names([&] { read_dataset(dir); }, {"key 'labels'", "'background' = 1: expected 0", "here it is 'a'"});
  rewrite("labels", {{"background", 0}, {"ellipsoids", 1}, {"tubes", 2}});
  rewrite("file_ending", ".mha");
  check_error_names([&] { read_dataset(dir); }, {"file_ending", "'.mha'"});
  rewrite("file_ending", ".nii.gz");
  // unet_train takes the directory as it is.
  const std::string ini = test::write_text(tmp / "t.ini", "[data]\ndataset = " + dir +
                                                              "\npatch_size = 8,8,8\nfolds = 1\n[model]\n"
                                                              "filters = 2\n[train]\nsteps = 2\n[output]\ndir = " +
                                                              (tmp / "run") + "\n");
  std::string out;
  CHECK_MESSAGE(test::run_tool("unet_train", ini, &out) == 0, out);
  CHECK(fs::exists(fs::path(tmp / "run") / "model.safetensors"));
}
