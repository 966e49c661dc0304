// DLE UNet_Medical's ISBI 2012 pipeline (io/dle.h, data.pipeline = dle_isbi): the half-pixel bilinear resize against
// ops::upsample_bilinear (itself equal to PyTorch's F.interpolate, tests/test_golden.cpp), the labels' threshold,
// each augmentation against what it must do to known images, and training + inference through the tools.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "engine/ops.h"
#include "engine/random.h"
#include "io/dle.h"
#include "io/tiff.h"
#include "models/checkpoint.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::io;
namespace fs = std::filesystem;

TEST_CASE("dle resize: half-pixel bilinear, equal to ops::upsample_bilinear (PyTorch's, TF2's) down and up") {
  Rng rng(1);
  const Tensor image = randn({2, 17, 13, 3}, rng);  // [Z, Y, X, C]: the Z slices resized alike
  for (const auto& [h, w] : std::vector<std::pair<int64_t, int64_t>>{{9, 7}, {30, 26}, {17, 4}}) {
    CAPTURE(h);
    CAPTURE(w);
    // The op computes in f32 (source positions as PyTorch does), this in double: within 1e-5.
    test::check_close(resize_planes(image, h, w), ops::upsample_bilinear(image, {h, w}, false), 1e-5, 1e-5,
                      "resized planes");
  }
  // Two classes: foreground where its interpolated indicator is >= 0.5 (DLE's threshold).
  std::vector<float> l(2 * 17 * 13);
  for (size_t i = 0; i < l.size(); ++i) l[i] = float(rng.below(2));
  const Tensor labels = Tensor::from_vector({2, 17, 13}, l, DType::u8);
  const std::vector<float> got = resize_label_planes(labels, 9, 7, 2).to_vector();
  const std::vector<float> fg = resize_planes(Tensor::from_vector({2, 17, 13, 1}, l), 9, 7).to_vector();
  for (size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == (fg[i] >= 0.5f ? 1.f : 0.f));
  // DLE's intensities.
  Tensor x = Tensor::from_vector({1, 1, 3, 1}, {0.f, 127.5f, 255.f});
  dle_normalize(x, "x.tif");
  CHECK(x.to_vector() == std::vector<float>{-1.f, 0.f, 1.f});
  // A 16-bit page (255 * 257) would saturate: refused, named with the value and where it is.
  Tensor wide = Tensor::from_vector({2, 2, 3, 1}, {0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f, 8.f, 9.f, 65535.f, 11.f});
  CHECK_THROWS_WITH_AS(dle_normalize(wide, "wide.tif"),
                       "wide.tif: value 65535 at page 2, row 1, column 1; DLE's ISBI pipeline (data.pipeline = "
                       "dle_isbi) scales 8-bit images as x / 127.5 - 1: expected values 0 to 255 (convert the stack "
                       "to 8 bits, or use the nnU-Net pipeline)",
                       std::runtime_error);
}

namespace {
// A [1, n, n] sample of 1 channel with image f(y, x) and label g(y, x).
Sample ramp(int64_t n, double slope_y, double slope_x) {
  Sample s({1, n, n}, 1);
  for (int64_t y = 0; y < n; ++y)
    for (int64_t x = 0; x < n; ++x) {
      s.image[size_t(y * n + x)] = float(-0.9 + slope_y * double(y) + slope_x * double(x));
      s.label[size_t(y * n + x)] = x >= n / 2 ? 1 : 0;
    }
  return s;
}
}  // namespace

