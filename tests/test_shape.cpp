// Shape and type ops: concat_channels, upsample_nearest, cast and argmax_channels against references written
// here, their gradients, the exactness of casts against kernels/common/dtype.h, argmax ties and NaN, argument errors.
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/ops.h"
#include "tests/test_util.h"

using namespace unet;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Floats covering every f16 / bf16 rounding case: signed zeros, subnormals of both formats, values just around
// rounding ties, the f16 overflow edge, infinities, NaN, and random values over a wide exponent range.
std::vector<float> conversion_probe_values() {
  std::vector<float> v = {0.f,         -0.f,        1.f,    -1.f,          65504.f,       65519.f,        65520.f,
                          -65520.f,    1e-8f,       -3e-8f, 5.9604645e-8f, 2.9802322e-8f, 6.1e-5f,        1e-40f,
                          -1e-45f,     3.4e38f,     kInf,   -kInf,         kNaN,          1.00048828125f, 1.0009765625f,
                          1.00390625f, 1.01171875f, 0.1f,   1.f / 3.f};
  Rng rng(41);
  for (int i = 0; i < 4000; ++i) {
    // Random bit patterns hit every exponent and mantissa tail; a quarter each are forced onto exact rounding
    // ties of bf16 (low 16 bits 0x8000) and of f16 (low 13 bits 0x1000), where round-to-even decides.
    uint32_t bits = static_cast<uint32_t>(rng.next());
    if (i % 4 == 0) bits = (bits & 0xffff0000u) | 0x8000u;
    if (i % 4 == 1) bits = (bits & 0xffffe000u) | 0x1000u;
    v.push_back(bits_float(bits));
  }
  return v;
}

}  // namespace

TEST_CASE("concat_channels places each input's channels side by side in order") {
  Rng rng(42);
  for (const Shape& lead : {Shape{2, 3, 5}, Shape{1, 2, 3, 4}, Shape{3, 7}}) {
    CAPTURE(shape_str(lead));
    std::vector<int64_t> widths = {3, 1, 17};
    std::vector<Tensor> xs;
    for (int64_t w : widths) {
      Shape s = lead;
      s.push_back(w);
      xs.push_back(randn(s, rng));
    }
    Tensor y = ops::concat_channels(xs);
    Shape expect = lead;
    expect.push_back(21);
    REQUIRE(y.shape() == expect);
    std::vector<float> yv = y.to_vector();
    const int64_t rows = shape_numel(lead);
    size_t wrong = 0;
    for (int64_t r = 0; r < rows; ++r) {
      int64_t off = 0;
      for (size_t i = 0; i < xs.size(); ++i) {
        std::vector<float> xv = xs[i].to_vector();
        for (int64_t c = 0; c < widths[i]; ++c)
          wrong += yv[static_cast<size_t>(r * 21 + off + c)] != xv[static_cast<size_t>(r * widths[i] + c)];
        off += widths[i];
      }
    }
    CHECK(wrong == 0);  // a copy: exact
  }
}

TEST_CASE("concat_channels copies integer and half tensors exactly") {
  Tensor a = Tensor::from_vector({2, 2, 1}, {1, 2, 3, 4}, DType::i32);
  Tensor b = Tensor::from_vector({2, 2, 2}, {5, 6, 7, 8, 9, 10, 11, 12}, DType::i32);
  Tensor y = ops::concat_channels({a, b});
  CHECK(y.dtype() == DType::i32);
  CHECK(y.to_vector() == std::vector<float>{1, 5, 6, 2, 7, 8, 3, 9, 10, 4, 11, 12});
  Tensor h = ops::concat_channels(
      {Tensor::from_vector({1, 1, 2}, {0.5f, -2.f}, DType::bf16), Tensor::from_vector({1, 1, 1}, {3.f}, DType::bf16)});
  CHECK(h.dtype() == DType::bf16);
  CHECK(h.to_vector() == std::vector<float>{0.5f, -2.f, 3.f});
}

