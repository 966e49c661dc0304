// CUDA convolution kernels (kernels/cuda/conv.cu) under the device emulator, against the CPU backend.
// Inputs are rounded to the kernel's dtype first and the reference is the CPU convolution of those rounded values in
// f32. Tolerances, per element, with B the same convolution of the absolute values (sum |a * b|):
//   f32 results (f32 fprop/dgrad, every dw and dbias): |got - ref| <= 1e-5 * B + 1e-30 (summation order only);
//   f16 / bf16 outputs (y, dx): |got - ref| <= u * |ref| + 1e-5 * B, u = 2^-10 (f16) or 2^-7 (bf16): one rounding
//   to the storage type (half an ulp, u leaves room for the reference's own f32 error) plus accumulation order.
// TF32 (set_conv_allow_tf32): the f32 inputs go to the kernel unrounded and the reference uses them rounded to tf32
// (nearest, ties away: what cvt.rna does); a product of two tf32 values is exact in f32, so the bound is the f32 one,
// 1e-5 * B (accumulation order; the store is f32). dbias sums dy itself (no tf32), so its reference is unrounded.
// Statistics are checked against sums computed from the returned y: 1e-5 of sum |y| and of sum y^2.
// Every launch runs under the forward, reverse and random:7 schedules, which must give bitwise identical results.
// Test hooks force each tensor-core tile and the wgrad split count, so small shapes reach every variant.
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "kernels/common/dtype.h"
#include "kernels/cpu/conv.h"
#include "kernels/cuda/conv.cuh"
#include "kernels/emu/emu.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace unet;
using test::under_every_schedule;
using kernels::ConvProblem;

namespace {

const DType kDtypes[] = {DType::f32, DType::f16, DType::bf16};

// Set while a Tf32Scope lives: f32 convolutions run on the TF32 tensor cores and make_buf's f32 values (the reference's
// inputs) are the tf32 roundings of the bytes the kernel gets.
bool g_tf32 = false;
struct Tf32Scope {
  Tf32Scope() {
    g_tf32 = true;
    kernels::cuda::set_conv_allow_tf32(true);
  }
  ~Tf32Scope() {
    g_tf32 = false;
    kernels::cuda::set_conv_allow_tf32(false);
  }
};
// v to 11 significant bits (tf32), to nearest with ties away from zero (std::round), written independently of the
// kernel's bit operation.
float tf32_round(float v) {
  if (v == 0.f || !std::isfinite(v)) return v;
  int e = 0;
  const double m = std::frexp(double(v), &e);  // |m| in [0.5, 1)
  return float(std::ldexp(std::round(std::ldexp(m, 11)), e - 11));
}

// Values in dt's storage (raw bytes) and their exact f32 values.
struct Buf {
  std::vector<unsigned char> bytes;
  std::vector<float> f32;
};
Buf make_buf(int64_t n, DType dt, Rng& rng) {
  Buf b;
  b.f32.resize(size_t(n));
  b.bytes.resize(size_t(n) * dtype_size(dt));
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(rng.normal());
    if (dt == DType::f32) {
      b.f32[i] = g_tf32 ? tf32_round(v) : v;
      std::memcpy(&b.bytes[i * 4], &v, 4);
    } else {
      const uint16_t h = dt == DType::f16 ? float_to_f16(v) : float_to_bf16(v);
      b.f32[i] = dt == DType::f16 ? f16_to_float(h) : bf16_to_float(h);
      std::memcpy(&b.bytes[i * 2], &h, 2);
    }
  }
  return b;
}
std::vector<float> to_f32(const std::vector<unsigned char>& bytes, DType dt) {
  const size_t n = bytes.size() / dtype_size(dt);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (dt == DType::f32) {
      std::memcpy(&out[i], &bytes[i * 4], 4);
    } else {
      uint16_t h;
      std::memcpy(&h, &bytes[i * 2], 2);
      out[i] = dt == DType::f16 ? f16_to_float(h) : bf16_to_float(h);
    }
  }
  return out;
}
std::vector<float> abs_of(std::vector<float> v) {
  for (float& x : v) x = std::fabs(x);
  return v;
}

double unit_roundoff(DType dt) {
  return dt == DType::f16 ? 0x1p-10 : dt == DType::bf16 ? 0x1p-7 : 0.0;
}

