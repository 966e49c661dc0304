// The synthetic dataset generator (io/synthetic.h) and the unet_synth tool: MSD layout, label and intensity design,
// determinism, spacing in the NIfTI header, exit codes and no partial output.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "io/dataset.h"
#include "io/nifti.h"
#include "io/safetensors.h"
#include "io/synthetic.h"
#include "io/tiff.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::io;
namespace fs = std::filesystem;

namespace {

SynthOptions small_options(const std::string& output) {
  SynthOptions o;
  o.output = output;
  o.train = 6;
  o.test = 2;
  o.size = {32, 32, 32};
  return o;
}

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

nlohmann::json read_json(const std::string& path) {
  return nlohmann::json::parse(std::ifstream(path));
}

}  // namespace

TEST_CASE("unet_synth writes an MSD dataset.json that lists every image and label it wrote") {
  test::TempDir tmp("layout");
  REQUIRE(test::run_tool("unet_synth", "--output " + (tmp / "ds") + " --train 5 --test 2 --size 24,24,24 --seed 3") ==
          0);
  nlohmann::json j = read_json(tmp / "ds/dataset.json");
  for (const char* key : {"name", "description", "modality", "labels", "numTraining", "numTest", "training", "test"})
    CHECK_MESSAGE(j.contains(key), key);
  CHECK(j["modality"] == nlohmann::json{{"0", "SYN"}});
  CHECK(j["labels"] == nlohmann::json{{"0", "background"}, {"1", "ellipsoid"}, {"2", "tube"}});
  CHECK(j["numTraining"] == 5);
  CHECK(j["numTest"] == 2);
  REQUIRE(j["training"].size() == 5);
  REQUIRE(j["test"].size() == 2);
  CHECK(j["training"][0]["image"] == "./imagesTr/case_000.nii.gz");
  CHECK(j["training"][0]["label"] == "./labelsTr/case_000.nii.gz");
  CHECK(j["test"][0] == "./imagesTs/case_005.nii.gz");
  for (auto& t : j["training"]) {
    CHECK(fs::is_regular_file(tmp / ("ds/" + t["image"].get<std::string>())));
    CHECK(fs::is_regular_file(tmp / ("ds/" + t["label"].get<std::string>())));
  }
  for (auto& t : j["test"]) {
    std::string image = t.get<std::string>(), label = image;
    label.replace(label.find("imagesTs"), 8, "labelsTs");
    CHECK(fs::is_regular_file(tmp / ("ds/" + image)));
    CHECK(fs::is_regular_file(tmp / ("ds/" + label)));  // test labels, for Dice on unseen cases
  }
  CHECK(j["description"].get<std::string>().find("labelsTs") != std::string::npos);
  CHECK(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator()) == 1);  // no staging leftovers
}

TEST_CASE("synthetic labels are u8 class values and every class appears in most cases") {
  SynthOptions o = small_options("");
  o.output = "unused";
  o.classes = 4;
  std::vector<int> cases_with_class(4, 0);
  const int n = 10;
  for (int i = 0; i < n; ++i) {
    SynthCase c = make_synthetic_case(o, i);
    REQUIRE(c.label.dtype() == DType::u8);
    CHECK(c.label.shape() == Shape{32, 32, 32});
    CHECK(c.image.shape() == Shape{32, 32, 32, 1});
    std::vector<bool> present(4, false);
    const uint8_t* l = c.label.data<uint8_t>();
    for (int64_t v = 0; v < c.label.numel(); ++v) {
      REQUIRE(l[v] < 4);
      present[l[v]] = true;
    }
    for (int k = 0; k < 4; ++k) cases_with_class[static_cast<size_t>(k)] += present[static_cast<size_t>(k)];
  }
  for (int k = 0; k < 4; ++k) CHECK_MESSAGE(cases_with_class[static_cast<size_t>(k)] >= 8, "class " << k);
}

