// The augmentation transforms (io/augment.h) against references: identities at zero strength, exact reproduction of
// what the interpolation must reproduce, nearest-neighbour labels, index maps of flips and rotations, expected
// statistics of the random ones, and the draw probabilities.
#include <cmath>
#include <functional>
#include <numeric>

#include "io/augment.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::io;

namespace {

// A sample whose image is f(z, y, x, c) and label g(z, y, x).
template <class F, class G>
Sample make(std::array<int64_t, 3> size, int64_t channels, F f, G g) {
  Sample s(size, channels);
  for (int64_t z = 0; z < size[0]; ++z)
    for (int64_t y = 0; y < size[1]; ++y)
      for (int64_t x = 0; x < size[2]; ++x) {
        const int64_t v = (z * size[1] + y) * size[2] + x;
        s.label[static_cast<size_t>(v)] = g(z, y, x);
        for (int64_t c = 0; c < channels; ++c) s.image[static_cast<size_t>(v * channels + c)] = f(z, y, x, c);
      }
  return s;
}

Sample random_sample(std::array<int64_t, 3> size, int64_t channels, uint64_t seed) {
  Rng rng(seed);
  Sample s(size, channels);
  for (float& v : s.image) v = static_cast<float>(rng.normal());
  for (int32_t& l : s.label) l = static_cast<int32_t>(rng.below(3));
  return s;
}

float at(const Sample& s, int64_t z, int64_t y, int64_t x, int64_t c = 0) {
  return s.image[static_cast<size_t>(((z * s.size[1] + y) * s.size[2] + x) * s.channels + c)];
}
int32_t label_at(const Sample& s, int64_t z, int64_t y, int64_t x) {
  return s.label[static_cast<size_t>((z * s.size[1] + y) * s.size[2] + x)];
}

}  // namespace

TEST_CASE("cubic resize: identity at the same size, constants kept, quadratics reproduced away from the edges") {
  const Sample r = random_sample({5, 6, 7}, 2, 1);
  for (int a = 0; a < 3; ++a)
    CHECK(resize_axis_cubic(r.image, {5, 6, 7, 2}, a, r.size[static_cast<size_t>(a)]) == r.image);
  // q(x) = 0.3 x^2 - 2 x + 5 along y, sampled at voxel centres; upsampled 12 -> 29 it must be q at the mapped points.
  const auto q = [](double x) { return 0.3 * x * x - 2 * x + 5; };
  std::vector<float> in(12);
  for (int i = 0; i < 12; ++i) in[static_cast<size_t>(i)] = static_cast<float>(q(i));
  const std::vector<float> out = resize_axis_cubic(in, {1, 12, 1, 1}, 1, 29);
  REQUIRE(out.size() == 29);
  for (int i = 0; i < 29; ++i) {
    const double src = (i + 0.5) * 12 / 29 - 0.5;
    if (src < 1 || src > 10) continue;  // the four taps inside the input
    CHECK(out[static_cast<size_t>(i)] == doctest::Approx(q(src)).epsilon(1e-5));
  }
  const std::vector<float> flat = resize_axis_cubic(std::vector<float>(20, 2.5f), {1, 1, 20, 1}, 2, 7);
  for (float v : flat) CHECK(v == doctest::Approx(2.5).epsilon(1e-6));
}

TEST_CASE("zoom: scale 1 changes nothing; the centre crop is resized back, labels by nearest neighbour") {
  Sample s = random_sample({8, 10, 12}, 2, 2);
  const Sample before = s;
  zoom(s, 1.0);
  CHECK(s.image == before.image);
  CHECK(s.label == before.label);
  // Scale 0.5 of 8 x 10 x 12: the crop is 4 x 5 x 6 starting at 2, 2, 3. Label voxel i takes crop voxel
  // floor((i + 0.5) / 2), i.e. i / 2; the image, a linear ramp in x, is the ramp at the mapped coordinate.
  Sample ramp = make(
      {8, 10, 12}, 1, [](int64_t, int64_t, int64_t x, int64_t) { return float(3 * x + 1); },
      [](int64_t z, int64_t y, int64_t x) { return int32_t((z * 100 + y * 10 + x) % 7); });
  zoom(ramp, 0.5);
  for (int64_t z = 0; z < 8; ++z)
    for (int64_t y = 0; y < 10; ++y)
      for (int64_t x = 0; x < 12; ++x) {
        REQUIRE(label_at(ramp, z, y, x) == ((2 + z / 2) * 100 + (2 + y / 2) * 10 + 3 + x / 2) % 7);
        const double src = 3 + (x + 0.5) * 6 / 12 - 0.5;
        if (src >= 4 && src <= 7) REQUIRE(at(ramp, z, y, x) == doctest::Approx(3 * src + 1).epsilon(1e-5));
      }
}

