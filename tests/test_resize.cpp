// Bilinear upsampling (ops::upsample_bilinear, kernels/resize.h) on the CPU: the axis maps against PyTorch's source
// index formula written here, the forward against a double-precision reference, gradients against finite
// differences, f16 / bf16, argument errors. (PyTorch goldens: test_golden.cpp; the CUDA kernels: test_cuda_resize.cpp.)
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/resize.h"
#include "tests/test_util.h"

using namespace unet;

namespace {
Tensor randn_t(const Shape& s, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(shape_numel(s)));
  for (float& x : v) x = static_cast<float>(rng.normal());
  return Tensor::from_vector(s, v).set_requires_grad(true);
}

// PyTorch's source position of output o along an axis (double here: the kernels' f32 agrees to an ulp).
double source(int64_t o, int64_t in, int64_t out, bool align_corners) {
  if (align_corners) return out > 1 ? double(o) * double(in - 1) / double(out - 1) : 0.0;
  return std::max(0.0, (double(o) + 0.5) * double(in) / double(out) - 0.5);
}

// y[n, p, q, c] = sum over the 2 x 2 neighbours of the source position, weighted by the bilinear hat.
std::vector<double> reference(const Tensor& x, int64_t oh, int64_t ow, bool ac) {
  const int64_t N = x.dim(0), H = x.dim(1), W = x.dim(2), C = x.dim(3);
  const std::vector<float> v = x.to_vector();
  std::vector<double> y;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < oh; ++p)
      for (int64_t q = 0; q < ow; ++q)
        for (int64_t c = 0; c < C; ++c) {
          // Past the last input (align_corners false) both taps are the last input: the hat at the clamped position.
          const double sy = std::min(source(p, H, oh, ac), double(H - 1)),
                       sx = std::min(source(q, W, ow, ac), double(W - 1));
          double acc = 0;
          for (int64_t a = 0; a < H; ++a)
            for (int64_t b = 0; b < W; ++b) {
              const double wy = std::max(0.0, 1 - std::abs(sy - double(a))),
                           wx = std::max(0.0, 1 - std::abs(sx - double(b)));
              acc += wy * wx * v[size_t(((n * H + a) * W + b) * C + c)];
            }
          y.push_back(acc);
        }
  return y;
}
}  // namespace

TEST_CASE("bilinear_axis: PyTorch's source positions, and every output's two taps listed once under their inputs") {
  for (bool ac : {false, true})
    for (auto [in, out] : {std::pair<int64_t, int64_t>{5, 10}, {3, 24}, {7, 4}, {4, 1}, {1, 6}, {6, 6}}) {
      CAPTURE(ac);
      CAPTURE(in);
      CAPTURE(out);
      const kernels::ResizeAxis a = kernels::bilinear_axis(in, out, ac);
      std::vector<int> seen(size_t(out), 0);
      for (int64_t o = 0; o < out; ++o) {
        const double s = source(o, in, out, ac);
        CHECK(a.i0[size_t(o)] == std::min<int64_t>(int64_t(s), in - 1));
        CHECK(a.i0[size_t(o)] + a.lambda[size_t(o)] == doctest::Approx(s).epsilon(1e-6));
        CHECK(a.i1[size_t(o)] == std::min<int64_t>(a.i0[size_t(o)] + 1, in - 1));
      }
      REQUIRE(a.start.size() == size_t(in + 1));
      CHECK(a.start.back() == 2 * out);
      for (int64_t i = 0; i < in; ++i)
        for (int32_t t = a.start[size_t(i)]; t < a.start[size_t(i) + 1]; ++t) {
          const int32_t o = a.tap_out[size_t(t)];
          CHECK((a.i0[size_t(o)] == i || a.i1[size_t(o)] == i));
          if (t > a.start[size_t(i)]) CHECK(a.tap_out[size_t(t) - 1] <= o);  // increasing output order
          ++seen[size_t(o)];
        }
      for (int s : seen) CHECK(s == 2);
    }
}

TEST_CASE("upsample_bilinear equals the bilinear hat sum, and its gradient finite differences") {
  Rng rng(3);
  for (bool ac : {false, true}) {
    CAPTURE(ac);
    for (auto [shape, size] : {std::pair<Shape, std::vector<int64_t>>{{2, 5, 6, 3}, {10, 12}},
                               {{1, 3, 2, 2}, {24, 16}},
                               {{2, 5, 7, 2}, {9, 4}},
                               {{1, 1, 4, 2}, {3, 1}}}) {
      CAPTURE(shape_str(shape));
      Tensor x = randn_t(shape, rng.next());
      Tensor y = ops::upsample_bilinear(x, size, ac);
      REQUIRE(y.shape() == Shape{shape[0], size[0], size[1], shape[3]});
      const std::vector<double> ref = reference(x, size[0], size[1], ac);
      const std::vector<float> got = y.to_vector();
      for (size_t i = 0; i < ref.size(); ++i) REQUIRE(got[i] == doctest::Approx(ref[i]).epsilon(1e-5).scale(1));
      // Linear in x: f32 differences are exact up to rounding.
      test::check_gradients([&](const std::vector<Tensor>& in) { return ops::upsample_bilinear(in[0], size, ac); }, {x},
                            1e-2, 1e-3, 1e-4);
    }
  }
}

TEST_CASE("upsample_bilinear in bf16 and f16 is the f32 result of the rounded input, rounded once") {
  Tensor x = randn_t({2, 5, 6, 4}, 9).detach();
  for (DType dt : {DType::bf16, DType::f16}) {
    CAPTURE(dtype_name(dt));
    Tensor xr = ops::cast(x, dt);
    Tensor y = ops::upsample_bilinear(xr, {10, 12}, false);
    CHECK(y.dtype() == dt);
    CHECK(y.to_vector() ==
          ops::cast(ops::upsample_bilinear(ops::cast(xr, DType::f32), {10, 12}, false), dt).to_vector());
  }
}

TEST_CASE("upsample_bilinear refuses bad arguments, naming them") {
  Tensor x = randn_t({1, 4, 4, 2}, 1);
  CHECK_THROWS_WITH_AS(ops::upsample_bilinear(x, {8}, false), doctest::Contains("output size H, W"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::upsample_bilinear(x, {0, 8}, false), doctest::Contains("output size H, W"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::upsample_bilinear(randn_t({1, 2, 4, 4, 2}, 2), {8, 8}, true),
                       doctest::Contains("expected [N, H, W, C]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::upsample_bilinear(Tensor::zeros({1, 4, 4, 2}, DType::i32), {8, 8}, true),
                       doctest::Contains("f32, f16 or bf16"), std::invalid_argument);
}
