// Resampling against scipy.ndimage (tests/golden/resample.json, made by tests/golden/make_resample_fixtures.py as
// nnU-Net resamples), the target-spacing and anisotropy rules on made-up fingerprints, and crop / uncrop.
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/resample.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::io;

TEST_CASE(
    "resize_image and resize_label match scipy.ndimage: cubic spline, linear, nearest, anisotropic, one-hot labels") {
  std::ifstream f(std::string(UNET_TEST_DATA_DIR) + "/resample.json");
  REQUIRE_MESSAGE(f.good(), "cannot open " << UNET_TEST_DATA_DIR << "/resample.json");
  const nlohmann::json j = nlohmann::json::parse(f);
  REQUIRE(j["cases"].size() == 6);
  for (const auto& c : j["cases"]) {
    CAPTURE(c["name"].get<std::string>());
    const std::vector<int64_t> in_shape = c["input_shape"], out_shape = c["output_shape"];
    const std::vector<int> o = c["orders"];
    const std::array<int64_t, 3> size{out_shape[0], out_shape[1], out_shape[2]};
    const Orders orders{o[0], o[1], o[2]};
    const std::vector<double> expected = c["output"];
    if (c["kind"] == "image") {
      const std::vector<double> in = c["input"];
      const Tensor image =
          Tensor::from_vector(Shape(in_shape.begin(), in_shape.end()), std::vector<float>(in.begin(), in.end()));
      const Tensor out = resize_image(image, size, orders);
      REQUIRE(out.shape() == Shape{size[0], size[1], size[2], in_shape[3]});
      const std::vector<float> got = out.to_vector();
      double worst = 0;
      for (size_t k = 0; k < got.size(); ++k) worst = std::max(worst, std::abs(got[k] - expected[k]));
      MESSAGE(c["name"].get<std::string>() << ": largest difference " << worst);
      CHECK(worst <= 2e-6);  // the input rounded to f32, the result too; scipy in f64
    } else {
      const std::vector<int> in = c["input"];
      Tensor label = Tensor::zeros(Shape(in_shape.begin(), in_shape.end()), DType::u8);
      for (size_t k = 0; k < in.size(); ++k) label.data<uint8_t>()[k] = static_cast<uint8_t>(in[k]);
      const Tensor out = resize_label(label, size, orders);
      REQUIRE(out.shape() == Shape{size[0], size[1], size[2]});
      int wrong = 0;
      for (size_t k = 0; k < expected.size(); ++k) wrong += out.data<uint8_t>()[k] != expected[k];
      CHECK(wrong == 0);
    }
  }
}

TEST_CASE("resampled sizes, the separate (low-resolution) axis and the orders nnU-Net uses with it") {
  CHECK(resampled_size({100, 200, 50}, {1, 0.5, 2}, {1, 1, 1}) == std::array<int64_t, 3>{100, 100, 100});
  CHECK(resampled_size({3, 3, 3}, {1, 1, 1}, {10, 10, 10}) == std::array<int64_t, 3>{1, 1, 1});
  CHECK(separate_axis({1, 1, 1}, {1, 1, 1}) == -1);
  CHECK(separate_axis({3, 1, 1}, {1, 1, 1}) == 0);         // anisotropic source: its axis of largest spacing
  CHECK(separate_axis({1, 1, 1}, {0.8, 0.8, 2.5}) == 2);   // then an anisotropic target: 2.5 / 0.8 = 3.125
  CHECK(separate_axis({1, 1, 1}, {0.8, 0.8, 2.3}) == -1);  // 2.875
  CHECK(separate_axis({2.9, 1, 1}, {1, 1, 1}) == -1);
  CHECK(image_orders(0) == Orders{0, 3, 3});
  CHECK(label_orders(-1) == Orders{1, 1, 1});
}

TEST_CASE("target spacing: the median, and the 10th percentile along an anisotropic axis with few slices") {
  // Isotropic-ish: the median per axis (numpy's, the mean of the middle two for an even count).
  CHECK(target_spacing({{1, 1, 1}, {1.5, 0.8, 0.8}, {2, 0.9, 0.9}, {1.2, 1, 1}},
                       {{90, 90, 90}, {90, 90, 90}, {90, 90, 90}, {90, 90, 90}}) ==
        std::array<double, 3>{1.35, 0.95, 0.95});
  // Anisotropic (5 mm slices, 0.8 mm in plane, 30 slices of 400): z's target is the 10th percentile of the z
  // spacings, np.percentile([2, 4, 5, 5, 5, 6], 10) = 3.0.
  const std::vector<std::array<double, 3>> aniso{{5, 0.8, 0.8}, {5, 0.8, 0.8}, {2, 0.8, 0.8},
                                                 {6, 0.8, 0.8}, {4, 0.8, 0.8}, {5, 0.8, 0.8}};
  const std::vector<std::array<int64_t, 3>> sizes(6, std::array<int64_t, 3>{30, 400, 400});
  const std::array<double, 3> t = target_spacing(aniso, sizes);
  CHECK(t[0] == doctest::Approx(3.0));
  CHECK(t[1] == 0.8);
  // The same spacings but many slices: no exception to the median.
  CHECK(target_spacing(aniso, std::vector<std::array<int64_t, 3>>(6, {300, 400, 400}))[0] == 5);
  // A percentile below the in-plane spacing is raised to it (plus 1e-5).
  // np.percentile([0.5, 0.5, 5, 5, 5], 10) = 0.5, below the in-plane 1 mm.
  const std::array<double, 3> raised = target_spacing({{5, 1, 1}, {5, 1, 1}, {5, 1, 1}, {0.5, 1, 1}, {0.5, 1, 1}},
                                                      std::vector<std::array<int64_t, 3>>(5, {10, 400, 400}));
  CHECK(raised[0] == doctest::Approx(1 + 1e-5).epsilon(1e-9));
}

TEST_CASE("the non-zero box, crop and uncrop: a round trip puts every voxel back") {
  Tensor image = Tensor::zeros({6, 7, 8, 2});
  Tensor label = Tensor::zeros({6, 7, 8}, DType::u8);
  auto at = [](int64_t z, int64_t y, int64_t x) { return (z * 7 + y) * 8 + x; };
  image.data<float>()[at(1, 2, 3) * 2 + 1] = 5;  // channel 1 only
  image.data<float>()[at(4, 5, 3) * 2] = -2;
  label.data<uint8_t>()[at(2, 3, 3)] = 1;
  const Box b = nonzero_box(image);
  CHECK(b.begin == std::array<int64_t, 3>{1, 2, 3});
  CHECK(b.end == std::array<int64_t, 3>{5, 6, 4});
  const Tensor ci = crop(image, b), cl = crop(label, b);
  CHECK(ci.shape() == Shape{4, 4, 1, 2});
  CHECK(cl.shape() == Shape{4, 4, 1});
  CHECK(uncrop(ci, b, {6, 7, 8}).to_vector() == image.to_vector());
  CHECK(uncrop(cl, b, {6, 7, 8}).to_vector() == label.to_vector());
  // Nothing non-zero: the whole volume.
  const Box all = nonzero_box(Tensor::zeros({2, 3, 4, 1}));
  CHECK(all.end == std::array<int64_t, 3>{2, 3, 4});
}