// CHECKs |got - ref| <= u * |ref| + 1e-5 * bound for every element; reports the worst.
void check_within(const std::vector<float>& got, const std::vector<float>& ref, const std::vector<float>& bound,
                  double u, const std::string& what) {
  REQUIRE(got.size() == ref.size());
  double worst = 0.0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = u * std::fabs(ref[i]) + 1e-5 * bound[i] + 1e-30;
    const double r = std::fabs(double(got[i]) - double(ref[i])) / tol;
    if (!(r <= worst)) {
      worst = r;
      at = i;
    }
  }
  CHECK_MESSAGE(worst <= 1.0, what << ": element " << at << " got " << got[at] << " expected " << ref[at]
                                   << " (error / tolerance " << worst << ")");
}

ConvProblem problem(int64_t n, int64_t d, int64_t h, int64_t w, int64_t c, int64_t k, int t, int r, int s, int stride,
                    int pad_d, int pad_hw) {
  ConvProblem p;
  p.N = n;
  p.D = d;
  p.H = h;
  p.W = w;
  p.C = c;
  p.K = k;
  p.T = t;
  p.R = r;
  p.S = s;
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

// The previous layer's instance norm + leaky ReLU for conv_fprop_norm_act: per-(n, c) coefficients.
struct NormAct {
  std::vector<float> mean, scale, shift;
  float slope = 0.01f;
};
NormAct make_norm_act(const ConvProblem& p, Rng& rng) {
  NormAct na;
  for (int64_t i = 0; i < p.N * p.C; ++i) {
    na.mean.push_back(static_cast<float>(0.5 * rng.normal()));
    na.scale.push_back(static_cast<float>(0.5 + rng.uniform()));
    na.shift.push_back(static_cast<float>(0.5 * rng.normal()));
  }
  return na;
}
// The transformed input as the kernel forms it (fma in f32, leaky ReLU, rounded to dt).
std::vector<float> apply_norm_act(const ConvProblem& p, const NormAct& na, const std::vector<float>& x, DType dt) {
  std::vector<float> out(x.size());
  const int64_t per_sample = p.D * p.H * p.W * p.C;
  for (size_t i = 0; i < x.size(); ++i) {
    const int64_t j = int64_t(i) / per_sample * p.C + int64_t(i) % p.C;
    float t = std::fma(x[i] - na.mean[j], na.scale[j], na.shift[j]);
    t = t > 0.f ? t : t * na.slope;
    out[i] = dt == DType::f16 ? f16_to_float(float_to_f16(t)) : dt == DType::bf16 ? bf16_to_float(float_to_bf16(t)) : t;
  }
  return out;
}

// norm_act != null: conv_fprop_norm_act with random coefficients instead of conv_fprop.
void check_fprop(const ConvProblem& p, DType dt, bool with_bias, bool with_stats, uint64_t seed,
                 bool norm_act = false) {
  Rng rng(seed);
  const Buf x = make_buf(x_count(p), dt, rng), w = make_buf(w_count(p), dt, rng);
  std::vector<float> bias(size_t(p.K));
  for (float& b : bias) b = static_cast<float>(rng.normal());
  const NormAct na = make_norm_act(p, rng);
  // Under TF32 the kernel transforms the unrounded x, then rounds the result to tf32 for the tensor cores.
  std::vector<float> x_in = norm_act ? apply_norm_act(p, na, g_tf32 ? to_f32(x.bytes, dt) : x.f32, dt) : x.f32;
  if (norm_act && g_tf32)
    for (float& v : x_in) v = tf32_round(v);
  const std::string what =
      p.describe() + " " + dtype_name(dt) + (with_bias ? " bias" : "") + (norm_act ? " norm+act" : "");
  std::vector<float> ref(size_t(y_count(p))), bound(ref.size());
  kernels::cpu::conv_fprop(p, x_in.data(), w.f32.data(), with_bias ? bias.data() : nullptr, ref.data());
  const std::vector<float> abs_bias = abs_of(bias);
  kernels::cpu::conv_fprop(p, abs_of(x_in).data(), abs_of(w.f32).data(), with_bias ? abs_bias.data() : nullptr,
                           bound.data());
  std::vector<float> stats;
  const auto y = under_every_schedule([&] {
    std::vector<unsigned char> out(ref.size() * dtype_size(dt), 0xAB);
    stats.assign(size_t(p.N * p.K * 2), -1.f);
    if (norm_act)
      kernels::cuda::conv_fprop_norm_act(p, dt, x.bytes.data(), na.mean.data(), na.scale.data(), na.shift.data(),
                                         na.slope, w.bytes.data(), with_bias ? bias.data() : nullptr, out.data(),
                                         with_stats ? stats.data() : nullptr, nullptr);
    else
      kernels::cuda::conv_fprop(p, dt, x.bytes.data(), w.bytes.data(), with_bias ? bias.data() : nullptr, out.data(),
                                with_stats ? stats.data() : nullptr, nullptr);
    if (with_stats)
      out.insert(out.end(), reinterpret_cast<unsigned char*>(stats.data()),
                 reinterpret_cast<unsigned char*>(stats.data() + stats.size()));
    return out;
  });
  const std::vector<float> got =
      to_f32(std::vector<unsigned char>(y.begin(), y.begin() + ref.size() * dtype_size(dt)), dt);
  check_within(got, ref, bound, unit_roundoff(dt), "fprop " + what);
  if (with_stats) {
    const int64_t S = p.Z * p.P * p.Q;
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t k = 0; k < p.K; ++k) {
        double s1 = 0, s2 = 0, a1 = 0;
        for (int64_t i = 0; i < S; ++i) {
          const double v = got[size_t((n * S + i) * p.K + k)];
          s1 += v;
          s2 += v * v;
          a1 += std::fabs(v);
        }
        const float* st = reinterpret_cast<const float*>(y.data() + ref.size() * dtype_size(dt)) + (n * p.K + k) * 2;
        CHECK_MESSAGE(std::fabs(st[0] - s1) <= 1e-5 * a1 + 1e-30, what << " sum n " << n << " k " << k);
        CHECK_MESSAGE(std::fabs(st[1] - s2) <= 1e-5 * s2 + 1e-30, what << " sum of squares n " << n << " k " << k);
      }
  }
}

