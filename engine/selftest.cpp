// The self-test cases and their tolerances (see the header). Every case builds its inputs on the CPU from a fixed
// seed, runs forward (and backward from a fixed random output gradient) once on the CPU backend and once on the
// device, and compares each output and gradient. Tolerances follow from what differs between the two sides:
//   exact (0)      data movement and single roundings: add, scale, relu, leaky ReLU, concat, casts, argmax, window
//                  extraction;
//   1e-6 relative  one multiply-add per element, possibly contracted to an FMA on the GPU: optimizer steps, window
//                  accumulation, nearest-upsampling gradient (a sum of a few terms in another order);
//   1e-5           reductions in another order, and __expf against expf: instance norm, DiceCE, importance map;
//   1e-4           convolutions in f32 (sums of tens to hundreds of products in another order); weight gradients,
//                  sums over every output position, get an absolute floor of 1e-3;
//   u |ref| + btol B  the f16 / bf16 convolution kernels called directly (kernel_conv_cases: B = sum |a * b| per
//                  element, u the storage type's rounding; derivation at the cases).
#include "engine/selftest.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "kernels/augment.h"
#include "kernels/cpu/blend.h"

#ifdef UNET_HAVE_CUDA_KERNELS
#include "kernels/cpu/conv.h"
#include "kernels/cpu/conv_transpose.h"
#include "kernels/cpu/norm.h"
#include "kernels/cuda/blend.cuh"
#include "kernels/cuda/conv.cuh"
#include "kernels/cuda/conv_thin.cuh"
#include "kernels/cuda/conv_transpose.cuh"
#include "kernels/cuda/norm.cuh"
#endif

