// The self-test cases and their tolerances (see the header). Every case builds its inputs on the CPU from a fixed
// seed, runs forward (and backward from a fixed random output gradient) once on the CPU backend and once on the
// device, and compares each output and gradient. Tolerances follow from what differs between the two sides:
//   exact (0)      data movement and single roundings: add, scale, relu, leaky ReLU, concat, casts, argmax, window
//                  extraction;
//   1e-6 relative  one multiply-add per element, possibly contracted to an FMA on the GPU: optimizer steps, window
//                  accumulation, nearest-upsampling gradient (a sum of a few terms in another order);
//   1e-5           reductions in another order, and __expf against expf: instance norm, DiceCE, importance map;
//   1e-4           convolutions in f32 (sums of tens to hundreds of products in another order); weight gradients,
//                  sums over every output position, get an absolute floor of 1e-3.
#include "bench/lib/selftest.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <memory>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "kernels/blend.h"

#ifdef UNET_HAVE_CUDA_KERNELS
#include "kernels/cuda/blend.cuh"
#include "kernels/cuda/norm.cuh"
#endif

namespace unet::bench {

Comparison compare_results(const std::vector<float>& actual, const std::vector<float>& expected, double rtol,
                           double atol) {
  Comparison c;
  if (actual.size() != expected.size()) {
    c.pass = false;
    c.note = "size " + std::to_string(actual.size()) + ", expected " + std::to_string(expected.size());
    return c;
  }
  double worst_ratio = -1;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double a = actual[i], e = expected[i];
    if (!std::isfinite(a) || !std::isfinite(e)) {
      // Equal infinities match; anything else non-finite fails this element, whatever the tolerance.
      if (a == e) continue;
      c.pass = false;
      c.max_abs = INFINITY;
      if (worst_ratio < INFINITY) worst_ratio = INFINITY, c.worst = static_cast<int64_t>(i);
      continue;
    }
    const double err = std::fabs(a - e);
    const double allowed = atol + rtol * std::fabs(e);
    c.max_abs = std::max(c.max_abs, err);
    if (std::fabs(e) > atol) c.max_rel = std::max(c.max_rel, err / std::fabs(e));
    const double ratio = allowed > 0 ? err / allowed : (err > 0 ? INFINITY : 0);
    if (ratio > worst_ratio) worst_ratio = ratio, c.worst = static_cast<int64_t>(i);
    if (err > allowed) c.pass = false;
  }
  return c;
}

namespace {

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

Tensor randn(const Shape& shape, uint64_t seed, float stddev = 1.f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = static_cast<float>(stddev * rng.normal());
  return Tensor::from_vector(shape, v);
}

Tensor labels(const Shape& shape, int classes, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = static_cast<float>(rng.below(classes));
  return Tensor::from_vector(shape, v, DType::i32);
}

// One compared quantity of a case: the op's output (index 0) or the gradient of input i (index 1 + i).
struct Part {
  std::string name;
  int index;
  double rtol, atol;
};

class Runner {
 public:
  explicit Runner(const SelftestOptions& o) : o_(o) {}
  std::vector<SelftestRow> rows;

  // Compares the values of one part and appends its row; the device values may be perturbed (--perturb).
  void add(const std::string& op, const std::string& shape, std::vector<float> device, const std::vector<float>& cpu,
           double rtol, double atol) {
    if (!o_.perturb.empty() && op.find(o_.perturb) != std::string::npos && !device.empty())
      device[0] += 0.01f * (1.f + std::fabs(device[0]));
    rows.push_back({op, shape, rtol, atol, compare_results(device, cpu, rtol, atol)});
  }
  void fail(const std::string& op, const std::string& shape, const std::string& why) {
    SelftestRow r{op, shape, 0, 0, {}};
    r.result.pass = false;
    r.result.note = why;
    rows.push_back(r);
  }