TEST_CASE("synthetic image intensities differ per class as designed, in reverse order in odd channels") {
  SynthOptions o = small_options("unused");
  o.channels = 2;
  o.classes = 4;
  // Mean intensity per (channel, class) over the interior voxels (all 6 neighbours of the same class) of several
  // cases; edge voxels blend with their neighbours by design (partial volume).
  std::vector<double> sum(8, 0.0), count(8, 0.0);
  for (int i = 0; i < 12; ++i) {
    SynthCase c = make_synthetic_case(o, i);
    const float* x = c.image.data<float>();
    const uint8_t* l = c.label.data<uint8_t>();
    const int64_t n = 32;
    for (int64_t z = 1; z < n - 1; ++z)
      for (int64_t y = 1; y < n - 1; ++y)
        for (int64_t xx = 1; xx < n - 1; ++xx) {
          int64_t v = (z * n + y) * n + xx;
          bool interior = true;
          for (int64_t d : {int64_t(1), n, n * n}) interior = interior && l[v + d] == l[v] && l[v - d] == l[v];
          if (!interior) continue;
          for (int ch = 0; ch < 2; ++ch) {
            sum[static_cast<size_t>(ch * 4 + l[v])] += x[v * 2 + ch];
            count[static_cast<size_t>(ch * 4 + l[v])] += 1;
          }
        }
  }
  std::vector<double> mean(8);
  for (int ch = 0; ch < 2; ++ch)
    for (int k = 0; k < 4; ++k) {
      CAPTURE(ch);
      CAPTURE(k);
      size_t i = static_cast<size_t>(ch * 4 + k);
      REQUIRE(count[i] > 100);
      mean[i] = sum[i] / count[i];
      double design = synthetic_class_mean(ch, k, 4);
      // The bias field (within [0.6, 1.4], mean about 1) and texture move a class mean by a fraction of it.
      CHECK(std::abs(mean[i] - design) < 0.2 * design);
    }
  for (int k = 1; k < 4; ++k) {
    CHECK(mean[static_cast<size_t>(k)] > mean[static_cast<size_t>(k - 1)] + 100);  // channel 0: brighter with k
    if (k > 1)
      CHECK(mean[static_cast<size_t>(4 + k)] < mean[static_cast<size_t>(4 + k - 1)] - 100);  // channel 1: darker
    CHECK(mean[static_cast<size_t>(4 + k)] > mean[4] + 100);  // background darkest in both
  }
  CHECK(synthetic_class_mean(0, 1, 4) < synthetic_class_mean(0, 2, 4));
  CHECK(synthetic_class_mean(0, 2, 4) < synthetic_class_mean(0, 3, 4));
  CHECK(synthetic_class_mean(1, 1, 4) > synthetic_class_mean(1, 2, 4));
  CHECK(synthetic_class_mean(1, 2, 4) > synthetic_class_mean(1, 3, 4));
  for (int ch = 0; ch < 2; ++ch)
    for (int k = 1; k < 4; ++k) CHECK(synthetic_class_mean(ch, k, 4) - synthetic_class_mean(ch, 0, 4) >= 150.0);
}