namespace unet::selftest {

Comparison compare_results(const std::vector<float>& actual, const std::vector<float>& expected, double rtol,
                           double atol, const std::vector<float>* bound, double btol) {
  Comparison c;
  if (actual.size() != expected.size() || (bound && bound->size() != expected.size())) {
    c.pass = false;
    c.note = "size " + std::to_string(actual.size()) + ", expected " + std::to_string(expected.size());
    if (bound && bound->size() != expected.size()) c.note += ", bound " + std::to_string(bound->size());
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
    const double allowed = atol + rtol * std::fabs(e) + (bound ? btol * std::fabs((*bound)[i]) : 0.0);
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
  // bound / btol: a per-element term of the tolerance (compare_results).
  void add(const std::string& op, const std::string& shape, std::vector<float> device, const std::vector<float>& cpu,
           double rtol, double atol, const std::vector<float>* bound = nullptr, double btol = 0) {
    if (!o_.perturb.empty() && op.find(o_.perturb) != std::string::npos && !device.empty())
      device[0] += 0.01f * (1.f + std::fabs(device[0]));
    rows.push_back({op, shape, rtol, atol, compare_results(device, cpu, rtol, atol, bound, btol), bound ? btol : 0});
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
  // The DynUNet block as the network runs it: statistics from the convolution's epilogue, the norm + activation applied
  // as the second convolution loads its input.
  auto block = [](const std::vector<Tensor>& x) {
    const ops::ConvStats a = ops::conv_stats(x[0], x[1], Tensor(), {1, 1, 1}, {1, 1, 1});
    const ops::ConvStats b =
        ops::norm_act_conv(a.y, a.stats, x[2], x[3], 1e-5f, 0.01f, x[4], Tensor(), {1, 1, 1}, {1, 1, 1});
    return ops::instance_norm_leaky_relu(b.y, x[2], x[3], 1e-5f, 0.01f, b.stats);
  };
  r.op("conv block (conv_stats, norm_act_conv)", block,
       {randn({2, 5, 6, 7, 8}, 26), randn({8, 3, 3, 3, 8}, 27, 0.2f), randn({8}, 28), randn({8}, 29),
        randn({8, 3, 3, 3, 8}, 30, 0.2f)},
       {{"forward", 0, 1e-4, 1e-4},
        {"dx", 1, 1e-4, 1e-4},
        {"dw1", 2, 1e-4, 1e-3},
        {"dgamma", 3, 1e-4, 1e-3},
        {"dbeta", 4, 1e-4, 1e-3},
        {"dw2", 5, 1e-4, 1e-3}});
  auto tconv = [](const std::vector<Tensor>& x) { return ops::conv_transpose(x[0], x[1], x[2]); };
  r.op("conv_transpose3d k2", tconv, {randn({1, 3, 2, 3, 4}, 20), randn({3, 2, 2, 2, 4}, 21), randn({3}, 22)}, all);
  r.op("conv_transpose3d k1x2x2", tconv, {randn({2, 2, 3, 3, 6}, 23), randn({4, 1, 2, 2, 6}, 24), randn({4}, 25)}, all);
}

#ifdef UNET_HAVE_CUDA_KERNELS
// The convolution kernels called directly in f16 and bf16 (tensor cores, cp.async + ldmatrix; the thin first layer and
// the transposed convolution), which the f32 ops above never reach. Inputs are rounded to dt; the reference is the
// CPU kernel in f32 on the rounded values. Tolerance per element (tests/test_cuda_conv.cpp), B = the same computation
// on absolute values (sum |a * b|):
//   y, dx (stored in dt):  u |ref| + btol B, u = 2^-10 (f16) or 2^-7 (bf16): one rounding to dt, with room for the
//                          reference's own f32 error;
//   dw, dbias (f32):       btol B (summation order only);
//   statistics:            1e-5 of sum |y| and of sum y^2, against sums of the returned y.
// btol = 1e-5 (test_cuda_conv's bound): f32 summation error is a few 2^-24 B per level of a blocked or pairwise sum and
// grows like the square root of the depth for random data; even the tensor cores' truncating accumulation, one
// truncation of at most 2^-23 B per k16 step, stays under 7e-6 B for the deepest reduction here (864). A fixed btol
// keeps the rows sensitive: --perturb's 1% change fails every one of them.
// Rows are named after the kernel file ("conv.cu f16 ..."), so --perturb .cu perturbs every one of them.
namespace direct {

using kernels::ConvProblem;

double unit_roundoff(DType dt) {
  return dt == DType::f16 ? 0x1p-10 : 0x1p-7;
}
constexpr double kBtol = 1e-5;
float round_to(DType dt, float v) {
  return dt == DType::f16 ? f16_to_float(float_to_f16(v)) : bf16_to_float(float_to_bf16(v));
}
std::vector<float> abs_of(std::vector<float> v) {
  for (float& x : v) x = std::fabs(x);
  return v;
}

// Random values rounded to dt: their exact f32 values, and a copy in dt on the device.
struct Operand {
  std::vector<float> v;
  Tensor dev;
};
Operand operand(int64_t n, DType dt, uint64_t seed, Device d, float stddev = 1.f) {
  const Tensor t = Tensor::from_vector({n}, randn({n}, seed, stddev).to_vector(), dt);
  return {t.to_vector(), t.to(d)};
}
Tensor f32_on(const std::vector<float>& v, Device d) {
  return Tensor::from_vector({static_cast<int64_t>(v.size())}, v).to(d);
}

ConvProblem problem(int64_t n, int64_t d, int64_t h, int64_t w, int64_t c, int64_t k, int t, int rs, int stride,
                    int pad_d, int pad_hw) {
  ConvProblem p;
  p.N = n, p.D = d, p.H = h, p.W = w, p.C = c, p.K = k;
  p.T = t, p.R = p.S = rs;
  p.stride_d = d > 1 ? stride : 1;
  p.stride_h = p.stride_w = stride;
  p.pad_d = pad_d;
  p.pad_h = p.pad_w = pad_hw;
  p.compute_output_size();
  return p;
}
int64_t x_count(const ConvProblem& p) {
  return p.N * p.D * p.H * p.W * p.C;
}
int64_t y_count(const ConvProblem& p) {
  return p.N * p.Z * p.P * p.Q * p.K;
}
int64_t w_count(const ConvProblem& p) {
  return p.K * p.taps() * p.C;
}
std::string x_shape(const ConvProblem& p) {
  return p.D > 1 || p.T > 1 ? shape_str({p.N, p.D, p.H, p.W, p.C}) : shape_str({p.N, p.H, p.W, p.C});
}

// Per-(n, k) sum and sum of squares of y [n, pixels, k] (the statistics the fprop epilogue returns), and their bounds.
void add_stats(Runner& r, const std::string& name, const std::string& shape, const std::vector<float>& y,
               const Tensor& stats, int64_t n, int64_t pixels, int64_t k) {
  const ConvStats ref = conv_stats_reference(y, n, pixels, k);
  const std::vector<float> expected(ref.sums.begin(), ref.sums.end()), bound(ref.bounds.begin(), ref.bounds.end());
  r.add(name, shape, stats.to_vector(), expected, 0, 0, &bound, 1e-5);
}

// Restores the kernels' own choice of wgrad splits however the case ends.
struct ForcedSplits {
  explicit ForcedSplits(int splits) { kernels::cuda::testing::force_wgrad_splits(splits); }
  ~ForcedSplits() { kernels::cuda::testing::force_wgrad_splits(0); }
  ForcedSplits(const ForcedSplits&) = delete;
  ForcedSplits& operator=(const ForcedSplits&) = delete;
};

enum class Path { gemm, norm_act, thin };

// fprop (bias, statistics), then unless norm_act: dgrad (not for thin: the first layer takes no input gradient; its
// dgrad is the GEMM one) and wgrad (dw, dbias; `splits` > 0 pins wgrad's pixel splits, 0 leaves them to the kernel).
void conv(Runner& r, const std::string& label, const ConvProblem& p, DType dt, Path path, int splits, uint64_t seed) {
  namespace kc = kernels::cuda;
  const std::string name =
      std::string(path == Path::thin ? "conv_thin.cu " : "conv.cu ") + dtype_name(dt) + " " + label + " ";
  const std::string shape = x_shape(p);
  const Device d = r.device();
  const cudaStream_t s = device::default_stream(d);
  const double u = unit_roundoff(dt);
  try {
    const Operand x = operand(x_count(p), dt, seed, d), w = operand(w_count(p), dt, seed + 1, d, 0.3f);
    const Operand dy = operand(y_count(p), dt, seed + 2, d);
    const std::vector<float> bias = randn({p.K}, seed + 3).to_vector();
    const Tensor bias_d = f32_on(bias, d);
    // fprop, with the previous layer's instance norm + leaky ReLU applied on load for Path::norm_act.
    std::vector<float> x_in = x.v, mean, scale, shift;
    const float slope = 0.01f;
    if (path == Path::norm_act) {
      Rng rng(seed + 4);
      for (int64_t i = 0; i < p.N * p.C; ++i) {
        mean.push_back(static_cast<float>(0.5 * rng.normal()));
        scale.push_back(static_cast<float>(0.5 + rng.uniform()));
        shift.push_back(static_cast<float>(0.5 * rng.normal()));
      }
      for (size_t i = 0; i < x_in.size(); ++i) {  // as the kernel forms it: fma in f32, leaky ReLU, rounded to dt
        const size_t j = i / static_cast<size_t>(p.D * p.H * p.W * p.C) * p.C + i % p.C;
        const float t = std::fma(x.v[i] - mean[j], scale[j], shift[j]);
        x_in[i] = round_to(dt, t > 0.f ? t : t * slope);
      }
    }
    std::vector<float> ref(static_cast<size_t>(y_count(p))), bound(ref.size());
    kernels::cpu::conv_fprop(p, x_in.data(), w.v.data(), bias.data(), ref.data());
    kernels::cpu::conv_fprop(p, abs_of(x_in).data(), abs_of(w.v).data(), abs_of(bias).data(), bound.data());
    Tensor y = Tensor::empty({y_count(p)}, dt, d), stats = Tensor::empty({p.N * p.K * 2}, DType::f32, d);
    // Device copies live until the synchronisation below: the launches are asynchronous on a GPU.
    Tensor mean_d, scale_d, shift_d;
    if (path == Path::norm_act) {
      mean_d = f32_on(mean, d), scale_d = f32_on(scale, d), shift_d = f32_on(shift, d);
      kc::conv_fprop_norm_act(p, dt, x.dev.raw(), mean_d.data<float>(), scale_d.data<float>(), shift_d.data<float>(),
                              slope, w.dev.raw(), bias_d.data<float>(), y.raw(), stats.data<float>(), s);
    } else if (path == Path::thin) {
      kc::conv_fprop_thin(p, dt, x.dev.raw(), w.dev.raw(), bias_d.data<float>(), y.raw(), stats.data<float>(), s);
    } else {
      kc::conv_fprop(p, dt, x.dev.raw(), w.dev.raw(), bias_d.data<float>(), y.raw(), stats.data<float>(), s);
    }
    device::synchronize(d);
    const std::vector<float> y_dev = y.to_vector();
    r.add(name + "fprop", shape, y_dev, ref, u, 0, &bound, kBtol);
    add_stats(r, name + "fprop stats", shape, y_dev, stats, p.N, p.Z * p.P * p.Q, p.K);
    if (path == Path::norm_act) return;

    if (path == Path::gemm) {
      std::vector<float> dx_ref(static_cast<size_t>(x_count(p))), dx_bound(dx_ref.size());
      kernels::cpu::conv_dgrad(p, dy.v.data(), w.v.data(), dx_ref.data());
      kernels::cpu::conv_dgrad(p, abs_of(dy.v).data(), abs_of(w.v).data(), dx_bound.data());
      Tensor dx = Tensor::empty({x_count(p)}, dt, d);
      kc::conv_dgrad(p, dt, dy.dev.raw(), w.dev.raw(), dx.raw(), s);
      device::synchronize(d);
      r.add(name + "dgrad", shape, dx.to_vector(), dx_ref, u, 0, &dx_bound, kBtol);
    }

    std::vector<float> dw_ref(static_cast<size_t>(w_count(p))), dw_bound(dw_ref.size());
    std::vector<float> db_ref(static_cast<size_t>(p.K)), db_bound(db_ref.size());
    kernels::cpu::conv_wgrad(p, x.v.data(), dy.v.data(), dw_ref.data(), db_ref.data());
    kernels::cpu::conv_wgrad(p, abs_of(x.v).data(), abs_of(dy.v).data(), dw_bound.data(), db_bound.data());
    Tensor dw = Tensor::empty({w_count(p)}, DType::f32, d), db = Tensor::empty({p.K}, DType::f32, d);
    {
      const ForcedSplits forced(splits);
      if (path == Path::thin)
        kc::conv_wgrad_thin(p, dt, x.dev.raw(), dy.dev.raw(), dw.data<float>(), db.data<float>(), s);
      else
        kc::conv_wgrad(p, dt, x.dev.raw(), dy.dev.raw(), dw.data<float>(), db.data<float>(), s);
      device::synchronize(d);
    }
    const std::string wname = name + (splits > 0 ? "wgrad splits " + std::to_string(splits) + " " : "wgrad ");
    r.add(wname + "dw", shape, dw.to_vector(), dw_ref, 0, 0, &dw_bound, kBtol);
    r.add(wname + "dbias", shape, db.to_vector(), db_ref, 0, 0, &db_bound, kBtol);
  } catch (const std::exception& e) {
    r.fail(name + "(all)", shape, e.what());
  }
}

// Transposed convolution (kernel == stride): fprop with bias, dgrad, wgrad (dw, dbias).
void conv_transpose(Runner& r, const std::string& label, const kernels::cuda::ConvTransposeShape& t, DType dt,
                    uint64_t seed) {
  namespace kc = kernels::cuda;
  namespace cpu = kernels::cpu;
  const std::string name = std::string("conv_transpose.cu ") + dtype_name(dt) + " " + label + " ";
  const std::string shape = shape_str({t.n, t.d, t.h, t.w, t.c});
  const Device d = r.device();
  const cudaStream_t s = device::default_stream(d);
  const double u = unit_roundoff(dt);
  const int64_t nx = t.pixels() * t.c, ny = t.pixels() * t.taps() * t.k, nw = t.k * t.taps() * t.c;
  try {
    const Operand x = operand(nx, dt, seed, d), w = operand(nw, dt, seed + 1, d, 0.5f),
                  dy = operand(ny, dt, seed + 2, d);
    const std::vector<float> bias = randn({t.k}, seed + 3).to_vector();
    std::vector<float> y_ref(static_cast<size_t>(ny)), y_bound(y_ref.size());
    cpu::conv_transpose_fprop(t, x.v.data(), w.v.data(), bias.data(), y_ref.data());
    cpu::conv_transpose_fprop(t, abs_of(x.v).data(), abs_of(w.v).data(), abs_of(bias).data(), y_bound.data());
    std::vector<float> dx_ref(static_cast<size_t>(nx)), dx_bound(dx_ref.size());
    cpu::conv_transpose_dgrad(t, dy.v.data(), w.v.data(), dx_ref.data());
    cpu::conv_transpose_dgrad(t, abs_of(dy.v).data(), abs_of(w.v).data(), dx_bound.data());
    std::vector<float> dw_ref(static_cast<size_t>(nw)), dw_bound(dw_ref.size());
    std::vector<float> db_ref(static_cast<size_t>(t.k)), db_bound(db_ref.size());
    cpu::conv_transpose_wgrad(t, x.v.data(), dy.v.data(), dw_ref.data(), db_ref.data());
    cpu::conv_transpose_wgrad(t, abs_of(x.v).data(), abs_of(dy.v).data(), dw_bound.data(), db_bound.data());

    Tensor y = Tensor::empty({ny}, dt, d), dx = Tensor::empty({nx}, dt, d);
    Tensor dw = Tensor::empty({nw}, DType::f32, d), db = Tensor::empty({t.k}, DType::f32, d);
    const Tensor bias_d = f32_on(bias, d);  // lives until the synchronisation: the launches are asynchronous
    kc::conv_transpose_fprop(t, dt, x.dev.raw(), w.dev.raw(), bias_d.data<float>(), y.raw(), s);
    kc::conv_transpose_dgrad(t, dt, dy.dev.raw(), w.dev.raw(), dx.raw(), s);
    kc::conv_transpose_wgrad(t, dt, x.dev.raw(), dy.dev.raw(), dw.data<float>(), db.data<float>(), s);
    device::synchronize(d);
    r.add(name + "fprop", shape, y.to_vector(), y_ref, u, 0, &y_bound, kBtol);
    r.add(name + "dgrad", shape, dx.to_vector(), dx_ref, u, 0, &dx_bound, kBtol);
    r.add(name + "wgrad dw", shape, dw.to_vector(), dw_ref, 0, 0, &dw_bound, kBtol);
    r.add(name + "wgrad dbias", shape, db.to_vector(), db_ref, 0, 0, &db_bound, kBtol);
  } catch (const std::exception& e) {
    r.fail(name + "(all)", shape, e.what());
  }
}

kernels::cuda::ConvTransposeShape tshape(int64_t n, int64_t d, int64_t h, int64_t w, int64_t c, int64_t k, int kt,
                                         int krs) {
  kernels::cuda::ConvTransposeShape t;
  t.n = n, t.d = d, t.h = h, t.w = w, t.c = c, t.k = k, t.kt = kt, t.kr = t.ks = krs;
  return t;
}

}  // namespace direct

// --quick (the CI run on the emulator) covers each kernel path once, f16 and bf16 alternating; the full run has
// every case in both types and larger shapes (several tiles, a deep k pipeline, the kernels' own wgrad splits).
void kernel_conv_cases(Runner& r) {
  using direct::Path;
  using direct::problem;
  using direct::tshape;
  using kernels::ConvProblem;
  struct ConvCase {
    const char* label;
    ConvProblem p;
    Path path;
    int splits;
  };
  std::vector<ConvCase> convs = {
      // C, K multiples of 8: cp.async; 60 pixels in wgrad splits of 32.
      {"3d k3 C8 K16", problem(1, 3, 4, 5, 8, 16, 3, 3, 1, 1, 1), Path::gemm, 2},
      // C = 5: element loads; stride 2: dgrad as one GEMM per stride phase.
      {"3d k3 s2 C5 K8", problem(2, 3, 5, 5, 5, 8, 3, 3, 2, 1, 1), Path::gemm, 0},
      {"2d k3 C16 K8 norm+act", problem(2, 1, 5, 6, 16, 8, 1, 3, 1, 0, 1), Path::norm_act, 0},
      {"3d k3 C1 K8", problem(1, 4, 5, 6, 1, 8, 3, 3, 1, 1, 1), Path::thin, 0},
      {"2d k3 C4 K16", problem(2, 1, 6, 7, 4, 16, 1, 3, 1, 0, 1), Path::thin, 0},
  };
  std::vector<std::pair<const char*, kernels::cuda::ConvTransposeShape>> tconvs = {
      {"k2 C8 K16", tshape(1, 2, 3, 3, 8, 16, 2, 2)},
      {"k1x2x2 C5 K3", tshape(2, 2, 3, 2, 5, 3, 1, 2)},
  };
  if (!r.quick()) {
    convs.insert(convs.end(),
                 {
                     {"2d k3 s2 C17 K32", problem(2, 1, 9, 11, 17, 32, 1, 3, 2, 0, 1), Path::gemm, 3},
                     {"3d k3 C32 K64", problem(2, 8, 8, 8, 32, 64, 3, 3, 1, 1, 1), Path::gemm, 0},
                     {"3d k3 s2 C16 K32", problem(2, 6, 8, 8, 16, 32, 3, 3, 2, 1, 1), Path::gemm, 0},
                     {"3d k3 C5 K12 norm+act", problem(2, 3, 5, 7, 5, 12, 3, 3, 1, 1, 1), Path::norm_act, 0},
                     {"3d k3 C1 K32", problem(2, 16, 16, 16, 1, 32, 3, 3, 1, 1, 1), Path::thin, 0},
                 });
    tconvs.push_back({"k2 C64 K32", tshape(2, 4, 4, 4, 64, 32, 2, 2)});
  }
  uint64_t seed = 1000;
  for (size_t i = 0; i < convs.size(); ++i)
    for (DType dt : {DType::f16, DType::bf16})
      if (!r.quick() || dt == (i % 2 == 0 ? DType::f16 : DType::bf16)) {
        direct::conv(r, convs[i].label, convs[i].p, dt, convs[i].path, convs[i].splits, seed);
        seed += 10;
      }
  for (size_t i = 0; i < tconvs.size(); ++i)
    for (DType dt : {DType::f16, DType::bf16})
      if (!r.quick() || dt == (i % 2 == 0 ? DType::f16 : DType::bf16)) {
        direct::conv_transpose(r, tconvs[i].first, tconvs[i].second, dt, seed);
        seed += 10;
      }
}
#endif

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
    kernels::cuda::instance_norm_leaky_relu_forward(sh, DType::f32, x.data<float>(), gamma.data<float>(),
                                                    beta.data<float>(), eps, slope, y.data<float>(), mean.data<float>(),
                                                    rstd.data<float>(), s);
    kernels::cuda::instance_norm_leaky_relu_backward(sh, DType::f32, x.data<float>(), y.data<float>(), dy.data<float>(),
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

// The network's ops with 16-bit activations (mixed precision, docs/numerics.md): each row casts its f32 input to f16 or
// bf16, runs the op (f32 weights, rounded by the op) and casts back, on the device and on the cpu. Data movement and
// single products are exact; the rest round a sum taken in another order, so one unit in the last place of the 16-bit
// type (2^-10, 2^-7 relative) plus 1e-5. --quick alternates the two types.
void mixed_precision_cases(Runner& r) {
  int i = 0;
  for (DType dt : {DType::f16, DType::bf16}) {
    const double ulp = dt == DType::f16 ? 0x1p-10 : 0x1p-7;
    const std::string t = std::string(" ") + dtype_name(dt);
    const std::vector<Part> exact = {{"forward", 0, 0, 0}, {"backward", 1, 0, 0}};
    const std::vector<Part> rounded = {{"forward", 0, ulp, 1e-5}, {"backward x", 1, ulp, 1e-5}};
    auto low = [dt](Tensor x) { return ops::cast(x, dt); };
    auto back = [](Tensor y) { return ops::cast(y, DType::f32); };
    if (!r.quick() || i++ % 2 == 0) {
      r.op("conv 3x3x3" + t,
           [=](const std::vector<Tensor>& x) {
             return back(ops::conv(low(x[0]), x[1], x[2], {1, 1, 1}, {1, 1, 1}));
           },
           {randn({2, 5, 4, 6, 8}, 70), randn({16, 3, 3, 3, 8}, 71, 0.2f), randn({16}, 72)},
           {{"forward", 0, ulp, 1e-5},
            {"backward x", 1, ulp, 1e-5},
            {"backward w", 2, 1e-4, 1e-3},
            {"backward bias", 3, 1e-4, 1e-3}});
      r.op("conv_transpose 2x2x2" + t,
           [=](const std::vector<Tensor>& x) { return back(ops::conv_transpose(low(x[0]), x[1], x[2])); },
           {randn({2, 3, 2, 4, 16}, 73), randn({8, 2, 2, 2, 16}, 74, 0.3f), randn({8}, 75)},
           {{"forward", 0, ulp, 1e-5},
            {"backward x", 1, ulp, 1e-5},
            {"backward w", 2, 1e-4, 1e-3},
            {"backward bias", 3, 1e-4, 1e-3}});
      r.op("instance_norm" + t,
           [=](const std::vector<Tensor>& x) { return back(ops::instance_norm(low(x[0]), x[1], x[2])); },
           {randn({2, 4, 5, 6, 3}, 76, 2.f), randn({3}, 77), randn({3}, 78)},
           {{"forward", 0, ulp, 1e-5},
            {"backward x", 1, ulp, 1e-5},
            {"backward gamma", 2, 1e-5, 1e-5},
            {"backward beta", 3, 1e-5, 1e-5}});
      r.op(
          "leaky_relu" + t, [=](const std::vector<Tensor>& x) { return back(ops::leaky_relu(low(x[0]), 0.01f)); },
          {randn({2, 4, 4, 3}, 79)}, exact);
      r.op(
          "upsample_nearest x2" + t,
          [=](const std::vector<Tensor>& x) {
            return back(ops::upsample_nearest(low(x[0]), {2, 1, 2}));
          },
          {randn({1, 2, 3, 4, 3}, 80)}, exact);
    }
  }
}

void loss_cases(Runner& r) {
  const Tensor logits = randn({2, 4, 4, 3, 3}, 50, 2.f), y = labels({2, 4, 4, 3}, 3, 51);
  const std::string shape = shape_str(logits.shape());
  try {
    std::vector<float> parts[2], grads[2];
    for (int side = 0; side < 2; ++side) {
      const Device d = side ? r.device() : Device::cpu;
      Tensor l = logits.clone().to(d).set_requires_grad(true);
      Tensor dice_ce;
      Tensor loss = ops::dice_ce_loss(l, y.to(d), &dice_ce);
      parts[side] = {loss.item(), dice_ce.to_vector()[0], dice_ce.to_vector()[1]};
      autograd::backward(loss);
      grads[side] = l.grad().to_vector();
    }
    r.add("dice_ce_loss loss/dice/ce", shape, parts[1], parts[0], 1e-5, 1e-6);
    r.add("dice_ce_loss gradient", shape, grads[1], grads[0], 1e-5, 1e-7);
  } catch (const std::exception& e) {
    r.fail("dice_ce_loss", shape, e.what());
  }
  // UNet 3+'s hybrid loss: 2D, images of at least the SSIM's 11 x 11 window.
  const Tensor logits2 = randn({2, 16, 13, 3}, 52, 2.f), y2 = labels({2, 16, 13}, 3, 53);
  const std::string shape2 = shape_str(logits2.shape());
  try {
    std::vector<float> parts[2], grads[2];
    for (int side = 0; side < 2; ++side) {
      const Device d = side ? r.device() : Device::cpu;
      Tensor l = logits2.clone().to(d).set_requires_grad(true);
      Tensor three;
      Tensor loss = ops::hybrid_loss(l, y2.to(d), &three);
      parts[side] = {loss.item()};
      for (float v : three.to_vector()) parts[side].push_back(v);
      autograd::backward(loss);
      grads[side] = l.grad().to_vector();
    }
    r.add("hybrid_loss loss/focal/ssim/iou", shape2, parts[1], parts[0], 1e-6, 1e-7);
    r.add("hybrid_loss gradient", shape2, grads[1], grads[0], 1e-6, 1e-9);
  } catch (const std::exception& e) {
    r.fail("hybrid_loss", shape2, e.what());
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

// The batched augmentation kernels (kernels/augment.h) through the backends' tables: every spatial map (zoom with a
// flip, blur, low resolution), the labels, and the point-wise chain, on three samples of which the middle one keeps
// the identity. The tables are the same doubles on both sides and nothing is fused, so the resampling, labels,
// brightness and contrast must match bit for bit; the noise and gamma go through the device's double log / cos / pow.
void augment_cases(Runner& r) {
  const Device d = r.device();
  const kernels::AugmentShape s{3, 9, 14, 11, 2};
  const std::string shape = "[3, 9, 14, 11, 2]";
  const auto upload = [d](const auto& v) {
    Tensor t = Tensor::empty({static_cast<int64_t>(v.size() * sizeof(v[0]))}, DType::u8);
    std::memcpy(t.raw(), v.data(), v.size() * sizeof(v[0]));
    return t.to(d);
  };
  try {
    const kernels::AugmentKernels &cpu = backend::kernels_for(Device::cpu).augment,
                                  &dev = backend::kernels_for(d).augment;
    const cudaStream_t st = device::default_stream(d);
    const Tensor x = randn({s.n * s.values()}, 120, 1.5f);
    const std::vector<uint8_t> active{1, 0, 1};
    const Tensor dactive = upload(active);
    for (int axis = 0; axis < 3; ++axis) {
      const int64_t n = s.dim(axis), len = std::max<int64_t>(1, n * 7 / 10);
      const int taps = kernels::gaussian_taps(1.3);
      const std::vector<std::pair<std::string, std::vector<kernels::AxisMap>>> cases = {
          {"zoom+flip",
           {kernels::flipped(kernels::cubic_axis_map(n, (n - len) / 2, len)), kernels::identity_axis_map(n, 4),
            kernels::cubic_axis_map(n, (n - len) / 2, len)}},
          {"blur",
           {kernels::gaussian_axis_map(n, 1.3, taps), kernels::identity_axis_map(n, taps),
            kernels::gaussian_axis_map(n, 0.6, taps)}},
          {"low resolution",
           {kernels::low_resolution_axis_map(n, n / 2), kernels::identity_axis_map(n, 4),
            kernels::low_resolution_axis_map(n, (n + 2) / 3)}}};
      for (const auto& [name, maps] : cases) {
        std::vector<int32_t> index;
        std::vector<double> weight;
        for (const kernels::AxisMap& m : maps) {
          index.insert(index.end(), m.index.begin(), m.index.end());
          weight.insert(weight.end(), m.weight.begin(), m.weight.end());
        }
        std::vector<float> want(static_cast<size_t>(x.numel()));
        cpu.resample_axis(s, axis, maps.front().taps, index.data(), weight.data(), active.data(), x.data<float>(),
                          want.data(), nullptr);
        const Tensor di = upload(index), dw = upload(weight), dx = x.to(d);
        Tensor dy = Tensor::empty({x.numel()}, DType::f32, d);
        dev.resample_axis(s, axis, maps.front().taps, static_cast<const int32_t*>(di.raw()),
                          static_cast<const double*>(dw.raw()), static_cast<const uint8_t*>(dactive.raw()),
                          dx.data<float>(), dy.data<float>(), st);
        device::synchronize(d);
        r.add("augment resample " + name + " axis " + std::to_string(axis), shape, dy.to_vector(), want, 0, 0);
      }
      // Labels: the zoom's nearest neighbours, flipped.
      std::vector<int32_t> from;
      for (int b = 0; b < 3; ++b) {
        const std::vector<int32_t> f = kernels::nearest_axis_index(n, (n - len) / 2, len, b == 2);
        from.insert(from.end(), f.begin(), f.end());
      }
      const Tensor lab = labels({s.n * s.voxels()}, 4, 121);
      std::vector<int32_t> want(static_cast<size_t>(lab.numel()));
      cpu.gather_label_axis(s, axis, from.data(), active.data(), lab.data<int32_t>(), want.data(), nullptr);
      const Tensor dfrom = upload(from), dlab = lab.to(d);
      Tensor dout = Tensor::empty({lab.numel()}, DType::i32, d);
      dev.gather_label_axis(s, axis, static_cast<const int32_t*>(dfrom.raw()),
                            static_cast<const uint8_t*>(dactive.raw()), dlab.data<int32_t>(), dout.data<int32_t>(), st);
      device::synchronize(d);
      r.add("augment labels zoom+flip axis " + std::to_string(axis), shape, dout.to_vector(),
            std::vector<float>(want.begin(), want.end()), 0, 0);
    }
    // The point-wise chain: noise, brightness, contrast, then gamma with its statistics restored.
    std::vector<kernels::AugmentSampleParams> p(3);
    for (size_t b : {size_t(0), size_t(2)}) {
      p[b].noise_seed = 77 + b;
      p[b].noise_std = 0.2 + 0.1 * b;
      p[b].brightness = 1.2;
      p[b].contrast = 0.8;
      p[b].gamma = 0.75 + 0.25 * b;
    }
    const size_t stats_n = static_cast<size_t>(s.n * s.c * 4);
    const Tensor dp = upload(p);
    const auto* pp = static_cast<const kernels::AugmentSampleParams*>(dp.raw());
    std::vector<float> want = x.to_vector();
    std::vector<double> before(stats_n), after(stats_n);
    Tensor dx = x.to(d), dbefore = upload(before), dafter = upload(after);
    auto* db = static_cast<double*>(dbefore.raw());
    auto* da = static_cast<double*>(dafter.raw());
    const auto* on = static_cast<const uint8_t*>(dactive.raw());
    cpu.add_noise(s, p.data(), want.data(), nullptr);
    dev.add_noise(s, pp, dx.data<float>(), st);
    device::synchronize(d);
    r.add("augment noise", shape, dx.to_vector(), want, 1e-6, 1e-6);
    dx = Tensor::from_vector({x.numel()}, want).to(d);  // the next steps from the CPU's values: one step per row
    cpu.brightness(s, p.data(), want.data(), nullptr);
    cpu.channel_stats(s, active.data(), want.data(), before.data(), nullptr);
    cpu.contrast(s, p.data(), before.data(), want.data(), nullptr);
    dev.brightness(s, pp, dx.data<float>(), st);
    dev.channel_stats(s, on, dx.data<float>(), db, st);
    dev.contrast(s, pp, db, dx.data<float>(), st);
    device::synchronize(d);
    r.add("augment brightness+contrast", shape, dx.to_vector(), want, 0, 0);
    cpu.channel_stats(s, active.data(), want.data(), before.data(), nullptr);
    cpu.gamma(s, p.data(), before.data(), want.data(), nullptr);
    cpu.channel_stats(s, active.data(), want.data(), after.data(), nullptr);
    cpu.restore_stats(s, p.data(), before.data(), after.data(), want.data(), nullptr);
    dev.channel_stats(s, on, dx.data<float>(), db, st);
    dev.gamma(s, pp, db, dx.data<float>(), st);
    dev.channel_stats(s, on, dx.data<float>(), da, st);
    dev.restore_stats(s, pp, db, da, dx.data<float>(), st);
    device::synchronize(d);
    r.add("augment gamma (statistics restored)", shape, dx.to_vector(), want, 1e-5, 1e-6);
  } catch (const std::exception& e) {
    r.fail("augment", shape, e.what());
  }
}

}  // namespace

std::vector<SelftestRow> run_selftest(const SelftestOptions& options) {
  if (options.device == Device::cpu)
    throw std::invalid_argument("the self-test compares a device with the cpu: --device cuda or cuda-emu");
  Runner r(options);
  conv_cases(r);
#ifdef UNET_HAVE_CUDA_KERNELS
  kernel_conv_cases(r);
#endif
  norm_cases(r);
  elementwise_cases(r);
  mixed_precision_cases(r);
  loss_cases(r);
  optimizer_cases(r);
  blend_cases(r);
  augment_cases(r);
  return std::move(r.rows);
}

ConvStats conv_stats_reference(const std::vector<float>& y, int64_t n, int64_t pixels, int64_t k) {
  ConvStats r{std::vector<double>(static_cast<size_t>(n * k * 2)), std::vector<double>(static_cast<size_t>(n * k * 2))};
  for (int64_t s = 0; s < n; ++s)
    for (int64_t c = 0; c < k; ++c) {
      double s1 = 0, s2 = 0, a1 = 0;
      for (int64_t i = 0; i < pixels; ++i) {
        const double v = y[static_cast<size_t>((s * pixels + i) * k + c)];
        s1 += v, s2 += v * v, a1 += std::fabs(v);
      }
      const size_t at = static_cast<size_t>((s * k + c) * 2);
      r.sums[at] = s1, r.bounds[at] = a1;
      r.sums[at + 1] = s2, r.bounds[at + 1] = s2;
    }
  return r;
}

int print_selftest_table(FILE* out, const std::vector<SelftestRow>& rows) {
  std::fprintf(out, "%-48s %-18s %11s %11s %-22s %s\n", "op", "shape", "max abs err", "max rel err", "tolerance",
               "result");
  int failed = 0;
  for (const SelftestRow& r : rows) {
    char tol[48];
    if (r.btol > 0 && r.rtol == 0)
      std::snprintf(tol, sizeof tol, "%.0e B", r.btol);
    else if (r.btol > 0)
      std::snprintf(tol, sizeof tol, "rtol %.0e + %.0e B", r.rtol, r.btol);
    else if (r.rtol == 0 && r.atol == 0)
      std::snprintf(tol, sizeof tol, "exact");
    else
      std::snprintf(tol, sizeof tol, "rtol %.0e atol %.0e", r.rtol, r.atol);
    std::fprintf(out, "%-48s %-18s %11.3e %11.3e %-22s %s%s%s\n", r.op.c_str(), r.shape.c_str(), r.result.max_abs,
                 r.result.max_rel, tol, r.result.pass ? "PASS" : "FAIL", r.result.note.empty() ? "" : "  ",
                 r.result.note.c_str());
    if (!r.result.pass) ++failed;
  }
  if (std::any_of(rows.begin(), rows.end(), [](const SelftestRow& r) { return r.btol > 0; }))
    std::fprintf(out,
                 "\nB: per element, the same computation on absolute values (sum |a * b| of a convolution; sum |y| and "
                 "sum y^2 for statistics)\n");
  std::fprintf(out, "\n%zu checks, %d failed: %s\n", rows.size(), failed, failed ? "FAIL" : "PASS");
  return failed;
}

}  // namespace unet::selftest
