// The nnU-Net block's fused ops: ops::conv_stats (a convolution that also returns the per-(n, k) sums of y and y^2 its
// norm needs), instance_norm_leaky_relu from those statistics, and ops::norm_act_conv (conv of the normalised
// activation, which is never stored and not kept for backward). Checked on the cpu and cuda-emu, in f32, f16 and
// bf16: the statistics against sums of the stored output; the statistics form of the norm against the two-pass one;
// norm_act_conv against the two ops in sequence bit for bit (output, output statistics and all five gradients); the
// gradients against finite differences; and the memory the fusion is meant to save.
#include <doctest/doctest.h>

#include <cmath>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "kernels/common/allocator.h"
#include "tests/test_util.h"

using namespace unet;

namespace {

std::vector<Device> devices() {
  std::vector<Device> d = {Device::cpu};
  if (device::emulator_built()) d.push_back(Device::cuda_emu);
  return d;
}

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

// The statistics of x [N, spatial..., C] as kernels/conv.h defines them, summed here in double: [N, C, 2] f32.
Tensor host_stats(const Tensor& x) {
  const std::vector<float> v = ops::cast(x, DType::f32).to_vector();
  const int64_t N = x.dim(0), C = x.dim(-1), S = x.numel() / (N * C);
  std::vector<double> s(static_cast<size_t>(N * C * 2), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < S; ++i)
      for (int64_t c = 0; c < C; ++c) {
        const double e = v[static_cast<size_t>((n * S + i) * C + c)];
        s[static_cast<size_t>((n * C + c) * 2)] += e;
        s[static_cast<size_t>((n * C + c) * 2 + 1)] += e * e;
      }
  return Tensor::from_vector({N, C, 2}, std::vector<float>(s.begin(), s.end())).to(x.device());
}

// Output, output statistics and the gradients of x, gamma, beta, w, bias from a fixed output gradient: norm_act_conv,
// or instance_norm_leaky_relu with the statistics followed by conv_stats.
std::vector<std::vector<float>> run(bool fused, Device d, DType dt, const Inputs& in, const std::vector<int>& stride,
                                    const std::vector<int>& pad) {
  Tensor x = ops::cast(in.x, dt).clone().to(d).set_requires_grad(true);
  const Tensor stats = host_stats(x);
  std::vector<Tensor> p;
  for (const Tensor* t : {&in.gamma, &in.beta, &in.w, &in.bias}) p.push_back(t->clone().to(d).set_requires_grad(true));
  const ops::ConvStats y = fused ? ops::norm_act_conv(x, stats, p[0], p[1], 1e-5f, 0.01f, p[2], p[3], stride, pad)
                                 : ops::conv_stats(ops::instance_norm_leaky_relu(x, p[0], p[1], 1e-5f, 0.01f, stats),
                                                   p[2], p[3], stride, pad);
  Rng rng(9);
  autograd::backward(y.y, ops::cast(randn(y.y.shape(), rng), dt).to(d));
  std::vector<std::vector<float>> out = {y.y.to_vector(), y.stats.to_vector(), x.grad().to_vector()};
  for (const Tensor& t : p) out.push_back(t.grad().to_vector());
  return out;
}

}  // namespace

TEST_CASE("conv_stats returns y and the sums of y and y^2 per sample and channel, as stored") {
  // Shapes with partial tiles, several samples, strides and 2D; 4 input channels take CUDA's thin first-layer path.
  struct Case {
    Shape x;
    int K, k;
    std::vector<int> stride, pad;
  };
  const std::vector<Case> cases = {{{2, 5, 6, 7, 8}, 16, 3, {1, 1, 1}, {1, 1, 1}},
                                   {{3, 9, 8, 6, 16}, 24, 3, {2, 2, 2}, {1, 1, 1}},
                                   {{2, 11, 9, 4}, 8, 3, {1, 1}, {1, 1}},
                                   {{1, 40, 40, 32}, 32, 3, {1, 1}, {1, 1}}};
  for (Device d : devices())
    for (DType dt : {DType::f32, DType::f16, DType::bf16})
      for (const Case& c : cases) {
        CAPTURE(std::string(device_name(d)) + " " + dtype_name(dt) + " x " + shape_str(c.x));
        const Inputs in = make_inputs(c.x, c.K, c.k, 5);
        const Tensor x = ops::cast(in.x, dt).to(d), w = in.w.to(d), bias = in.bias.to(d);
        const ops::ConvStats r = ops::conv_stats(x, w, bias, c.stride, c.pad);
        CHECK_MESSAGE(r.y.to_vector() == ops::conv(x, w, bias, c.stride, c.pad).to_vector(), "y is conv's");
        // f32 partial sums (CUDA's epilogue) against double, relative to the magnitude summed: sum |y| <= sqrt(count *
        // sum y^2) for the sums, sum y^2 itself for the sums of squares.
        const std::vector<float> got = r.stats.to_vector(), want = host_stats(r.y).to_vector();
        REQUIRE(got.size() == want.size());
        const int64_t per = r.y.numel() / (c.x[0] * c.K);
        double worst = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          const double scale = i % 2 ? std::fabs(want[i]) : std::sqrt(std::fabs(want[i + 1]) * double(per));
          worst = std::max(worst, std::fabs(double(got[i]) - want[i]) / (scale + 1e-30));
        }
        CHECK(worst < 1e-5);
      }
}