void check_dgrad(const ConvProblem& p, DType dt, uint64_t seed) {
  Rng rng(seed);
  const Buf dy = make_buf(y_count(p), dt, rng), w = make_buf(w_count(p), dt, rng);
  std::vector<float> ref(size_t(x_count(p))), bound(ref.size());
  kernels::cpu::conv_dgrad(p, dy.f32.data(), w.f32.data(), ref.data());
  kernels::cpu::conv_dgrad(p, abs_of(dy.f32).data(), abs_of(w.f32).data(), bound.data());
  const auto dx = under_every_schedule([&] {
    std::vector<unsigned char> out(ref.size() * dtype_size(dt), 0xAB);
    kernels::cuda::conv_dgrad(p, dt, dy.bytes.data(), w.bytes.data(), out.data(), nullptr);
    return out;
  });
  check_within(to_f32(dx, dt), ref, bound, unit_roundoff(dt), "dgrad " + p.describe() + " " + dtype_name(dt));
}

// Returns dw followed by dbias (for comparing split counts).
std::vector<float> check_wgrad(const ConvProblem& p, DType dt, uint64_t seed) {
  Rng rng(seed);
  const Buf x = make_buf(x_count(p), dt, rng), dy = make_buf(y_count(p), dt, rng);
  std::vector<float> ref(size_t(w_count(p))), bound(ref.size()), ref_b(size_t(p.K)), bound_b(ref_b.size());
  kernels::cpu::conv_wgrad(p, x.f32.data(), dy.f32.data(), ref.data(), ref_b.data());
  kernels::cpu::conv_wgrad(p, abs_of(x.f32).data(), abs_of(dy.f32).data(), bound.data(), bound_b.data());
  if (g_tf32 && dt == DType::f32) {  // dbias from the unrounded dy
    std::vector<float> unused(ref.size());
    const std::vector<float> raw_x = to_f32(x.bytes, dt), raw_dy = to_f32(dy.bytes, dt);
    kernels::cpu::conv_wgrad(p, raw_x.data(), raw_dy.data(), unused.data(), ref_b.data());
    kernels::cpu::conv_wgrad(p, abs_of(raw_x).data(), abs_of(raw_dy).data(), unused.data(), bound_b.data());
  }
  const auto got = under_every_schedule([&] {
    std::vector<float> out(ref.size() + ref_b.size(), -1.f);
    kernels::cuda::conv_wgrad(p, dt, x.bytes.data(), dy.bytes.data(), out.data(), out.data() + ref.size(), nullptr);
    return out;
  });
  const std::string what = p.describe() + " " + dtype_name(dt);
  check_within(std::vector<float>(got.begin(), got.begin() + ref.size()), ref, bound, 0.0, "wgrad dw " + what);
  check_within(std::vector<float>(got.begin() + ref.size(), got.end()), ref_b, bound_b, 0.0, "wgrad dbias " + what);
  return got;
}

