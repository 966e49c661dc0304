// Tensor-core and async-copy wrappers (kernels/cuda/mma.cuh) under the device emulator: ldmatrix fragments against
// the PTX layout formula, mma products against host matrix products, a GEMM built from the wrappers, cp_async, and
// identical bits under every schedule.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tests/emu_mma_kernels.cuh"

namespace {

using unet::emu::KernelError;
using unet::emu::Schedule;
using unet::kernels::cuda::launch;

struct ScheduleScope {
  explicit ScheduleScope(Schedule s) : saved(unet::emu::schedule()) { unet::emu::set_schedule(s); }
  ~ScheduleScope() { unet::emu::set_schedule(saved); }
  Schedule saved;
};

template <class T>
T to_t(float v) {
  if constexpr (std::is_same_v<T, __half>)
    return __float2half(v);
  else
    return __float2bfloat16(v);
}
template <class T>
float to_f(T v) {
  if constexpr (std::is_same_v<T, __half>)
    return __half2float(v);
  else
    return __bfloat162float(v);
}

// Random multiples of 1/8 in [-2, 2]: exact in f16 and bf16, and every sum of 16 products plus a multiple of 1/64
// below 64 is a multiple of 1/64 below 2^7, exact in f32 whatever the order of the additions.
template <class T>
std::vector<T> dyadic(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(-16, 16);
  std::vector<T> v(n);
  for (T& x : v) x = to_t<T>(d(rng) / 8.0f);
  return v;
}
// Random values in [-1, 1], rounded to T.
template <class T>
std::vector<T> uniform(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<T> v(n);
  for (T& x : v) x = to_t<T>(d(rng));
  return v;
}

// The host reference: c[i][j] = c0[i][j] + sum_k a[i][k] b[k][j], accumulated in f32 in k order.
template <class T>
std::vector<float> host_gemm(const std::vector<T>& a, const std::vector<T>& b, const std::vector<float>& c0, int m,
                             int n, int k) {
  std::vector<float> c(c0);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      for (int p = 0; p < k; ++p) c[i * n + j] += to_f(a[i * k + p]) * to_f(b[p * n + j]);
  return c;
}

template <class T>
std::vector<float> run_mma_16x8x16(const std::vector<T>& a, const std::vector<T>& b, const std::vector<float>& c) {
  std::vector<float> d(16 * 8, NAN);
  launch(emu_mma_test::mma_16x8x16<T>, dim3(1), dim3(32), 0, nullptr, a.data(), b.data(), c.data(), d.data());
  return d;
}

template <class T>
void check_mma_16x8x16_exact() {
  const auto a = dyadic<T>(16 * 16, 1), b = dyadic<T>(16 * 8, 2);
  std::vector<float> c(16 * 8);
  std::mt19937 rng(3);
  for (float& x : c) x = std::uniform_int_distribution<int>(-4096, 4096)(rng) / 64.0f;
  const std::vector<float> want = host_gemm(a, b, c, 16, 8, 16), got = run_mma_16x8x16(a, b, c);
  for (int i = 0; i < 16 * 8; ++i) {
    CAPTURE(i);
    CHECK(got[i] == want[i]);
  }
}

// 64x64x64 GEMM through gemm_tiles vs the host. Tolerance: the host's k-order f32 sum is within (k - 1) u sum|a b|
// of the exact one (u = 2^-24); the emulator's (double sum, one rounding) within u |exact| + tiny; so k u sum|a b|
// bounds their difference. (A GPU's tensor core keeps its own order; the same bound is meant to hold there.)
template <class T>
std::vector<float> run_gemm(const std::vector<T>& a, const std::vector<T>& b, int m, int n, int k) {
  std::vector<float> c(static_cast<size_t>(m) * n, NAN);
  launch(emu_mma_test::gemm_tiles<T>, dim3(m * n / 512), dim3(128), 0, nullptr, a.data(), b.data(), c.data(), m, n, k);
  return c;
}

template <class T>
void check_gemm() {
  constexpr int m = 64, n = 64, k = 64;
  const auto a = uniform<T>(m * k, 11), b = uniform<T>(k * n, 12);
  const std::vector<float> want = host_gemm(a, b, std::vector<float>(m * n, 0.0f), m, n, k);
  const std::vector<float> got = run_gemm(a, b, m, n, k);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double mag = 0;
      for (int p = 0; p < k; ++p) mag += std::fabs(to_f(a[i * k + p]) * to_f(b[p * n + j]));
      CAPTURE(i);
      CAPTURE(j);
      CHECK(std::fabs(got[i * n + j] - want[i * n + j]) <= k * std::ldexp(mag, -24));
    }
}

}  // namespace