  // Forward on `d` from copies of inputs (the inputs named by grad parts require grad), backward from a fixed random
  // gradient when any part is a gradient; returns [output, grad of input 0, grad of input 1, ...].
  std::vector<std::vector<float>> run(Device d, const OpFn& f, const std::vector<Tensor>& inputs,
                                      const std::vector<Part>& parts) {
    std::vector<bool> needs_grad(inputs.size(), false);
    for (const Part& p : parts)
      if (p.index > 0) needs_grad[p.index - 1] = true;
    std::vector<Tensor> xs;
    for (size_t i = 0; i < inputs.size(); ++i) {
      Tensor t = inputs[i].clone().to(d);
      if (needs_grad[i]) t.set_requires_grad(true);
      xs.push_back(t);
    }
    Tensor y = f(xs);
    std::vector<std::vector<float>> out{y.to_vector()};
    if (std::find(needs_grad.begin(), needs_grad.end(), true) != needs_grad.end()) {
      Tensor g = randn(y.shape(), 99);
      if (y.dtype() != DType::f32) g = ops::cast(g, y.dtype());
      autograd::backward(y, g.to(d));
    }
    for (size_t i = 0; i < xs.size(); ++i)
      out.push_back(needs_grad[i] && xs[i].grad().defined() ? xs[i].grad().to_vector() : std::vector<float>{});
    return out;
  }

  // An op through the engine (ops::*), on the CPU and on the device, one row per part.
  void op(const std::string& name, const OpFn& f, const std::vector<Tensor>& inputs, const std::vector<Part>& parts) {
    const std::string shape = shape_str(inputs.front().shape());
    try {
      const auto cpu = run(Device::cpu, f, inputs, parts);  // one tape per thread: backward before the next forward
      const auto dev = run(o_.device, f, inputs, parts);
      for (const Part& p : parts) add(name + " " + p.name, shape, dev[p.index], cpu[p.index], p.rtol, p.atol);
    } catch (const std::exception& e) {
      for (const Part& p : parts) fail(name + " " + p.name, shape, e.what());
    }
  }

  Device device() const { return o_.device; }
  bool quick() const { return o_.quick; }

