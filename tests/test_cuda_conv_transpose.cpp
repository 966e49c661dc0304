// CUDA transposed convolution (kernels/cuda/conv_transpose.cu) and the thin first-layer convolution
// (kernels/cuda/conv_thin.cu) under the device emulator, against the CPU kernels, and ops::conv_transpose on cuda-emu
// against the CPU op.
// References: the CPU kernels run in f32 on the inputs rounded to dt, so every difference is summation order plus, for
// outputs stored in dt, one rounding. Tolerances, per element, as atol = rtol = tol scaled by the largest |expected|:
//   f32 outputs (y, dx in f32; dw, dbias and the norm statistics in every dtype): tol 1e-5 (f32 sums in another order);
//   f16 outputs: tol 1e-3 (one rounding is 2^-11 relative); bf16 outputs: tol 8e-3 (2^-8 relative).
// Every kernel is run under the forward, reverse and random:7 schedules, which must give bitwise identical results
// (the emulator's stand-in for a race checker).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "kernels/common/dtype.h"
#include "engine/ops.h"
#include "kernels/cpu/conv.h"
#include "kernels/cpu/conv_transpose.h"
#include "kernels/cuda/conv_thin.cuh"
#include "kernels/cuda/conv_transpose.cuh"
#include "kernels/emu/emu.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace unet;
using test::under_every_schedule;

namespace {

std::vector<float> normals(int64_t n, Rng& rng) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(rng.normal());
  return v;
}

// A buffer of dt holding `v` rounded to dt (raw bytes, as the kernels read them), and `v` replaced by the rounded
// values, so the CPU reference sees exactly the kernel's inputs.
std::vector<unsigned char> to_dtype(std::vector<float>& v, DType dt) {
  std::vector<unsigned char> raw(v.size() * dtype_size(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::f32) {
      std::memcpy(raw.data() + 4 * i, &v[i], 4);
      continue;
    }
    const uint16_t h = dt == DType::f16 ? float_to_f16(v[i]) : float_to_bf16(v[i]);
    v[i] = dt == DType::f16 ? f16_to_float(h) : bf16_to_float(h);
    std::memcpy(raw.data() + 2 * i, &h, 2);
  }
  return raw;
}

std::vector<float> from_dtype(const std::vector<unsigned char>& raw, DType dt) {
  std::vector<float> v(raw.size() / dtype_size(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::f32) {
      std::memcpy(&v[i], raw.data() + 4 * i, 4);
      continue;
    }
    uint16_t h;
    std::memcpy(&h, raw.data() + 2 * i, 2);
    v[i] = dt == DType::f16 ? f16_to_float(h) : bf16_to_float(h);
  }
  return v;
}

double tolerance(DType dt) {
  return dt == DType::f32 ? 1e-5 : dt == DType::f16 ? 1e-3 : 8e-3;
}

// Elementwise within tol * (1 + |expected|) scaled by the largest |expected| (see the top comment).
void check_scaled(const std::vector<float>& actual, const std::vector<float>& expected, double tol,
                  const std::string& what) {
  double scale = 1e-30;
  for (float e : expected) scale = std::max(scale, static_cast<double>(std::fabs(e)));
  test::check_close(actual, expected, tol, tol * scale, what);
}

const DType kDtypes[] = {DType::f32, DType::f16, DType::bf16};

// ---- transposed convolution ----

using CTShape = kernels::cpu::ConvTransposeShape;

std::string describe(const CTShape& s, DType dt) {
  return std::string(dtype_name(dt)) + " n " + std::to_string(s.n) + " dhw " + std::to_string(s.d) + "x" +
         std::to_string(s.h) + "x" + std::to_string(s.w) + " c " + std::to_string(s.c) + " k " + std::to_string(s.k) +
         " kernel " + std::to_string(s.kt) + "x" + std::to_string(s.kr) + "x" + std::to_string(s.ks);
}

CTShape ct(int64_t n, int64_t d, int64_t h, int64_t w, int64_t c, int64_t k, int64_t kt, int64_t kr, int64_t ks) {
  CTShape s;
  s.n = n, s.d = d, s.h = h, s.w = w, s.c = c, s.k = k, s.kt = kt, s.kr = kr, s.ks = ks;
  return s;
}