namespace {

// Per case: the noise std estimated from neighbour differences in deep background (every voxel within 3 of both is
// background, so the blurred edges do not reach it: 2 sigma^2 = E[(a - b)^2]), the interior mean of each class, and the
// sharpness of the edges: the mean squared step across class boundaries along x, less the noise's part, over the mean
// squared difference of the two classes' interior means.
struct ScanStats {
  double noise = 0;
  std::vector<double> class_mean;
  double sharpness = 0;
};
ScanStats scan_stats(const SynthCase& c, int classes) {
  const int64_t n = c.label.shape()[0];
  const float* x = c.image.data<float>();
  const uint8_t* l = c.label.data<uint8_t>();
  auto idx = [n](int64_t z, int64_t y, int64_t xx) { return (z * n + y) * n + xx; };
  auto all_background = [&](int64_t z, int64_t y, int64_t xx, int64_t r) {
    for (int64_t dz = -r; dz <= r; ++dz)
      for (int64_t dy = -r; dy <= r; ++dy)
        for (int64_t dx = -r; dx <= r; ++dx)
          if (l[idx(z + dz, y + dy, xx + dx)] != 0) return false;
    return true;
  };
  ScanStats st;
  std::vector<double> sum(static_cast<size_t>(classes), 0.0), count(static_cast<size_t>(classes), 0.0);
  double d2 = 0, pairs = 0;
  for (int64_t z = 3; z < n - 3; ++z)
    for (int64_t y = 3; y < n - 3; ++y)
      for (int64_t xx = 3; xx < n - 4; ++xx) {
        const int64_t v = idx(z, y, xx);
        const double step = static_cast<double>(x[v + 1]) - x[v];
        if (all_background(z, y, xx, 3) && all_background(z, y, xx + 1, 3)) {
          d2 += step * step;
          pairs += 1;
        }
        bool interior = true;  // the class all around, 2 voxels deep (past most of the blur)
        for (int64_t d = -2; d <= 2; ++d)
          interior = interior && l[idx(z + d, y, xx)] == l[v] && l[idx(z, y + d, xx)] == l[v] && l[v + d] == l[v];
        if (interior) {
          sum[l[v]] += x[v];
          count[l[v]] += 1;
        }
      }
  REQUIRE(pairs > 500);
  st.noise = std::sqrt(d2 / pairs / 2);
  for (int k = 0; k < classes; ++k) st.class_mean.push_back(count[k] > 50 ? sum[k] / count[k] : -1);
  double e2 = 0, c2 = 0, edges = 0;
  for (int64_t v = 0; v + 1 < c.label.numel(); ++v) {
    const double ma = st.class_mean[l[v]], mb = st.class_mean[l[v + 1]];
    if ((v + 1) % n == 0 || l[v] == l[v + 1] || ma < 0 || mb < 0) continue;
    const double step = static_cast<double>(x[v + 1]) - x[v];
    e2 += step * step - 2 * st.noise * st.noise;
    c2 += (ma - mb) * (ma - mb);
    edges += 1;
  }
  REQUIRE(edges > 100);
  st.sharpness = e2 / c2;
  return st;
}

}  // namespace

TEST_CASE("--scanner-variation scans each case differently (noise, blur, contrast) over the same anatomy") {
  SynthOptions plain = small_options("unused"), varied = plain;
  varied.scanner_variation = true;
  const int cases = 8;
  std::vector<double> blur, sharpness;
  for (int i = 0; i < cases; ++i) {
    CAPTURE(i);
    const SynthAcquisition a = synthetic_acquisition(varied, i), none = synthetic_acquisition(plain, i);
    CHECK(none.noise_std == kSynthNoiseStd);
    CHECK(none.blur == 0);
    CHECK(none.gamma == 1);
    CHECK(a.noise_std >= 0.5 * kSynthNoiseStd);
    CHECK(a.noise_std <= 2 * kSynthNoiseStd);
    CHECK(a.blur >= 0);
    CHECK(a.blur <= 1.5);
    CHECK(a.gamma >= 0.7);
    CHECK(a.gamma <= 1.4);
    const SynthCase p = make_synthetic_case(plain, i), v = make_synthetic_case(varied, i);
    REQUIRE(p.label.numel() == v.label.numel());
    CHECK(std::equal(p.label.data<uint8_t>(), p.label.data<uint8_t>() + p.label.numel(), v.label.data<uint8_t>()));
    const ScanStats sp = scan_stats(p, plain.classes), sv = scan_stats(v, varied.classes);
    CHECK(sp.noise == doctest::Approx(kSynthNoiseStd).epsilon(0.1));
    CHECK(sv.noise == doctest::Approx(a.noise_std).epsilon(0.1));
    // Contrast: each class's interior mean as bg * (mean without / bg)^gamma (the bias field and texture are the same
    // in both, and nearly commute with the power law over a class's interior).
    const double bg = synthetic_class_mean(0, 0, plain.classes);
    for (int k = 1; k < plain.classes; ++k) {
      CAPTURE(k);
      if (sp.class_mean[k] < 0 || sv.class_mean[k] < 0) continue;  // too few interior voxels in this case
      CHECK(sv.class_mean[k] == doctest::Approx(bg * std::pow(sp.class_mean[k] / bg, a.gamma)).epsilon(0.08));
    }
    blur.push_back(a.blur);
    sharpness.push_back(sv.sharpness);
  }
  // The sharpest and the most blurred case, by the drawn sigma, in that order by the measured edges.
  const size_t sharp = static_cast<size_t>(std::min_element(blur.begin(), blur.end()) - blur.begin());
  const size_t soft = static_cast<size_t>(std::max_element(blur.begin(), blur.end()) - blur.begin());
  REQUIRE(blur[soft] - blur[sharp] > 0.8);
  CHECK(sharpness[soft] < 0.6 * sharpness[sharp]);
}