 private:
  SelftestOptions o_;
};

void conv_cases(Runner& r) {
  auto conv = [](std::vector<int> stride, std::vector<int> pad) {
    return [=](const std::vector<Tensor>& x) { return ops::conv(x[0], x[1], x[2], stride, pad); };
  };
  const std::vector<Part> all = {
      {"fprop", 0, 1e-4, 1e-4}, {"dgrad", 1, 1e-4, 1e-4}, {"wgrad", 2, 1e-4, 1e-3}, {"bias grad", 3, 1e-4, 1e-3}};
  r.op("conv3d k3 s1", conv({1, 1, 1}, {1, 1, 1}),
       {randn({2, 5, 6, 7, 3}, 1), randn({4, 3, 3, 3, 3}, 2, 0.3f), randn({4}, 3)}, all);
  r.op("conv3d k1x3x3 s1x2x2", conv({1, 2, 2}, {0, 1, 1}),
       {randn({1, 4, 7, 6, 5}, 4), randn({3, 1, 3, 3, 5}, 5, 0.3f), randn({3}, 6)}, all);
  r.op("conv3d thin C=1 k3", conv({1, 1, 1}, {1, 1, 1}),
       {randn({1, 6, 5, 6, 1}, 7), randn({8, 3, 3, 3, 1}, 8, 0.3f), randn({8}, 9)}, all);
  r.op("conv2d k3 s2", conv({2, 2}, {1, 1}), {randn({2, 9, 7, 8}, 10), randn({16, 3, 3, 8}, 11, 0.2f), randn({16}, 12)},
       all);
  if (!r.quick()) {
    r.op("conv3d k3 s1 C=16 K=32", conv({1, 1, 1}, {1, 1, 1}),
         {randn({2, 8, 8, 8, 16}, 13), randn({32, 3, 3, 3, 16}, 14, 0.1f), randn({32}, 15)}, all);
    r.op("conv2d k3 s1 C=32 K=32", conv({1, 1}, {1, 1}),
         {randn({4, 24, 20, 32}, 16), randn({32, 3, 3, 32}, 17, 0.1f), randn({32}, 18)}, all);
  }
  auto tconv = [](const std::vector<Tensor>& x) { return ops::conv_transpose(x[0], x[1], x[2]); };
  r.op("conv_transpose3d k2", tconv, {randn({1, 3, 2, 3, 4}, 20), randn({3, 2, 2, 2, 4}, 21), randn({3}, 22)}, all);
  r.op("conv_transpose3d k1x2x2", tconv, {randn({2, 2, 3, 3, 6}, 23), randn({4, 1, 2, 2, 6}, 24), randn({4}, 25)}, all);
}

void norm_cases(Runner& r) {
  const std::vector<Part> parts = {
      {"forward", 0, 1e-5, 1e-5}, {"dx", 1, 1e-5, 1e-5}, {"dgamma", 2, 1e-5, 1e-5}, {"dbeta", 3, 1e-5, 1e-5}};
  const std::vector<Tensor> in = {randn({2, 4, 5, 6, 3}, 30, 2.f), randn({3}, 31), randn({3}, 32)};
  r.op(
      "instance_norm", [](const std::vector<Tensor>& x) { return ops::instance_norm(x[0], x[1], x[2]); }, in, parts);

#ifdef UNET_HAVE_CUDA_KERNELS
  // The fused normalize + leaky ReLU kernels have no op of their own yet: they run directly against the CPU
  // composition instance_norm -> leaky_relu (forward and autograd backward).
  const std::string name = "instance_norm+leaky_relu (fused)";
  const std::string shape = shape_str(in[0].shape());
  try {
    const float slope = 0.01f, eps = 1e-5f;
    const auto cpu = r.run(
        Device::cpu,
        [&](const std::vector<Tensor>& x) { return ops::leaky_relu(ops::instance_norm(x[0], x[1], x[2], eps), slope); },
        in, parts);
    const Device d = r.device();
    const kernels::cpu::NormShape sh{2, 4 * 5 * 6, 3};
    Tensor x = in[0].to(d), gamma = in[1].to(d), beta = in[2].to(d);
    Tensor y = Tensor::empty(in[0].shape(), DType::f32, d), mean = Tensor::empty({2, 3}, DType::f32, d);
    Tensor rstd = Tensor::empty({2, 3}, DType::f32, d), dx = Tensor::empty(in[0].shape(), DType::f32, d);
    Tensor dgamma = Tensor::empty({3}, DType::f32, d), dbeta = Tensor::empty({3}, DType::f32, d);
    Tensor dy = randn(in[0].shape(), 99).to(d);  // the gradient Runner::run uses
    const cudaStream_t s = device::default_stream(d);
    kernels::cuda::instance_norm_leaky_relu_forward(sh, x.data<float>(), gamma.data<float>(), beta.data<float>(), eps,
                                                    slope, y.data<float>(), mean.data<float>(), rstd.data<float>(), s);
    kernels::cuda::instance_norm_leaky_relu_backward(sh, x.data<float>(), y.data<float>(), dy.data<float>(),
                                                     mean.data<float>(), rstd.data<float>(), gamma.data<float>(), slope,
                                                     dx.data<float>(), dgamma.data<float>(), dbeta.data<float>(), s);
    device::synchronize(d);
    const Tensor dev[] = {y, dx, dgamma, dbeta};
    for (const Part& p : parts)
      r.add(name + " " + p.name, shape, dev[p.index].to_vector(), cpu[p.index], p.rtol, p.atol);
  } catch (const std::exception& e) {
    r.fail(name, shape, e.what());
  }
#endif
}

void elementwise_cases(Runner& r) {
  const std::vector<Part> exact = {{"forward", 0, 0, 0}, {"backward", 1, 0, 0}};
  r.op(
      "relu", [](const std::vector<Tensor>& x) { return ops::relu(x[0]); }, {randn({2, 4, 4, 3}, 40)}, exact);
  r.op(
      "leaky_relu", [](const std::vector<Tensor>& x) { return ops::leaky_relu(x[0], 0.01f); },
      {randn({2, 4, 4, 3}, 41)}, exact);
  r.op("add+scale", [](const std::vector<Tensor>& x) { return ops::scale(ops::add(x[0], x[1]), 0.75f); },
       {randn({3, 5, 7}, 42), randn({3, 5, 7}, 43)},
       {{"forward", 0, 0, 0}, {"backward a", 1, 0, 0}, {"backward b", 2, 0, 0}});
  r.op("concat_channels",
       [](const std::vector<Tensor>& x) {
         return ops::concat_channels({x[0], x[1]});
       },
       {randn({2, 3, 4, 2}, 44), randn({2, 3, 4, 5}, 45)},
       {{"forward", 0, 0, 0}, {"backward a", 1, 0, 0}, {"backward b", 2, 0, 0}});
  r.op("upsample_nearest x2",
       [](const std::vector<Tensor>& x) {
         return ops::upsample_nearest(x[0], {2, 1, 2});
       },
       {randn({1, 2, 3, 4, 3}, 46)}, {{"forward", 0, 0, 0}, {"backward", 1, 1e-6, 1e-7}});
  r.op(
      "cast f32->f16", [](const std::vector<Tensor>& x) { return ops::cast(x[0], DType::f16); }, {randn({4, 9}, 47)},
      exact);
  r.op(
      "cast f32->bf16", [](const std::vector<Tensor>& x) { return ops::cast(x[0], DType::bf16); }, {randn({4, 9}, 48)},
      exact);
  r.op("argmax_channels", [](const std::vector<Tensor>& x) { return ops::argmax_channels(x[0]); },
       {randn({2, 3, 4, 5}, 49)}, {{"forward", 0, 0, 0}});
}

void loss_cases(Runner& r) {
  const Tensor logits = randn({2, 4, 4, 3, 3}, 50, 2.f), y = labels({2, 4, 4, 3}, 3, 51);
  const std::string shape = shape_str(logits.shape());
  try {
    std::vector<float> parts[2], grads[2];
    for (int side = 0; side < 2; ++side) {
      const Device d = side ? r.device() : Device::cpu;
      Tensor l = logits.clone().to(d).set_requires_grad(true);
      float dice = 0, ce = 0;
      Tensor loss = ops::dice_ce_loss(l, y.to(d), &dice, &ce);
      parts[side] = {loss.item(), dice, ce};
      autograd::backward(loss);
      grads[side] = l.grad().to_vector();
    }
    r.add("dice_ce_loss loss/dice/ce", shape, parts[1], parts[0], 1e-5, 1e-6);
    r.add("dice_ce_loss gradient", shape, grads[1], grads[0], 1e-5, 1e-7);
  } catch (const std::exception& e) {
    r.fail("dice_ce_loss", shape, e.what());
  }
}

void optimizer_cases(Runner& r) {
  for (int kind = 0; kind < 2; ++kind) {
    const std::string name = kind ? "SGD nesterov step x3" : "AdamW step x3";
    try {
      std::vector<float> result[2];
      for (int side = 0; side < 2; ++side) {
        const Device d = side ? r.device() : Device::cpu;
        Tensor p = randn({37}, 60).to(d), q = randn({5, 3}, 61).to(d);
        p.set_requires_grad(true), q.set_requires_grad(true);
        std::unique_ptr<Optimizer> opt;
        if (kind == 0)
          opt = std::make_unique<AdamW>(std::vector<Tensor>{p, q}, AdamOptions{1e-2, 0.9, 0.999, 1e-8, 1e-2});
        else
          opt = std::make_unique<SGD>(std::vector<Tensor>{p, q});
        for (int step = 0; step < 3; ++step) {
          p.set_grad(randn({37}, 70 + step).to(d));
          q.set_grad(randn({5, 3}, 80 + step).to(d));
          if (!opt->step(0.5f)) throw std::runtime_error("a finite gradient was reported as inf/nan");
        }
        p.set_grad(Tensor::full({37}, INFINITY).to(d));  // must be skipped, changing nothing
        if (opt->step()) throw std::runtime_error("an infinite gradient did not skip the step");
        for (const Tensor& t : {p, q}) {
          const auto v = t.to_vector();
          result[side].insert(result[side].end(), v.begin(), v.end());
        }
      }
      r.add(name, "[37] + [5, 3]", result[1], result[0], 1e-6, 1e-7);
    } catch (const std::exception& e) {
      r.fail(name, "[37] + [5, 3]", e.what());
    }
  }
}

void blend_cases(Runner& r) {
#ifdef UNET_HAVE_CUDA_KERNELS
  const Device d = r.device();
  const kernels::cpu::Dims3 patch{5, 6, 7}, size{7, 8, 9}, start{1, 2, 0};
  const std::array<bool, 3> flip{true, false, true};
  const int64_t c = 2, np = 5 * 6 * 7, nv = 7 * 8 * 9;
  const cudaStream_t s = device::default_stream(d);
  try {
    std::vector<float> map(np);
    kernels::cpu::importance_map(patch, true, 0.125f, 1e-3f, map.data());
    Tensor dmap = Tensor::empty({np}, DType::f32, d);
    kernels::cuda::importance_map(patch, true, 0.125f, 1e-3f, dmap.data<float>(), s);
    device::synchronize(d);
    r.add("blend importance_map gaussian", "[5, 6, 7]", dmap.to_vector(), map, 1e-5, 1e-7);

    const Tensor volume = randn({nv * c}, 90);
    std::vector<float> window(np * c);
    kernels::cpu::extract_window(volume.data<float>(), size, c, start, patch, flip, window.data());
    Tensor dvol = volume.to(d), dwin = Tensor::empty({np * c}, DType::f32, d);
    kernels::cuda::extract_window(dvol.data<float>(), size, c, start, patch, flip, dwin.data<float>(), s);
    device::synchronize(d);
    r.add("blend extract_window (flipped)", "[7, 8, 9, 2]", dwin.to_vector(), window, 0, 0);

    // Two overlapping windows accumulated into out and norm.
    const Tensor pred = randn({np * c}, 91), out0 = randn({nv * c}, 92);
    std::vector<float> out(out0.to_vector()), norm(nv, 0.f);
    Tensor dpred = pred.to(d), dmapw = Tensor::from_vector({np}, map).to(d), dout = out0.to(d);
    Tensor dnorm = Tensor::zeros({nv}, DType::f32, d);
    for (const kernels::cpu::Dims3& at : {start, kernels::cpu::Dims3{2, 1, 2}}) {
      kernels::cpu::accumulate_window(pred.data<float>(), map.data(), patch, c, at, size, flip, 0.5f, out.data(),
                                      norm.data());
      kernels::cuda::accumulate_window(dpred.data<float>(), dmapw.data<float>(), patch, c, at, size, flip, 0.5f,
                                       dout.data<float>(), dnorm.data<float>(), s);
    }
    device::synchronize(d);
    r.add("blend accumulate_window out", "[7, 8, 9, 2]", dout.to_vector(), out, 1e-6, 1e-7);
    r.add("blend accumulate_window norm", "[7, 8, 9]", dnorm.to_vector(), norm, 1e-6, 1e-7);
  } catch (const std::exception& e) {
    r.fail("blend", "[7, 8, 9, 2]", e.what());
  }
#else
  r.fail("blend", "-", "this build has no CUDA kernels");
#endif
}

}  // namespace