struct Case {
  const char* name;
  ConvProblem p;
};
// 2D and 3D, odd sizes, channel counts on and off multiples of 8, anisotropic and 1x1x1 kernels, stride 2, batch 2.
std::vector<Case> cases() {
  return {
      {"3D 3x3x3 C8 K16 batch 2", problem(2, 3, 5, 7, 8, 16, 3, 3, 3, 1, 1, 1)},
      {"3D 5x7x9 3x3x3 C5 K3 (scalar loads)", problem(1, 5, 7, 9, 5, 3, 3, 3, 3, 1, 1, 1)},
      {"2D 3x3 stride 2 C12 K17", problem(1, 1, 9, 11, 12, 17, 1, 3, 3, 2, 0, 1)},
      {"3D 3x3x3 stride 2 C17 K32 batch 2", problem(2, 4, 5, 5, 17, 32, 3, 3, 3, 2, 1, 1)},
      {"3D 1x1x1 C16 K12 batch 2", problem(2, 3, 4, 5, 16, 12, 1, 1, 1, 1, 0, 0)},
      {"3D [1,3,3] C32 K8", problem(1, 3, 5, 7, 32, 8, 1, 3, 3, 1, 0, 1)},
      {"3D 3x3x3 stride 2 C16 K32 batch 2", problem(2, 3, 5, 7, 16, 32, 3, 3, 3, 2, 1, 1)},
      {"2D 3x3 C32 K64 batch 2", problem(2, 1, 7, 9, 32, 64, 1, 3, 3, 1, 0, 1)},
  };
}

}  // namespace

// Every case in f32 (SIMT) and in one 16-bit type, f16 and bf16 alternating over the cases: both 16-bit types meet
// both load paths and strides (the tensor-core code is the same for the two; this halves the emulator time).
std::vector<DType> dtypes_for(size_t case_index) {
  return {DType::f32, case_index % 2 == 0 ? DType::f16 : DType::bf16};
}

TEST_CASE("cuda conv fprop matches the CPU for every dtype, with and without bias") {
  uint64_t seed = 100;
  const std::vector<Case> all = cases();
  for (size_t i = 0; i < all.size(); ++i) {
    const std::vector<DType> dts = dtypes_for(i);
    for (size_t j = 0; j < dts.size(); ++j) {
      CAPTURE(all[i].name);
      check_fprop(all[i].p, dts[j], (i / 2 + j) % 2 == 0, false, seed++);  // every dtype with and without bias
    }
  }
}

TEST_CASE("cuda conv dgrad matches the CPU for every dtype, stride 2 included") {
  uint64_t seed = 200;
  const std::vector<Case> all = cases();
  for (size_t i = 0; i < all.size(); ++i)
    for (DType dt : dtypes_for(i)) {
      CAPTURE(all[i].name);
      check_dgrad(all[i].p, dt, seed++);
    }
}

TEST_CASE("cuda conv strided dgrad by phases: phases no tap reaches get zeros, unpadded even sizes, strides 1, 2, 2") {
  // 1x1x1 stride 2: only even positions are read, the other 7 phases have no taps. 3x3x3 stride 2 without padding on
  // even sizes: the last position of each axis is read by no output. A 1x3x3 kernel with strides 1, 2, 2 (anisotropic
  // nnU-Net plans) on odd sizes: 4 phases, each the whole depth.
  const ConvProblem one = problem(2, 4, 5, 6, 8, 16, 1, 1, 1, 2, 0, 0);
  const ConvProblem nopad = problem(1, 4, 6, 6, 16, 8, 3, 3, 3, 2, 0, 0);
  ConvProblem aniso = problem(1, 3, 7, 9, 16, 24, 1, 3, 3, 2, 0, 1);
  aniso.stride_d = 1;
  aniso.compute_output_size();
  uint64_t seed = 250;
  for (const ConvProblem& p : {one, nopad, aniso})
    for (DType dt : kDtypes) check_dgrad(p, dt, seed++);
}

