// Convolution (ops::conv and kernels/cpu/conv.cpp): forward, dgrad and wgrad against naive loop references,
// gradients against finite differences, determinism, and argument validation.
//
// Tolerances: the references accumulate in double in loop order; the kernels accumulate in float in a blocked order.
// For a sum of L products of O(1) random values the float rounding error grows about like sqrt(L) * 2^-24 * |terms|,
// so we allow atol = 1e-5 * sqrt(L) (tens of ulps at the magnitude of the terms, for L up to ~2000) plus rtol = 1e-5.
// A wrong tap, channel or pixel gives errors of order 1, far above this.
#include <omp.h>

#include <cmath>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "kernels/cpu/conv.h"
#include "tests/test_util.h"

using namespace unet;
using kernels::ConvProblem;

namespace {

// One test geometry; 2D cases use D = T = 1, stride_d = 1, pad_d = 0.
struct Case {
  int64_t N, D, H, W, C, K;
  int T, R, S;
  int sd, sh, sw;
  int pd, ph, pw;
  bool two_d = false;
};

ConvProblem problem_of(const Case& c) {
  ConvProblem p;
  p.N = c.N, p.D = c.D, p.H = c.H, p.W = c.W, p.C = c.C, p.K = c.K;
  p.T = c.T, p.R = c.R, p.S = c.S;
  p.stride_d = c.sd, p.stride_h = c.sh, p.stride_w = c.sw;
  p.pad_d = c.pd, p.pad_h = c.ph, p.pad_w = c.pw;
  p.compute_output_size();
  return p;
}

Shape x_shape(const Case& c) {
  return c.two_d ? Shape{c.N, c.H, c.W, c.C} : Shape{c.N, c.D, c.H, c.W, c.C};
}
Shape w_shape(const Case& c) {
  return c.two_d ? Shape{c.K, c.R, c.S, c.C} : Shape{c.K, c.T, c.R, c.S, c.C};
}
std::vector<int> strides(const Case& c) {
  return c.two_d ? std::vector<int>{c.sh, c.sw} : std::vector<int>{c.sd, c.sh, c.sw};
}
std::vector<int> pads(const Case& c) {
  return c.two_d ? std::vector<int>{c.ph, c.pw} : std::vector<int>{c.pd, c.ph, c.pw};
}
Shape y_shape(const Case& c) {
  ConvProblem p = problem_of(c);
  return c.two_d ? Shape{c.N, p.P, p.Q, c.K} : Shape{c.N, p.Z, p.P, p.Q, c.K};
}

// Calls fn(n, z, p, q, t, r, s, x_index, y_index, w_index_without_c) for every (output pixel, tap) pair that reads
// inside the input; the caller loops over channels. Written for clarity, not speed.
template <class F>
void for_each_valid_tap(const ConvProblem& p, F&& fn) {
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t z = 0; z < p.Z; ++z)
      for (int64_t pp = 0; pp < p.P; ++pp)
        for (int64_t q = 0; q < p.Q; ++q)
          for (int t = 0; t < p.T; ++t)
            for (int r = 0; r < p.R; ++r)
              for (int s = 0; s < p.S; ++s) {
                int64_t iz = z * p.stride_d + t - p.pad_d, ih = pp * p.stride_h + r - p.pad_h,
                        iw = q * p.stride_w + s - p.pad_w;
                if (iz < 0 || iz >= p.D || ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
                int64_t xi = (((n * p.D + iz) * p.H + ih) * p.W + iw) * p.C;
                int64_t yi = (((n * p.Z + z) * p.P + pp) * p.Q + q) * p.K;
                int64_t tap = (int64_t(t) * p.R + r) * p.S + s;
                fn(xi, yi, tap);
              }
}

std::vector<float> reference_fprop(const ConvProblem& p, const std::vector<float>& x, const std::vector<float>& w,
                                   const std::vector<float>* bias) {
  std::vector<double> y(static_cast<size_t>(p.N * p.Z * p.P * p.Q * p.K), 0.0);
  for_each_valid_tap(p, [&](int64_t xi, int64_t yi, int64_t tap) {
    for (int64_t k = 0; k < p.K; ++k)
      for (int64_t c = 0; c < p.C; ++c)
        y[static_cast<size_t>(yi + k)] +=
            double(x[static_cast<size_t>(xi + c)]) * w[static_cast<size_t>((k * p.taps() + tap) * p.C + c)];
  });
  std::vector<float> out(y.size());
  for (size_t i = 0; i < y.size(); ++i)
    out[i] = static_cast<float>(y[i] + (bias ? (*bias)[i % static_cast<size_t>(p.K)] : 0.f));
  return out;
}

std::vector<float> reference_dgrad(const ConvProblem& p, const std::vector<float>& dy, const std::vector<float>& w) {
  std::vector<double> dx(static_cast<size_t>(p.N * p.D * p.H * p.W * p.C), 0.0);
  for_each_valid_tap(p, [&](int64_t xi, int64_t yi, int64_t tap) {
    for (int64_t k = 0; k < p.K; ++k)
      for (int64_t c = 0; c < p.C; ++c)
        dx[static_cast<size_t>(xi + c)] +=
            double(dy[static_cast<size_t>(yi + k)]) * w[static_cast<size_t>((k * p.taps() + tap) * p.C + c)];
  });
  return std::vector<float>(dx.begin(), dx.end());
}

std::vector<float> reference_wgrad(const ConvProblem& p, const std::vector<float>& x, const std::vector<float>& dy) {
  std::vector<double> dw(static_cast<size_t>(p.K * p.taps() * p.C), 0.0);
  for_each_valid_tap(p, [&](int64_t xi, int64_t yi, int64_t tap) {
    for (int64_t k = 0; k < p.K; ++k)
      for (int64_t c = 0; c < p.C; ++c)
        dw[static_cast<size_t>((k * p.taps() + tap) * p.C + c)] +=
            double(dy[static_cast<size_t>(yi + k)]) * x[static_cast<size_t>(xi + c)];
  });
  return std::vector<float>(dw.begin(), dw.end());
}

// See the file comment: error allowance for sums of `terms` products of O(1) values.
double atol_for(int64_t terms) {
  return 1e-5 * std::sqrt(static_cast<double>(terms));
}
constexpr double kRtol = 1e-5;

std::string label(const Case& c) {
  return problem_of(c).describe();
}

// Odd sizes, channel counts around the vector widths (1, 3, 5, 17, 33, ...), every kernel and stride pattern used by
// nnU-Net, batch > 1, 2D and 3D, K and C tails on both sides of 16 and 32, rows longer than one register tile.
const std::vector<Case> kCases = {
    {2, 5, 7, 9, 3, 5, 3, 3, 3, 1, 1, 1, 1, 1, 1},           // 3x3x3, tiny channels, batch 2
    {1, 4, 9, 11, 17, 33, 1, 3, 3, 1, 2, 2, 0, 1, 1},        // [1,3,3] stride [1,2,2] (anisotropic levels)
    {1, 7, 6, 13, 1, 32, 3, 3, 3, 2, 2, 2, 1, 1, 1},         // first layer (C = 1), stride 2
    {1, 5, 5, 5, 33, 17, 3, 1, 1, 1, 1, 1, 1, 0, 0},         // [3,1,1]
    {2, 3, 4, 21, 5, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0},          // 1x1x1 head, K = 3
    {1, 4, 5, 30, 32, 32, 3, 3, 3, 1, 1, 1, 1, 1, 1},        // several tiles per row
    {1, 6, 7, 45, 16, 48, 3, 3, 3, 1, 1, 1, 1, 1, 1},        // two k blocks, second half full
    {1, 7, 7, 9, 20, 20, 3, 3, 3, 2, 2, 2, 0, 0, 0},         // stride 2 without padding (floor)
    {1, 5, 6, 7, 4, 6, 3, 3, 3, 1, 2, 2, 2, 2, 2},           // padding larger than needed
    {1, 8, 8, 10, 6, 7, 3, 3, 3, 2, 2, 2, 0, 0, 0},          // stride 2: last plane/row/column read by no output
    {1, 6, 6, 6, 8, 8, 1, 1, 1, 2, 2, 2, 0, 0, 0},           // 1x1x1 stride 2 (residual projection)
    {3, 1, 11, 13, 5, 17, 1, 3, 3, 1, 2, 2, 0, 1, 1, true},  // 2D 3x3 stride 2, batch 3
    {1, 1, 9, 37, 64, 20, 1, 3, 3, 1, 1, 1, 0, 1, 1, true},  // 2D, 64 channels in, K tail
    {2, 1, 8, 8, 1, 1, 1, 3, 3, 1, 1, 1, 0, 1, 1, true},     // 2D, C = K = 1
};

}  // namespace