// 2D and 3D, kernel 2x2x2 and anisotropic 1x2x2, c and k in {1, 3, 8, 17}, batch 2; output-channel columns spanning
// one to three 64-wide tiles; pixel counts giving one to four wgrad chunks (64 pixels each at these sizes).
const CTShape kCTCases[] = {
    ct(2, 1, 5, 7, 3, 8, 1, 2, 2),   // 2D, 70 pixels: two chunks
    ct(2, 3, 4, 5, 17, 1, 2, 2, 2),  // 3D, c 17, k 1, 120 pixels: two row tiles
    ct(2, 3, 5, 3, 8, 17, 1, 2, 2),  // 3D anisotropic, N = 4 taps x 17 = 68: two column tiles
    ct(2, 1, 9, 11, 1, 3, 1, 2, 2),  // 2D, 198 pixels: four chunks, four row tiles
    ct(2, 3, 5, 7, 8, 17, 2, 2, 2),  // 3D, 210 pixels: four chunks; N = 136: three column tiles
};

TEST_CASE("cuda conv_transpose fprop equals the cpu kernel in f32, f16 and bf16, with and without bias (f32)") {
  Rng rng(31);
  for (const CTShape& s : kCTCases)
    for (DType dt : kDtypes)
      for (bool with_bias : {true, false}) {
        if (!with_bias && dt != DType::f32) continue;  // the bias code is the same for every dtype
        std::vector<float> x = normals(s.pixels() * s.c, rng), w = normals(s.k * s.taps() * s.c, rng);
        const std::vector<float> b = normals(s.k, rng);
        const auto xr = to_dtype(x, dt), wr = to_dtype(w, dt);
        const int64_t ny = s.pixels() * s.taps() * s.k;
        std::vector<float> ref(static_cast<size_t>(ny));
        kernels::cpu::conv_transpose_fprop(s, x.data(), w.data(), with_bias ? b.data() : nullptr, ref.data());
        const auto y = under_every_schedule([&] {
          std::vector<unsigned char> out(static_cast<size_t>(ny) * dtype_size(dt), 0xff);
          kernels::cuda::conv_transpose_fprop(s, dt, xr.data(), wr.data(), with_bias ? b.data() : nullptr, out.data(),
                                              nullptr);
          return out;
        });
        check_scaled(from_dtype(y, dt), ref, tolerance(dt),
                     "fprop " + describe(s, dt) + (with_bias ? " bias" : " no bias"));
      }
}

TEST_CASE("cuda conv_transpose dgrad equals the cpu kernel in f32, f16 and bf16") {
  Rng rng(32);
  for (const CTShape& s : kCTCases)
    for (DType dt : kDtypes) {
      std::vector<float> dy = normals(s.pixels() * s.taps() * s.k, rng), w = normals(s.k * s.taps() * s.c, rng);
      const auto dyr = to_dtype(dy, dt), wr = to_dtype(w, dt);
      std::vector<float> ref(static_cast<size_t>(s.pixels() * s.c));
      kernels::cpu::conv_transpose_dgrad(s, dy.data(), w.data(), ref.data());
      const auto dx = under_every_schedule([&] {
        std::vector<unsigned char> out(ref.size() * dtype_size(dt), 0xff);
        kernels::cuda::conv_transpose_dgrad(s, dt, dyr.data(), wr.data(), out.data(), nullptr);
        return out;
      });
      check_scaled(from_dtype(dx, dt), ref, tolerance(dt), "dgrad " + describe(s, dt));
    }
}