TEST_CASE("dle augmentation: flips of y and x, crop-and-resize over a box within 30% of each side, brightness, clip") {
  Rng rng(2);
  const int64_t n = 21;
  // Nothing drawn on: only the clip to [-1, 1].
  Sample s = ramp(n, 0.1, 0.0);
  const Sample before = s;
  dle_isbi_augment(s, 0, 0, 0, 2, rng);
  for (size_t i = 0; i < s.image.size(); ++i) REQUIRE(s.image[i] == std::clamp(before.image[i], -1.f, 1.f));
  CHECK(s.label == before.label);
  // Flips: y and x reversed, image and label together.
  s = before;
  const AugmentRecord f = dle_isbi_augment(s, 1, 0, 0, 2, rng);
  CHECK(f.flip == std::array<bool, 3>{false, true, true});
  for (int64_t y = 0; y < n; ++y)
    for (int64_t x = 0; x < n; ++x) {
      REQUIRE(s.label[size_t(y * n + x)] == before.label[size_t((n - 1 - y) * n + (n - 1 - x))]);
      REQUIRE(s.image[size_t(y * n + x)] == std::clamp(before.image[size_t((n - 1 - y) * n + (n - 1 - x))], -1.f, 1.f));
    }
  // Crop and resize of a ramp in x (within [-1, 1]): bilinear reproduces it exactly, so the output is the ramp over
  // the box: it starts at left (n - 1) and ends at right (n - 1), left < 0.3, right > 0.7 (in units of n - 1).
  for (int trial = 0; trial < 20; ++trial) {
    Sample c = ramp(n, 0.0, 0.08);
    dle_isbi_augment(c, 0, 1, 0, 2, rng);
    const double a = (c.image[0] + 0.9) / 0.08, b = (c.image[size_t(n - 1)] + 0.9) / 0.08;
    CHECK(a >= -1e-4);
    CHECK(a < 0.3 * double(n - 1) + 1e-4);
    CHECK(b > 0.7 * double(n - 1) - 1e-4);
    CHECK(b <= double(n - 1) + 1e-4);
    for (int64_t x = 1; x + 1 < n; ++x)  // evenly spaced samples: second differences vanish
      REQUIRE(std::abs(c.image[size_t(x + 1)] - 2 * c.image[size_t(x)] + c.image[size_t(x - 1)]) < 1e-5);
    // The label edge (x >= n / 2 in the input) moves with the box: foreground where the sample lands at >= n / 2.
    for (int64_t x = 0; x < n; ++x) {
      const double src = (c.image[size_t(x)] + 0.9) / 0.08;
      if (std::abs(src - double(n / 2) + 0.5) > 0.51)  // away from the interpolated edge
        REQUIRE(c.label[size_t(x)] == (src >= double(n / 2) ? 1 : 0));
    }
  }
  // Brightness: one delta in [-0.2, 0.2] added everywhere, then the clip.
  s = ramp(n, 0.0, 0.0);  // all -0.9
  const AugmentRecord b = dle_isbi_augment(s, 0, 0, 1, 2, rng);
  const double delta = b.brightness - 1;
  CHECK(std::abs(delta) <= 0.2);
  for (float v : s.image) REQUIRE(v == doctest::Approx(std::max(-1.0, -0.9 + delta)).epsilon(1e-6));
}

TEST_CASE(
    "unet_train with data.pipeline = dle_isbi on ISBI-like pages; unet_infer writes 0 / 255 pages of the input size") {
  test::TempDir tmp("dle_isbi");
  REQUIRE(test::run_tool("unet_synth",
                         "--output " + tmp / "data" + " --format isbi --train 8 --test 2 --size 48,48 --seed 0") == 0);
  // 220 in, 36 out: the 48 x 48 pages are resized to 36 x 36 and padded by 92.
  const std::string ini = test::write_text(
      tmp / "t.ini", "[data]\ndataset = " + tmp / "data" +
                         "\nfolds = 1\npatch_size = 220, 220\nbatch_size = 2\npipeline = dle_isbi\n[augment]\nzoom = "
                         "1\nbrightness = 1\n[model]\nname = unet2d\nfilters = 8\n[train]\nsteps = 100\noptimizer = "
                         "adam\nlr = 1e-3\nweight_decay = 5e-4\n[output]\ndir = " +
                         tmp / "run" + "\n");
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini, &out) == 0, out);
  CHECK(out.find("DLE's ISBI pipeline: 8 slices as x / 127.5 - 1, resized to 36x36") != std::string::npos);
  const models::ModelCard card =
      models::card_from_metadata(models::read_weights(tmp / "run/model.safetensors").metadata, "model");
  CHECK(card.pipeline == "dle_isbi");
  REQUIRE_MESSAGE(test::run_tool("unet_infer",
                                 "--model " + tmp / "run/model.safetensors" + " --input " +
                                     tmp / "data/test-volume.tif" + " --output " + tmp / "pred.tif",
                                 &out) == 0,
                  out);
  CHECK(out.find("resampled to 2x36x36 (DLE's ISBI resize)") != std::string::npos);
  REQUIRE_MESSAGE(test::run_tool("unet_eval",
                                 "--pred " + tmp / "pred.tif" + " --label " + tmp / "data/test-labels.tif" +
                                     " --label-scale 255 --json " + tmp / "dice.json",
                                 &out) == 0,
                  out);
  const auto dice = nlohmann::json::parse(std::ifstream(tmp / "dice.json"));
  // Measured: 0.8969 (100 steps, filters 8, about 16 s on 2 cores).
  CHECK(dice["mean_dice"].get<double>() > 0.8);
  CHECK(test::run_tool("unet_train",
                       ini + " --set model.name=dynunet --set data.patch_size=16,32,32 --set output.dir=" + tmp / "r2",
                       &out) == 2);
  CHECK(out.find("data.pipeline = dle_isbi: DLE UNet_Medical's pipeline is for model.name = unet2d") !=
        std::string::npos);
  // A patch UNet2D cannot take gets the next size that does, as with the nnU-Net pipeline (it was told the pipeline
  // takes model.name = unet2d, which it was); a patch of two valid sizes, that it must be square.
  CHECK(test::run_tool("unet_train", ini + " --set data.patch_size=100,100 --set output.dir=" + tmp / "r3", &out) == 2);
  CHECK_MESSAGE(out.find("unet_train: data.patch_size: unet2d: patch size 100 does not fit the network's valid "
                         "convolutions and poolings; 188 is the next that does") != std::string::npos,
                out);
  CHECK(test::run_tool("unet_train", ini + " --set data.patch_size=188,220 --set output.dir=" + tmp / "r3", &out) == 2);
  CHECK_MESSAGE(out.find("unet_train: data.patch_size = 188, 220: data.pipeline = dle_isbi resizes each slice to a "
                         "square output; expected a square patch") != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(tmp / "r3"));
}