TEST_CASE("instance_norm_leaky_relu from statistics agrees with the two-pass form, forward and backward") {
  for (Device d : devices())
    for (DType dt : {DType::f32, DType::bf16}) {
      CAPTURE(std::string(device_name(d)) + " " + dtype_name(dt));
      const Inputs in = make_inputs({2, 6, 5, 7, 12}, 4, 3, 6);
      // A mean of 3 std, as a convolution's output may have, tests the E[x^2] - mean^2 form's cancellation.
      const Tensor x0 = ops::cast(ops::add(in.x, Tensor::full(in.x.shape(), 6.f)), dt);
      auto run_norm = [&](bool from_stats) {
        Tensor x = x0.clone().to(d).set_requires_grad(true);
        Tensor g = in.gamma.clone().to(d).set_requires_grad(true), b = in.beta.clone().to(d).set_requires_grad(true);
        Tensor y = from_stats ? ops::instance_norm_leaky_relu(x, g, b, 1e-5f, 0.01f, host_stats(x))
                              : ops::instance_norm_leaky_relu(x, g, b, 1e-5f, 0.01f);
        Rng rng(3);
        autograd::backward(y, ops::cast(randn(y.shape(), rng), dt).to(d));
        return std::vector<Tensor>{y, x.grad(), g.grad(), b.grad()};
      };
      const auto a = run_norm(true), b = run_norm(false);
      // One unit in the last place of the storage type, where the two computations' statistics differ by ~1e-7.
      const double tol = dt == DType::f32 ? 2e-5 : 1e-2;
      const char* names[] = {"y", "dx", "dgamma", "dbeta"};
      for (size_t i = 0; i < a.size(); ++i) test::check_close(a[i], b[i], tol, tol, names[i]);
    }
}

TEST_CASE("norm_act_conv is instance_norm_leaky_relu and conv_stats in sequence, bit for bit, forward and backward") {
  // 8 and 16 input channels: with 1 to 4, CUDA's conv takes its thin first-layer path, which sums in another order
  // than the GEMM path conv_fprop_norm_act always takes (the next test compares those with the cpu).
  const Inputs in3 = make_inputs({2, 5, 6, 4, 8}, 16, 3, 1), in2 = make_inputs({2, 9, 7, 16}, 8, 3, 2);
  for (Device d : devices())
    for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
      CAPTURE(std::string(device_name(d)) + " " + dtype_name(dt));
      for (int dims : {3, 2}) {
        CAPTURE(dims);
        const Inputs& in = dims == 3 ? in3 : in2;
        const std::vector<int> stride = dims == 3 ? std::vector<int>{1, 1, 1} : std::vector<int>{2, 2};
        const std::vector<int> pad(static_cast<size_t>(dims), 1);
        const auto fused = run(true, d, dt, in, stride, pad), seq = run(false, d, dt, in, stride, pad);
        const char* names[] = {"y", "y stats", "dx", "dgamma", "dbeta", "dw", "dbias"};
        for (size_t i = 0; i < fused.size(); ++i) CHECK_MESSAGE(fused[i] == seq[i], names[i]);
      }
    }
}