TEST_CASE("concat_channels backward hands each input its slice of the gradient") {
  Rng rng(43);
  Tensor a = randn({2, 3, 4, 5}, rng).set_requires_grad(true);
  Tensor b = randn({2, 3, 4, 2}, rng);  // no gradient wanted: must receive none
  Tensor c = randn({2, 3, 4, 9}, rng).set_requires_grad(true);
  Tensor y = ops::concat_channels({a, b, c});
  Tensor dy = randn(y.shape(), rng);
  autograd::backward(y, dy);
  CHECK_FALSE(b.grad().defined());
  std::vector<float> g = dy.to_vector(), ga = a.grad().to_vector(), gc = c.grad().to_vector();
  size_t wrong = 0;
  for (int64_t r = 0; r < 24; ++r) {
    for (int64_t j = 0; j < 5; ++j) wrong += ga[static_cast<size_t>(r * 5 + j)] != g[static_cast<size_t>(r * 16 + j)];
    for (int64_t j = 0; j < 9; ++j)
      wrong += gc[static_cast<size_t>(r * 9 + j)] != g[static_cast<size_t>(r * 16 + 7 + j)];
  }
  CHECK(wrong == 0);
}

TEST_CASE("concat_channels rejects mismatched shapes and dtypes naming them") {
  CHECK_THROWS_WITH_AS(ops::concat_channels({Tensor::zeros({1, 4, 4, 2}), Tensor::zeros({1, 4, 5, 2})}),
                       doctest::Contains("f32[1, 4, 5, 2]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::concat_channels({Tensor::zeros({1, 4, 4, 2}), Tensor::zeros({1, 4, 4, 2}, DType::f16)}),
                       doctest::Contains("one dtype"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::concat_channels({}), doctest::Contains("no inputs"), std::invalid_argument);
}

TEST_CASE("upsample_nearest repeats each pixel over its block, with anisotropic factors in 1D, 2D and 3D") {
  Rng rng(44);
  struct Case {
    Shape shape;
    std::vector<int> factor;
  };
  for (const Case& t : {Case{{2, 3, 5, 3}, {2, 3}}, Case{{1, 3, 2, 4, 5}, {1, 2, 2}}, Case{{2, 2, 3, 2, 9}, {3, 1, 2}},
                        Case{{3, 4, 2}, {4}}}) {
    CAPTURE(shape_str(t.shape));
    Tensor x = randn(t.shape, rng);
    Tensor y = ops::upsample_nearest(x, t.factor);
    // The definition: y[n, o...] = x[n, o / f ...], over spatial axes padded to 3.
    int64_t in[3] = {1, 1, 1}, f[3] = {1, 1, 1};
    const size_t sr = t.factor.size();
    for (size_t i = 0; i < sr; ++i) {
      in[3 - sr + i] = t.shape[1 + i];
      f[3 - sr + i] = t.factor[i];
    }
    const int64_t N = t.shape.front(), C = t.shape.back(), od = in[0] * f[0], oh = in[1] * f[1], ow = in[2] * f[2];
    Shape expect = t.shape;
    for (size_t i = 0; i < sr; ++i) expect[1 + i] *= t.factor[i];
    REQUIRE(y.shape() == expect);
    std::vector<float> xv = x.to_vector(), yv = y.to_vector();
    size_t wrong = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t z = 0; z < od; ++z)
        for (int64_t p = 0; p < oh; ++p)
          for (int64_t q = 0; q < ow; ++q)
            for (int64_t c = 0; c < C; ++c)
              wrong +=
                  yv[static_cast<size_t>((((n * od + z) * oh + p) * ow + q) * C + c)] !=
                  xv[static_cast<size_t>((((n * in[0] + z / f[0]) * in[1] + p / f[1]) * in[2] + q / f[2]) * C + c)];
    CHECK(wrong == 0);
  }
}

TEST_CASE("upsample_nearest copies label tensors exactly") {
  Tensor lab = Tensor::from_vector({1, 2, 2}, {3, 7, 1, 250}, DType::u8).reshape({1, 2, 2, 1});
  Tensor y = ops::upsample_nearest(lab, {2, 1});
  CHECK(y.dtype() == DType::u8);
  CHECK(y.to_vector() == std::vector<float>{3, 7, 3, 7, 1, 250, 1, 250});
}

TEST_CASE("upsample_nearest backward sums the gradient over each block") {
  Rng rng(45);
  Tensor x = randn({2, 2, 3, 2, 3}, rng).set_requires_grad(true);
  Tensor y = ops::upsample_nearest(x, {1, 2, 3});
  Tensor dy = randn(y.shape(), rng);
  autograd::backward(y, dy);
  std::vector<float> g = dy.to_vector();
  std::vector<double> ref(static_cast<size_t>(x.numel()), 0.0);
  const int64_t od = 2, oh = 6, ow = 6, C = 3;
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t z = 0; z < od; ++z)
      for (int64_t p = 0; p < oh; ++p)
        for (int64_t q = 0; q < ow; ++q)
          for (int64_t c = 0; c < C; ++c)
            ref[static_cast<size_t>((((n * 2 + z) * 3 + p / 2) * 2 + q / 3) * C + c)] +=
                g[static_cast<size_t>((((n * od + z) * oh + p) * ow + q) * C + c)];
  // Sums of 6 values in f32 against double: ~1e-6 relative.
  test::check_close(x.grad().to_vector(), std::vector<float>(ref.begin(), ref.end()), 1e-5, 1e-6, "block sums");
  // And by finite differences (linear op: only f32 rounding of L / 2h matters, ~1e-3).
  Tensor x2 = randn({1, 3, 4, 2}, rng).set_requires_grad(true);
  test::check_gradients(
      [](const std::vector<Tensor>& in) {
        return ops::upsample_nearest(in[0], {2, 2});
      },
      {x2}, 1e-2, 1e-2, 2e-3);
}