TEST_CASE("--scanner-variation is refused for --format isbi") {
  SynthOptions o = small_options("unused");
  o.format = "isbi";
  o.dim = 2;
  o.size = {1, 32, 32};
  o.classes = 2;
  o.scanner_variation = true;
  CHECK_THROWS_WITH_AS(validate_synth_options(o), doctest::Contains("--scanner-variation"), SynthOptionsError);
}

TEST_CASE("the same seed writes byte-identical datasets") {
  test::TempDir tmp("same_seed");
  SynthOptions a = small_options(tmp / "a"), b = small_options(tmp / "b");
  write_synthetic_dataset(a);
  write_synthetic_dataset(b);
  for (const char* f : {"dataset.json", "imagesTr/case_000.nii.gz", "labelsTr/case_005.nii.gz",
                        "imagesTs/case_007.nii.gz", "labelsTs/case_006.nii.gz"}) {
    CAPTURE(f);
    std::string fa = file_bytes(tmp / (std::string("a/") + f)), fb = file_bytes(tmp / (std::string("b/") + f));
    CHECK(!fa.empty());
    CHECK(fa == fb);
  }
}

TEST_CASE("different seeds give different images and labels") {
  test::TempDir tmp("other_seed");
  SynthOptions a = small_options(tmp / "a"), b = small_options(tmp / "b");
  b.seed = 1;
  write_synthetic_dataset(a);
  write_synthetic_dataset(b);
  CHECK(file_bytes(tmp / "a/imagesTr/case_000.nii.gz") != file_bytes(tmp / "b/imagesTr/case_000.nii.gz"));
  CHECK(file_bytes(tmp / "a/labelsTr/case_000.nii.gz") != file_bytes(tmp / "b/labelsTr/case_000.nii.gz"));
  // ... and the cases of one dataset differ from each other.
  CHECK(file_bytes(tmp / "a/labelsTr/case_000.nii.gz") != file_bytes(tmp / "a/labelsTr/case_001.nii.gz"));
}

TEST_CASE("anisotropic spacing is written into pixdim and shapes keep their size in millimetres") {
  test::TempDir tmp("aniso");
  SynthOptions iso = small_options(tmp / "iso"), aniso = small_options(tmp / "aniso");
  aniso.size = {16, 32, 32};  // same 32 mm extent with 2 mm slices
  aniso.spacing = {2.0, 1.0, 1.0};
  write_synthetic_dataset(iso);
  write_synthetic_dataset(aniso);
  NiftiVolume img = read_nifti(tmp / "aniso/imagesTr/case_000.nii.gz");
  NiftiVolume lab = read_nifti(tmp / "aniso/labelsTr/case_000.nii.gz");
  CHECK(img.data.shape() == Shape{16, 32, 32, 1});
  for (const NiftiVolume* v : {&img, &lab}) {
    CHECK(v->spacing()[0] == 2.0);
    CHECK(v->spacing()[1] == 1.0);
    CHECK(v->spacing()[2] == 1.0);
    NiftiGeometry g = v->geometry();
    CHECK(g.pixdim[3] == 2.0);
    CHECK(g.qto_xyz[2][2] == 2.0);  // the z axis of the affine
    CHECK(g.sto_xyz[2][2] == 2.0);
  }
  // The same seed places the same shapes in mm: the foreground volume in mm^3 agrees up to the coarser sampling.
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    auto fg_mm3 = [&](const std::string& dir, double voxel_mm3) {
      NiftiVolume l = read_nifti(tmp / (dir + "/labelsTr/" + synthetic_case_id(iso, i) + ".nii.gz"));
      double n = 0;
      for (float v : l.data.to_vector()) n += v > 0;
      return n * voxel_mm3;
    };
    double a = fg_mm3("iso", 1.0), b = fg_mm3("aniso", 2.0);
    CHECK(a > 0);
    CHECK(std::abs(a - b) < 0.2 * a);
  }
}