TEST_CASE("conv forward matches the naive reference for 2D and 3D shapes, odd sizes, channels, kernels and strides") {
  Rng rng(11);
  for (const Case& c : kCases) {
    Tensor x = randn(x_shape(c), rng), w = randn(w_shape(c), rng), b = randn({c.K}, rng);
    Tensor y = ops::conv(x, w, b, strides(c), pads(c));
    REQUIRE(y.shape() == y_shape(c));
    std::vector<float> bv = b.to_vector();
    std::vector<float> ref = reference_fprop(problem_of(c), x.to_vector(), w.to_vector(), &bv);
    test::check_close(y.to_vector(), ref, kRtol, atol_for(c.T * c.R * c.S * c.C), "fprop " + label(c));
  }
}

TEST_CASE("conv without bias adds nothing") {
  Rng rng(12);
  Case c = kCases[1];
  Tensor x = randn(x_shape(c), rng), w = randn(w_shape(c), rng);
  Tensor y = ops::conv(x, w, Tensor(), strides(c), pads(c));
  std::vector<float> ref = reference_fprop(problem_of(c), x.to_vector(), w.to_vector(), nullptr);
  test::check_close(y.to_vector(), ref, kRtol, atol_for(c.T * c.R * c.S * c.C), "fprop no bias");
}

