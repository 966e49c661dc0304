// Sliding-window inference: window placement, the importance map formula, blending, padding, TTA and context.
#include <cmath>

#include "engine/ops.h"
#include "engine/sliding_window.h"
#include "tests/test_util.h"

using namespace unet;

TEST_CASE("window starts step by int(patch * (1 - overlap)) and the last one is clamped to the border") {
  CHECK(window_starts(100, 40, 0.5) == std::vector<int64_t>{0, 20, 40, 60});
  CHECK(window_starts(101, 40, 0.5) == std::vector<int64_t>{0, 20, 40, 60, 61});
  CHECK(window_starts(40, 40, 0.5) == std::vector<int64_t>{0});
  CHECK(window_starts(10, 3, 0.25) == std::vector<int64_t>{0, 2, 4, 6, 7});  // step int(2.25) = 2
  CHECK(window_starts(5, 2, 0.9) == std::vector<int64_t>{0, 1, 2, 3});       // step at least 1
}

TEST_CASE("the windows cover every voxel of the volume") {
  for (int64_t size : {7, 16, 33, 64})
    for (int64_t patch : {4, 7}) {
      if (patch > size) continue;
      std::vector<int> covered(static_cast<size_t>(size), 0);
      for (int64_t s : window_starts(size, patch, 0.5))
        for (int64_t i = s; i < s + patch; ++i) covered[static_cast<size_t>(i)]++;
      for (int c : covered) CHECK(c > 0);
    }
}

TEST_CASE("the Gaussian importance map equals the formula, normalised to 1 and floored at 1e-3") {
  SlidingWindowOptions o;
  o.patch = {5, 8, 64};
  Tensor map = importance_map(o);
  REQUIRE(map.shape() == Shape{5, 8, 64});
  auto v = map.to_vector();
  auto g = [](double i, double p) {
    double c = (p - 1) / 2, s = 0.125 * p;
    return std::exp(-(i - c) * (i - c) / (2 * s * s));
  };
  double peak = g(2, 5) * g(3, 8) * g(31, 64);  // the per-axis maxima over voxels (the centre, or the two middle ones)
  for (int z = 0; z < 5; ++z)
    for (int y = 0; y < 8; ++y)
      for (int x = 0; x < 64; ++x) {
        double expected = std::max(g(z, 5) * g(y, 8) * g(x, 64) / peak, 1e-3);
        REQUIRE(v[static_cast<size_t>((z * 8 + y) * 64 + x)] == doctest::Approx(expected).epsilon(1e-6));
      }
  CHECK(*std::max_element(v.begin(), v.end()) == doctest::Approx(1.0));
  o.blend = Blend::constant;
  for (float w : importance_map(o).to_vector()) CHECK(w == 1.0f);
}

TEST_CASE("a model that predicts a constant gives that constant back everywhere") {
  Rng rng(1);
  Tensor image = randn({13, 17, 11, 2}, rng);
  for (Blend blend : {Blend::gaussian, Blend::constant})
    for (bool tta : {false, true}) {
      SlidingWindowOptions o;
      o.patch = {8, 8, 8};
      o.blend = blend;
      o.tta = tta;
      o.batch_size = 3;
      auto constant = [](const Tensor& x) {
        Shape s = x.shape();
        s.back() = 3;
        Tensor y = Tensor::empty(s);
        float* p = y.data<float>();
        for (int64_t i = 0; i < y.numel(); ++i) p[i] = static_cast<float>(i % 3) - 0.5f;
        return y;
      };
      Tensor out = sliding_window_predict(image, constant, o);
      REQUIRE(out.shape() == Shape{13, 17, 11, 3});
      auto v = out.to_vector();
      for (size_t i = 0; i < v.size(); ++i) REQUIRE(v[i] == doctest::Approx(static_cast<float>(i % 3) - 0.5f).epsilon(1e-5));
    }
}