TEST_CASE("norm_act_conv keeps only its input and the norm's coefficients for backward") {
  const Inputs in = make_inputs({2, 16, 16, 16, 8}, 8, 3, 3);
  Tensor x = in.x.clone().set_requires_grad(true);
  Tensor w = in.w.clone().set_requires_grad(true);
  const Tensor stats = host_stats(x);
  auto held = [&](bool fused) {
    const size_t before = HostAllocator::instance().stats().current_bytes;
    ops::ConvStats y =
        fused ? ops::norm_act_conv(x, stats, Tensor(), Tensor(), 1e-5f, 0.01f, w, Tensor(), {1, 1, 1}, {1, 1, 1})
              : ops::conv_stats(ops::instance_norm_leaky_relu(x, Tensor(), Tensor(), 1e-5f, 0.01f, stats), w, Tensor(),
                                {1, 1, 1}, {1, 1, 1});
    const size_t bytes = HostAllocator::instance().stats().current_bytes - before;
    autograd::clear_tape();
    return bytes;
  };
  const size_t seq = held(false), fused = held(true);
  // The sequence keeps the activation (x's shape and type) twice over: its norm's output, and conv's input for dw; and
  // the norm's mean and 1/std (f32 [N, C] each). The fused op keeps mean, 1/std, scale and shift.
  const size_t coefficients = 2 * 8 * sizeof(float);
  CHECK(seq - fused == x.nbytes() + 2 * coefficients - 4 * coefficients);
}

TEST_CASE("norm_act_conv gradients agree with central finite differences") {
  const Inputs in = make_inputs({1, 4, 5, 4, 3}, 4, 3, 4);
  std::vector<Tensor> ps = {in.x.clone(), in.gamma.clone(), in.beta.clone(), in.w.clone(), in.bias.clone()};
  for (Tensor& p : ps) p.set_requires_grad(true);
  // The statistics are those of the probed x, so the differences see their dependence on x, which the norm's backward
  // accounts for. A slope of 1 makes the activation linear: a step of h cannot cross its kink, so the differences
  // measure the gradient alone (the kink's side is checked bit for bit above).
  test::check_gradients(
      [](const std::vector<Tensor>& t) {
        return ops::norm_act_conv(t[0], host_stats(t[0]), t[1], t[2], 1e-5f, 1.0f, t[3], t[4], {1, 1, 1}, {1, 1, 1}).y;
      },
      ps, 1e-2, 2e-2, 2e-3, 24);
}

TEST_CASE("instance_norm_leaky_relu from statistics that overflowed f32 gives NaN, not a flattened channel") {
  // Sums of squares past 3.4e38 (finite activations of 1e19: absurd weights) are inf in f32. An infinite variance
  // would give rstd 0 and every output the shift, finite and wrong; NaN reaches the logits, which the tools check.
  for (Device d : devices()) {
    CAPTURE(device_name(d));
    const Inputs in = make_inputs({1, 4, 4, 4, 2}, 2, 3, 8);
    const Tensor x = ops::scale(in.x, 1e19f).to(d);
    const Tensor stats = host_stats(x);  // channel 0's and 1's sums of squares: inf
    const std::vector<float> s = stats.to_vector();
    REQUIRE(std::isinf(s[1]));
    REQUIRE(std::isinf(s[3]));
    const std::vector<float> y =
        ops::instance_norm_leaky_relu(x, in.gamma.to(d), in.beta.to(d), 1e-5f, 0.01f, stats).to_vector();
    CHECK(std::all_of(y.begin(), y.end(), [](float v) { return std::isnan(v); }));
    // The same x scaled down to 1e15 is finite and normalises as x itself does.
    const Tensor small = ops::scale(in.x, 1e15f).to(d);
    test::check_close(
        ops::instance_norm_leaky_relu(small, in.gamma.to(d), in.beta.to(d), 1e-5f, 0.01f, host_stats(small)),
        ops::instance_norm_leaky_relu(in.x.to(d), in.gamma.to(d), in.beta.to(d), 1e-5f, 0.01f), 1e-4, 1e-4, "y");
  }
}

TEST_CASE("norm_act_conv and conv_stats on cuda-emu match the cpu") {
  if (!device::emulator_built()) return;
  for (int C : {4, 8}) {
    CAPTURE(C);
    const Inputs in = make_inputs({2, 6, 5, 7, C}, C, 3, 11);
    test::check_op_against_cpu(
        Device::cuda_emu,
        [](const std::vector<Tensor>& t) {
          const ops::ConvStats a = ops::conv_stats(t[0], t[3], Tensor(), {1, 1, 1}, {1, 1, 1});
          const ops::ConvStats b =
              ops::norm_act_conv(a.y, a.stats, t[1], t[2], 1e-5f, 0.01f, t[3], t[4], {1, 1, 1}, {1, 1, 1});
          return ops::instance_norm_leaky_relu(b.y, t[1], t[2], 1e-5f, 0.01f, b.stats);
        },
        {in.x, in.gamma, in.beta, in.w, in.bias}, 1e-4, 1e-5);
  }
}
