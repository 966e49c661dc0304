// conv_transpose (kernel == stride): forward and all gradients against naive loops written here, finite
// differences, determinism across thread counts, and argument errors.
#include <omp.h>

#include <cstring>

#include "engine/ops.h"
#include "tests/test_util.h"

using namespace unet;

namespace {

// A case: batch, spatial size (1 to 3 axes), kernel per axis, channels in and out.
struct Case {
  int64_t n;
  Shape spatial, kernel;
  int64_t c, k;
  bool bias;
};

Shape input_shape(const Case& t) {
  Shape s{t.n};
  s.insert(s.end(), t.spatial.begin(), t.spatial.end());
  s.push_back(t.c);
  return s;
}
Shape weight_shape(const Case& t) {
  Shape s{t.k};
  s.insert(s.end(), t.kernel.begin(), t.kernel.end());
  s.push_back(t.c);
  return s;
}

// Spatial sizes padded to 3 axes (leading 1s), as (d, h, w).
void pad3(const Shape& v, int64_t out[3]) {
  out[0] = out[1] = out[2] = 1;
  for (size_t i = 0; i < v.size(); ++i) out[3 - v.size() + i] = v[i];
}

// The definition, iterated over output pixels, accumulated in double.
std::vector<float> naive_forward(const Case& t, const std::vector<float>& x, const std::vector<float>& w,
                                 const std::vector<float>& b) {
  int64_t in[3], kr[3];
  pad3(t.spatial, in);
  pad3(t.kernel, kr);
  const int64_t od = in[0] * kr[0], oh = in[1] * kr[1], ow = in[2] * kr[2];
  std::vector<float> y(static_cast<size_t>(t.n * od * oh * ow * t.k));
  for (int64_t n = 0; n < t.n; ++n)
    for (int64_t oz = 0; oz < od; ++oz)
      for (int64_t op = 0; op < oh; ++op)
        for (int64_t oq = 0; oq < ow; ++oq)
          for (int64_t k = 0; k < t.k; ++k) {
            const int64_t z = oz / kr[0], p = op / kr[1], q = oq / kr[2];
            const int64_t tt = oz % kr[0], r = op % kr[1], s = oq % kr[2];
            double acc = b.empty() ? 0.0 : b[static_cast<size_t>(k)];
            for (int64_t c = 0; c < t.c; ++c)
              acc +=
                  static_cast<double>(x[static_cast<size_t>((((n * in[0] + z) * in[1] + p) * in[2] + q) * t.c + c)]) *
                  w[static_cast<size_t>((((k * kr[0] + tt) * kr[1] + r) * kr[2] + s) * t.c + c)];
            y[static_cast<size_t>((((n * od + oz) * oh + op) * ow + oq) * t.k + k)] = static_cast<float>(acc);
          }
  return y;
}

// The three gradients of L = sum(y * dy), by the same index map as naive_forward.
void naive_backward(const Case& t, const std::vector<float>& x, const std::vector<float>& w,
                    const std::vector<float>& dy, std::vector<double>& dx, std::vector<double>& dw,
                    std::vector<double>& db) {
  int64_t in[3], kr[3];
  pad3(t.spatial, in);
  pad3(t.kernel, kr);
  const int64_t od = in[0] * kr[0], oh = in[1] * kr[1], ow = in[2] * kr[2];
  dx.assign(x.size(), 0.0);
  dw.assign(w.size(), 0.0);
  db.assign(static_cast<size_t>(t.k), 0.0);
  for (int64_t n = 0; n < t.n; ++n)
    for (int64_t oz = 0; oz < od; ++oz)
      for (int64_t op = 0; op < oh; ++op)
        for (int64_t oq = 0; oq < ow; ++oq)
          for (int64_t k = 0; k < t.k; ++k) {
            const int64_t z = oz / kr[0], p = op / kr[1], q = oq / kr[2];
            const int64_t tt = oz % kr[0], r = op % kr[1], s = oq % kr[2];
            const double g = dy[static_cast<size_t>((((n * od + oz) * oh + op) * ow + oq) * t.k + k)];
            db[static_cast<size_t>(k)] += g;
            for (int64_t c = 0; c < t.c; ++c) {
              const size_t xi = static_cast<size_t>((((n * in[0] + z) * in[1] + p) * in[2] + q) * t.c + c);
              const size_t wi = static_cast<size_t>((((k * kr[0] + tt) * kr[1] + r) * kr[2] + s) * t.c + c);
              dx[xi] += g * w[wi];
              dw[wi] += g * x[xi];
            }
          }
}

std::vector<float> to_float(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}

const std::vector<Case> kCases = {
    {2, {5, 7}, {2, 2}, 3, 5, true},          // 2D, odd sizes, channels below one vector
    {1, {3, 4}, {3, 1}, 17, 33, false},       // 2D anisotropic, channels just over vector multiples, no bias
    {3, {9}, {4}, 6, 2, true},                // 1D (NWC)
    {2, {3, 5, 4}, {1, 2, 2}, 7, 19, true},   // 3D with [1, 2, 2]: nnU-Net's anisotropic upsampling
    {1, {2, 3, 3}, {2, 2, 2}, 37, 40, true},  // 3D isotropic, channel tails in both x and w
    {2, {4, 3, 2}, {2, 1, 3}, 1, 1, false},   // one channel in and out
    {1, {3, 4, 5}, {1, 2, 2}, 64, 32, true},  // whole vectors: wgrad reads x in place instead of packing it
};

}  // namespace