TEST_CASE("flip reverses the chosen axes of image and label together; twice is the identity") {
  const Sample s = random_sample({3, 4, 5}, 2, 3);
  Sample f = s;
  flip(f, {true, false, true});
  for (int64_t z = 0; z < 3; ++z)
    for (int64_t y = 0; y < 4; ++y)
      for (int64_t x = 0; x < 5; ++x) {
        CHECK(label_at(f, z, y, x) == label_at(s, 2 - z, y, 4 - x));
        CHECK(at(f, z, y, x, 1) == at(s, 2 - z, y, 4 - x, 1));
      }
  flip(f, {true, false, true});
  CHECK(f.image == s.image);
}

TEST_CASE("noise has the requested standard deviation and no bias; zero noise is the identity") {
  Sample s({40, 40, 40}, 1);
  add_noise(s, 0.25, 5);
  double sum = 0, sum2 = 0;
  for (float v : s.image) sum += v, sum2 += double(v) * v;
  const double n = static_cast<double>(s.image.size()), mean = sum / n, sd = std::sqrt(sum2 / n - mean * mean);
  CHECK(std::abs(mean) < 5 * 0.25 / std::sqrt(n));
  CHECK(sd == doctest::Approx(0.25).epsilon(0.01));
  Sample r = random_sample({4, 4, 4}, 1, 6);
  const Sample before = r;
  add_noise(r, 0, 6);
  CHECK(r.image == before.image);
}

TEST_CASE("gaussian blur: an interior impulse becomes the product of normalised Gaussian weights; constants stay") {
  const double sigma = 0.8;
  Sample s = make(
      {11, 11, 11}, 1, [](int64_t z, int64_t y, int64_t x, int64_t) { return float(z == 5 && y == 5 && x == 5); },
      [](int64_t, int64_t, int64_t) { return 0; });
  gaussian_blur(s, sigma);
  const int r = static_cast<int>(std::ceil(3 * sigma));
  double total = 0;
  for (int k = -r; k <= r; ++k) total += std::exp(-0.5 * k * k / (sigma * sigma));
  const auto w = [&](int k) { return std::abs(k) > r ? 0.0 : std::exp(-0.5 * k * k / (sigma * sigma)) / total; };
  for (int64_t z = 0; z < 11; ++z)
    for (int64_t y = 0; y < 11; ++y)
      for (int64_t x = 0; x < 11; ++x)
        REQUIRE(at(s, z, y, x) == doctest::Approx(w(int(z) - 5) * w(int(y) - 5) * w(int(x) - 5)).epsilon(1e-5));
  // Mirrored edges: a constant stays constant up to the borders.
  Sample c = make(
      {4, 5, 6}, 2, [](int64_t, int64_t, int64_t, int64_t ch) { return float(ch + 1); },
      [](int64_t, int64_t, int64_t) { return 0; });
  gaussian_blur(c, 1.5);
  for (size_t i = 0; i < c.image.size(); ++i) CHECK(c.image[i] == doctest::Approx(i % 2 + 1).epsilon(1e-6));
}

TEST_CASE("brightness multiplies; contrast multiplies and clamps to the sample's range") {
  Sample s = make(
      {1, 1, 4}, 1, [](int64_t, int64_t, int64_t x, int64_t) { return float(x) - 1; },  // -1 0 1 2
      [](int64_t, int64_t, int64_t) { return 0; });
  Sample b = s;
  scale_brightness(b, 1.25);
  CHECK(b.image == std::vector<float>{-1.25f, 0, 1.25f, 2.5f});
  scale_contrast(s, 1.5);
  CHECK(s.image == std::vector<float>{-1, 0, 1.5f, 2});  // -1.5 and 3 clamped to -1 and 2
}