TEST_CASE("upsample_nearest rejects a wrong number of factors and factors below one") {
  Tensor x = Tensor::zeros({1, 4, 4, 2});
  CHECK_THROWS_WITH_AS(ops::upsample_nearest(x, {2, 2, 2}), doctest::Contains("one factor per spatial axis (2)"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::upsample_nearest(x, {2, 0}), doctest::Contains("factor [2, 0]"), std::invalid_argument);
}

TEST_CASE("cast to f16 and bf16 rounds exactly as kernels/common/dtype.h, and back to f32 is exact") {
  std::vector<float> v = conversion_probe_values();
  Tensor x = Tensor::from_vector({1, static_cast<int64_t>(v.size()), 1}, v);
  for (DType half : {DType::f16, DType::bf16}) {
    CAPTURE(dtype_name(half));
    Tensor h = ops::cast(x, half);
    REQUIRE(h.dtype() == half);
    const uint16_t* hp = h.data<uint16_t>();
    Tensor back = ops::cast(h, DType::f32);
    const float* bp = back.data<float>();
    size_t wrong_half = 0, wrong_back = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      uint16_t expect = half == DType::f16 ? float_to_f16(v[i]) : float_to_bf16(v[i]);
      float expect_back = half == DType::f16 ? f16_to_float(expect) : bf16_to_float(expect);
      wrong_half += hp[i] != expect;
      wrong_back += float_bits(bp[i]) != float_bits(expect_back);
    }
    CHECK(wrong_half == 0);
    CHECK(wrong_back == 0);
    // f32 -> half -> f32 -> half is the identity on the half values.
    CHECK(bitwise_equal(ops::cast(back, half), h));
  }
}

TEST_CASE("cast between f16 and bf16 rounds the exact f16 value once") {
  std::vector<float> v = conversion_probe_values();
  Tensor h = Tensor::from_vector({static_cast<int64_t>(v.size()), 1}, v, DType::f16);
  Tensor b = ops::cast(h, DType::bf16);
  const uint16_t* hp = h.data<uint16_t>();
  const uint16_t* bp = b.data<uint16_t>();
  size_t wrong = 0;
  for (size_t i = 0; i < v.size(); ++i) wrong += bp[i] != float_to_bf16(f16_to_float(hp[i]));
  CHECK(wrong == 0);
  Tensor h2 = ops::cast(b, DType::f16);
  const uint16_t* h2p = h2.data<uint16_t>();
  wrong = 0;
  for (size_t i = 0; i < v.size(); ++i) wrong += h2p[i] != float_to_f16(bf16_to_float(bp[i]));
  CHECK(wrong == 0);
}

