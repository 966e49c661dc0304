// instance_norm and batch_norm: forward and backward against double-precision references written here, the normalised
// statistics, robustness to a large mean, finite differences, determinism, and argument errors.
#include <omp.h>

#include <cmath>
#include <cstring>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "kernels/common/allocator.h"
#include "tests/test_util.h"

using namespace unet;

namespace {

struct Stats {
  std::vector<double> mean, rstd;  // [n, c]
};

// Two-pass mean and biased variance in double per (n, c) over the spatial positions.
Stats naive_stats(const std::vector<float>& x, int64_t n, int64_t s, int64_t c, double eps) {
  Stats st;
  st.mean.assign(static_cast<size_t>(n * c), 0.0);
  st.rstd.assign(static_cast<size_t>(n * c), 0.0);
  for (int64_t b = 0; b < n; ++b)
    for (int64_t ch = 0; ch < c; ++ch) {
      double m = 0.0, v = 0.0;
      for (int64_t i = 0; i < s; ++i) m += x[static_cast<size_t>((b * s + i) * c + ch)];
      m /= static_cast<double>(s);
      for (int64_t i = 0; i < s; ++i) {
        double d = x[static_cast<size_t>((b * s + i) * c + ch)] - m;
        v += d * d;
      }
      st.mean[static_cast<size_t>(b * c + ch)] = m;
      st.rstd[static_cast<size_t>(b * c + ch)] = 1.0 / std::sqrt(v / static_cast<double>(s) + eps);
    }
  return st;
}

std::vector<float> naive_forward(const std::vector<float>& x, const std::vector<float>& gamma,
                                 const std::vector<float>& beta, int64_t n, int64_t s, int64_t c, double eps) {
  Stats st = naive_stats(x, n, s, c, eps);
  std::vector<float> y(x.size());
  for (int64_t b = 0; b < n; ++b)
    for (int64_t i = 0; i < s; ++i)
      for (int64_t ch = 0; ch < c; ++ch) {
        const size_t j = static_cast<size_t>((b * s + i) * c + ch), k = static_cast<size_t>(b * c + ch);
        double v = (x[j] - st.mean[k]) * st.rstd[k];
        if (!gamma.empty()) v *= gamma[static_cast<size_t>(ch)];
        if (!beta.empty()) v += beta[static_cast<size_t>(ch)];
        y[j] = static_cast<float>(v);
      }
  return y;
}

// Textbook backward: dxhat = dy * gamma; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
void naive_backward(const std::vector<float>& x, const std::vector<float>& gamma, const std::vector<float>& dy,
                    int64_t n, int64_t s, int64_t c, double eps, std::vector<float>& dx, std::vector<float>& dgamma,
                    std::vector<float>& dbeta) {
  Stats st = naive_stats(x, n, s, c, eps);
  dx.assign(x.size(), 0.f);
  std::vector<double> dg(static_cast<size_t>(c), 0.0), db(static_cast<size_t>(c), 0.0);
  for (int64_t b = 0; b < n; ++b)
    for (int64_t ch = 0; ch < c; ++ch) {
      const size_t k = static_cast<size_t>(b * c + ch);
      const double g = gamma.empty() ? 1.0 : gamma[static_cast<size_t>(ch)];
      double m1 = 0.0, m2 = 0.0;
      for (int64_t i = 0; i < s; ++i) {
        const size_t j = static_cast<size_t>((b * s + i) * c + ch);
        const double xhat = (x[j] - st.mean[k]) * st.rstd[k];
        m1 += dy[j] * g;
        m2 += dy[j] * g * xhat;
        dg[static_cast<size_t>(ch)] += dy[j] * xhat;
        db[static_cast<size_t>(ch)] += dy[j];
      }
      m1 /= static_cast<double>(s);
      m2 /= static_cast<double>(s);
      for (int64_t i = 0; i < s; ++i) {
        const size_t j = static_cast<size_t>((b * s + i) * c + ch);
        const double xhat = (x[j] - st.mean[k]) * st.rstd[k];
        dx[j] = static_cast<float>(st.rstd[k] * (dy[j] * g - m1 - xhat * m2));
      }
    }
  dgamma.assign(dg.begin(), dg.end());
  dbeta.assign(db.begin(), db.end());
}

int64_t spatial_size(const Shape& s) {
  return shape_numel(s) / (s.front() * s.back());
}

}  // namespace

