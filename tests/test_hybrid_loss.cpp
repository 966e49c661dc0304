// UNet 3+'s hybrid loss (ops::hybrid_loss) against an independent double-precision reference written here from the
// formulas (direct 11 x 11 window sums, not the kernel's separable passes): loss, parts, and the gradient against
// central differences of that reference on every element; known values; errors; the device path. The PyTorch
// golden of DLE's TensorFlow loss is in test_golden.cpp, the share over MPI ranks in tests/mpi/comm_check.cpp.
#include <array>
#include <cmath>
#include <vector>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "tests/test_util.h"

using namespace unet;

namespace {

struct RefParts {
  double focal = 0, ssim = 0, iou = 0;
  double total() const { return focal + ssim + iou; }
};

// z [n][h][w][c] logits, y [n][h][w] labels.
RefParts reference(const std::vector<double>& z, const std::vector<int>& y, int n, int h, int w, int c) {
  const int64_t pixels = int64_t(n) * h * w;
  std::vector<double> p(z.size());
  for (int64_t v = 0; v < pixels; ++v) {
    double m = z[size_t(v * c)], s = 0;
    for (int k = 1; k < c; ++k) m = std::max(m, z[size_t(v * c + k)]);
    for (int k = 0; k < c; ++k) s += std::exp(z[size_t(v * c + k)] - m);
    for (int k = 0; k < c; ++k) p[size_t(v * c + k)] = std::exp(z[size_t(v * c + k)] - m) / s;
  }
  RefParts r;
  double inter = 0, uni = 0;
  for (int64_t v = 0; v < pixels; ++v) {
    const double q = p[size_t(v * c + y[size_t(v)])] + 1e-9;
    r.focal += 4 * (1 - q) * (1 - q) * -std::log(q) / double(pixels);
    for (int k = 0; k < c; ++k) {
      const double t = y[size_t(v)] == k, pk = p[size_t(v * c + k)];
      inter += t * pk;
      uni += t + pk - t * pk;
    }
  }
  r.iou = 1 - inter / uni;
  std::array<double, 121> g{};  // the 2D window, normalised as a whole
  double gs = 0;
  for (int a = 0; a < 11; ++a)
    for (int b = 0; b < 11; ++b) gs += g[size_t(a * 11 + b)] = std::exp(-((a - 5) * (a - 5) + (b - 5) * (b - 5)) / 4.5);
  for (double& v : g) v /= gs;
  double ssim = 0;
  for (int s = 0; s < n; ++s)
    for (int k = 0; k < c; ++k) {
      double plane = 0;
      for (int i = 0; i + 11 <= h; ++i)
        for (int j = 0; j + 11 <= w; ++j) {
          double mt = 0, mp = 0, tt = 0, pp = 0, tp = 0;
          for (int a = 0; a < 11; ++a)
            for (int b = 0; b < 11; ++b) {
              const int64_t v = (int64_t(s) * h + i + a) * w + j + b;
              const double t = y[size_t(v)] == k, pv = p[size_t(v * c + k)], wgt = g[size_t(a * 11 + b)];
              mt += wgt * t, mp += wgt * pv, tt += wgt * t * t, pp += wgt * pv * pv, tp += wgt * t * pv;
            }
          const double c1 = 1e-4, c2 = 9e-4;
          plane += (2 * mt * mp + c1) * (2 * (tp - mt * mp) + c2) /
                   ((mt * mt + mp * mp + c1) * (tt - mt * mt + pp - mp * mp + c2));
        }
      ssim += plane / double((h - 10) * (w - 10));
    }
  r.ssim = 1 - ssim / double(n * c);
  return r;
}

std::vector<double> to_double(const Tensor& t) {
  const std::vector<float> v = t.to_vector();
  return {v.begin(), v.end()};
}

std::vector<int> to_int(const Tensor& labels) {
  const std::vector<float> v = labels.to(Device::cpu).to_vector();
  return {v.begin(), v.end()};
}

// Labels with a square of class 1 (structure for the SSIM) over random classes.
Tensor labels_for(int n, int h, int w, int c, DType dtype, Rng& rng) {
  std::vector<float> v(size_t(n * h * w));
  for (int64_t i = 0; i < int64_t(v.size()); ++i) {
    const int64_t r = (i / w) % h, col = i % w;
    v[size_t(i)] = r >= 2 && r < 8 && col >= 3 && col < 10 ? 1.f : float(rng.below(uint64_t(c)));
  }
  return Tensor::from_vector({n, h, w}, v, dtype);
}

struct Case {
  int n, h, w, c;
  DType labels;
};
constexpr Case kCases[] = {{2, 12, 14, 4, DType::u8}, {1, 11, 16, 2, DType::i32}, {3, 13, 11, 3, DType::i32}};

}  // namespace