TEST_CASE("conv_transpose forward equals the naive definition for 1D, 2D and 3D shapes") {
  Rng rng(11);
  for (const Case& t : kCases) {
    CAPTURE(shape_str(input_shape(t)));
    CAPTURE(shape_str(weight_shape(t)));
    Tensor x = randn(input_shape(t), rng), w = randn(weight_shape(t), rng);
    Tensor b = t.bias ? randn({t.k}, rng) : Tensor();
    Tensor y = ops::conv_transpose(x, w, b);
    std::vector<float> ref =
        naive_forward(t, x.to_vector(), w.to_vector(), t.bias ? b.to_vector() : std::vector<float>{});
    Shape expect = input_shape(t);
    for (size_t i = 0; i < t.kernel.size(); ++i) expect[1 + i] *= t.kernel[i];
    expect.back() = t.k;
    REQUIRE(y.shape() == expect);
    // Sums of at most 64 products of N(0,1) values, |y| up to ~30: f32 accumulation error is below 1e-5 absolute.
    test::check_close(y.to_vector(), ref, 1e-5, 1e-5, "conv_transpose forward");
  }
}

TEST_CASE("conv_transpose dx, dw and dbias equal naive sums, also over many pixel chunks") {
  Rng rng(12);
  std::vector<Case> cases = kCases;
  // 2 * 40 * 36 = 2880 input pixels: wgrad splits them into 3 chunks of 1024 and 256-pixel sub-blocks.
  cases.push_back({2, {40, 36}, {2, 2}, 9, 13, true});
  cases.push_back({1, {5, 16, 20}, {1, 2, 2}, 4, 6, true});
  cases.push_back({1, {3, 30, 14}, {1, 2, 2}, 32, 11, true});  // 1260 pixels, x read in place
  for (const Case& t : cases) {
    CAPTURE(shape_str(input_shape(t)));
    CAPTURE(shape_str(weight_shape(t)));
    Tensor x = randn(input_shape(t), rng).set_requires_grad(true);
    Tensor w = randn(weight_shape(t), rng).set_requires_grad(true);
    Tensor b = t.bias ? randn({t.k}, rng).set_requires_grad(true) : Tensor();
    Tensor y = ops::conv_transpose(x, w, b);
    Tensor dy = randn(y.shape(), rng);
    autograd::backward(y, dy);
    std::vector<double> dx, dw, db;
    naive_backward(t, x.to_vector(), w.to_vector(), dy.to_vector(), dx, dw, db);
    // dx sums T*K products (<= 8*40); dw and dbias sum up to 2880*4 products of N(0,1) values (magnitude ~100,
    // f32 rounding ~1e-7 relative per add): 1e-4 relative plus 1e-4 absolute covers both with margin.
    test::check_close(x.grad().to_vector(), to_float(dx), 1e-4, 1e-4, "dx");
    test::check_close(w.grad().to_vector(), to_float(dw), 1e-4, 1e-4, "dw");
    if (t.bias) test::check_close(b.grad().to_vector(), to_float(db), 1e-4, 1e-4, "dbias");
  }
}