TEST_CASE("multi-channel synthetic images are written as 4D NIfTI with one modality per channel") {
  test::TempDir tmp("channels");
  SynthOptions o = small_options(tmp / "ds");
  o.train = 1;
  o.test = 0;
  o.channels = 3;
  write_synthetic_dataset(o);
  NiftiVolume img = read_nifti(tmp / "ds/imagesTr/case_000.nii.gz");
  CHECK(img.data.shape() == Shape{32, 32, 32, 3});
  CHECK(img.geometry().dim[0] == 4);
  nlohmann::json j = read_json(tmp / "ds/dataset.json");
  CHECK(j["modality"].size() == 3);
  CHECK(j["tensorImageSize"] == "4D");
  CHECK(j["test"].empty());
}

TEST_CASE("unet_synth prints help with status 0 and rejects bad arguments with status 2") {
  test::TempDir tmp("args");
  CHECK(test::run_tool("unet_synth", "--help") == 0);
  CHECK(test::run_tool("unet_synth", "") == 2);  // --output is required
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "x") + " --train -1") == 2);
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "x") + " --size 48,48") == 2);
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "x") + " --size 4,48,48") == 2);
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "x") + " --spacing 1,0,1") == 2);
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "x") + " --classes 1") == 2);
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "x") + " --bogus") == 2);
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "no/such/parent/x")) == 2);
  CHECK(!fs::exists(tmp / "x"));
}