TEST_CASE("a model trained on ISBI's pages (nnU-Net pipeline) segments each page of a stack as its own case") {
  test::TempDir tmp("isbi_pages");
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp / "data" + " --format isbi --train 4 --test 2 --size 64,64") ==
          0);
  const std::string ini = test::write_text(tmp / "t.ini", "[data]\ndataset = " + tmp / "data" +
                                                              "\nfolds = 2\npatch_size = 188, 188\nbatch_size = 1\n"
                                                              "[model]\nname = unet2d\nfilters = 4\n[train]\n"
                                                              "steps = 10\n[output]\ndir = " +
                                                              tmp / "run" + "\n");
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini, &out) == 0, out);
  const std::string model = tmp / "run/model.safetensors";
  CHECK(models::card_from_metadata(models::read_weights(model).metadata, "model").slice_cases);
  // Stacks of pages 1 and 3, of page 1 and a darker page 3, and the pages alone. Normalised over the stack, page 1's
  // labels changed with the page beside it (1127 of 4096 pixels between the first two stacks).
  const Tensor pages = read_tiff(tmp / "data/train-volume.tif").data;  // [4, 64, 64, 1]
  const int64_t n = 64 * 64;
  const auto write = [&](const std::string& name, const std::vector<std::function<float(int64_t)>>& page) {
    Tensor t = Tensor::empty({static_cast<int64_t>(page.size()), 64, 64, 1});
    for (size_t z = 0; z < page.size(); ++z)
      for (int64_t v = 0; v < n; ++v) t.data<float>()[static_cast<int64_t>(z) * n + v] = page[z](v);
    TiffWriteOptions o;
    o.bits = 32;
    o.is_float = true;
    write_tiff(tmp / name, t, o);
  };
  const auto page = [&](int64_t z) { return [&, z](int64_t v) { return pages.data<float>()[z * n + v]; }; };
  const auto darker = [&](int64_t v) { return std::floor(pages.data<float>()[3 * n + v] / 2) + 1; };
  write("a.tif", {page(1), page(3)});
  write("b.tif", {page(1), darker});
  write("p1.tif", {page(1)});
  write("p3.tif", {page(3)});
  std::map<std::string, std::vector<float>> labels;
  for (const char* name : {"a", "b", "p1", "p3"}) {
    REQUIRE_MESSAGE(
        test::run_tool("unet_infer",
                       "--model " + model + " --input " + tmp / name + ".tif --output " + tmp / name + "_seg.tif",
                       &out) == 0,
        out);
    labels[name] = read_tiff(tmp / name + "_seg.tif").data.to_vector();
  }
  const auto slice = [&](const std::string& name, int64_t z) {
    return std::vector<float>(labels[name].begin() + z * n, labels[name].begin() + (z + 1) * n);
  };
  CHECK(slice("a", 0) == labels["p1"]);
  CHECK(slice("b", 0) == labels["p1"]);
  CHECK(slice("a", 1) == labels["p3"]);
  // The single page is not all background or all foreground: the comparisons above can tell stacks apart.
  const float lo = *std::min_element(labels["p1"].begin(), labels["p1"].end()),
              hi = *std::max_element(labels["p1"].begin(), labels["p1"].end());
  CHECK(lo < hi);
}