TEST_CASE("cuda conv wgrad and bias gradient match the CPU for every dtype") {
  uint64_t seed = 300;
  const std::vector<Case> all = cases();
  for (size_t i = 0; i < all.size(); ++i)
    for (DType dt : dtypes_for(i)) {
      CAPTURE(all[i].name);
      check_wgrad(all[i].p, dt, seed++);
    }
}

TEST_CASE("cuda conv every tensor-core tile is correct for every pass that has it") {
  const int tiles[][2] = {{128, 128}, {128, 64}, {128, 32}, {64, 64}};
  const ConvProblem p = problem(1, 1, 6, 9, 16, 24, 1, 3, 3, 1, 0, 1);  // 2D: K = 144, 5 chunks, more than stages
  uint64_t seed = 400;
  for (const auto& t : tiles) {
    CAPTURE(t[0]);
    CAPTURE(t[1]);
    kernels::cuda::testing::force_conv_tile(t[0], t[1]);
    const bool wgrad_only = t[0] == 128 && t[1] == 128;  // fprop and dgrad have no 128x128 tile (it would spill)
    const DType dt = seed % 2 == 0 ? DType::f16 : DType::bf16;
    if (!wgrad_only) check_fprop(p, dt, true, false, seed++);
    if (!wgrad_only) check_dgrad(p, dt, seed++);
    check_wgrad(p, dt, seed++);
  }
  kernels::cuda::testing::force_conv_tile(0, 0);
}

TEST_CASE("cuda conv pipeline with many more k-chunks than stages is correct") {
  // K = 27 taps * 48 channels = 1296: 41 chunks of 32 through the tensor cores' 3- or 4-stage pipeline.
  const ConvProblem p = problem(1, 2, 3, 4, 48, 40, 3, 3, 3, 1, 1, 1);
  for (DType dt : {DType::f16, DType::bf16}) {
    check_fprop(p, dt, true, false, 500);
    check_dgrad(p, dt, 501);
  }
}

TEST_CASE("cuda conv wgrad with several splits equals one split within tolerance, bitwise stable per schedule") {
  const ConvProblem p = problem(2, 3, 5, 9, 8, 16, 3, 3, 3, 1, 1, 1);  // 270 pixels: 5 splits of 64
  for (DType dt : kDtypes) {
    kernels::cuda::testing::force_wgrad_splits(1);
    const std::vector<float> one = check_wgrad(p, dt, 600);
    kernels::cuda::testing::force_wgrad_splits(5);
    const std::vector<float> five = check_wgrad(p, dt, 600);
    kernels::cuda::testing::force_wgrad_splits(0);
    std::vector<float> scale(one.size());
    for (size_t i = 0; i < one.size(); ++i) scale[i] = std::fabs(one[i]) + 1.f;
    check_within(five, one, scale, 0.0, std::string("splits 5 vs 1 ") + dtype_name(dt));
    CHECK(std::memcmp(one.data(), five.data(), 4 * one.size()) != 0);  // the splits really summed differently
  }
}

TEST_CASE("cuda conv fprop statistics equal sums of the stored output") {
  uint64_t seed = 700;
  // 3x5x9 = 135 pixels per sample: 128-row tiles span two samples; 3x3 = 9 pixels: a tile spans many.
  const ConvProblem big = problem(2, 3, 5, 9, 8, 16, 3, 3, 3, 1, 1, 1);
  const ConvProblem small = problem(3, 1, 3, 3, 5, 32, 1, 3, 3, 1, 0, 1);
  // C = 6: scalar loads, 64-row tiles, 81 pixels per sample (fused, tiles span two samples). (C <= 4 would take the
  // thin first-layer path, tested in test_cuda_conv_transpose.cpp.)
  const ConvProblem odd = problem(2, 1, 9, 9, 6, 8, 1, 3, 3, 1, 0, 1);
  for (const ConvProblem& p : {big, small, odd})
    for (DType dt : kDtypes) check_fprop(p, dt, true, true, seed++);
  const int tiles[][2] = {{128, 64}, {128, 32}, {64, 64}};
  for (const auto& t : tiles) {
    CAPTURE(t[0]);
    kernels::cuda::testing::force_conv_tile(t[0], t[1]);
    check_fprop(big, DType::bf16, false, true, seed++);
  }
  kernels::cuda::testing::force_conv_tile(0, 0);
}

