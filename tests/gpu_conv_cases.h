// Device-generic checks of the CUDA convolution kernels (kernels/cuda/conv.cuh) against the CPU backend, shared by
// tests/test_gpu.cpp (Device::cuda, production sizes, in the GPU build) and tests/test_cuda_gpu_cases.cpp
// (Device::cuda_emu, tiny sizes, in the default build), so the GPU test's own logic is exercised by CI without a GPU.
// Inputs are made on the CPU, rounded to the kernel's storage type, and copied to the device; outputs are
// NaN-poisoned before each launch, so an element a kernel does not write fails.
// Tolerances (as bench/lib/selftest.cpp and tests/test_cuda_conv.cpp), per element, with B the same convolution of
// the absolute values (sum |a * b|) and the reference the CPU convolution in f32 of the values the kernel computes
// with:
//   |got - ref| <= u |ref| + btol B
//   u = 2^-10 (f16) or 2^-7 (bf16) for outputs stored in that type (y, dx): one rounding; 0 for f32 outputs (dw,
//   dbias, and everything in f32 / TF32);
//   btol = 1e-5 + (depth / 16) 2^-23, depth = the GEMM's reduction length: f32 summation order, plus one truncation
//   of at most 2^-23 B per k16 step should the tensor cores truncate their f32 accumulation (worst case; 1e-5 alone
//   covers depths up to ~700; the same allowance for the SIMT f32 path, whose sums are in k order).
// TF32: the kernel gets the unrounded f32 values and rounds them to tf32 (cvt.rna: nearest, ties away); the reference
// uses those roundings, whose products are exact in f32, so the bound is the f32 one. dbias sums dy itself (no tf32).
// Second, independent criterion: the relative L2 error against the reference from the unrounded f32 inputs (TF32) or
// the rounded ones (f16 / bf16, whose inputs are in that type): f16 1e-3, bf16 1e-2, TF32 1e-3, f32 1e-5.
// Statistics (fprop's per-(n, k) sum and sum of squares): against sums of the returned y, 1e-5 of sum |y| and sum y^2.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/device.h"
#include "kernels/common/dtype.h"
#include "engine/random.h"
#include "engine/selftest.h"
#include "engine/tensor.h"
#include "kernels/cpu/conv.h"
#include "kernels/cuda/conv.cuh"
#include "tests/test_util.h"