TEST_CASE("gamma keeps each channel's mean and standard deviation, and gamma 1 is the identity") {
  Sample s = random_sample({6, 6, 6}, 2, 7);
  const Sample before = s;
  gamma_transform(s, 1.0);
  for (size_t i = 0; i < s.image.size(); ++i) REQUIRE(s.image[i] == doctest::Approx(before.image[i]).epsilon(1e-4));
  gamma_transform(s, 1.5);
  for (int64_t c = 0; c < 2; ++c) {
    double m0 = 0, m1 = 0, v0 = 0, v1 = 0;
    const double n = 216;
    for (int64_t v = 0; v < 216; ++v) m0 += before.image[v * 2 + c] / n, m1 += s.image[v * 2 + c] / n;
    for (int64_t v = 0; v < 216; ++v)
      v0 += std::pow(before.image[v * 2 + c] - m0, 2) / n, v1 += std::pow(s.image[v * 2 + c] - m1, 2) / n;
    CHECK(m1 == doctest::Approx(m0).epsilon(1e-4));
    CHECK(std::sqrt(v1) == doctest::Approx(std::sqrt(v0)).epsilon(1e-4));
  }
  CHECK(s.image != before.image);
}

TEST_CASE("low resolution: zoom 1 is the identity; zoom 0.5 keeps constants and leaves labels alone") {
  Sample s = random_sample({8, 8, 8}, 1, 8);
  const Sample before = s;
  simulate_low_resolution(s, 1.0);
  CHECK(s.image == before.image);
  simulate_low_resolution(s, 0.5);
  CHECK(s.image != before.image);
  CHECK(s.label == before.label);
  Sample c = make(
      {8, 6, 4}, 1, [](int64_t, int64_t, int64_t, int64_t) { return 4.0f; },
      [](int64_t, int64_t, int64_t) { return 0; });
  simulate_low_resolution(c, 0.5);
  for (float v : c.image) CHECK(v == doctest::Approx(4.0).epsilon(1e-6));
}

TEST_CASE("rotation: zero angles cut the centred patch; 90 degrees about z turns the y-x plane; corners are filled") {
  const Sample src = random_sample({9, 11, 13}, 2, 9);
  const Sample same = rotate_crop(src, rotation_matrix({0, 0, 0}), {5, 7, 9});
  for (int64_t z = 0; z < 5; ++z)
    for (int64_t y = 0; y < 7; ++y)
      for (int64_t x = 0; x < 9; ++x) {
        REQUIRE(label_at(same, z, y, x) == label_at(src, z + 2, y + 2, x + 2));
        REQUIRE(at(same, z, y, x, 1) == at(src, z + 2, y + 2, x + 2, 1));
      }
  // About z by 90 degrees: output (z, y, x) relative to the centre reads src (z, -x, y) relative to its centre.
  const Sample cube = random_sample({7, 7, 7}, 1, 10);
  const Sample turned = rotate_crop(cube, rotation_matrix({M_PI / 2, 0, 0}), {7, 7, 7});
  for (int64_t z = 0; z < 7; ++z)
    for (int64_t y = 0; y < 7; ++y)
      for (int64_t x = 0; x < 7; ++x) {
        REQUIRE(label_at(turned, z, y, x) == label_at(cube, z, 3 - (x - 3), 3 + (y - 3)));
        REQUIRE(at(turned, z, y, x) == doctest::Approx(at(cube, z, 3 - (x - 3), 3 + (y - 3))).epsilon(1e-5));
      }
  // The region rotated_extent asks for covers every voxel of the rotated patch: no zero (outside) value in it.
  const std::array<double, 9> R = rotation_matrix({0.4, -0.3, 0.5});
  const std::array<int64_t, 3> patch{6, 8, 10}, extent = rotated_extent(R, patch);
  for (int a = 0; a < 3; ++a) CHECK((extent[static_cast<size_t>(a)] - patch[static_cast<size_t>(a)]) % 2 == 0);
  Sample ones = make(
      extent, 1, [](int64_t, int64_t, int64_t, int64_t) { return 1.0f; }, [](int64_t, int64_t, int64_t) { return 1; });
  const Sample r = rotate_crop(ones, R, patch);
  for (float v : r.image) REQUIRE(v == doctest::Approx(1.0).epsilon(1e-6));
  for (int32_t l : r.label) REQUIRE(l == 1);
}

