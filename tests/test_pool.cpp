// The ops UNet2D adds, on the CPU: max pooling, crop, dropout and the general transposed convolution against finite
// differences and their definitions; argument errors. (PyTorch goldens: test_golden.cpp; the CUDA kernels:
// test_cuda_pool.cpp.)
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "tests/test_util.h"

using namespace unet;

namespace {
Tensor randn(const Shape& s, uint64_t seed, float scale = 1.f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(shape_numel(s)));
  for (float& x : v) x = static_cast<float>(rng.normal()) * scale;
  Tensor t = Tensor::from_vector(s, v);
  t.set_requires_grad(true);
  return t;
}
}  // namespace

TEST_CASE("max_pool, crop, dropout and conv_transpose_general gradients match finite differences") {
  // Distinct values: a finite difference must not move the argmax.
  test::check_gradients(
      [](const std::vector<Tensor>& in) {
        return ops::max_pool(in[0], {2, 2});
      },
      {randn({2, 7, 9, 3}, 1)}, 1e-3, 1e-3, 1e-4);
  test::check_gradients(
      [](const std::vector<Tensor>& in) {
        return ops::max_pool(in[0], {1, 2, 3});
      },
      {randn({1, 3, 4, 7, 2}, 2)}, 1e-3, 1e-3, 1e-4);
  test::check_gradients(
      [](const std::vector<Tensor>& in) {
        return ops::crop(in[0], {2, 1}, {5, 6});
      },
      {randn({2, 9, 8, 3}, 3)}, 1e-3, 1e-3, 1e-4);
  test::check_gradients(
      [](const std::vector<Tensor>& in) {
        return ops::crop(in[0], {-1, 2, -2}, {5, 3, 7});
      },
      {randn({1, 4, 6, 4, 2}, 4)}, 1e-3, 1e-3, 1e-4);
  test::check_gradients([](const std::vector<Tensor>& in) { return ops::dropout(in[0], 0.5f, 77); },
                        {randn({2, 6, 5, 4}, 5)}, 1e-3, 1e-3, 1e-4);
  test::check_gradients(
      [](const std::vector<Tensor>& in) {
        return ops::conv_transpose_general(in[0], in[1], in[2], {2, 2}, {0, 0});
      },
      {randn({2, 4, 5, 3}, 6), randn({3, 3, 3, 2}, 7, 0.3f), randn({2}, 8)}, 1e-3, 2e-3, 1e-4);
  test::check_gradients(
      [](const std::vector<Tensor>& in) {
        return ops::conv_transpose_general(in[0], in[1], in[2], {2, 1, 2}, {1, 0, 1}, {1, 0, 0});
      },
      {randn({1, 3, 2, 3, 2}, 9), randn({2, 3, 2, 3, 3}, 10, 0.3f), randn({3}, 11)}, 1e-3, 2e-3, 1e-4);
}

TEST_CASE("dropout keeps 1 - p of the elements, scaled by 1 / (1 - p), the same for the same seed") {
  Tensor x = Tensor::full({4, 64, 64, 8}, 2.f);
  const std::vector<float> a = ops::dropout(x, 0.25f, 5).to_vector(), b = ops::dropout(x, 0.25f, 5).to_vector(),
                           c = ops::dropout(x, 0.25f, 6).to_vector();
  CHECK(a == b);
  CHECK(a != c);
  int64_t kept = 0;
  for (float v : a) {
    REQUIRE((v == 0.f || v == 2.f / 0.75f));
    kept += v != 0.f;
  }
  // Binomial(131072, 0.75): standard deviation 157; 5 of them.
  CHECK(std::abs(double(kept) - 0.75 * double(a.size())) < 785);
  CHECK(ops::dropout(x, 0.f, 1).to_vector() == x.to_vector());
}