TEST_CASE("ldmatrix_x4 gives lane L row L/4, columns 2(L%4) and 2(L%4)+1 of each matrix") {
  std::vector<uint16_t> tile(32 * 8);
  std::mt19937 rng(5);
  for (uint16_t& v : tile) v = static_cast<uint16_t>(rng());
  std::vector<uint32_t> out(128, 0xdeadbeef), out_trans(128, 0xdeadbeef);
  launch(emu_mma_test::ldmatrix_fragments, dim3(1), dim3(32), 0, nullptr, tile.data(), out.data(), out_trans.data());
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < 4; ++j) {
      const int row = 8 * j + (lane >> 2), col = 2 * (lane & 3);
      CAPTURE(lane);
      CAPTURE(j);
      CHECK(out[lane * 4 + j] == (tile[row * 8 + col] | static_cast<uint32_t>(tile[row * 8 + col + 1]) << 16));
    }
}

TEST_CASE("ldmatrix_x4_trans gives lane L the elements (2(L%4), L/4) and (2(L%4)+1, L/4) of each matrix") {
  std::vector<uint16_t> tile(32 * 8);
  std::mt19937 rng(6);
  for (uint16_t& v : tile) v = static_cast<uint16_t>(rng());
  std::vector<uint32_t> out(128, 0xdeadbeef), out_trans(128, 0xdeadbeef);
  launch(emu_mma_test::ldmatrix_fragments, dim3(1), dim3(32), 0, nullptr, tile.data(), out.data(), out_trans.data());
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < 4; ++j) {
      const int row = 8 * j + 2 * (lane & 3), col = lane >> 2;
      CAPTURE(lane);
      CAPTURE(j);
      CHECK(out_trans[lane * 4 + j] == (tile[row * 8 + col] | static_cast<uint32_t>(tile[(row + 1) * 8 + col]) << 16));
    }
}

TEST_CASE("a misaligned ldmatrix row address is a KernelError") {
  std::vector<uint32_t> out(128);
  std::string what;
  try {
    launch(emu_mma_test::ldmatrix_misaligned, dim3(1), dim3(32), 0, nullptr, out.data());
  } catch (const KernelError& e) {
    what = e.what();
  }
  CHECK(what.find("not 16-byte aligned") != std::string::npos);
}

TEST_CASE("ldmatrix + mma_m16n8k16 (f16) equals the host product of 16x16 by 16x8 plus C exactly") {
  check_mma_16x8x16_exact<__half>();
}

TEST_CASE("ldmatrix + mma_m16n8k16 (bf16) equals the host product of 16x16 by 16x8 plus C exactly") {
  check_mma_16x8x16_exact<__nv_bfloat16>();
}

TEST_CASE("mma_m16n8k16 rounds once: 1 + 2^-24 + 2^-24 gives 1 + 2^-23, not 1 (f16)") {
  // A row 0 = (2^-12, 2^-12, 0...) times B column 0 = (2^-12, 2^-12, 0...) plus C = 1: the products are 2^-24 each. A
  // k-order f32 sum from C would round 1 + 2^-24 to 1 twice; the exact sum 1 + 2^-23 is representable. (The ISA does
  // not fix the tensor core's rounding; this pins the emulator's documented choice.)
  std::vector<__half> a(16 * 16, to_t<__half>(0.0f)), b(16 * 8, to_t<__half>(0.0f));
  a[0] = a[1] = to_t<__half>(std::ldexp(1.0f, -12));
  b[0 * 8 + 0] = b[1 * 8 + 0] = to_t<__half>(std::ldexp(1.0f, -12));
  std::vector<float> c(16 * 8, 0.0f);
  c[0] = 1.0f;
  const std::vector<float> d = run_mma_16x8x16(a, b, c);
  CHECK(d[0] == 1.0f + std::ldexp(1.0f, -23));
  CHECK(d[1] == 0.0f);
}

TEST_CASE("a 64x64x64 GEMM from cp_async + ldmatrix + mma (f16) matches the host GEMM") {
  check_gemm<__half>();
}

TEST_CASE("a 64x64x64 GEMM from cp_async + ldmatrix + mma (bf16) matches the host GEMM") {
  check_gemm<__nv_bfloat16>();
}

namespace {
float tf32_value(float f) {
  const uint32_t bits = unet::kernels::cuda::to_tf32(f);
  float r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}
}  // namespace