TEST_CASE("an identity model reproduces the image, through padding, overlap and flips") {
  // Windows see shifted crops; an exact per-voxel model must give each voxel its own value back.
  Rng rng(2);
  for (Shape shape : {Shape{5, 9, 6, 1}, Shape{12, 10, 2}}) {  // 3D smaller than the patch on two axes; 2D
    Tensor image = randn(shape, rng);
    SlidingWindowOptions o;
    o.patch = shape.size() == 4 ? std::vector<int>{8, 4, 8} : std::vector<int>{5, 4};
    o.tta = true;
    Tensor out = sliding_window_predict(image, [](const Tensor& x) { return x.clone(); }, o);
    test::check_close(out, image, 1e-5, 1e-6, "identity");
  }
}

TEST_CASE("blending weighs each window's prediction by the importance map") {
  // A model that answers the window's start position reveals the blend: two windows along x (size 6, patch 4,
  // overlap 0.5: starts 0 and 2) give voxel x the weighted mean of 0 and 1 with weights w(x) and w(x - 2).
  Tensor image = Tensor::zeros({1, 1, 6, 1});
  for (int x = 0; x < 6; ++x) image.data<float>()[x] = static_cast<float>(x);
  SlidingWindowOptions o;
  o.patch = {1, 1, 4};
  auto start_of = [](const Tensor& x) {
    Tensor y = Tensor::empty(x.shape());
    float s = x.data<float>()[0] / 2.0f;  // 0 or 1
    for (int64_t i = 0; i < y.numel(); ++i) y.data<float>()[i] = s;
    return y;
  };
  auto out = sliding_window_predict(image, start_of, o).to_vector();
  auto w = importance_map(o).to_vector();
  for (int x = 0; x < 6; ++x) {
    double a = x < 4 ? w[static_cast<size_t>(x)] : 0, b = x >= 2 ? w[static_cast<size_t>(x - 2)] : 0;
    CHECK(out[static_cast<size_t>(x)] == doctest::Approx(b / (a + b)).epsilon(1e-6));
  }
}

TEST_CASE("softmax of blended logits sums to one per voxel") {
  Rng rng(3);
  Tensor p = softmax_channels(randn({4, 5, 3}, rng, 5.f));
  auto v = p.to_vector();
  for (size_t i = 0; i < v.size(); i += 3) CHECK(v[i] + v[i + 1] + v[i + 2] == doctest::Approx(1.0));
}

TEST_CASE("a model that changes the window size is an error") {
  SlidingWindowOptions o;
  o.patch = {4, 4};
  CHECK_THROWS_WITH_AS(sliding_window_predict(Tensor::zeros({8, 8, 1}), [](const Tensor&) { return Tensor::zeros({1, 2, 2, 1}); }, o),
                       doctest::Contains("expected the patch size"), std::invalid_argument);
}

TEST_CASE("with context, windows of a valid convolution reproduce the zero-padded convolution of the whole image") {
  // A 5x5 valid convolution needs 2 voxels of context: each window's input is patch + 4, its output the patch.
  Rng rng(31);
  auto randn = [&](const Shape& s) {
    std::vector<float> v(static_cast<size_t>(shape_numel(s)));
    for (float& x : v) x = static_cast<float>(rng.normal());
    return Tensor::from_vector(s, v);
  };
  const Tensor image = randn({21, 30, 2}), w = randn({3, 5, 5, 2}), b = randn({3});
  const Tensor whole = ops::conv(image.reshape({1, 21, 30, 2}), w, b, {1, 1}, {2, 2}).reshape({21, 30, 3});
  for (Blend blend : {Blend::gaussian, Blend::constant}) {
    SlidingWindowOptions o;
    o.patch = {8, 12};
    o.context = {2, 2};
    o.blend = blend;
    o.batch_size = 3;
    const Tensor got = sliding_window_predict(
        image, [&](const Tensor& x) { return ops::conv(x, w, b, {1, 1}, {0, 0}); }, o);
    test::check_close(got, whole, 1e-5, 1e-5, "blended valid convolution");
  }
  SlidingWindowOptions o;
  o.patch = {8, 12};
  o.context = {2, 2};
  CHECK_THROWS_WITH_AS(sliding_window_predict(
                           image, [&](const Tensor& x) { return ops::conv(x, w, b, {1, 1}, {1, 1}); }, o),
                       doctest::Contains("expected the patch size"), std::invalid_argument);
}
