// Autograd tape: gradient flow, accumulation on reuse, hooks, no-grad mode, memory release.
#include "kernels/common/allocator.h"
#include "engine/autograd.h"
#include "engine/module.h"
#include "engine/ops.h"
#include "tests/test_util.h"

using namespace unet;

TEST_CASE("sum of scale gives the scale factor as gradient") {
  Tensor x = Tensor::from_vector({2, 3}, {1, 2, 3, 4, 5, 6}).set_requires_grad(true);
  Tensor loss = ops::sum(ops::scale(x, 2.5f));
  CHECK(loss.item() == doctest::Approx(52.5));
  autograd::backward(loss);
  for (float g : x.grad().to_vector()) CHECK(g == 2.5f);
  CHECK(autograd::tape_size() == 0);
}

TEST_CASE("a tensor used by several ops accumulates the gradients of every use") {
  Tensor x = Tensor::from_vector({4}, {1, -2, 3, 0.5f}).set_requires_grad(true);
  Tensor y = ops::add(ops::scale(x, 3.f), ops::add(x, x));  // dy/dx = 3 + 2
  autograd::backward(ops::sum(y));
  for (float g : x.grad().to_vector()) CHECK(g == 5.f);
  // A second backward adds to the existing gradient, as in PyTorch.
  autograd::backward(ops::sum(ops::scale(x, 2.f)));
  for (float g : x.grad().to_vector()) CHECK(g == 7.f);
}

TEST_CASE("intermediate tensors reused by two consumers get the summed gradient") {
  Tensor x = Tensor::from_vector({3}, {1, 2, 3}).set_requires_grad(true);
  Tensor h = ops::scale(x, 2.f);
  Tensor y = ops::add(ops::scale(h, 3.f), ops::scale(h, -1.f));  // 2 * (3 - 1) = 4
  autograd::backward(ops::sum(y));
  for (float g : x.grad().to_vector()) CHECK(g == 4.f);
}

TEST_CASE("gradients of two leaves fed by one add are independent tensors") {
  Tensor a = Tensor::from_vector({2}, {1, 2}).set_requires_grad(true);
  Tensor b = Tensor::from_vector({2}, {3, 4}).set_requires_grad(true);
  autograd::backward(ops::sum(ops::add(a, b)));
  autograd::backward(ops::sum(ops::scale(a, 10.f)));  // must not leak into b's gradient
  for (float g : a.grad().to_vector()) CHECK(g == 11.f);
  for (float g : b.grad().to_vector()) CHECK(g == 1.f);
}

TEST_CASE("each gradient-ready hook fires once per backward, after the gradient is final") {
  Tensor w = Tensor::from_vector({2}, {1, 2}).set_requires_grad(true);
  Tensor v = Tensor::from_vector({2}, {3, 4}).set_requires_grad(true);
  int w_calls = 0, v_calls = 0;
  std::vector<float> w_seen;
  w.add_grad_ready_hook([&](const Tensor& g) {
    ++w_calls;
    w_seen = g.to_vector();
  });
  v.add_grad_ready_hook([&](const Tensor&) { ++v_calls; });
  for (int step = 0; step < 2; ++step) {
    w.impl().grad.reset();
    Tensor y = ops::add(ops::scale(w, 2.f), ops::add(w, v));  // w used twice: final gradient 3
    autograd::backward(ops::sum(y));
    CHECK(w_calls == step + 1);
    CHECK(v_calls == step + 1);
    REQUIRE(w_seen.size() == 2);
    CHECK(w_seen[0] == 3.f);
  }
}

TEST_CASE("no-grad mode records nothing and keeps no activations alive") {
  Tensor x = Tensor::full({64, 64}, 1.f).set_requires_grad(true);
  size_t before = HostAllocator::instance().stats().current_bytes;
  {
    autograd::NoGradGuard guard;
    CHECK_FALSE(autograd::grad_enabled());
    Tensor y = ops::scale(ops::add(ops::scale(x, 2.f), x), 0.5f);
    CHECK(autograd::tape_size() == 0);
    CHECK_FALSE(y.requires_grad());
  }
  CHECK(autograd::grad_enabled());
  CHECK(HostAllocator::instance().stats().current_bytes == before);
}

TEST_CASE("backward frees saved tensors and the tape") {
  Tensor x = Tensor::full({128, 128}, 1.f).set_requires_grad(true);
  size_t before = HostAllocator::instance().stats().current_bytes;
  {
    Tensor loss = ops::sum(ops::scale(ops::scale(x, 2.f), 3.f));
    autograd::backward(loss);
  }
  x.impl().grad.reset();
  CHECK(autograd::tape_size() == 0);
  CHECK(HostAllocator::instance().stats().current_bytes == before);
}

TEST_CASE("backward through a tensor that does not require grad is an error naming it") {
  Tensor x = Tensor::full({2}, 1.f);
  CHECK_THROWS_WITH_AS(autograd::backward(ops::sum(x)), doctest::Contains("does not require grad"),
                       std::invalid_argument);
}

TEST_CASE("finite differences agree with the gradients of add, scale and sum") {
  Rng rng(7);
  Tensor a = randn({3, 5}, rng).set_requires_grad(true);
  Tensor b = randn({3, 5}, rng).set_requires_grad(true);
  test::check_gradients([](const std::vector<Tensor>& in) { return ops::scale(ops::add(in[0], in[1]), -1.5f); },
                        {a, b}, 1e-2, 1e-3, 1e-4);
}

namespace {
struct Tiny : Module {
  struct Inner : Module {
    Tensor weight = register_parameter("weight", Tensor::zeros({3, 2}));
  };
  Tensor bias = register_parameter("bias", Tensor::zeros({2}));
  std::shared_ptr<Inner> conv = register_module("conv", std::make_shared<Inner>());
};
}  // namespace

TEST_CASE("modules name their parameters with dotted paths") {
  Tiny m;
  auto named = m.named_parameters();
  REQUIRE(named.size() == 2);
  CHECK(named[0].first == "bias");
  CHECK(named[1].first == "conv.weight");
  CHECK(named[1].second.requires_grad());
  CHECK(m.parameter_count() == 8);
}