TEST_CASE("hybrid_loss: loss and parts equal a double-precision reference; the gradient its finite differences") {
  Rng rng(3);
  for (const Case& k : kCases) {
    CAPTURE(k.n);
    CAPTURE(k.h);
    CAPTURE(k.w);
    CAPTURE(k.c);
    Tensor logits = randn({k.n, k.h, k.w, k.c}, rng, 2.f).set_requires_grad(true);
    const Tensor labels = labels_for(k.n, k.h, k.w, k.c, k.labels, rng);
    Tensor parts;
    const Tensor loss = ops::hybrid_loss(logits, labels, &parts);
    std::vector<double> z = to_double(logits);
    const std::vector<int> y = to_int(labels);
    const RefParts ref = reference(z, y, k.n, k.h, k.w, k.c);
    const std::vector<float> got = parts.to_vector();
    CHECK(got[0] == doctest::Approx(ref.focal).epsilon(1e-6));
    CHECK(got[1] == doctest::Approx(ref.ssim).epsilon(1e-6));
    CHECK(got[2] == doctest::Approx(ref.iou).epsilon(1e-6));
    CHECK(loss.to_vector()[0] == doctest::Approx(ref.total()).epsilon(1e-6));

    autograd::backward(loss);
    const std::vector<float> analytic = logits.grad().to_vector();
    std::vector<float> numeric(z.size());
    const double h = 1e-5;  // double central differences: truncation ~h^2, rounding ~1e-16 / h
    for (size_t i = 0; i < z.size(); ++i) {
      const double saved = z[i];
      z[i] = saved + h;
      const double plus = reference(z, y, k.n, k.h, k.w, k.c).total();
      z[i] = saved - h;
      const double minus = reference(z, y, k.n, k.h, k.w, k.c).total();
      z[i] = saved;
      numeric[i] = static_cast<float>((plus - minus) / (2 * h));
    }
    // The kernel's gradient is double arithmetic on the f32 logits, rounded once: 1e-4 relative with a floor of 1e-8
    // (the elements are ~1e-3; a few cancel to ~0).
    test::check_close(analytic, numeric, 1e-4, 1e-8, "d loss / d logits");
  }
}

TEST_CASE("hybrid_loss of a confident perfect prediction is ~0 in every part; of a wrong one, large in every part") {
  const int n = 1, h = 12, w = 12, c = 3;
  Rng rng(4);
  const Tensor labels = labels_for(n, h, w, c, DType::i32, rng);
  const std::vector<int> y = to_int(labels);
  Tensor right = Tensor::empty({n, h, w, c}), wrong = Tensor::empty({n, h, w, c});
  for (int64_t v = 0; v < n * h * w; ++v)
    for (int k = 0; k < c; ++k) {
      right.data<float>()[v * c + k] = k == y[size_t(v)] ? 30.f : -30.f;
      wrong.data<float>()[v * c + k] = k == (y[size_t(v)] + 1) % c ? 30.f : -30.f;
    }
  Tensor parts;
  ops::hybrid_loss(right, labels, &parts);
  for (float v : parts.to_vector()) CHECK(std::abs(v) < 1e-6f);
  ops::hybrid_loss(wrong, labels, &parts);
  const std::vector<float> p = parts.to_vector();
  // focal: 4 (1 - 1e-9)^2 (-log 1e-9) = 4 * 20.72; IoU: nothing shared, so 1; SSIM near 1 (no common structure).
  CHECK(p[0] == doctest::Approx(4 * -std::log(1e-9)).epsilon(1e-3));
  CHECK(p[2] == doctest::Approx(1.0).epsilon(1e-6));
  CHECK(p[1] > 0.9f);
}