TEST_CASE("instance_norm forward equals a double-precision reference in 1D, 2D and 3D, with and without affine") {
  Rng rng(21);
  const std::vector<Shape> shapes = {
      {2, 7, 5, 3}, {1, 3, 5, 4, 17}, {3, 11, 9}, {2, 60, 70, 6}};  // the last: 2 chunks of 2730
  for (const Shape& shape : shapes)
    for (int affine = 0; affine < 3; ++affine) {  // 0 none, 1 gamma and beta, 2 beta only
      CAPTURE(shape_str(shape));
      CAPTURE(affine);
      const int64_t C = shape.back();
      Tensor x = randn(shape, rng, 2.f);
      Tensor gamma = affine == 1 ? randn({C}, rng) : Tensor();
      Tensor beta = affine >= 1 ? randn({C}, rng) : Tensor();
      Tensor y = ops::instance_norm(x, gamma, beta, 1e-5f);
      std::vector<float> ref = naive_forward(x.to_vector(), gamma.defined() ? gamma.to_vector() : std::vector<float>{},
                                             beta.defined() ? beta.to_vector() : std::vector<float>{}, shape.front(),
                                             spatial_size(shape), C, 1e-5);
      // |y| is a few units; the f32 path rounds mean, rstd and the product once each: ~1e-6 relative.
      test::check_close(y.to_vector(), ref, 1e-5, 1e-5, "instance_norm forward");
    }
}

TEST_CASE("instance_norm without affine gives every (sample, channel) mean 0 and variance 1") {
  Rng rng(22);
  const Shape shape{2, 6, 10, 12, 5};
  Tensor x = randn(shape, rng, 3.f);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i)
    p[i] += static_cast<float>(i % 5) * 4.f - 7.f;  // a different mean per channel
  Tensor y = ops::instance_norm(x, Tensor(), Tensor(), 1e-5f);
  std::vector<float> v = y.to_vector();
  const int64_t S = 6 * 10 * 12, C = 5;
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double m = 0.0, q = 0.0;
      for (int64_t i = 0; i < S; ++i) m += v[static_cast<size_t>((n * S + i) * C + c)];
      m /= S;
      for (int64_t i = 0; i < S; ++i) q += std::pow(v[static_cast<size_t>((n * S + i) * C + c)] - m, 2);
      q /= S;
      // f32 outputs of magnitude ~1: mean within 1e-5; variance is var / (var + eps) = 1 - eps/9 (~1e-6) plus
      // rounding, within 1e-4.
      CHECK(std::abs(m) < 1e-5);
      CHECK(q == doctest::Approx(1.0).epsilon(1e-4));
    }
}

TEST_CASE("instance_norm stays accurate when the mean is large compared with the spread") {
  Rng rng(23);
  const Shape shape{1, 80, 80, 3};  // 2 chunks: the merge sees the large mean too
  Tensor x = randn(shape, rng, 1.f);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] += 3000.f;  // E[x^2] - E[x]^2 in f32 would lose everything here
  Tensor y = ops::instance_norm(x, Tensor(), Tensor(), 1e-5f);
  std::vector<float> ref = naive_forward(x.to_vector(), {}, {}, 1, 6400, 3, 1e-5);
  // Inputs near 3000 carry f32 spacing 2.4e-4; (x - mean) keeps it, so outputs are good to ~3e-4 absolute.
  test::check_close(y.to_vector(), ref, 1e-4, 1e-3, "large-mean instance_norm");
}

TEST_CASE("instance_norm dx, dgamma and dbeta equal the textbook formulas, also over several chunks") {
  Rng rng(24);
  for (const Shape& shape : {Shape{2, 5, 7, 3}, Shape{1, 3, 4, 5, 9}, Shape{2, 50, 48, 8}}) {
    CAPTURE(shape_str(shape));
    const int64_t C = shape.back();
    Tensor x = randn(shape, rng, 1.5f).set_requires_grad(true);
    Tensor gamma = randn({C}, rng).set_requires_grad(true);
    Tensor beta = randn({C}, rng).set_requires_grad(true);
    Tensor y = ops::instance_norm(x, gamma, beta, 1e-5f);
    Tensor dy = randn(shape, rng);
    autograd::backward(y, dy);
    std::vector<float> dx, dg, db;
    naive_backward(x.to_vector(), gamma.to_vector(), dy.to_vector(), shape.front(), spatial_size(shape), C, 1e-5, dx,
                   dg, db);
    // dx is a difference of terms of size ~|gamma| * rstd ~ 1, formed in f32 from double sums: 1e-5 relative
    // error is expected; dgamma and dbeta sum up to 4800 terms in double and round once.
    test::check_close(x.grad().to_vector(), dx, 1e-4, 1e-5, "dx");
    test::check_close(gamma.grad().to_vector(), dg, 1e-5, 1e-5, "dgamma");
    test::check_close(beta.grad().to_vector(), db, 1e-5, 1e-5, "dbeta");
  }
}