TEST_CASE("unet_synth never overwrites a directory that is not a dataset, and replaces a dataset only when asked") {
  test::TempDir tmp("overwrite");
  fs::create_directories(tmp / "notes");
  std::ofstream(tmp / "notes/keep.txt") << "mine";
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "notes") + " --train 1 --test 0 --size 8 --overwrite") == 2);
  CHECK(fs::exists(tmp / "notes/keep.txt"));
  CHECK(!fs::exists(tmp / "notes/dataset.json"));

  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "ds") + " --train 2 --test 0 --size 8") == 0);
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "ds") + " --train 1 --test 0 --size 8") == 2);
  CHECK(read_json(tmp / "ds/dataset.json")["numTraining"] == 2);
  fs::create_directories(tmp /
                         "ds/unet_preprocessed");  // unet_train's cache of it (data.cache = auto): stale, replaced
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "ds") + " --train 1 --test 0 --size 8 --overwrite") == 0);
  CHECK(!fs::exists(tmp / "ds/unet_preprocessed"));
  CHECK(read_json(tmp / "ds/dataset.json")["numTraining"] == 1);
  CHECK(!fs::exists(tmp / "ds/imagesTr/case_001.nii.gz"));  // the old dataset is gone, not merged
  CHECK(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator()) == 2);  // notes, ds

  // A dataset with the same layout that unet_synth did not write (a downloaded MSD task: no .unet_synth), and one of
  // ours holding a file it did not write: --overwrite refuses both and leaves them as they were.
  fs::create_directories(tmp / "msd/imagesTr");
  std::ofstream(tmp / "msd/dataset.json") << "{}";
  std::ofstream(tmp / "msd/imagesTr/spleen_2.nii.gz") << "x";
  std::string out;
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "msd") + " --train 1 --test 0 --size 8 --overwrite", &out) ==
        2);
  CHECK_MESSAGE(out.find("holds a dataset that unet_synth did not write (no .unet_synth)") != std::string::npos, out);
  CHECK(fs::exists(tmp / "msd/imagesTr/spleen_2.nii.gz"));
  std::ofstream(tmp / "ds/notes.txt") << "mine";
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "ds") + " --train 1 --test 0 --size 8 --overwrite", &out) ==
        2);
  CHECK_MESSAGE(out.find("also holds notes.txt, which unet_synth did not write") != std::string::npos, out);
  CHECK(fs::exists(tmp / "ds/notes.txt"));
  CHECK(fs::exists(tmp / "ds/imagesTr/case_000.nii.gz"));
  // The same inside a case folder (it used to be deleted with the dataset).
  fs::remove(tmp / "ds/notes.txt");
  std::ofstream(tmp / "ds/labelsTr/notes.txt") << "mine";
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "ds") + " --train 1 --test 0 --size 8 --overwrite", &out) ==
        2);
  CHECK_MESSAGE(out.find("also holds labelsTr/notes.txt, which unet_synth did not write") != std::string::npos, out);
  CHECK(fs::exists(tmp / "ds/labelsTr/notes.txt"));
  fs::remove(tmp / "ds/labelsTr/notes.txt");
  // A case the user added under unet_synth's names, and a label the user corrected: not what unet_synth wrote (the
  // marker lists each file's size and digest), so neither is deleted.
  fs::copy_file(tmp / "ds/imagesTr/case_000.nii.gz", tmp / "ds/imagesTr/case_777.nii.gz");
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "ds") + " --train 1 --test 0 --size 8 --overwrite", &out) ==
        2);
  CHECK_MESSAGE(out.find("also holds imagesTr/case_777.nii.gz, which unet_synth did not write") != std::string::npos,
                out);
  CHECK(fs::exists(tmp / "ds/imagesTr/case_777.nii.gz"));
  fs::remove(tmp / "ds/imagesTr/case_777.nii.gz");
  std::ifstream saved(tmp / "ds/labelsTr/case_000.nii.gz", std::ios::binary);
  const std::string label((std::istreambuf_iterator<char>(saved)), {});
  saved.close();
  fs::copy_file(tmp / "ds/imagesTr/case_000.nii.gz", tmp / "ds/labelsTr/case_000.nii.gz",
                fs::copy_options::overwrite_existing);
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "ds") + " --train 1 --test 0 --size 8 --overwrite", &out) ==
        2);
  CHECK_MESSAGE(out.find("holds labelsTr/case_000.nii.gz changed since unet_synth wrote it") != std::string::npos, out);
  std::ofstream(tmp / "ds/labelsTr/case_000.nii.gz", std::ios::binary) << label;
  // unet_train's cache (data.cache = auto) is replaced with the dataset, but not a run or a file kept there.
  fs::create_directories(tmp / "ds/unet_preprocessed");
  std::ofstream(tmp / "ds/unet_preprocessed/fingerprint.json") << R"({"format": "unet preprocessed case 2"})";
  io::write_safetensors(tmp / "ds/unet_preprocessed/case_000.preprocessed.safetensors",
                        {{"image", Tensor::zeros({2, 2, 2, 1})}}, {{"format", "unet preprocessed case 2"}});
  // A user's file named like a cache file is no cache file: refused by its content, not deleted.
  std::ofstream(tmp / "ds/unet_preprocessed/mywork.preprocessed.safetensors") << "precious";
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "ds") + " --train 1 --test 0 --size 8 --overwrite", &out) ==
        2);
  CHECK_MESSAGE(out.find("also holds unet_preprocessed/mywork.preprocessed.safetensors, which is not unet_train's "
                         "preprocessed cache") != std::string::npos,
                out);
  fs::remove(tmp / "ds/unet_preprocessed/mywork.preprocessed.safetensors");
  std::ofstream(tmp / "ds/unet_preprocessed/model.safetensors") << "a run's";
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "ds") + " --train 1 --test 0 --size 8 --overwrite", &out) ==
        2);
  CHECK_MESSAGE(out.find("also holds unet_preprocessed/model.safetensors, which is not unet_train's preprocessed "
                         "cache") != std::string::npos,
                out);
  CHECK(fs::exists(tmp / "ds/unet_preprocessed/model.safetensors"));
  fs::remove(tmp / "ds/unet_preprocessed/model.safetensors");
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "ds") + " --train 1 --test 0 --size 8 --overwrite", &out) ==
        0);
  CHECK_FALSE(fs::exists(tmp / "ds/unet_preprocessed"));
  // Through a link: the dataset it points to is replaced, and the link stays a link (it became a directory).
  fs::create_directory_symlink(tmp / "ds", tmp / "link");
  CHECK(test::run_tool("unet_synth", "--output " + (tmp / "link") + " --train 3 --test 0 --size 8 --overwrite", &out) ==
        0);
  CHECK(fs::is_symlink(tmp / "link"));
  CHECK(read_json(tmp / "ds/dataset.json")["numTraining"] == 3);
  // Run from inside the dataset: refused (the shell would be left in a deleted directory), nothing changed.
  CHECK(test::shell("cd " + (tmp / "ds/imagesTr") + " && " + test::tool_path("unet_synth") +
                        " --output .. --train 1 --test 0 --size 8 --overwrite",
                    &out) == 2);
  CHECK_MESSAGE(out.find("is the current directory or holds it") != std::string::npos, out);
  CHECK(read_json(tmp / "ds/dataset.json")["numTraining"] == 3);
}