TEST_CASE("cuda conv_transpose wgrad equals the cpu kernel in f32 for every dtype, over several pixel chunks") {
  Rng rng(33);
  for (const CTShape& s : kCTCases)
    for (DType dt : kDtypes) {
      std::vector<float> x = normals(s.pixels() * s.c, rng), dy = normals(s.pixels() * s.taps() * s.k, rng);
      const auto xr = to_dtype(x, dt), dyr = to_dtype(dy, dt);
      std::vector<float> dw_ref(static_cast<size_t>(s.k * s.taps() * s.c)), db_ref(static_cast<size_t>(s.k));
      kernels::cpu::conv_transpose_wgrad(s, x.data(), dy.data(), dw_ref.data(), db_ref.data());
      // Both outputs, then each alone (dw without dbias drops the ones column; dbias alone reads no x), the latter
      // for the first two shapes in f32 (SIMT kernel) and f16 (tensor-core kernel; bf16 differs only in the mma type).
      const bool alone_too = &s - kCTCases < 2 && dt != DType::bf16;
      for (int which = 0; which < (alone_too ? 3 : 1); ++which) {
        const bool want_dw = which != 2, want_db = which != 1;
        const auto out = under_every_schedule([&] {
          std::vector<float> r(dw_ref.size() + db_ref.size(), -7.f);
          kernels::cuda::conv_transpose_wgrad(s, dt, want_dw ? xr.data() : nullptr, dyr.data(),
                                              want_dw ? r.data() : nullptr,
                                              want_db ? r.data() + dw_ref.size() : nullptr, nullptr);
          return r;
        });
        const std::string what = describe(s, dt) + " outputs " + std::to_string(which);
        const std::vector<float> dw(out.begin(), out.begin() + static_cast<int64_t>(dw_ref.size()));
        const std::vector<float> db(out.begin() + static_cast<int64_t>(dw_ref.size()), out.end());
        if (want_dw) check_scaled(dw, dw_ref, 1e-5, "dw " + what);
        if (want_db) check_scaled(db, db_ref, 1e-5, "dbias " + what);
        if (!want_dw) CHECK_MESSAGE(dw == std::vector<float>(dw.size(), -7.f), "dw written when null, " << what);
        if (!want_db) CHECK_MESSAGE(db == std::vector<float>(db.size(), -7.f), "dbias written when null, " << what);
      }
    }
}

TEST_CASE("cuda conv_transpose rejects other dtypes and bad shapes with a clear error") {
  std::vector<float> buf(64);
  const CTShape s = ct(1, 1, 2, 2, 2, 2, 1, 2, 2);
  CHECK_THROWS_WITH_AS(
      kernels::cuda::conv_transpose_fprop(s, DType::i32, buf.data(), buf.data(), nullptr, buf.data(), nullptr),
      doctest::Contains("dtype i32"), std::invalid_argument);
  CTShape bad = s;
  bad.k = 0;
  CHECK_THROWS_WITH_AS(
      kernels::cuda::conv_transpose_dgrad(bad, DType::f32, buf.data(), buf.data(), buf.data(), nullptr),
      doctest::Contains("k 0"), std::invalid_argument);
}

// ---- thin first-layer convolution ----

struct ThinCase {
  int64_t N, D, H, W, C, K;
  int T, R, S, sd, sh, sw, pd, ph, pw;
};

kernels::ConvProblem problem_of(const ThinCase& t) {
  kernels::ConvProblem p;
  p.N = t.N, p.D = t.D, p.H = t.H, p.W = t.W, p.C = t.C, p.K = t.K;
  p.T = t.T, p.R = t.R, p.S = t.S;
  p.stride_d = t.sd, p.stride_h = t.sh, p.stride_w = t.sw;
  p.pad_d = t.pd, p.pad_h = t.ph, p.pad_w = t.pw;
  p.compute_output_size();
  return p;
}

// C = 1..4; kernel 3x3x3 and 1x3x3 (and 2D as D = 1); strides 1 and 2; odd sizes; padding 1 and 0; K below, at and
// above one 32-channel tile; 2 samples; output pixel counts giving one to three wgrad chunks.
const ThinCase kThinCases[] = {
    {2, 5, 7, 9, 1, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1},    // 3D, stride 1, 630 outputs: three chunks
    {2, 1, 9, 11, 2, 17, 1, 3, 3, 1, 2, 2, 0, 1, 1},  // 2D, stride 2
    {2, 5, 6, 7, 3, 8, 1, 3, 3, 1, 2, 2, 0, 1, 1},    // 3D anisotropic kernel, stride (1, 2, 2)
    {2, 7, 5, 9, 4, 33, 3, 3, 3, 2, 2, 2, 0, 0, 0},   // 3D stride 2, no padding, two channel tiles
    {2, 3, 3, 5, 4, 32, 3, 3, 3, 1, 1, 1, 1, 1, 1},   // one full channel tile
};