TEST_CASE("instance_norm gradients agree with central finite differences in 2D and 3D") {
  Rng rng(25);
  for (const Shape& shape : {Shape{2, 3, 4, 3}, Shape{1, 2, 3, 2, 4}}) {
    CAPTURE(shape_str(shape));
    const int64_t C = shape.back();
    Tensor x = randn(shape, rng).set_requires_grad(true);
    Tensor gamma = rand_uniform({C}, rng, 0.5f, 1.5f).set_requires_grad(true);
    Tensor beta = randn({C}, rng).set_requires_grad(true);
    // h = 1e-2 on unit-variance data: truncation error O(h^2 * third derivative) ~ 1e-4, f32 rounding of L
    // (~1e-6 * |L| ~ 1e-5) / 2h ~ 5e-4; tolerance 1e-2 relative + 2e-3 absolute.
    test::check_gradients([](const std::vector<Tensor>& in) { return ops::instance_norm(in[0], in[1], in[2], 1e-5f); },
                          {x, gamma, beta}, 1e-2, 1e-2, 2e-3);
  }
}

TEST_CASE("instance_norm without gamma still differentiates x and beta") {
  Rng rng(26);
  Tensor x = randn({1, 4, 3, 2}, rng).set_requires_grad(true);
  Tensor beta = randn({2}, rng).set_requires_grad(true);
  test::check_gradients([](const std::vector<Tensor>& in) { return ops::instance_norm(in[0], Tensor(), in[1], 1e-5f); },
                        {x, beta}, 1e-2, 1e-2, 2e-3);  // tolerance as in the test above
}

TEST_CASE("instance_norm results are bitwise identical with one and with two threads") {
  Rng rng(27);
  const Shape shape{2, 9, 30, 31, 6};  // 8370 positions per sample: 4 chunks
  Tensor x0 = randn(shape, rng), g0 = randn({6}, rng), b0 = randn({6}, rng), dy = randn(shape, rng);
  auto run = [&](int threads) {
    int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    Tensor x = x0.clone().set_requires_grad(true), g = g0.clone().set_requires_grad(true),
           b = b0.clone().set_requires_grad(true);
    Tensor y = ops::instance_norm(x, g, b, 1e-5f);
    autograd::backward(y, dy);
    omp_set_num_threads(saved);
    return std::vector<Tensor>{y, x.grad(), g.grad(), b.grad()};
  };
  std::vector<Tensor> one = run(1), two = run(2);
  for (size_t i = 0; i < one.size(); ++i) {
    CAPTURE(i);
    CHECK(std::memcmp(one[i].raw(), two[i].raw(), one[i].nbytes()) == 0);
  }
}