TEST_CASE("unet_synth ended by SIGTERM or SIGHUP leaves no staging directory behind") {
  // (SIGINT takes the same handler; sh starts background jobs with it ignored, and an ignored signal stays ignored.)
  for (std::string sig : {"TERM", "HUP"}) {
    CAPTURE(sig);
    test::TempDir tmp("synth_signal");
    // The staging directory is .d.tmpPID beside d; the signal comes once it holds a case or two.
    std::string out;
    const std::string cmd = "cd " + tmp.path + " && " + test::tool_path("unet_synth") +
                            " --output d --train 400 --test 0 --size 48 >/dev/null 2>&1 & pid=$!; "
                            "for i in $(seq 200); do ls -A " +
                            tmp.path +
                            "/.d.tmp$pid/imagesTr 2>/dev/null | grep -q . "
                            "&& break; sleep 0.05; done; kill -" +
                            sig + " $pid; wait $pid; echo status $?";
    test::shell(cmd, &out);
    CHECK_MESSAGE(out.find("status 1") != std::string::npos, out);  // 128 + the signal: 143 or 129
    std::vector<std::string> left;
    for (const auto& e : fs::directory_iterator(tmp.path)) left.push_back(e.path().filename().string());
    CHECK_MESSAGE(left.empty(), "left behind: " << (left.empty() ? "" : left[0]));
  }
}

TEST_CASE("a failed synthesis leaves neither a dataset nor staging files behind") {
  test::TempDir tmp("failure");
  // A file where the dataset's parent directory should be: the output cannot be created.
  std::ofstream(tmp / "blocker") << "x";
  SynthOptions o = small_options(tmp / "blocker/ds");
  CHECK_THROWS(write_synthetic_dataset(o));
  CHECK(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator()) == 1);
}