TEST_CASE("to_tf32 rounds to 10 mantissa bits, nearest with ties away from zero, and clears the 13 low bits") {
  const float ulp = std::ldexp(1.0f, -10), half = std::ldexp(1.0f, -11), tiny = std::ldexp(1.0f, -23);
  CHECK(tf32_value(1.0f + half) == 1.0f + ulp);  // tie: away from zero
  CHECK(tf32_value(-(1.0f + half)) == -(1.0f + ulp));
  CHECK(tf32_value(1.0f + ulp + half) == 1.0f + 2 * ulp);  // tie from an odd value: still away (not to even)
  CHECK(tf32_value(1.0f + half - tiny) == 1.0f);
  CHECK(tf32_value(1.0f + half + tiny) == 1.0f + ulp);
  CHECK(tf32_value(2.0f - tiny) == 2.0f);                            // carry into the exponent
  CHECK(std::isinf(tf32_value(std::numeric_limits<float>::max())));  // overflow rounds to infinity
  CHECK(tf32_value(-std::numeric_limits<float>::infinity()) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(tf32_value(NAN)));
  CHECK((unet::kernels::cuda::to_tf32(0.1f) & 0x1fffu) == 0u);
}

TEST_CASE("mma_m16n8k8_tf32 equals the product of the tf32-rounded 16x8 by 8x8 plus C, element by element") {
  std::mt19937 rng(31);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> a(16 * 8), b(8 * 8), c(16 * 8);
  for (float& x : a) x = d(rng);
  for (float& x : b) x = d(rng);
  for (float& x : c) x = d(rng);
  std::vector<float> ref;
  for (const char* s : {"forward", "reverse", "random:7"}) {
    ScheduleScope scope(Schedule::parse(s));
    std::vector<float> got(16 * 8, NAN);
    launch(emu_mma_test::mma_16x8x8_tf32, dim3(1), dim3(32), 0, nullptr, a.data(), b.data(), c.data(), got.data());
    if (ref.empty()) ref = got;
    CAPTURE(s);
    CHECK(std::memcmp(got.data(), ref.data(), got.size() * sizeof(float)) == 0);
  }
  // The products of tf32 values are exact, so summing them in double in k order after C and rounding once is what the
  // emulator documents; a GPU may differ in the last few ulp (its internal order is unspecified).
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double sum = c[i * 8 + j];
      for (int k = 0; k < 8; ++k) sum += double(tf32_value(a[i * 8 + k])) * double(tf32_value(b[k * 8 + j]));
      CAPTURE(i);
      CAPTURE(j);
      CHECK(ref[i * 8 + j] == static_cast<float>(sum));
    }
  double diff = 0;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double exact = c[i * 8 + j];
      for (int k = 0; k < 8; ++k) exact += double(a[i * 8 + k]) * double(b[k * 8 + j]);
      diff = std::max(diff, std::fabs(exact - ref[i * 8 + j]));
    }
  CHECK(diff > 1e-5);  // tf32 inputs, not f32: the result is visibly less precise than the f32 product
  CHECK(diff < 1e-2);
}

TEST_CASE("cp_async copies in two commit groups, after wait and a barrier, give the right shared memory") {
  std::vector<float> in(512), out(512, NAN);
  for (int i = 0; i < 512; ++i) in[i] = static_cast<float>(i) * 0.5f - 7.0f;
  launch(emu_mma_test::cp_async_copy, dim3(1), dim3(64), 0, nullptr, in.data(), out.data());
  // smem slot s holds chunk s (s < 64) or chunk 191 - s (s >= 64, the mirrored second group); out chunk c = slot c+1.
  for (int c = 0; c < 128; ++c) {
    const int slot = (c + 1) % 128, chunk = slot < 64 ? slot : 191 - slot;
    for (int e = 0; e < 4; ++e) {
      CAPTURE(c);
      CHECK(out[4 * c + e] == in[4 * chunk + e]);
    }
  }
}

TEST_CASE("the mma GEMM and the 16x8x16 product give identical bits under forward, reverse and random:7") {
  const auto a = uniform<__half>(64 * 64, 21), b = uniform<__half>(64 * 64, 22);
  const auto a16 = uniform<__nv_bfloat16>(16 * 16, 23), b16 = uniform<__nv_bfloat16>(16 * 8, 24);
  const std::vector<float> c16(16 * 8, 0.25f);
  std::vector<float> gemm_ref, mma_ref;
  for (const char* s : {"forward", "reverse", "random:7"}) {
    ScheduleScope scope(Schedule::parse(s));
    const std::vector<float> gemm = run_gemm(a, b, 64, 64, 64), mma = run_mma_16x8x16(a16, b16, c16);
    if (gemm_ref.empty()) {
      gemm_ref = gemm;
      mma_ref = mma;
      continue;
    }
    CAPTURE(s);
    CHECK(std::memcmp(gemm.data(), gemm_ref.data(), gemm.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(mma.data(), mma_ref.data(), mma.size() * sizeof(float)) == 0);
  }
}