TEST_CASE("cuda conv fprop with the previous layer's norm + leaky ReLU on load equals conv of the transformed input") {
  uint64_t seed = 800;
  // C = 16: vector (register-staged) loads, 432-deep k; C = 5: element loads; both with padding, which must stay 0.
  const ConvProblem vec = problem(2, 3, 5, 7, 16, 8, 3, 3, 3, 1, 1, 1);
  const ConvProblem scalar = problem(2, 1, 7, 9, 5, 12, 1, 3, 3, 1, 0, 1);
  for (const ConvProblem& p : {vec, scalar})
    for (DType dt : kDtypes) check_fprop(p, dt, true, true, seed++, true);
  const int tiles[][2] = {{128, 64}, {64, 64}};
  for (const auto& t : tiles) {
    CAPTURE(t[0]);
    kernels::cuda::testing::force_conv_tile(t[0], t[1]);
    check_fprop(vec, DType::f16, false, false, seed++, true);
  }
  kernels::cuda::testing::force_conv_tile(0, 0);
}

TEST_CASE("cuda conv with unaligned pointers takes element loads and gives the same bits as the vector path") {
  // C and K multiples of 8, but x (or dy) one element off a 16-byte boundary: no cp.async. Same k order, same MMAs,
  // so the results are bitwise equal (wgrad pinned to one split: its split count follows the tile).
  const ConvProblem p = problem(2, 3, 4, 5, 16, 8, 3, 3, 3, 1, 1, 1);
  Rng rng(900);
  for (DType dt : {DType::f16, DType::bf16, DType::f32}) {  // f32 on the TF32 tensor cores
    std::optional<Tf32Scope> tf32;
    if (dt == DType::f32) tf32.emplace();
    const size_t es = dtype_size(dt);
    const Buf x = make_buf(x_count(p), dt, rng), w = make_buf(w_count(p), dt, rng), dy = make_buf(y_count(p), dt, rng);
    std::vector<unsigned char> x_off(x.bytes.size() + 16), dy_off(dy.bytes.size() + 16);
    std::memcpy(x_off.data() + es, x.bytes.data(), x.bytes.size());
    std::memcpy(dy_off.data() + es, dy.bytes.data(), dy.bytes.size());
    auto run = [&](const unsigned char* xp, const unsigned char* dyp) {
      std::vector<unsigned char> y(size_t(y_count(p)) * es), dx(size_t(x_count(p)) * es);
      std::vector<float> dw(size_t(w_count(p)));
      kernels::cuda::conv_fprop(p, dt, xp, w.bytes.data(), nullptr, y.data(), nullptr, nullptr);
      kernels::cuda::conv_dgrad(p, dt, dyp, w.bytes.data(), dx.data(), nullptr);
      kernels::cuda::testing::force_wgrad_splits(1);
      kernels::cuda::conv_wgrad(p, dt, xp, dyp, dw.data(), nullptr, nullptr);
      kernels::cuda::testing::force_wgrad_splits(0);
      y.insert(y.end(), dx.begin(), dx.end());
      y.insert(y.end(), reinterpret_cast<unsigned char*>(dw.data()),
               reinterpret_cast<unsigned char*>(dw.data() + dw.size()));
      return y;
    };
    const auto aligned = run(x.bytes.data(), dy.bytes.data());
    const auto unaligned = run(x_off.data() + es, dy_off.data() + es);
    CHECK_MESSAGE(aligned == unaligned, dtype_name(dt));
  }
}

