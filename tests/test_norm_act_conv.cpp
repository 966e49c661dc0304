// ops::norm_act_conv: conv(leaky_relu(instance_norm(x))) as one op that keeps only x for backward. Held to the three
// ops in sequence bit for bit (output and all five gradients; the backward makes the activation again with the same
// deterministic kernels), on the cpu and cuda-emu, in f32, f16 and bf16; and to the memory it is meant to save.
#include <doctest/doctest.h>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "kernels/common/allocator.h"
#include "tests/test_util.h"

using namespace unet;

namespace {

struct Inputs {
  Tensor x, gamma, beta, w, bias;
};

Inputs make_inputs(const Shape& x_shape, int K, int k, uint64_t seed) {
  Rng rng(seed);
  const int64_t C = x_shape.back();
  Shape w_shape{K};
  for (size_t i = 2; i < x_shape.size(); ++i) w_shape.push_back(k);
  w_shape.push_back(C);
  return {randn(x_shape, rng, 2.f), randn({C}, rng), randn({C}, rng), randn(w_shape, rng, 0.2f), randn({K}, rng)};
}

// Output and the gradients of x, gamma, beta, w, bias from a fixed output gradient, fused or as three ops.
std::vector<std::vector<float>> run(bool fused, Device d, DType dt, const Inputs& in, const std::vector<int>& stride,
                                    const std::vector<int>& pad) {
  Tensor x = ops::cast(in.x, dt).clone().to(d).set_requires_grad(true);
  std::vector<Tensor> p;
  for (const Tensor* t : {&in.gamma, &in.beta, &in.w, &in.bias}) p.push_back(t->clone().to(d).set_requires_grad(true));
  Tensor y = fused ? ops::norm_act_conv(x, p[0], p[1], 1e-5f, 0.01f, p[2], p[3], stride, pad)
                   : ops::conv(ops::leaky_relu(ops::instance_norm(x, p[0], p[1], 1e-5f), 0.01f), p[2], p[3], stride,
                               pad);
  Rng rng(9);
  autograd::backward(y, ops::cast(randn(y.shape(), rng), dt).to(d));
  std::vector<std::vector<float>> out = {y.to_vector(), x.grad().to_vector()};
  for (const Tensor& t : p) out.push_back(t.grad().to_vector());
  return out;
}

}  // namespace

TEST_CASE("norm_act_conv is instance_norm, leaky_relu and conv in sequence, bit for bit, forward and backward") {
  std::vector<Device> devices = {Device::cpu};
  if (device::emulator_built()) devices.push_back(Device::cuda_emu);
  const Inputs in3 = make_inputs({2, 5, 6, 4, 8}, 16, 3, 1), in2 = make_inputs({2, 9, 7, 16}, 8, 3, 2);
  for (Device d : devices)
    for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
      CAPTURE(std::string(device_name(d)) + " " + dtype_name(dt));
      for (int dims : {3, 2}) {
        CAPTURE(dims);
        const Inputs& in = dims == 3 ? in3 : in2;
        const std::vector<int> stride = dims == 3 ? std::vector<int>{1, 1, 1} : std::vector<int>{2, 2};
        const std::vector<int> pad(static_cast<size_t>(dims), 1);
        const auto fused = run(true, d, dt, in, stride, pad), seq = run(false, d, dt, in, stride, pad);
        const char* names[] = {"y", "dx", "dgamma", "dbeta", "dw", "dbias"};
        for (size_t i = 0; i < fused.size(); ++i) CHECK_MESSAGE(fused[i] == seq[i], names[i]);
      }
    }
}

TEST_CASE("norm_act_conv keeps only its input for backward, not the normalised activation") {
  const Inputs in = make_inputs({2, 16, 16, 16, 8}, 8, 3, 3);
  Tensor x = in.x.clone().set_requires_grad(true);
  Tensor w = in.w.clone().set_requires_grad(true);
  auto held = [&](bool fused) {
    const size_t before = HostAllocator::instance().stats().current_bytes;
    Tensor y = fused ? ops::norm_act_conv(x, Tensor(), Tensor(), 1e-5f, 0.01f, w, Tensor(), {1, 1, 1}, {1, 1, 1})
                     : ops::conv(ops::instance_norm_leaky_relu(x, Tensor(), Tensor(), 1e-5f, 0.01f), w, Tensor(),
                                 {1, 1, 1}, {1, 1, 1});
    const size_t bytes = HostAllocator::instance().stats().current_bytes - before;
    autograd::clear_tape();
    return bytes;
  };
  const size_t seq = held(false), fused = held(true);
  // The sequence also keeps the activation (x's shape and type, for conv's dw) and the norm's mean and 1/std (f32
  // [N, C] each), which the fused op makes again in backward.
  CHECK(seq - fused == x.nbytes() + 2 * 2 * 8 * sizeof(float));
}

TEST_CASE("norm_act_conv gradients agree with central finite differences") {
  const Inputs in = make_inputs({1, 4, 5, 4, 3}, 4, 3, 4);
  std::vector<Tensor> ps = {in.x.clone(), in.gamma.clone(), in.beta.clone(), in.w.clone(), in.bias.clone()};
  for (Tensor& p : ps) p.set_requires_grad(true);
  // A slope of 1 makes the activation linear: a step of h cannot cross its kink, so the differences measure the
  // gradient alone (the kink's side is checked bit for bit above).
  test::check_gradients(
      [](const std::vector<Tensor>& t) {
        return ops::norm_act_conv(t[0], t[1], t[2], 1e-5f, 1.0f, t[3], t[4], {1, 1, 1}, {1, 1, 1});
      },
      ps, 1e-2, 2e-2, 2e-3, 24);
}