TEST_CASE("conv_transpose gradients agree with central finite differences in 2D and 3D") {
  Rng rng(13);
  for (const Case& t : {Case{2, {2, 3}, {2, 2}, 3, 4, true}, Case{1, {2, 2, 3}, {1, 2, 2}, 5, 3, true},
                        Case{1, {1, 2, 2}, {2, 1, 2}, 2, 18, true}}) {
    CAPTURE(shape_str(input_shape(t)));
    Tensor x = randn(input_shape(t), rng).set_requires_grad(true);
    Tensor w = randn(weight_shape(t), rng).set_requires_grad(true);
    Tensor b = randn({t.k}, rng).set_requires_grad(true);
    // The op is linear in each input, so central differences have no truncation error; what remains is f32
    // rounding of L (~1e-6 of |L| ~ 10) divided by 2h = 2e-2: about 1e-3 absolute.
    test::check_gradients([](const std::vector<Tensor>& in) { return ops::conv_transpose(in[0], in[1], in[2]); },
                          {x, w, b}, 1e-2, 1e-2, 3e-3);
  }
}

TEST_CASE("conv_transpose gives a gradient only to the inputs that require one") {
  Rng rng(14);
  Case t{1, {3, 3}, {2, 2}, 4, 5, true};
  Tensor x = randn(input_shape(t), rng);
  Tensor w = randn(weight_shape(t), rng);
  Tensor b = randn({t.k}, rng).set_requires_grad(true);
  Tensor y = ops::conv_transpose(x, w, b);
  Tensor dy = randn(y.shape(), rng);
  autograd::backward(y, dy);
  CHECK_FALSE(x.grad().defined());
  CHECK_FALSE(w.grad().defined());
  std::vector<double> dx, dw, db;
  naive_backward(t, x.to_vector(), w.to_vector(), dy.to_vector(), dx, dw, db);
  // dbias alone (the wgrad path that skips dw): sums of 36 values of N(0,1).
  test::check_close(b.grad().to_vector(), to_float(db), 1e-5, 1e-5, "dbias alone");
}

TEST_CASE("conv_transpose results are bitwise identical with one and with two threads") {
  Rng rng(15);
  Case t{2, {6, 20, 24}, {1, 2, 2}, 10, 12, true};  // 5760 pixels: several wgrad chunks
  Tensor x0 = randn(input_shape(t), rng), w0 = randn(weight_shape(t), rng), b0 = randn({t.k}, rng);
  Tensor dy;
  auto run = [&](int threads) {
    int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    Tensor x = x0.clone().set_requires_grad(true), w = w0.clone().set_requires_grad(true),
           b = b0.clone().set_requires_grad(true);
    Tensor y = ops::conv_transpose(x, w, b);
    if (!dy.defined()) dy = randn(y.shape(), rng);
    autograd::backward(y, dy);
    omp_set_num_threads(saved);
    return std::vector<Tensor>{y, x.grad(), w.grad(), b.grad()};
  };
  std::vector<Tensor> one = run(1), two = run(2);
  for (size_t i = 0; i < one.size(); ++i) {
    CAPTURE(i);
    REQUIRE(one[i].nbytes() == two[i].nbytes());
    CHECK(std::memcmp(one[i].raw(), two[i].raw(), one[i].nbytes()) == 0);
  }
}

TEST_CASE("conv_transpose rejects inconsistent arguments with messages naming the shapes") {
  Tensor x = Tensor::zeros({1, 4, 4, 3});
  CHECK_THROWS_WITH_AS(ops::conv_transpose(x, Tensor::zeros({2, 2, 2, 5}), Tensor()),
                       doctest::Contains("f32[2, 2, 2, 5]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::conv_transpose(x, Tensor::zeros({2, 2, 2, 2, 3}), Tensor()),
                       doctest::Contains("one kernel size per spatial axis"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::conv_transpose(x, Tensor::zeros({2, 2, 2, 3}), Tensor::zeros({3})),
                       doctest::Contains("bias must be [K]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::conv_transpose(x, Tensor::zeros({2, 0, 2, 3}), Tensor()), doctest::Contains("empty axis"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      ops::conv_transpose(Tensor::zeros({1, 4, 4, 3}, DType::u8), Tensor::zeros({2, 2, 2, 3}), Tensor()),
      doctest::Contains("u8[1, 4, 4, 3]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::conv_transpose(Tensor::zeros({1, 4, 4, 3}, DType::f16),
                                           Tensor::zeros({2, 2, 2, 3}, DType::f16), Tensor()),
                       doctest::Contains("w and bias must be f32"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::conv_transpose(Tensor::zeros({4, 3}), Tensor::zeros({2, 3}), Tensor()),
                       doctest::Contains("spatial"), std::invalid_argument);
}