TEST_CASE("cuda conv f32 on the TF32 tensor cores matches the CPU on tf32-rounded inputs (opt-in)") {
  REQUIRE_FALSE(kernels::cuda::conv_allow_tf32());  // off by default: f32 stays fp32
  // C, K multiples of 4: cp.async chunks of 4 floats (S = 135 pixels: fused statistics over two samples per tile);
  // C = 5, K = 3 and C = 6, K = 10: element loads; stride 2 on both paths (dgrad by phases).
  const ConvProblem vec = problem(2, 3, 5, 9, 8, 16, 3, 3, 3, 1, 1, 1);
  const ConvProblem elem = problem(1, 3, 5, 7, 5, 3, 3, 3, 3, 1, 1, 1);
  const ConvProblem vec_s2 = problem(1, 1, 9, 11, 12, 20, 1, 3, 3, 2, 0, 1);
  const ConvProblem elem_s2 = problem(2, 3, 5, 5, 6, 10, 3, 3, 3, 2, 1, 1);
  Rng rng(1000);
  const Buf x = make_buf(x_count(vec), DType::f32, rng), w = make_buf(w_count(vec), DType::f32, rng);
  auto fprop = [&] {
    std::vector<float> y(size_t(y_count(vec)));
    kernels::cuda::conv_fprop(vec, DType::f32, x.bytes.data(), w.bytes.data(), nullptr, y.data(), nullptr, nullptr);
    return y;
  };
  const std::vector<float> fp32 = fprop();
  Tf32Scope tf32;
  CHECK(fprop() != fp32);  // the switch takes the tensor cores (rounded operands give other bits)
  uint64_t seed = 1001;
  for (const ConvProblem& p : {vec, elem, vec_s2, elem_s2}) {
    CAPTURE(p.describe());
    check_fprop(p, DType::f32, true, true, seed++);
    check_dgrad(p, DType::f32, seed++);
    check_wgrad(p, DType::f32, seed++);
  }
  check_fprop(vec, DType::f32, false, true, seed++, true);  // norm + act on load: register-staged vector loads
  check_fprop(elem, DType::f32, true, false, seed++, true);
  kernels::cuda::testing::force_wgrad_splits(3);
  check_wgrad(vec, DType::f32, seed++);
  kernels::cuda::testing::force_wgrad_splits(0);
  const int tiles[][2] = {{128, 128}, {128, 64}, {128, 32}, {64, 64}};
  const ConvProblem p = problem(1, 1, 6, 9, 16, 24, 1, 3, 3, 1, 0, 1);  // K = 144: 9 stages of 16
  for (const auto& t : tiles) {
    CAPTURE(t[0]);
    CAPTURE(t[1]);
    kernels::cuda::testing::force_conv_tile(t[0], t[1]);
    if (t[1] != 128) check_fprop(p, DType::f32, true, false, seed++);
    if (t[1] != 128) check_dgrad(p, DType::f32, seed++);
    check_wgrad(p, DType::f32, seed++);
  }
  kernels::cuda::testing::force_conv_tile(0, 0);
}

TEST_CASE("cuda conv rejects bad problems with a clear message") {
  ConvProblem p = problem(1, 1, 4, 4, 8, 8, 1, 3, 3, 1, 0, 1);
  std::vector<float> buf(1024);
  p.Q = 7;  // not what the input gives
  CHECK_THROWS_AS(
      kernels::cuda::conv_fprop(p, DType::f32, buf.data(), buf.data(), nullptr, buf.data(), nullptr, nullptr),
      std::invalid_argument);
  p.compute_output_size();
  CHECK_THROWS_AS(kernels::cuda::conv_dgrad(p, DType::i32, buf.data(), buf.data(), buf.data(), nullptr),
                  std::invalid_argument);
  CHECK_THROWS_AS(kernels::cuda::conv_wgrad(p, DType::f32, nullptr, buf.data(), buf.data(), nullptr, nullptr),
                  std::invalid_argument);
  CHECK_THROWS_AS(kernels::cuda::conv_fprop_norm_act(p, DType::f16, buf.data(), nullptr, buf.data(), buf.data(), 0.f,
                                                     buf.data(), nullptr, buf.data(), nullptr, nullptr),
                  std::invalid_argument);
  // 2048^3 pixels: a GEMM extent past 2^31 is refused before anything is read.
  const ConvProblem huge = problem(1, 2048, 2048, 2048, 8, 8, 1, 1, 1, 1, 0, 0);
  CHECK_THROWS_AS(
      kernels::cuda::conv_fprop(huge, DType::f16, buf.data(), buf.data(), nullptr, buf.data(), nullptr, nullptr),
      std::invalid_argument);
}