TEST_CASE("dropout under DropoutSampleOffset: a slice of the batch drops, and back-propagates, as the whole batch") {
  const Tensor x = randn({4, 6, 5, 3}, 21), dy = randn({4, 6, 5, 3}, 22);
  const auto forward_backward = [](const Tensor& in, const Tensor& grad) {
    Tensor leaf = in.clone();
    leaf.set_requires_grad(true);
    Tensor y = ops::dropout(leaf, 0.5f, 31);
    autograd::backward(y, grad);
    return std::pair{y.to_vector(), leaf.grad().to_vector()};
  };
  const auto [y_all, dx_all] = forward_backward(x, dy);
  const size_t per = y_all.size() / 4;
  const auto sample = [per](const Tensor& t, int64_t b) {  // t[b : b + 1]
    const std::vector<float> v = t.to_vector();
    const auto at = v.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(b) * per);
    return Tensor::from_vector({1, 6, 5, 3}, std::vector<float>(at, at + static_cast<std::ptrdiff_t>(per)));
  };
  for (int64_t first : {0, 1, 3}) {  // samples [first, first + 1) as a rank holding one of them
    CAPTURE(first);
    const ops::DropoutSampleOffset offset(first);
    const auto [y, dx] = forward_backward(sample(x, first), sample(dy, first));
    const auto at = static_cast<std::ptrdiff_t>(static_cast<size_t>(first) * per);
    CHECK(std::equal(y.begin(), y.end(), y_all.begin() + at));
    CHECK(std::equal(dx.begin(), dx.end(), dx_all.begin() + at));
  }
  // Without the offset, sample 1 alone draws sample 0's mask.
  const std::vector<float> alone = ops::dropout(sample(x, 1), 0.5f, 31).to_vector();
  CHECK_FALSE(std::equal(alone.begin(), alone.end(), y_all.begin() + static_cast<std::ptrdiff_t>(per)));
}

TEST_CASE("crop of UNet2D's centre crop and max_pool's floor on odd sizes give the documented shapes") {
  Tensor x = randn({1, 136, 136, 2}, 12);
  Tensor c = ops::crop(x, {(136 - 104) / 2, (136 - 104) / 2}, {104, 104});
  CHECK(c.shape() == Shape{1, 104, 104, 2});
  CHECK(c.to_vector()[0] == x.to_vector()[(16 * 136 + 16) * 2]);
  CHECK(ops::max_pool(randn({2, 9, 11, 3}, 13), {2, 2}).shape() == Shape{2, 4, 5, 3});
  // UNet2D's up-convolution doubles 28 to 56 (57 before the TF "same" crop).
  Tensor up = ops::conv_transpose_general(randn({1, 28, 28, 8}, 14), randn({8, 3, 3, 4}, 15), Tensor(), {2, 2}, {0, 0});
  CHECK(up.shape() == Shape{1, 57, 57, 4});
}

TEST_CASE("the UNet2D ops refuse bad arguments with messages naming them") {
  Tensor x = randn({1, 8, 8, 2}, 16);
  CHECK_THROWS_WITH_AS(ops::max_pool(x, {2}), doctest::Contains("window sizes"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::max_pool(x, {9, 2}), doctest::Contains("window 9"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::crop(x, {0, 0}, {0, 4}), doctest::Contains("size 0"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::dropout(x, 1.f, 1), doctest::Contains("0 <= p < 1"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::conv_transpose_general(x, randn({3, 3, 3, 4}, 17), Tensor(), {2, 2}, {0, 0}),
                       doctest::Contains("channel mismatch"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::conv_transpose_general(x, randn({2, 3, 3, 4}, 18), Tensor(), {2, 2}, {0, 0}, {2, 0}),
                       doctest::Contains("output_pad"), std::invalid_argument);
}

TEST_CASE("the UNet2D ops in bf16 and f16 follow f32 within the storage's rounding") {
  Tensor x = randn({2, 6, 5, 8}, 20), w = randn({8, 3, 3, 4}, 21, 0.3f), b = randn({4}, 22);
  const std::vector<float> ref = ops::conv_transpose_general(x, w, b, {2, 2}, {0, 0}).to_vector();
  for (DType dt : {DType::bf16, DType::f16}) {
    CAPTURE(dtype_name(dt));
    Tensor y = ops::conv_transpose_general(ops::cast(x.detach(), dt), w, b, {2, 2}, {0, 0});
    CHECK(y.dtype() == dt);
    // Inputs and weights rounded to 8 (bf16) or 11 (f16) bits, 8 * 9 / 4 products per output at most.
    test::check_close(ops::cast(y, DType::f32).to_vector(), ref, dt == DType::bf16 ? 3e-2 : 4e-3, 3e-2,
                      "conv_transpose");
    // Max pooling and crop move values: exactly the rounded input's.
    Tensor xr = ops::cast(x.detach(), dt);
    CHECK(ops::cast(ops::max_pool(xr, {2, 2}), DType::f32).to_vector() ==
          ops::max_pool(ops::cast(xr, DType::f32), {2, 2}).to_vector());
  }
}