TEST_CASE("unet_synth --format nnunetv2 and isbi write the same cases in those layouts, which read_dataset reads") {
  test::TempDir tmp("synth_formats");
  SynthOptions o;
  o.train = 3;
  o.test = 1;
  o.size = {8, 24, 28};
  o.channels = 2;
  o.classes = 3;
  o.output = tmp / "msd";
  write_synthetic_dataset(o);
  o.format = "nnunetv2";
  o.output = tmp / "v2";
  write_synthetic_dataset(o);
  const DatasetInfo msd = read_dataset(tmp / "msd"), v2 = read_dataset(tmp / "v2");
  CHECK(v2.format == "nnunetv2");
  CHECK(v2.labels == msd.labels);
  REQUIRE(v2.training.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    const Case a = load_case(msd, i), b = load_case(v2, i);
    CHECK(b.image.to_vector() == a.image.to_vector());
    CHECK(b.label.to_vector() == a.label.to_vector());
  }
  CHECK(fs::exists(tmp / "v2/imagesTs/case_003_0001.nii.gz"));
  CHECK(fs::exists(tmp / "v2/labelsTs/case_003.nii.gz"));

  // ISBI: one EM-like page a case (make_synthetic_em_page), 8-bit, labels 0 (membrane) / 255 (cell).
  o.channels = 1;
  o.classes = 2;
  o.format = "isbi";
  o.dim = 2;
  o.size = {1, 64, 72};
  o.output = tmp / "isbi";
  write_synthetic_dataset(o);
  const DatasetInfo isbi = read_dataset(tmp / "isbi");
  CHECK(isbi.format == "isbi2012");
  REQUIRE(isbi.training.size() == 3);
  const TiffVolume test_labels = read_tiff(tmp / "isbi/test-labels.tif");
  CHECK(test_labels.data.shape() == Shape{1, 64, 72, 1});
  for (int i = 0; i < 4; ++i) {
    CAPTURE(i);
    const SynthPage p = make_synthetic_em_page(o, i);
    std::vector<float> image(p.image.numel()), label(p.label.numel());
    int64_t cells = 0;
    double cell_sum = 0, membrane_sum = 0;
    for (int64_t v = 0; v < p.image.numel(); ++v) {
      const uint8_t y = p.label.data<uint8_t>()[v], x = p.image.data<uint8_t>()[v];
      REQUIRE((y == 0 || y == 255));
      image[size_t(v)] = x;
      label[size_t(v)] = y / 255;
      cells += y == 255;
      (y == 255 ? cell_sum : membrane_sum) += x;
    }
    // Like ISBI 2012, mostly cell (about 70%), with membranes clearly darker on average.
    const double cell_fraction = double(cells) / double(p.label.numel());
    CHECK(cell_fraction > 0.55);
    CHECK(cell_fraction < 0.85);
    CHECK(cell_sum / cells > membrane_sum / double(p.label.numel() - cells) + 50);
    if (i < 3) {
      const Case k = load_case(isbi, size_t(i));
      CHECK(k.image.to_vector() == image);
      CHECK(k.label.to_vector() == label);
    } else {
      const std::vector<float> t = test_labels.data.to_vector();
      for (size_t v = 0; v < t.size(); ++v) REQUIRE(t[v] == label[v] * 255.f);
    }
  }
  // Same seed, same page; another seed, another page.
  CHECK(make_synthetic_em_page(o, 1).image.to_vector() == make_synthetic_em_page(o, 1).image.to_vector());
  SynthOptions other = o;
  other.seed = 9;
  CHECK(make_synthetic_em_page(other, 1).label.to_vector() != make_synthetic_em_page(o, 1).label.to_vector());
  o.dim = 3;
  o.size = {8, 64, 72};
  CHECK_THROWS_WITH_AS(write_synthetic_dataset(o), doctest::Contains("--dim 2"), SynthOptionsError);
  o.dim = 2;
  o.size = {1, 64, 72};
  o.classes = 3;
  CHECK_THROWS_WITH_AS(write_synthetic_dataset(o), doctest::Contains("--classes 2"), SynthOptionsError);
}

TEST_CASE("unet_synth --dim 2: 2D cases are the middle plane of the 3D shapes, read back as one-slice volumes") {
  test::TempDir tmp("synth_dim2");
  SynthOptions o;
  o.train = 2;
  o.test = 0;
  o.dim = 2;
  o.size = {1, 40, 48};
  o.classes = 3;
  o.output = tmp / "msd2";
  write_synthetic_dataset(o);
  const DatasetInfo info = read_dataset(tmp / "msd2");
  for (size_t i = 0; i < 2; ++i) {
    const Case k = load_case(info, i);
    REQUIRE(k.image.shape() == Shape{1, 40, 48, 1});
    // The plane cuts the shapes of a volume as deep as the slice is wide: they show at their 3D size, not as slivers.
    SynthOptions deep = o;
    deep.dim = 3;
    deep.size = {40, 40, 48};
    const SynthCase volume = make_synthetic_case(deep, int(i));
    const SynthCase slice = make_synthetic_case(o, int(i));
    CHECK(k.label.to_vector() == slice.label.to_vector());
    const int64_t plane = 40 * 48;
    int64_t same = 0;
    for (int64_t v = 0; v < plane; ++v)
      same += volume.label.data<uint8_t>()[20 * plane + v] == slice.label.data<uint8_t>()[v];
    CHECK(same == plane);  // the same shapes: the 3D volume's slice z = 20 (20 mm, its middle) is the 2D case
  }
  o.size = {8, 40, 48};
  CHECK_THROWS_WITH_AS(write_synthetic_dataset(o), doctest::Contains("--dim 2: the z size must be 1"),
                       SynthOptionsError);
}
