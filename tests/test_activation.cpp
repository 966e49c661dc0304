// relu and leaky_relu: forward values (zero, negatives, NaN), PyTorch's gradient convention at 0, finite
// differences, and argument errors.
#include <cmath>
#include <limits>

#include "engine/ops.h"
#include "tests/test_util.h"

using namespace unet;

namespace {
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();
}  // namespace

TEST_CASE("relu keeps positives, zeroes negatives and zero, and passes NaN through") {
  Tensor x = Tensor::from_vector({1, 2, 4, 1}, {-2.f, -0.f, 0.f, 1e-30f, 3.5f, -kInf, kInf, kNaN});
  std::vector<float> y = ops::relu(x).to_vector();
  const std::vector<float> expect = {0.f, 0.f, 0.f, 1e-30f, 3.5f, 0.f, kInf};
  for (size_t i = 0; i < expect.size(); ++i) CHECK(y[i] == expect[i]);
  CHECK(std::isnan(y[7]));  // as torch.relu
}

TEST_CASE("leaky_relu scales negatives by the slope and keeps positives") {
  Rng rng(31);
  Tensor x = randn({2, 5, 7, 3, 4}, rng);
  std::vector<float> xv = x.to_vector(), y = ops::leaky_relu(x, 0.01f).to_vector();
  std::vector<float> ref(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) ref[i] = xv[i] > 0 ? xv[i] : xv[i] * 0.01f;
  size_t mismatches = 0;  // the same single multiply as the reference: equal bit for bit
  for (size_t i = 0; i < xv.size(); ++i) mismatches += float_bits(y[i]) != float_bits(ref[i]);
  CHECK(mismatches == 0);
  std::vector<float> special = ops::leaky_relu(Tensor::from_vector({1, 3, 1}, {0.f, -kInf, kNaN}), 0.2f).to_vector();
  CHECK(special[0] == 0.f);
  CHECK(special[1] == -kInf);
  CHECK(std::isnan(special[2]));
}

TEST_CASE("leaky_relu gradient is the slope at and below zero, one above, as PyTorch") {
  Tensor x = Tensor::from_vector({1, 5, 1}, {-3.f, -0.f, 0.f, 1e-20f, 2.f}).set_requires_grad(true);
  Tensor y = ops::leaky_relu(x, 0.25f);
  autograd::backward(y, Tensor::from_vector({1, 5, 1}, {2.f, 2.f, 2.f, 2.f, 2.f}));
  const std::vector<float> expect = {0.5f, 0.5f, 0.5f, 2.f, 2.f};
  std::vector<float> g = x.grad().to_vector();
  for (size_t i = 0; i < expect.size(); ++i) CHECK(g[i] == expect[i]);
}

TEST_CASE("relu gradient is zero at and below zero and passes the gradient above") {
  Tensor x = Tensor::from_vector({1, 4, 1}, {-1.f, 0.f, 1e-20f, 5.f}).set_requires_grad(true);
  autograd::backward(ops::relu(x), Tensor::from_vector({1, 4, 1}, {3.f, 3.f, 3.f, 3.f}));
  const std::vector<float> expect = {0.f, 0.f, 3.f, 3.f};
  std::vector<float> g = x.grad().to_vector();
  for (size_t i = 0; i < expect.size(); ++i) CHECK(g[i] == expect[i]);
}

TEST_CASE("relu and leaky_relu gradients agree with central finite differences away from zero") {
  Rng rng(32);
  Tensor x = randn({2, 3, 4, 5}, rng);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] += p[i] > 0 ? 0.1f : -0.1f;  // keep every x at least 0.1 from the kink
  x.set_requires_grad(true);
  // Piecewise linear with every x farther than h = 1e-2 from the kink: differences are exact up to f32 rounding
  // of L (~1e-6 * |L|, |L| ~ 10) / 2h, about 1e-3.
  test::check_gradients([](const std::vector<Tensor>& in) { return ops::leaky_relu(in[0], 0.01f); }, {x}, 1e-2, 1e-3,
                        2e-3, 120);
  test::check_gradients([](const std::vector<Tensor>& in) { return ops::relu(in[0]); }, {x}, 1e-2, 1e-3, 2e-3, 120);
}

TEST_CASE("activations reject integer inputs and a non-finite slope") {
  CHECK_THROWS_WITH_AS(ops::relu(Tensor::zeros({1, 2, 2}, DType::u8)), doctest::Contains("u8[1, 2, 2]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::leaky_relu(Tensor::zeros({1, 2, 2}, DType::i32), 0.01f), doctest::Contains("i32[1, 2, 2]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::leaky_relu(Tensor::zeros({1, 2, 2}), std::nanf("")), doctest::Contains("negative_slope"),
                       std::invalid_argument);
}