namespace unet::test::gpu_cases {

using kernels::ConvProblem;

// What a convolution runs in: its storage type and, for f32, whether on the TF32 tensor cores.
using kernels::ConvPrecision;


// v to 11 significant bits (tf32), nearest with ties away from zero, written independently of the kernels' bit trick.
inline float tf32_round(float v) {
  if (v == 0.f || !std::isfinite(v)) return v;
  int e = 0;
  const double m = std::frexp(double(v), &e);  // |m| in [0.5, 1)
  return float(std::ldexp(std::round(std::ldexp(m, 11)), e - 11));
}
inline float round_to(DType dt, float v) {
  return dt == DType::f16 ? f16_to_float(float_to_f16(v)) : dt == DType::bf16 ? bf16_to_float(float_to_bf16(v)) : v;
}

inline int64_t x_count(const ConvProblem& p) {
  return p.N * p.D * p.H * p.W * p.C;
}
inline int64_t y_count(const ConvProblem& p) {
  return p.N * p.Z * p.P * p.Q * p.K;
}
inline int64_t w_count(const ConvProblem& p) {
  return p.K * p.taps() * p.C;
}

inline ConvProblem problem(int64_t n, int64_t d, int64_t h, int64_t w, int64_t c, int64_t k, int t, int rs, int stride,
                           int pad) {
  ConvProblem p;
  p.N = n, p.D = d, p.H = h, p.W = w, p.C = c, p.K = k;
  p.T = t, p.R = p.S = rs;
  p.stride_d = d > 1 ? stride : 1;
  p.stride_h = p.stride_w = stride;
  p.pad_d = t > 1 ? pad : 0;
  p.pad_h = p.pad_w = pad;
  p.compute_output_size();
  return p;
}

// The tensor-core tile the kernels choose for an M x N GEMM: a copy of pick_tile in kernels/cuda/conv.cu (keep in
// step), used to say which tile a case is meant to reach. wgrad: M = K, N = taps * C; fprop: M = N*Z*P*Q, N = K;
// dgrad: M = N*D*H*W, N = C. Only for the vector path (C, K multiples of 8 for f16/bf16, of 4 for TF32).
struct Tile {
  int bm = 0, bn = 0;
  bool operator==(const Tile& o) const { return bm == o.bm && bn == o.bn; }
};
inline Tile expected_tile(int64_t M, int64_t N, bool wgrad) {
  if (N <= 32) return {128, 32};
  if (N <= 64 || !wgrad) return M >= 128 * 64 ? Tile{128, 64} : Tile{64, 64};
  if (M <= 64) return {64, 64};
  return ((M + 127) / 128) * ((N + 127) / 128) >= 64 ? Tile{128, 128} : Tile{64, 64};
}
inline Tile fprop_tile(const ConvProblem& p) {
  return expected_tile(p.N * p.Z * p.P * p.Q, p.K, false);
}
inline Tile dgrad_tile(const ConvProblem& p) {
  return expected_tile(p.N * p.D * p.H * p.W, p.C, false);
}
inline Tile wgrad_tile(const ConvProblem& p) {
  return expected_tile(p.K, p.taps() * p.C, true);
}

// TF32, a forced tile and forced wgrad splits for the life of the object; the kernels' defaults afterwards.
struct KernelSettings {
  KernelSettings(bool tf32, Tile tile, int splits) {
    kernels::cuda::set_conv_allow_tf32(tf32);
    kernels::cuda::testing::force_conv_tile(tile.bm, tile.bn);
    kernels::cuda::testing::force_wgrad_splits(splits);
  }
  ~KernelSettings() {
    kernels::cuda::set_conv_allow_tf32(false);
    kernels::cuda::testing::force_conv_tile(0, 0);
    kernels::cuda::testing::force_wgrad_splits(0);
  }
  KernelSettings(const KernelSettings&) = delete;
  KernelSettings& operator=(const KernelSettings&) = delete;
};

// Random values: `exact` what the kernel is given (f32, or already in f16 / bf16), `ref` what it computes with (tf32
// roundings for TF32), `dev` the kernel's input on the device.
struct Operand {
  std::vector<float> exact, ref;
  Tensor dev;
};
inline Operand operand(int64_t n, ConvPrecision pr, uint64_t seed, Device d, float stddev = 1.f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(stddev * rng.normal());
  const DType dt = kernels::conv_storage_dtype(pr);
  Operand o;
  const Tensor host = Tensor::from_vector({n}, v, dt);
  o.exact = host.to_vector();
  o.ref = o.exact;
  if (pr == ConvPrecision::tf32)
    for (float& x : o.ref) x = tf32_round(x);
  o.dev = host.to(d);
  return o;
}
inline std::vector<float> abs_of(std::vector<float> v) {
  for (float& x : v) x = std::fabs(x);
  return v;
}
// An output buffer on d filled with NaN (all bits set is a NaN in f32, f16 and bf16).
inline Tensor poisoned(int64_t n, DType dt, Device d) {
  Tensor t = Tensor::empty({n}, dt, d);
  device::memset(d, t.raw(), 0xFF, t.nbytes());
  return t;
}

inline double rel_l2(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = double(got[i]) - double(ref[i]);
    num += e * e;
    den += double(ref[i]) * double(ref[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}
inline double l2_tolerance(ConvPrecision pr) {
  return pr == ConvPrecision::f16 ? 1e-3 : pr == ConvPrecision::bf16 ? 1e-2 : pr == ConvPrecision::tf32 ? 1e-3 : 1e-5;
}
inline double unit_roundoff(ConvPrecision pr) {
  return pr == ConvPrecision::f16 ? 0x1p-10 : pr == ConvPrecision::bf16 ? 0x1p-7 : 0.0;
}
inline double bound_tolerance(int64_t depth) {
  return 1e-5 + double(depth) / 16 * 0x1p-23;
}

// How far a result is from its reference: the largest |got - ref| / (u |ref| + btol B) (infinity when an element is
// NaN or infinite), where, how many elements are not finite, and the relative L2 error against l2_ref.
struct ResultError {
  double worst = 0;
  size_t at = 0, nonfinite = 0;
  double l2 = 0;
};
inline ResultError measure_result(const std::vector<float>& got, const std::vector<float>& ref,
                                  const std::vector<float>& bound, double u, double btol,
                                  const std::vector<float>& l2_ref) {
  ResultError e;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) {
      if (e.nonfinite++ == 0) e.at = i, e.worst = INFINITY;
      continue;
    }
    const double tol = u * std::fabs(ref[i]) + btol * bound[i] + 1e-30;
    const double r = std::fabs(double(got[i]) - double(ref[i])) / tol;
    if (r > e.worst) e.worst = r, e.at = i;
  }
  e.l2 = rel_l2(got, l2_ref);
  return e;
}

// CHECKs every element within u |ref| + btol B and the relative L2 error against l2_ref within l2.
inline void check_result(const std::string& what, const std::vector<float>& got, const std::vector<float>& ref,
                         const std::vector<float>& bound, double u, double btol, const std::vector<float>& l2_ref,
                         double l2) {
  REQUIRE_MESSAGE(got.size() == ref.size(), what);
  REQUIRE_MESSAGE(l2_ref.size() == ref.size(), what);
  const ResultError e = measure_result(got, ref, bound, u, btol, l2_ref);
  CHECK_MESSAGE(e.worst <= 1.0, what << ": element " << e.at << " of " << got.size() << " got " << got[e.at]
                                     << " expected " << ref[e.at] << " (error / tolerance " << e.worst << ", "
                                     << e.nonfinite << " not finite)");
  CHECK_MESSAGE(e.l2 <= l2, what << ": relative L2 error " << e.l2 << " above " << l2);
}

// Per-(n, k) sum and sum of squares of y [n, pixels, k] against the statistics a kernel returned.
inline void check_stats(const std::string& what, const std::vector<float>& y, const std::vector<float>& stats,
                        int64_t n, int64_t pixels, int64_t k) {
  REQUIRE(stats.size() == static_cast<size_t>(n * k * 2));
  const selftest::ConvStats ref = selftest::conv_stats_reference(y, n, pixels, k);
  int bad = 0;
  for (int64_t s = 0; s < n; ++s)
    for (int64_t c = 0; c < k; ++c) {
      const size_t at = static_cast<size_t>((s * k + c) * 2);
      const double s1 = ref.sums[at], s2 = ref.sums[at + 1], a1 = ref.bounds[at];
      const float* st = &stats[at];
      const bool ok = std::fabs(st[0] - s1) <= 1e-5 * a1 + 1e-30 && std::fabs(st[1] - s2) <= 1e-5 * s2 + 1e-30;
      if (!ok && bad++ < 3)
        CHECK_MESSAGE(ok, what << ": statistics of sample " << s << " channel " << c << " are (" << st[0] << ", "
                               << st[1] << "), sums of the returned y (" << s1 << ", " << s2 << ")");
    }
  CHECK_MESSAGE(bad == 0, what << ": " << bad << " of " << n * k << " statistics pairs off");
}

// Which passes run_conv runs.
enum ConvPasses : unsigned { kFprop = 1, kNormAct = 2, kDgrad = 4, kWgrad = 8, kAllPasses = 15 };

// What the kernels returned (f32 values), for comparing runs bitwise.
struct ConvOutputs {
  std::vector<float> y, stats, y_norm_act, stats_norm_act, dx, dw, dbias;
};

// Runs the chosen passes of p in precision pr on device d through the kernel API: conv_fprop (bias, statistics),
// conv_fprop_norm_act (the previous layer's instance norm + leaky ReLU on load; bias, statistics), conv_dgrad and
// conv_wgrad (dw, dbias). With `tile` / `splits` set, the tile and wgrad's splits are forced (test hooks); otherwise
// the kernels choose as in production. With `check`, each result is CHECKed against the CPU (see the file comment);
// without, the passes only run (to compare the bits of two configurations).
inline ConvOutputs run_conv(Device d, const std::string& label, const ConvProblem& p, ConvPrecision pr, unsigned passes,
                            uint64_t seed, bool check = true, Tile tile = {}, int splits = 0) {
  namespace kc = kernels::cuda;
  namespace cpu = kernels::cpu;
  const DType dt = kernels::conv_storage_dtype(pr);
  const bool tf32 = pr == ConvPrecision::tf32;
  const KernelSettings settings(tf32, tile, splits);
  const std::string what = label + " " + p.describe() + " " + kernels::conv_precision_name(pr);
  CAPTURE(what);
  const int64_t nx = x_count(p), ny = y_count(p), nw = w_count(p), pixels = p.Z * p.P * p.Q;
  const Operand x = operand(nx, pr, seed, d), w = operand(nw, pr, seed + 1, d, 0.3f), dy = operand(ny, pr, seed + 2, d);
  Rng rng(seed + 3);
  std::vector<float> bias(static_cast<size_t>(p.K));
  for (float& b : bias) b = static_cast<float>(rng.normal());
  const Tensor bias_d = Tensor::from_vector({p.K}, bias).to(d);
  const cudaStream_t s = device::default_stream(d);
  const double u = unit_roundoff(pr), l2 = l2_tolerance(pr);
  ConvOutputs out;

  // y = conv(xin, w) + bias and its statistics, against the CPU on xin_ref (and xin_exact for the L2 error).
  auto fprop = [&](const std::string& name, bool norm_act, const std::vector<float>& xin_ref,
                   const std::vector<float>& xin_exact, const Tensor* coef) {
    Tensor y = poisoned(ny, dt, d), st = poisoned(p.N * p.K * 2, DType::f32, d);
    if (norm_act)
      kc::conv_fprop_norm_act(p, dt, x.dev.raw(), coef[0].data<float>(), coef[1].data<float>(), coef[2].data<float>(),
                              0.01f, w.dev.raw(), bias_d.data<float>(), y.raw(), st.data<float>(), s);
    else
      kc::conv_fprop(p, dt, x.dev.raw(), w.dev.raw(), bias_d.data<float>(), y.raw(), st.data<float>(), s);
    device::synchronize(d);
    std::vector<float> yv = y.to_vector(), sv = st.to_vector();
    if (check) {
      std::vector<float> ref(static_cast<size_t>(ny)), bound(ref.size()), exact;
      cpu::conv_fprop(p, xin_ref.data(), w.ref.data(), bias.data(), ref.data());
      cpu::conv_fprop(p, abs_of(xin_ref).data(), abs_of(w.ref).data(), abs_of(bias).data(), bound.data());
      if (tf32) {
        exact.resize(ref.size());
        cpu::conv_fprop(p, xin_exact.data(), w.exact.data(), bias.data(), exact.data());
      }
      check_result(what + " " + name + " y", yv, ref, bound, u, bound_tolerance(p.taps() * p.C), tf32 ? exact : ref,
                   l2);
      check_stats(what + " " + name + " statistics", yv, sv, p.N, pixels, p.K);
    }
    return std::make_pair(std::move(yv), std::move(sv));
  };

  if (passes & kFprop) std::tie(out.y, out.stats) = fprop("fprop", false, x.ref, x.exact, nullptr);
  if (passes & kNormAct) {
    // Per-(n, c) coefficients; the transformed input as the kernel forms it: fma in f32 on the value it was given,
    // leaky ReLU, rounded to dt (as the materialised tensor would be), then to tf32 for the TF32 tensor cores.
    std::vector<float> mean, scale, shift;
    Rng r(seed + 4);
    for (int64_t i = 0; i < p.N * p.C; ++i) {
      mean.push_back(static_cast<float>(0.5 * r.normal()));
      scale.push_back(static_cast<float>(0.5 + r.uniform()));
      shift.push_back(static_cast<float>(0.5 * r.normal()));
    }
    std::vector<float> xin_exact(x.exact.size()), xin_ref(x.exact.size());
    const int64_t per_sample = p.D * p.H * p.W * p.C;
    for (size_t i = 0; i < x.exact.size(); ++i) {
      const size_t j = static_cast<size_t>(int64_t(i) / per_sample * p.C + int64_t(i) % p.C);
      const float t = std::fma(x.exact[i] - mean[j], scale[j], shift[j]);
      xin_exact[i] = round_to(dt, t > 0.f ? t : t * 0.01f);
      xin_ref[i] = tf32 ? tf32_round(xin_exact[i]) : xin_exact[i];
    }
    const Tensor coef[3] = {Tensor::from_vector({p.N * p.C}, mean).to(d), Tensor::from_vector({p.N * p.C}, scale).to(d),
                            Tensor::from_vector({p.N * p.C}, shift).to(d)};
    std::tie(out.y_norm_act, out.stats_norm_act) = fprop("fprop_norm_act", true, xin_ref, xin_exact, coef);
  }
  if (passes & kDgrad) {
    Tensor dx = poisoned(nx, dt, d);
    kc::conv_dgrad(p, dt, dy.dev.raw(), w.dev.raw(), dx.raw(), s);
    device::synchronize(d);
    out.dx = dx.to_vector();
    if (check) {
      std::vector<float> ref(static_cast<size_t>(nx)), bound(ref.size()), exact;
      cpu::conv_dgrad(p, dy.ref.data(), w.ref.data(), ref.data());
      cpu::conv_dgrad(p, abs_of(dy.ref).data(), abs_of(w.ref).data(), bound.data());
      if (tf32) {
        exact.resize(ref.size());
        cpu::conv_dgrad(p, dy.exact.data(), w.exact.data(), exact.data());
      }
      check_result(what + " dgrad dx", out.dx, ref, bound, u, bound_tolerance(p.taps() * p.K), tf32 ? exact : ref, l2);
    }
  }
  if (passes & kWgrad) {
    Tensor dw = poisoned(nw, DType::f32, d), db = poisoned(p.K, DType::f32, d);
    kc::conv_wgrad(p, dt, x.dev.raw(), dy.dev.raw(), dw.data<float>(), db.data<float>(), s);
    device::synchronize(d);
    out.dw = dw.to_vector();
    out.dbias = db.to_vector();
    if (check) {
      std::vector<float> ref(static_cast<size_t>(nw)), bound(ref.size()), exact, unused(static_cast<size_t>(p.K));
      cpu::conv_wgrad(p, x.ref.data(), dy.ref.data(), ref.data(), unused.data());
      cpu::conv_wgrad(p, abs_of(x.ref).data(), abs_of(dy.ref).data(), bound.data(), unused.data());
      if (tf32) {
        exact.resize(ref.size());
        cpu::conv_wgrad(p, x.exact.data(), dy.exact.data(), exact.data(), unused.data());
      }
      check_result(what + " wgrad dw", out.dw, ref, bound, 0.0, bound_tolerance(p.N * pixels), tf32 ? exact : ref, l2);
      // dbias: the column sums of dy as given (unrounded for TF32), in double.
      std::vector<float> db_ref(static_cast<size_t>(p.K)), db_bound(db_ref.size());
      for (int64_t k = 0; k < p.K; ++k) {
        double s1 = 0, a1 = 0;
        for (int64_t i = 0; i < p.N * pixels; ++i) {
          const double v = dy.exact[static_cast<size_t>(i * p.K + k)];
          s1 += v, a1 += std::fabs(v);
        }
        db_ref[static_cast<size_t>(k)] = static_cast<float>(s1),
        db_bound[static_cast<size_t>(k)] = static_cast<float>(a1);
      }
      check_result(what + " wgrad dbias", out.dbias, db_ref, db_bound, 0.0, 1e-5, db_ref, 1e-5);
    }
  }
  return out;
}

// Whether two runs gave the same bits (NaN-free outputs compare by value, which is by bits but for 0 and -0, which
// the kernels' sums do not produce differently).
inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ---- the production-size cases of tests/test_gpu.cpp (a GPU), here so that they can also run on the emulator ----

// The tile is the kernels' own choice: the fused statistics depend on the tile height (per-tile partial sums), so
// the auto run's statistics equal a run forced to `chosen` bitwise and differ from one forced to `other` (a tile of
// another height), which shows the choice without instrumenting the kernels. f16 and TF32 (their f32 operand path).
inline void check_fprop_tile_is_chosen(Device d, const std::string& label, const ConvProblem& p, Tile chosen,
                                       Tile other, uint64_t seed) {
  REQUIRE(chosen.bm != other.bm);
  for (ConvPrecision pr : {ConvPrecision::f16, ConvPrecision::tf32}) {
    CAPTURE(kernels::conv_precision_name(pr));
    const ConvOutputs by_kernels = run_conv(d, label, p, pr, kFprop, seed, false);
    const ConvOutputs forced = run_conv(d, label, p, pr, kFprop, seed, false, chosen);
    const ConvOutputs forced_other = run_conv(d, label, p, pr, kFprop, seed, false, other);
    CHECK(same_bits(by_kernels.y, forced.y));
    CHECK_MESSAGE(same_bits(by_kernels.stats, forced.stats),
                  label << ": the kernels did not choose " << chosen.bm << "x" << chosen.bn);
    CHECK_MESSAGE(!same_bits(by_kernels.stats, forced_other.stats),
                  label << ": statistics of tile " << other.bm << "x" << other.bn << " have the same bits");
  }
}

inline const std::vector<ConvPrecision>& tensor_core_precisions() {
  static const std::vector<ConvPrecision> all = {ConvPrecision::f16, ConvPrecision::bf16, ConvPrecision::tf32};
  return all;
}

// 2 x 16^3, 64 -> 64 channels, 3x3x3: fprop and dgrad have M = 8192 rows, N = 64: 128x64 (wgrad: M = 64, 64x64).
// Also the f32 SIMT kernels at that size.
inline void conv_tile_128x64_case(Device d) {
  const ConvProblem p = problem(2, 16, 16, 16, 64, 64, 3, 3, 1, 1);
  REQUIRE(fprop_tile(p) == Tile{128, 64});
  REQUIRE(dgrad_tile(p) == Tile{128, 64});
  uint64_t seed = 2000;
  for (ConvPrecision pr : tensor_core_precisions()) run_conv(d, "128x64", p, pr, kAllPasses, seed += 10);
  run_conv(d, "128x64 SIMT", p, ConvPrecision::f32, kAllPasses, seed += 10);
  check_fprop_tile_is_chosen(d, "128x64", p, {128, 64}, {64, 64}, seed += 10);
}

// 2 x 16^3, 32 -> 32 channels: fprop N = K = 32 and dgrad N = C = 32 take 128x32. nnU-Net's down layer at 1/8
// scale, 2 x 32^3, 32 -> 64, stride 2: fprop M = 8192, N = 64 (128x64); dgrad by phases, each M = 8192, N = 32
// (128x32).
inline void conv_tile_128x32_case(Device d) {
  const ConvProblem p = problem(2, 16, 16, 16, 32, 32, 3, 3, 1, 1);
  const ConvProblem down = problem(2, 32, 32, 32, 32, 64, 3, 3, 2, 1);
  REQUIRE(fprop_tile(p) == Tile{128, 32});
  REQUIRE(dgrad_tile(p) == Tile{128, 32});
  REQUIRE(fprop_tile(down) == Tile{128, 64});
  uint64_t seed = 2100;
  for (ConvPrecision pr : tensor_core_precisions()) {
    run_conv(d, "128x32", p, pr, kAllPasses, seed += 10);
    run_conv(d, "down stride 2", down, pr, kFprop | kDgrad | kWgrad, seed += 10);
  }
  check_fprop_tile_is_chosen(d, "128x32", p, {128, 32}, {64, 64}, seed += 10);
}

// 1 x 8^3, 64 -> 128 channels: fprop M = 512, N = 128 and dgrad M = 512, N = 64 take 64x64; so does wgrad
// (M = 128, N = 1728: 14 tiles of 128x128, fewer than 64).
inline void conv_tile_64x64_case(Device d) {
  const ConvProblem p = problem(1, 8, 8, 8, 64, 128, 3, 3, 1, 1);
  REQUIRE(fprop_tile(p) == Tile{64, 64});
  REQUIRE(dgrad_tile(p) == Tile{64, 64});
  REQUIRE(wgrad_tile(p) == Tile{64, 64});
  uint64_t seed = 2200;
  for (ConvPrecision pr : tensor_core_precisions()) run_conv(d, "64x64", p, pr, kAllPasses, seed += 10);
  check_fprop_tile_is_chosen(d, "64x64", p, {64, 64}, {128, 64}, seed += 10);
}

// 1 x 8x8x16, 320 -> 128 channels: wgrad M = 128, N = 27 * 320 = 8640: 68 tiles of 128x128 (>= 64), 1024 pixels in
// 2 splits; 64x64 would make 270 tiles and 1 split, so the dw bits show the choice.
inline void conv_wgrad_tile_128x128_case(Device d) {
  const ConvProblem p = problem(1, 8, 8, 16, 320, 128, 3, 3, 1, 1);
  REQUIRE(wgrad_tile(p) == Tile{128, 128});
  uint64_t seed = 2300;
  for (ConvPrecision pr : tensor_core_precisions()) run_conv(d, "wgrad 128x128", p, pr, kWgrad, seed += 10);
  for (ConvPrecision pr : {ConvPrecision::f16, ConvPrecision::tf32}) {
    CAPTURE(kernels::conv_precision_name(pr));
    const ConvOutputs by_kernels = run_conv(d, "wgrad 128x128", p, pr, kWgrad, seed, false);
    const ConvOutputs forced = run_conv(d, "wgrad 128x128", p, pr, kWgrad, seed, false, {128, 128});
    const ConvOutputs other = run_conv(d, "wgrad 128x128", p, pr, kWgrad, seed, false, {64, 64});
    CHECK_MESSAGE(same_bits(by_kernels.dw, forced.dw), "the kernels did not choose 128x128");
    CHECK_MESSAGE(!same_bits(by_kernels.dw, other.dw), "64x64 (1 split) gave the bits of 128x128 (2 splits)");
  }
}

// 135 pixels per sample: 128-row tiles span two samples (fused); 9 pixels: smaller than a tile (second pass over y);
// C = 6: element loads (64-row tiles, fused). Every precision, fprop and fprop with norm + leaky ReLU on load.
inline void conv_statistics_case(Device d) {
  const ConvProblem spans = problem(3, 3, 5, 9, 16, 32, 3, 3, 1, 1);
  const ConvProblem small = problem(3, 1, 3, 3, 8, 32, 1, 3, 1, 1);
  const ConvProblem odd = problem(2, 1, 9, 9, 6, 8, 1, 3, 1, 1);
  uint64_t seed = 2400;
  for (const ConvProblem& p : {spans, small, odd})
    for (ConvPrecision pr : {ConvPrecision::f16, ConvPrecision::bf16, ConvPrecision::tf32, ConvPrecision::f32})
      run_conv(d, "statistics", p, pr, kFprop | kNormAct, seed += 10);
}

}  // namespace unet::test::gpu_cases
