// Mixed precision on the cpu: every op of the network with f16 / bf16 activations and f32 master weights gives
// exactly the f32 result of its inputs rounded to f16 / bf16, rounded once more (the rounding points of the CUDA
// tensor-core kernels; tests/test_cuda_mixed_precision.cpp holds cuda-emu to the same reference within a unit in the
// last place). And a small network in bf16 / f16 has the gradients of f32 finite differences, to the precision's
// accuracy.
#include <doctest/doctest.h>

#include <functional>
#include <string>

#include "engine/ops.h"
#include "engine/random.h"
#include "tests/mixed_precision_cases.h"
#include "tests/test_util.h"

namespace unet {
namespace {

Tensor rnd(const Shape& s, uint64_t seed, float stddev = 1.f) {
  Rng rng(seed);
  return randn(s, rng, stddev);
}

}  // namespace

TEST_CASE("every op in f16 and bf16 on the cpu is the f32 op on rounded inputs, rounded once, bit for bit") {
  test::check_every_op_mixed_precision(Device::cpu, 0, 0);
}

TEST_CASE("cpu convolutions in f16 and bf16 are bitwise on every path: 1x1 read in place, row groups, channel tails") {
  // The cpu convolution widens 16-bit operands where it packs or transposes them, and rounds its output per group of
  // rows (kernels/cpu/conv.cpp). Beyond the op table's cases: a 1x1 kernel without padding (x and dy read in their
  // own layout, x not padded for wgrad), and 40 channels (two register blocks of 32 with a tail, so groups of 8 rows
  // in fprop and dgrad), stride 2.
  using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
  const Fn conv1x1 = [](const std::vector<Tensor>& t) { return ops::conv(t[0], t[1], t[2], {1, 1, 1}, {0, 0, 0}); };
  const Fn conv3x3 = [](const std::vector<Tensor>& t) { return ops::conv(t[0], t[1], t[2], {1, 2, 1}, {1, 1, 1}); };
  for (DType dt : {DType::f16, DType::bf16}) {
    const std::string type = dtype_name(dt);
    CAPTURE(type);
    test::check_mixed_precision(Device::cpu, dt, conv1x1,
                                {rnd({2, 3, 4, 5, 40}, 31), rnd({40, 1, 1, 1, 40}, 32, 0.2f), rnd({40}, 33)},
                                {test::Role::activation, test::Role::weight, test::Role::f32}, 0, 0);
    test::check_mixed_precision(Device::cpu, dt, conv3x3,
                                {rnd({2, 3, 6, 5, 40}, 34), rnd({40, 3, 3, 3, 40}, 35, 0.1f), rnd({40}, 36)},
                                {test::Role::activation, test::Role::weight, test::Role::f32}, 0, 0);
  }
}

TEST_CASE("a conv-norm-up-concat network in bf16 and f16 has the gradients of f32 finite differences") {
  // The DynUNet's ops in sequence (conv, instance norm, transposed conv, concat, upsample) with the input cast to the
  // low precision and the logits cast back, as the trainer runs them. No leaky ReLU: a step of h moves normalised
  // values across its kink and the differences then measure the kink, not the gradient (its low-precision backward is
  // checked exactly above). The weights' gradients are compared
  // with central differences of the f32 network: the mixed-precision network computes the same function up to
  // rounding, so they agree to about the precision's relative accuracy (2^-8 for bf16, 2^-11 for f16) times the
  // depth, far below the gradients' own size.
  const Tensor x0 = rnd({2, 6, 6, 6, 2}, 21);
  const Tensor w1 = rnd({8, 3, 3, 3, 2}, 22, 0.3f), w2 = rnd({8, 2, 2, 2, 8}, 23, 0.3f);
  const Tensor w3 = rnd({3, 1, 1, 1, 16}, 24, 0.3f), b3 = rnd({3}, 25, 0.1f);
  const Tensor gamma = rnd({8}, 26, 0.2f), beta = rnd({8}, 27, 0.2f);
  for (DType dt : {DType::f16, DType::bf16}) {
    const std::string type = dtype_name(dt);
    CAPTURE(type);
    auto make_net = [](DType t) {
      return [t](const std::vector<Tensor>& p) {
      Tensor x = ops::cast(p[0], t);
      Tensor h = ops::instance_norm(ops::conv(x, p[1], Tensor(), {2, 2, 2}, {1, 1, 1}), p[4], p[5]);
      Tensor up = ops::conv_transpose(h, p[2], Tensor());
      Tensor skip = ops::conv(x, p[1], Tensor(), {1, 1, 1}, {1, 1, 1});
      Tensor logits = ops::conv(ops::concat_channels({up, skip}), p[3], p[6], {1, 1, 1}, {0, 0, 0});
      return ops::cast(ops::upsample_nearest(logits, {1, 1, 1}), DType::f32);
      };
    };
    std::vector<Tensor> params = {x0.clone(), w1.clone(), w2.clone(), w3.clone(), gamma.clone(), beta.clone(), b3.clone()};
    for (Tensor& p : params) p.set_requires_grad(true);
    // Differences of the f32 network (h = 1e-2, double sums); the low-precision gradients may differ from them by the
    // rounding accumulated over the depth: rtol 5e-2 and atol 2e-2 (the gradients are of order 1).
    test::check_gradients(make_net(dt), params, 1e-2, 5e-2, 2e-2, 24, 1, make_net(DType::f32));
  }
}

}  // namespace unet