TEST_CASE("conv output size is floor((in + 2 pad - kernel) / stride) + 1 per axis") {
  Tensor x = Tensor::zeros({1, 5, 8, 9, 2});
  Tensor w = Tensor::zeros({4, 1, 3, 3, 2});
  CHECK(ops::conv(x, w, Tensor(), {1, 2, 2}, {0, 1, 1}).shape() == Shape{1, 5, 4, 5, 4});
  CHECK(ops::conv(x, w, Tensor(), {1, 1, 1}, {0, 0, 0}).shape() == Shape{1, 5, 6, 7, 4});
  Tensor x2 = Tensor::zeros({2, 7, 6, 3});
  Tensor w2 = Tensor::zeros({5, 3, 3, 3});
  CHECK(ops::conv(x2, w2, Tensor(), {2, 2}, {1, 1}).shape() == Shape{2, 4, 3, 5});
}

TEST_CASE("conv dgrad matches the naive reference for every test geometry") {
  Rng rng(21);
  for (const Case& c : kCases) {
    ConvProblem p = problem_of(c);
    Tensor w = randn(w_shape(c), rng), dy = randn(y_shape(c), rng);
    Tensor dx = Tensor::full(x_shape(c), 12345.f);  // stale values must be overwritten, including unread positions
    kernels::cpu::conv_dgrad(p, dy.data<float>(), w.data<float>(), dx.data<float>());
    std::vector<float> ref = reference_dgrad(p, dy.to_vector(), w.to_vector());
    test::check_close(dx.to_vector(), ref, kRtol, atol_for(c.T * c.R * c.S * c.K), "dgrad " + label(c));
  }
}