TEST_CASE("cuda thin conv fprop equals the cpu conv and its statistics equal the sums of the stored y") {
  Rng rng(41);
  for (const ThinCase& t : kThinCases)
    for (DType dt : kDtypes)
      for (bool with_bias : {true, false}) {
        if (!with_bias && dt != DType::f32) continue;  // the bias code is the same for every dtype
        const kernels::ConvProblem p = problem_of(t);
        REQUIRE(kernels::cuda::conv_thin_applies(p));
        const std::string what = std::string(dtype_name(dt)) + " " + p.describe() + (with_bias ? " bias" : "");
        std::vector<float> x = normals(p.N * p.D * p.H * p.W * p.C, rng), w = normals(p.K * p.taps() * p.C, rng);
        const std::vector<float> b = normals(p.K, rng);
        const auto xr = to_dtype(x, dt), wr = to_dtype(w, dt);
        const int64_t outputs = p.N * p.Z * p.P * p.Q;
        std::vector<float> ref(static_cast<size_t>(outputs * p.K));
        kernels::cpu::conv_fprop(p, x.data(), w.data(), with_bias ? b.data() : nullptr, ref.data());
        const size_t y_bytes = ref.size() * dtype_size(dt);
        // One buffer: y's bytes, then the statistics as f32 pairs.
        const auto out = under_every_schedule([&] {
          std::vector<unsigned char> r(y_bytes + static_cast<size_t>(p.N * p.K * 2) * 4, 0xff);
          kernels::cuda::conv_fprop_thin(p, dt, xr.data(), wr.data(), with_bias ? b.data() : nullptr, r.data(),
                                         reinterpret_cast<float*>(r.data() + y_bytes), nullptr);
          return r;
        });
        const std::vector<float> y = from_dtype(std::vector<unsigned char>(out.begin(), out.begin() + y_bytes), dt);
        check_scaled(y, ref, tolerance(dt), "y " + what);
        std::vector<float> stats(static_cast<size_t>(p.N * p.K * 2)), stats_ref(stats.size());
        std::memcpy(stats.data(), out.data() + y_bytes, stats.size() * 4);
        for (int64_t n = 0; n < p.N; ++n)
          for (int64_t k = 0; k < p.K; ++k) {
            double s1 = 0, s2 = 0;
            for (int64_t o = 0; o < p.Z * p.P * p.Q; ++o) {
              const double v = y[static_cast<size_t>((n * p.Z * p.P * p.Q + o) * p.K + k)];
              s1 += v;
              s2 += v * v;
            }
            stats_ref[static_cast<size_t>((n * p.K + k) * 2)] = static_cast<float>(s1);
            stats_ref[static_cast<size_t>((n * p.K + k) * 2 + 1)] = static_cast<float>(s2);
          }
        check_scaled(stats, stats_ref, 1e-5, "stats " + what);
        // Without statistics: the same y.
        std::vector<unsigned char> y_only(y_bytes, 0xff);
        kernels::cuda::conv_fprop_thin(p, dt, xr.data(), wr.data(), with_bias ? b.data() : nullptr, y_only.data(),
                                       nullptr, nullptr);
        CHECK_MESSAGE(std::memcmp(y_only.data(), out.data(), y_bytes) == 0, "y changes without stats, " << what);
      }
}

TEST_CASE("cuda thin conv wgrad equals the cpu conv_wgrad for every dtype, over several pixel chunks") {
  Rng rng(42);
  for (const ThinCase& t : kThinCases)
    for (DType dt : kDtypes) {
      const kernels::ConvProblem p = problem_of(t);
      const std::string what = std::string(dtype_name(dt)) + " " + p.describe();
      std::vector<float> x = normals(p.N * p.D * p.H * p.W * p.C, rng), dy = normals(p.N * p.Z * p.P * p.Q * p.K, rng);
      const auto xr = to_dtype(x, dt), dyr = to_dtype(dy, dt);
      std::vector<float> dw_ref(static_cast<size_t>(p.K * p.taps() * p.C)), db_ref(static_cast<size_t>(p.K));
      kernels::cpu::conv_wgrad(p, x.data(), dy.data(), dw_ref.data(), db_ref.data());
      const bool alone_too = &t - kThinCases < 2 && dt == DType::f32;  // each output alone: the same code per dtype
      for (int which = 0; which < (alone_too ? 3 : 1); ++which) {
        const bool want_dw = which != 2, want_db = which != 1;
        const auto out = under_every_schedule([&] {
          std::vector<float> r(dw_ref.size() + db_ref.size(), -7.f);
          kernels::cuda::conv_wgrad_thin(p, dt, want_dw ? xr.data() : nullptr, dyr.data(), want_dw ? r.data() : nullptr,
                                         want_db ? r.data() + dw_ref.size() : nullptr, nullptr);
          return r;
        });
        const std::vector<float> dw(out.begin(), out.begin() + static_cast<int64_t>(dw_ref.size()));
        const std::vector<float> db(out.begin() + static_cast<int64_t>(dw_ref.size()), out.end());
        const std::string w = what + " outputs " + std::to_string(which);
        if (want_dw) check_scaled(dw, dw_ref, 1e-5, "dw " + w);
        if (want_db) check_scaled(db, db_ref, 1e-5, "dbias " + w);
        if (!want_dw) CHECK_MESSAGE(dw == std::vector<float>(dw.size(), -7.f), "dw written when null, " << w);
        if (!want_db) CHECK_MESSAGE(db == std::vector<float>(db.size(), -7.f), "dbias written when null, " << w);
      }
    }
}