std::vector<SelftestRow> run_selftest(const SelftestOptions& options) {
  if (options.device == Device::cpu)
    throw std::invalid_argument("the self-test compares a device with the cpu: --device cuda or cuda-emu");
  Runner r(options);
  conv_cases(r);
  norm_cases(r);
  elementwise_cases(r);
  loss_cases(r);
  optimizer_cases(r);
  blend_cases(r);
  return std::move(r.rows);
}

int print_selftest_table(FILE* out, const std::vector<SelftestRow>& rows) {
  std::fprintf(out, "%-40s %-18s %11s %11s %-22s %s\n", "op", "shape", "max abs err", "max rel err", "tolerance",
               "result");
  int failed = 0;
  for (const SelftestRow& r : rows) {
    char tol[48];
    if (r.rtol == 0 && r.atol == 0)
      std::snprintf(tol, sizeof tol, "exact");
    else
      std::snprintf(tol, sizeof tol, "rtol %.0e atol %.0e", r.rtol, r.atol);
    std::fprintf(out, "%-40s %-18s %11.3e %11.3e %-22s %s%s%s\n", r.op.c_str(), r.shape.c_str(), r.result.max_abs,
                 r.result.max_rel, tol, r.result.pass ? "PASS" : "FAIL", r.result.note.empty() ? "" : "  ",
                 r.result.note.c_str());
    if (!r.result.pass) ++failed;
  }
  std::fprintf(out, "\n%zu checks, %d failed: %s\n", rows.size(), failed, failed ? "FAIL" : "PASS");
  return failed;
}

}  // namespace unet::bench