TEST_CASE("conv wgrad and bias gradient match the naive reference for every test geometry") {
  Rng rng(31);
  for (const Case& c : kCases) {
    ConvProblem p = problem_of(c);
    Tensor x = randn(x_shape(c), rng), dy = randn(y_shape(c), rng);
    Tensor dw = Tensor::full(w_shape(c), 12345.f), db = Tensor::full({c.K}, 12345.f);
    kernels::cpu::conv_wgrad(p, x.data<float>(), dy.data<float>(), dw.data<float>(), db.data<float>());
    std::vector<float> ref = reference_wgrad(p, x.to_vector(), dy.to_vector());
    const int64_t pixels = p.N * p.Z * p.P * p.Q;
    test::check_close(dw.to_vector(), ref, kRtol, atol_for(pixels), "wgrad " + label(c));
    std::vector<float> dyv = dy.to_vector(), ref_db(static_cast<size_t>(c.K), 0.f);
    std::vector<double> sums(static_cast<size_t>(c.K), 0.0);
    for (size_t i = 0; i < dyv.size(); ++i) sums[i % static_cast<size_t>(c.K)] += dyv[i];
    for (size_t k = 0; k < sums.size(); ++k) ref_db[k] = static_cast<float>(sums[k]);
    test::check_close(db.to_vector(), ref_db, kRtol, atol_for(pixels), "dbias " + label(c));
  }
}

TEST_CASE("conv gradients of input, weight and bias agree with finite differences (3D, stride [1,2,2])") {
  Rng rng(41);
  Tensor x = randn({1, 3, 5, 6, 3}, rng).set_requires_grad(true);
  Tensor w = randn({4, 3, 3, 3, 3}, rng, 0.5f).set_requires_grad(true);
  Tensor b = randn({4}, rng).set_requires_grad(true);
  // conv is linear in each argument, so central differences are exact up to float rounding of the outputs
  // (about 1e-7 relative, divided by 2h = 0.1): 2e-3 leaves a wide margin.
  test::check_gradients(
      [](const std::vector<Tensor>& in) {
        return ops::conv(in[0], in[1], in[2], {1, 2, 2}, {1, 1, 1});
      },
      {x, w, b}, 0.05, 2e-3, 2e-3);
}

TEST_CASE("conv gradients agree with finite differences in 2D with stride 2 and 17 channels") {
  Rng rng(42);
  Tensor x = randn({2, 7, 5, 17}, rng).set_requires_grad(true);
  Tensor w = randn({5, 3, 3, 17}, rng, 0.3f).set_requires_grad(true);
  Tensor b = randn({5}, rng).set_requires_grad(true);
  test::check_gradients(
      [](const std::vector<Tensor>& in) {
        return ops::conv(in[0], in[1], in[2], {2, 2}, {1, 1});
      },
      {x, w, b}, 0.05, 2e-3, 2e-3);
}

TEST_CASE("conv backward gives gradients only to inputs that require them") {
  Rng rng(43);
  Tensor x = randn({1, 4, 4, 4, 3}, rng);
  Tensor w = randn({2, 3, 3, 3, 3}, rng).set_requires_grad(true);
  Tensor b = randn({2}, rng);
  autograd::backward(ops::sum(ops::conv(x, w, b, {1, 1, 1}, {1, 1, 1})));
  CHECK(w.grad().defined());
  CHECK_FALSE(x.grad().defined());
  CHECK_FALSE(b.grad().defined());

  Tensor x2 = randn({1, 4, 4, 4, 3}, rng).set_requires_grad(true);
  Tensor w2 = randn({2, 3, 3, 3, 3}, rng);
  Tensor b2 = randn({2}, rng).set_requires_grad(true);
  autograd::backward(ops::sum(ops::conv(x2, w2, b2, {1, 1, 1}, {1, 1, 1})));
  CHECK(x2.grad().defined());
  CHECK_FALSE(w2.grad().defined());
  // d sum(y) / d bias[k] = number of output pixels.
  for (float g : b2.grad().to_vector()) CHECK(g == 64.f);
}