TEST_CASE("instance_norm rejects bad arguments with messages naming them") {
  Tensor x = Tensor::zeros({2, 4, 4, 3});
  CHECK_THROWS_WITH_AS(ops::instance_norm(x, Tensor::zeros({4}), Tensor(), 1e-5f),
                       doctest::Contains("gamma must be [C] = [3]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::instance_norm(x, Tensor(), Tensor::zeros({3, 1}), 1e-5f),
                       doctest::Contains("beta must be [C] = [3]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::instance_norm(x, Tensor(), Tensor(), -1.f), doctest::Contains("eps"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::instance_norm(Tensor::zeros({2, 4, 4, 3}, DType::i32), Tensor(), Tensor(), 1e-5f),
                       doctest::Contains("i32[2, 4, 4, 3]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      ops::instance_norm(Tensor::zeros({2, 4, 4, 3}, DType::bf16), Tensor::zeros({3}, DType::bf16), Tensor(), 1e-5f),
      doctest::Contains("gamma and beta must be f32"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::instance_norm(Tensor::zeros({4, 3}), Tensor(), Tensor(), 1e-5f),
                       doctest::Contains("spatial"), std::invalid_argument);
}

namespace {
// The op's output and the gradients of x, gamma and beta from a fixed random output gradient.
std::vector<std::vector<float>> run_norm_act(bool fused, Device d, DType dt, const Tensor& x0, const Tensor& g0,
                                             const Tensor& b0) {
  Tensor x = ops::cast(x0, dt).clone().to(d).set_requires_grad(true);  // a fresh leaf per run
  Tensor g = g0.clone().to(d).set_requires_grad(true), b = b0.clone().to(d).set_requires_grad(true);
  Tensor y = fused ? ops::instance_norm_leaky_relu(x, g, b, 1e-5f, 0.01f)
                   : ops::leaky_relu(ops::instance_norm(x, g, b, 1e-5f), 0.01f);
  Rng rng(5);
  autograd::backward(y, ops::cast(randn(y.shape(), rng), dt).to(d));
  return {y.to_vector(), x.grad().to_vector(), g.grad().to_vector(), b.grad().to_vector()};
}
}  // namespace

// (Its 16-bit result rounds twice, after the norm and after the activation, exactly as the two ops do; so it is held to
// the pair here rather than to the single-rounding reference of tests/mixed_precision_cases.h.)
TEST_CASE("instance_norm_leaky_relu is instance_norm then leaky_relu bit for bit, forward and backward") {
  Rng rng(3);
  const Tensor x = randn({2, 5, 6, 7, 9}, rng, 2.f), gamma = randn({9}, rng), beta = randn({9}, rng);
  std::vector<Device> devices = {Device::cpu};
  if (device::emulator_built()) devices.push_back(Device::cuda_emu);  // the fused CUDA kernels
  for (Device d : devices)
    for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
      CAPTURE(std::string(device_name(d)) + " " + dtype_name(dt));
      const auto fused = run_norm_act(true, d, dt, x, gamma, beta), pair = run_norm_act(false, d, dt, x, gamma, beta);
      for (size_t i = 0; i < fused.size(); ++i) CHECK_MESSAGE(fused[i] == pair[i], "result " << i);
    }
}

TEST_CASE("instance_norm_leaky_relu keeps one activation less alive for backward than the two ops") {
  // What each graph holds between forward and backward, beyond its inputs: the pair keeps the normalised value (the
  // activation's input) and the output; the fused op only the output.
  Rng rng(4);
  Tensor x = randn({2, 16, 16, 16, 8}, rng).set_requires_grad(true);
  auto held = [&](bool fused) {
    const size_t before = HostAllocator::instance().stats().current_bytes;
    Tensor y = fused ? ops::instance_norm_leaky_relu(x, Tensor(), Tensor(), 1e-5f, 0.01f)
                     : ops::leaky_relu(ops::instance_norm(x, Tensor(), Tensor(), 1e-5f), 0.01f);
    const size_t bytes = HostAllocator::instance().stats().current_bytes - before;
    autograd::clear_tape();
    return bytes;
  };
  const size_t pair = held(false), fused = held(true);
  CHECK(pair - fused == x.nbytes());
}

TEST_CASE("instance_norm_leaky_relu rejects a negative slope, whose output sign could not tell the sides apart") {
  CHECK_THROWS_WITH_AS(ops::instance_norm_leaky_relu(Tensor::zeros({1, 4, 4, 2}), Tensor(), Tensor(), 1e-5f, -0.5f),
                       doctest::Contains("negative_slope must be finite and >= 0"), std::invalid_argument);
}

// ---- batch_norm (its PyTorch goldens are in test_golden.cpp) ----

TEST_CASE("batch_norm in training normalises each channel over batch and space, and is a one-sample instance norm") {
  Rng rng(41);
  const Shape shape{3, 5, 4, 6};
  const Tensor x = randn(shape, rng, 2.f), gamma = rand_uniform({6}, rng, 0.5f, 1.5f), beta = randn({6}, rng);
  Tensor rm = Tensor::zeros({6}), rv = Tensor::full({6}, 1.f);
  const Tensor y = ops::batch_norm(x, gamma, beta, rm, rv, {});
  const std::vector<float> ref =
      naive_forward(x.to_vector(), gamma.to_vector(), beta.to_vector(), 1, 3 * 5 * 4, 6, 1e-5);
  test::check_close(y.to_vector(), ref, 1e-5, 1e-5, "y");
  // Running statistics: 0.9 * old + 0.1 * batch, with the unbiased variance.
  const Stats st = naive_stats(x.to_vector(), 1, 60, 6, 0.0);
  for (int c = 0; c < 6; ++c) {
    const double var = 1.0 / (st.rstd[size_t(c)] * st.rstd[size_t(c)]);
    CHECK(rm.to_vector()[size_t(c)] == doctest::Approx(0.1 * st.mean[size_t(c)]).epsilon(1e-5));
    CHECK(rv.to_vector()[size_t(c)] == doctest::Approx(0.9 + 0.1 * var * 60.0 / 59.0).epsilon(1e-5));
  }
}

TEST_CASE("batch_norm gradients agree with central finite differences, with and without the ReLU, 2D and 3D") {
  Rng rng(42);
  for (bool relu : {false, true})
    for (const Shape& shape : {Shape{2, 3, 4, 3}, Shape{2, 2, 3, 2, 4}}) {
      CAPTURE(shape_str(shape));
      CAPTURE(relu);
      const int64_t C = shape.back();
      Tensor x = randn(shape, rng).set_requires_grad(true);
      Tensor gamma = rand_uniform({C}, rng, 0.5f, 1.5f).set_requires_grad(true);
      Tensor beta = randn({C}, rng).set_requires_grad(true);
      // Each evaluation gets fresh running statistics (they are updated in place and play no part in the output).
      // Tolerance as for instance_norm; the ReLU's kink is a measure-zero event for random data.
      test::check_gradients(
          [&](const std::vector<Tensor>& in) {
            ops::BatchNormOptions o;
            o.relu = relu;
            return ops::batch_norm(in[0], in[1], in[2], Tensor::zeros({C}), Tensor::full({C}, 1.f), o);
          },
          {x, gamma, beta}, 1e-2, 1e-2, 2e-3);
    }
}

TEST_CASE("batch_norm in evaluation applies the running statistics, and refuses to be differentiated") {
  Rng rng(43);
  const Tensor x = randn({2, 3, 3, 2}, rng), rm = Tensor::from_vector({2}, {0.5f, -1.f}),
               rv = Tensor::from_vector({2}, {4.f, 0.25f}), gamma = Tensor::from_vector({2}, {2.f, 1.f}),
               beta = Tensor::from_vector({2}, {0.f, 3.f});
  ops::BatchNormOptions o;
  o.training = false;
  o.eps = 0.f;
  const std::vector<float> xv = x.to_vector(), y = ops::batch_norm(x, gamma, beta, rm, rv, o).to_vector();
  for (size_t i = 0; i < xv.size(); ++i) {
    const float expect = i % 2 == 0 ? (xv[i] - 0.5f) * 2.f / 2.f : (xv[i] + 1.f) * 1.f / 0.5f + 3.f;
    CHECK(y[i] == doctest::Approx(expect).epsilon(1e-6));
  }
  CHECK(rm.to_vector() == std::vector<float>{0.5f, -1.f});  // evaluation leaves the statistics alone
  Tensor g = gamma.clone().set_requires_grad(true);
  CHECK_THROWS_WITH_AS(ops::batch_norm(x, g, beta, rm, rv, o), doctest::Contains("NoGradGuard"), std::invalid_argument);
}

TEST_CASE("batch_norm rejects bad arguments with messages naming them") {
  const Tensor x = Tensor::zeros({2, 4, 4, 3});
  CHECK_THROWS_WITH_AS(ops::batch_norm(x, Tensor(), Tensor(), Tensor::zeros({4}), Tensor::zeros({3}), {}),
                       doctest::Contains("running statistics must be f32 [C] = [3]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      ops::batch_norm(x, Tensor(), Tensor(), Tensor::zeros({3}).set_requires_grad(true), Tensor::zeros({3}), {}),
      doctest::Contains("buffers"), std::invalid_argument);
  ops::BatchNormOptions o;
  o.momentum = 1.5f;
  CHECK_THROWS_WITH_AS(ops::batch_norm(x, Tensor(), Tensor(), Tensor::zeros({3}), Tensor::zeros({3}), o),
                       doctest::Contains("momentum must be in [0, 1]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      ops::batch_norm(Tensor::zeros({1, 1, 1, 3}), Tensor(), Tensor(), Tensor::zeros({3}), Tensor::zeros({3}), {}),
      doctest::Contains("more than one value per channel"), std::invalid_argument);
}