TEST_CASE("the gradient of cast is the output gradient cast back to the input dtype") {
  Rng rng(46);
  Tensor x = randn({2, 3, 4}, rng).set_requires_grad(true);
  Tensor y = ops::cast(x, DType::bf16);
  Tensor dy = ops::cast(randn({2, 3, 4}, rng, 3.f), DType::bf16);
  autograd::backward(y, dy);
  REQUIRE(x.grad().dtype() == DType::f32);
  CHECK(bitwise_equal(x.grad(), ops::cast(dy, DType::f32)));  // bf16 -> f32 is exact

  Tensor xh = ops::cast(randn({5, 2}, rng), DType::f16).detach().set_requires_grad(true);
  Tensor yf = ops::cast(xh, DType::f32);
  Tensor g = randn({5, 2}, rng);
  autograd::backward(yf, g);
  REQUIRE(xh.grad().dtype() == DType::f16);
  const uint16_t* gp = xh.grad().data<uint16_t>();
  const float* gv = g.data<float>();
  size_t wrong = 0;
  for (int i = 0; i < 10; ++i) wrong += gp[i] != float_to_f16(gv[i]);  // f32 -> f16 rounds as dtype.h
  CHECK(wrong == 0);
}

TEST_CASE("cast to the same dtype returns the tensor itself, and non-float casts are rejected") {
  Tensor x = Tensor::zeros({2, 2});
  CHECK(ops::cast(x, DType::f32).same(x));
  CHECK_THROWS_WITH_AS(ops::cast(Tensor::zeros({2}, DType::i32), DType::f32), doctest::Contains("i32[2]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::cast(x, DType::u8), doctest::Contains("to u8"), std::invalid_argument);
}

TEST_CASE("argmax_channels returns the first index of the largest channel") {
  Rng rng(47);
  Tensor x = randn({2, 3, 5, 4, 7}, rng);
  Tensor y = ops::argmax_channels(x);
  REQUIRE(y.dtype() == DType::i32);
  REQUIRE(y.shape() == Shape{2, 3, 5, 4});
  std::vector<float> xv = x.to_vector();
  const int32_t* yp = y.data<int32_t>();
  size_t wrong = 0;
  for (int64_t r = 0; r < y.numel(); ++r) {
    int32_t best = 0;
    for (int32_t c = 1; c < 7; ++c)
      if (xv[static_cast<size_t>(r * 7 + c)] > xv[static_cast<size_t>(r * 7 + best)]) best = c;
    wrong += yp[r] != best;
  }
  CHECK(wrong == 0);
}

TEST_CASE("argmax_channels breaks ties toward the first channel and treats NaN as the maximum") {
  Tensor x = Tensor::from_vector({1, 6, 3}, {1.f, 5.f, 5.f,         // tie between 1 and 2 -> 1
                                             2.f, 2.f, 2.f,         // all equal -> 0
                                             -0.f, 0.f, -1.f,       // -0 == +0: a tie -> 0
                                             1.f, kNaN, kNaN,       // first NaN wins -> 1
                                             kNaN, 9.f, kInf,       // NaN first -> 0
                                             -kInf, -kInf, -3.f});  // -> 2
  std::vector<float> y = ops::argmax_channels(x).to_vector();
  CHECK(y == std::vector<float>{1, 0, 0, 1, 0, 2});
  // The same on bf16 input (values exactly representable).
  CHECK(ops::argmax_channels(ops::cast(x, DType::bf16)).to_vector() == y);
}

TEST_CASE("argmax_channels records no gradient and rejects integer input") {
  Tensor x = Tensor::from_vector({1, 2, 2}, {1, 2, 4, 3}).set_requires_grad(true);
  Tensor y = ops::argmax_channels(x);
  CHECK_FALSE(y.requires_grad());
  CHECK(y.to_vector() == std::vector<float>{1, 0});
  CHECK_THROWS_WITH_AS(ops::argmax_channels(Tensor::zeros({2, 3}, DType::u8)), doctest::Contains("u8[2, 3]"),
                       std::invalid_argument);
}