TEST_CASE("augment: nothing at probability 0; every transform within its range at probability 1; DLE's rates") {
  Sample s = random_sample({6, 6, 6}, 1, 11);
  const Sample before = s;
  Rng rng(12);
  AugmentRecord r = augment(s, AugmentOptions::none(), rng);
  CHECK(s.image == before.image);
  CHECK(s.label == before.label);
  CHECK(r.zoom == 1);
  CHECK(r.noise_std == 0);

  AugmentOptions all;
  all.zoom_prob = all.noise_prob = all.blur_prob = all.brightness_prob = all.contrast_prob = 1;
  all.gamma_prob = all.low_resolution_prob = 1;
  for (int i = 0; i < 20; ++i) {
    Sample t = before;
    r = augment(t, all, rng);
    CHECK((r.zoom >= 0.7 && r.zoom < 1.0));
    CHECK((r.noise_std >= 0 && r.noise_std < 0.33));
    CHECK((r.blur_sigma >= 0.5 && r.blur_sigma < 1.5));
    CHECK((r.brightness >= 0.7 && r.brightness < 1.3));
    CHECK((r.contrast >= 0.65 && r.contrast < 1.5));
    CHECK((r.gamma >= 0.7 && r.gamma < 1.5));
    CHECK((r.low_resolution >= 0.5 && r.low_resolution < 1));
    for (float v : t.image) REQUIRE(std::isfinite(v));
  }
  // The defaults: each of DLE's transforms on about 15% of samples, each flip on half.
  const AugmentOptions dle;
  int zoomed = 0, noised = 0, flipped = 0;
  const int n = 4000;
  for (int i = 0; i < n; ++i) {
    Sample t({2, 2, 2}, 1);
    r = augment(t, dle, rng);
    zoomed += r.zoom != 1;
    noised += r.noise_std > 0;
    flipped += r.flip[1];
  }
  CHECK(std::abs(zoomed / double(n) - 0.15) < 0.03);  // sd 0.0056
  CHECK(std::abs(noised / double(n) - 0.15) < 0.03);
  CHECK(std::abs(flipped / double(n) - 0.5) < 0.04);
  CHECK(dle.rotation_prob == 0);
  // Out-of-range options are refused, naming the option.
  AugmentOptions bad;
  bad.blur_prob = 1.5;
  CHECK_THROWS_WITH_AS(bad.check(), doctest::Contains("blur probability"), std::invalid_argument);
}

TEST_CASE("in-plane augmentation (2D networks on adjacent slices) equals the transform of each slice alone") {
  // A [3, 9, 10] patch of two channels: zoom, blur and low resolution with in_plane equal the same transform applied to
  // each [1, 9, 10] slice; without in_plane they mix the slices, so the comparison can fail.
  const Sample s = random_sample({3, 9, 10}, 2, 21);
  auto slice = [](const Sample& v, int64_t z) {
    Sample one({1, v.size[1], v.size[2]}, v.channels);
    const int64_t n = v.size[1] * v.size[2];
    std::copy_n(v.image.begin() + z * n * v.channels, n * v.channels, one.image.begin());
    std::copy_n(v.label.begin() + z * n, n, one.label.begin());
    return one;
  };
  auto check_slicewise = [&](const std::function<void(Sample&, bool)>& transform, const char* what) {
    CAPTURE(what);
    Sample planar = s, mixed = s;
    transform(planar, true);
    transform(mixed, false);
    bool differs = false;
    for (int64_t z = 0; z < 3; ++z) {
      Sample expected = slice(s, z);
      transform(expected, false);
      const Sample got = slice(planar, z);
      CHECK(got.image == expected.image);
      CHECK(got.label == expected.label);
      differs = differs || slice(mixed, z).image != expected.image;
    }
    CHECK(differs);
  };
  check_slicewise([](Sample& v, bool p) { zoom(v, 0.6, p); }, "zoom");
  check_slicewise([](Sample& v, bool p) { gaussian_blur(v, 1.2, p); }, "blur");
  check_slicewise([](Sample& v, bool p) { simulate_low_resolution(v, 0.5, p); }, "low resolution");

  // augment() never flips z in plane, and rotations turn about z only.
  AugmentOptions o;
  o.in_plane = true;
  o.flip_prob = o.rotation_prob = 1;
  Rng rng(5);
  Sample t = s;
  const AugmentRecord r = augment(t, o, rng);
  CHECK(r.flip == std::array<bool, 3>{false, true, true});
  const std::array<double, 3> angles = draw_rotation(o, rng);
  CHECK(angles[0] != 0);
  CHECK(angles[1] == 0);
  CHECK(angles[2] == 0);
}