TEST_CASE("cuda thin conv applies to 1 to 4 input channels and filter extents up to 3, and refuses the rest") {
  kernels::ConvProblem p = problem_of(kThinCases[0]);
  CHECK(kernels::cuda::conv_thin_applies(p));
  p.C = 5;
  CHECK_FALSE(kernels::cuda::conv_thin_applies(p));
  std::vector<float> buf(4096);
  CHECK_THROWS_WITH_AS(
      kernels::cuda::conv_fprop_thin(p, DType::f32, buf.data(), buf.data(), nullptr, buf.data(), nullptr, nullptr),
      doctest::Contains("1 <= C <= 4"), std::invalid_argument);
  p = problem_of(kThinCases[0]);
  p.T = 5;
  CHECK_FALSE(kernels::cuda::conv_thin_applies(p));
  p = problem_of(kThinCases[0]);
  p.Q += 1;  // not the size compute_output_size() gives
  CHECK_THROWS_WITH_AS(
      kernels::cuda::conv_wgrad_thin(p, DType::f32, buf.data(), buf.data(), buf.data(), nullptr, nullptr),
      doctest::Contains("output size"), std::invalid_argument);
  p = problem_of(kThinCases[0]);
  CHECK_THROWS_WITH_AS(
      kernels::cuda::conv_wgrad_thin(p, DType::u8, buf.data(), buf.data(), buf.data(), nullptr, nullptr),
      doctest::Contains("dtype u8"), std::invalid_argument);
}

// ---- the engine op on cuda-emu ----

Tensor randn(const Shape& shape, uint64_t seed) {
  Rng rng(seed);
  return Tensor::from_vector(shape, normals(shape_numel(shape), rng));
}

}  // namespace

TEST_CASE("ops::conv_transpose forward and backward on cuda-emu equal the cpu op within 1e-5") {
  struct OpCase {
    Shape x, w;
    bool bias, grad_x, grad_w;
  };
  const OpCase cases[] = {
      {{2, 3, 4, 5, 8}, {17, 2, 2, 2, 8}, true, true, true},  // 3D
      {{2, 6, 7, 3}, {8, 2, 2, 3}, false, true, true},        // 2D, no bias
      {{2, 3, 5, 3, 1}, {3, 1, 2, 2, 1}, true, false, true},  // anisotropic, no dx wanted
      {{1, 4, 4, 5}, {3, 2, 2, 5}, true, true, false},        // frozen weight: dx and dbias
  };
  for (const OpCase& oc : cases) {
    Tensor x = randn(oc.x, 61), w = randn(oc.w, 62), b = oc.bias ? randn({oc.w[0]}, 63) : Tensor();
    std::vector<float> outs[2];
    std::vector<std::vector<float>> grads[2];
    for (int i = 0; i < 2; ++i) {
      const Device d = i == 0 ? Device::cpu : Device::cuda_emu;
      Tensor xd = x.clone().to(d), wd = w.clone().to(d), bd = oc.bias ? b.clone().to(d) : Tensor();
      xd.set_requires_grad(oc.grad_x);
      wd.set_requires_grad(oc.grad_w);
      if (oc.bias) bd.set_requires_grad(true);
      Tensor y = ops::conv_transpose(xd, wd, bd);
      REQUIRE(y.device() == d);
      outs[i] = y.to_vector();
      autograd::backward(y, randn(y.shape(), 64).to(d));
      for (const Tensor* t : {&xd, &wd, &bd})
        if (t->defined() && t->requires_grad()) {
          REQUIRE(t->grad().defined());
          CHECK(t->grad().device() == d);
          grads[i].push_back(t->grad().to_vector());
        }
    }
    const std::string what = "x " + shape_str(oc.x) + " w " + shape_str(oc.w);
    check_scaled(outs[1], outs[0], 1e-5, "y " + what);
    REQUIRE(grads[1].size() == grads[0].size());
    for (size_t g = 0; g < grads[0].size(); ++g)
      check_scaled(grads[1][g], grads[0][g], 1e-5, "gradient " + std::to_string(g) + " " + what);
  }
}