TEST_CASE("conv wgrad is bitwise identical across runs and thread counts") {
  Rng rng(51);
  // A 3x3x3 layer, and a 1x1 head whose few tiles are split by thread count (the summation order must not change).
  for (const Case& c :
       {Case{2, 9, 10, 23, 32, 32, 3, 3, 3, 1, 1, 1, 1, 1, 1}, Case{1, 5, 6, 40, 32, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0}}) {
    ConvProblem p = problem_of(c);
    Tensor x = randn(x_shape(c), rng), dy = randn(y_shape(c), rng);
    auto run = [&](int threads) {
      int saved = omp_get_max_threads();
      omp_set_num_threads(threads);
      Tensor dw = Tensor::empty(w_shape(c)), db = Tensor::empty({c.K});
      kernels::cpu::conv_wgrad(p, x.data<float>(), dy.data<float>(), dw.data<float>(), db.data<float>());
      omp_set_num_threads(saved);
      std::vector<float> v = dw.to_vector(), bv = db.to_vector();
      v.insert(v.end(), bv.begin(), bv.end());
      return v;
    };
    std::vector<float> first = run(2), second = run(2), single = run(1), many = run(5);
    CHECK(first == second);
    CHECK(first == single);
    CHECK(first == many);
  }
}

TEST_CASE("conv rejects bad arguments with messages that name the shapes") {
  Tensor x = Tensor::zeros({1, 4, 4, 4, 3});
  Tensor w = Tensor::zeros({2, 3, 3, 3, 3});
  auto message = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "no exception";
  };
  std::string m = message([&] { ops::conv(x, Tensor::zeros({2, 3, 3, 3, 5}), Tensor(), {1, 1, 1}, {1, 1, 1}); });
  CHECK(m.find("channel mismatch") != std::string::npos);
  CHECK(m.find("[1, 4, 4, 4, 3]") != std::string::npos);
  CHECK(m.find("[2, 3, 3, 3, 5]") != std::string::npos);

  m = message([&] { ops::conv(Tensor::zeros({4, 3}), Tensor::zeros({2, 3}), Tensor(), {1}, {1}); });
  CHECK(m.find("rank 4 or 5") != std::string::npos);

  m = message([&] { ops::conv(x, Tensor::zeros({2, 3, 3, 3}), Tensor(), {1, 1, 1}, {1, 1, 1}); });
  CHECK(m.find("weight rank") != std::string::npos);

  m = message([&] { ops::conv(x, w, Tensor(), {1, 1}, {1, 1, 1}); });
  CHECK(m.find("stride [1, 1]") != std::string::npos);

  m = message([&] { ops::conv(x, Tensor::zeros({2, 5, 5, 5, 3}), Tensor(), {1, 1, 1}, {0, 0, 0}); });
  CHECK(m.find("output size < 1") != std::string::npos);

  m = message([&] { ops::conv(x, w, Tensor::zeros({3}), {1, 1, 1}, {1, 1, 1}); });
  CHECK(m.find("bias [3]") != std::string::npos);

  m = message([&] { ops::conv(Tensor::zeros({1, 4, 4, 4, 3}, DType::i32), w, Tensor(), {1, 1, 1}, {1, 1, 1}); });
  CHECK(m.find("i32[1, 4, 4, 4, 3]") != std::string::npos);
  // Mixed precision keeps f32 master weights: a bf16 weight is refused, whatever the input's type.
  m = message([&] { ops::conv(Tensor::zeros({1, 4, 4, 4, 3}, DType::bf16), Tensor::zeros({2, 3, 3, 3, 3}, DType::bf16),
                              Tensor(), {1, 1, 1}, {1, 1, 1}); });
  CHECK(m.find("weight must be f32") != std::string::npos);

  m = message([&] { ops::conv(x, w, Tensor(), {0, 1, 1}, {1, 1, 1}); });
  CHECK(m.find("stride") != std::string::npos);
}