TEST_CASE("hybrid_loss names what is wrong: a label outside [0, C), images under 11 x 11, 3D logits, shapes") {
  Rng rng(5);
  const Tensor logits = randn({1, 12, 12, 2}, rng);
  Tensor labels = Tensor::zeros({1, 12, 12}, DType::i32);
  labels.data<int32_t>()[30] = 2;
  CHECK_THROWS_WITH_AS(ops::hybrid_loss(logits, labels), doctest::Contains("label value 2 at pixel 30"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::hybrid_loss(randn({1, 10, 12, 2}, rng), Tensor::zeros({1, 10, 12}, DType::i32)),
                       doctest::Contains("at least 11 x 11"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::hybrid_loss(randn({1, 12, 12, 12, 2}, rng), Tensor::zeros({1, 12, 12, 12}, DType::i32)),
                       doctest::Contains("must be 2D"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::hybrid_loss(logits, Tensor::zeros({1, 12, 11}, DType::i32)),
                       doctest::Contains("do not match logits"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::hybrid_loss(logits, Tensor::zeros({1, 12, 12}, DType::f32)),
                       doctest::Contains("must be i32 or u8"), std::invalid_argument);
}

TEST_CASE("hybrid_loss on cuda-emu (kernels/cuda/hybrid_loss.cu): the cpu's loss, parts and gradient within 1e-6") {
  if (!device::emulator_built()) return;  // the GPU build has no emulator
  Rng rng(6);
  // 2 x 24 x 13 pixels: more than one block in each reduction.
  Tensor logits = randn({2, 24, 13, 3}, rng, 2.f).set_requires_grad(true);
  const Tensor labels = labels_for(2, 24, 13, 3, DType::u8, rng);
  Tensor parts;
  const Tensor cpu_loss = ops::hybrid_loss(logits, labels, &parts);
  autograd::backward(cpu_loss, Tensor::full({1}, 0.5f));
  std::vector<float> first_grad;
  for (int run = 0; run < 2; ++run) {
    Tensor on_device = logits.detach().to(Device::cuda_emu).set_requires_grad(true), device_parts;
    const Tensor loss = ops::hybrid_loss(on_device, labels.to(Device::cuda_emu), &device_parts);
    REQUIRE(loss.device() == Device::cuda_emu);
    REQUIRE(device_parts.device() == Device::cuda_emu);
    test::check_close(loss, cpu_loss, 1e-6, 0, "loss");
    test::check_close(device_parts, parts, 1e-6, 0, "parts");
    autograd::backward(loss, Tensor::full({1}, 0.5f).to(Device::cuda_emu));
    REQUIRE(on_device.grad().device() == Device::cuda_emu);
    test::check_close(on_device.grad(), logits.grad(), 1e-6, 1e-9, "gradient");
    if (run == 0)
      first_grad = on_device.grad().to_vector();
    else
      CHECK(on_device.grad().to_vector() == first_grad);  // bitwise the same on a second run
  }
  // A label outside [0, C) makes the loss NaN on a device (checking would mean waiting for it).
  Tensor bad = labels.clone();
  bad.data<uint8_t>()[17] = 3;
  CHECK(std::isnan(ops::hybrid_loss(logits.detach().to(Device::cuda_emu), bad.to(Device::cuda_emu)).to_vector()[0]));
}

namespace {
// MS-SSIM needs 161 x 161: labels with a disc of class 1 and logits that lean towards the labels (so cs > 0 at every
// scale), or away from them (opposite: the prediction is the labels' negative, cs < 0 at the first scale).
void ms_ssim_case(int n, int h, int w, bool opposite, Rng& rng, Tensor* logits, Tensor* labels) {
  std::vector<float> y(size_t(n * h * w)), z(size_t(n * h * w * 2));
  for (int64_t i = 0; i < int64_t(y.size()); ++i) {
    const int64_t r = (i / w) % h, col = i % w, s = i / (h * w);
    y[size_t(i)] = (r - 60 - 7 * s) * (r - 60 - 7 * s) + (col - 70) * (col - 70) < 40 * 40 ? 1.f : 0.f;
    for (int k = 0; k < 2; ++k) {
      const float lean = (y[size_t(i)] == float(k)) != opposite ? 2.f : 0.f;
      z[size_t(i * 2 + k)] = lean + static_cast<float>(rng.normal());
    }
  }
  *logits = Tensor::from_vector({n, h, w, 2}, z);
  *labels = Tensor::from_vector({n, h, w}, y, DType::u8);
}
}  // namespace

TEST_CASE("hybrid_loss with MS-SSIM: cuda-emu equals the cpu; relu at a negative cs; images under 161 x 161 refused") {
  Rng rng(8);
  ops::HybridLossOptions ms;
  ms.multiscale = true;
  Tensor logits, labels;
  ms_ssim_case(2, 163, 166, false, rng, &logits, &labels);  // odd and even sides at every scale
  logits.set_requires_grad(true);
  Tensor parts;
  const Tensor cpu_loss = ops::hybrid_loss(logits, labels, &parts, nullptr, ms);
  autograd::backward(cpu_loss, Tensor::full({1}, 0.5f));
  if (device::emulator_built()) {
    Tensor on_device = logits.detach().to(Device::cuda_emu).set_requires_grad(true), device_parts;
    const Tensor loss = ops::hybrid_loss(on_device, labels.to(Device::cuda_emu), &device_parts, nullptr, ms);
    test::check_close(loss, cpu_loss, 1e-6, 0, "loss");
    test::check_close(device_parts, parts, 1e-6, 0, "parts");
    autograd::backward(loss, Tensor::full({1}, 0.5f).to(Device::cuda_emu));
    test::check_close(on_device.grad(), logits.grad(), 1e-6, 1e-12, "gradient");
  }
  // The prediction opposite to the labels: cs < 0 at the first scale, so relu makes every plane's MS-SSIM 0 and the
  // SSIM part exactly 1, with no gradient from it (tf.image.ssim_multiscale's value; TF's gradient there is NaN).
  Tensor wrong, wrong_labels;
  ms_ssim_case(1, 161, 161, true, rng, &wrong, &wrong_labels);
  ops::hybrid_loss(wrong, wrong_labels, &parts, nullptr, ms);
  CHECK(parts.to_vector()[1] == 1.f);
  CHECK_THROWS_WITH_AS(
      ops::hybrid_loss(randn({1, 161, 160, 2}, rng), Tensor::zeros({1, 161, 160}, DType::i32), nullptr, nullptr, ms),
      doctest::Contains("at least 161 x 161"), std::invalid_argument);
}
