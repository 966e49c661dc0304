// Warpgroup MMA (kernels/cuda/wgmma.cuh) under the device emulator: products of tiles that TMA loaded into shared
// memory with each swizzle, read through matrix descriptors in both major-nesses, against a host reference; A from
// registers; tf32; k-steps in one group and in pipelined groups; the warp-specialized TMA + wgmma main loop; and the
// mistakes the emulator catches (reading accumulators or overwriting operands before wgmma.wait_group, releasing a
// pipeline stage too early, ordinary stores into an operand without fence.proxy.async and a barrier, misuse of the
// warpgroup instructions).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include "tests/emu_test_util.h"
#include "tests/emu_wgmma_kernels.cuh"

namespace {

using namespace emu_wgmma_test;
using unet::emu::KernelError;

enum class Major { k, mn };

// Small integers, so that every product and partial sum is exact in f32 and the emulator must match bit for bit.
float value(int i, int j, int salt) {
  return static_cast<float>((i * 13 + j * 7 + salt * 5) % 11 - 5);
}

// The raw bits of v as element type T (float: an f32, which a tf32 operand reads as tf32).
template <class T>
uint32_t bits_of(float v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half_raw(__half(v)).x;
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __nv_bfloat16_raw(__nv_bfloat16(v)).x;
  } else {
    uint32_t b;
    std::memcpy(&b, &v, sizeof b);
    return b;
  }
}

template <class T>
CUtensorMapDataType tma_type() {
  if constexpr (std::is_same_v<T, __half>) return CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  return CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
}

int span_of(WgmmaSwizzle s) {
  return s == WgmmaSwizzle::b128 ? 128 : s == WgmmaSwizzle::b64 ? 64 : s == WgmmaSwizzle::b32 ? 32 : 0;
}
CUtensorMapSwizzle tma_swizzle(WgmmaSwizzle s) {
  return s == WgmmaSwizzle::b128  ? CU_TENSOR_MAP_SWIZZLE_128B
         : s == WgmmaSwizzle::b64 ? CU_TENSOR_MAP_SWIZZLE_64B
         : s == WgmmaSwizzle::b32 ? CU_TENSOR_MAP_SWIZZLE_32B
                                  : CU_TENSOR_MAP_SWIZZLE_NONE;
}

// An MN x K operand in global memory (element (mn, k) at mn * K + k when K-major, k * MN + mn when MN-major, as raw
// bits of T) and how it reaches shared memory: the canonical layouts of kernels/cuda/wgmma.cuh, produced by TMA.
template <class T>
struct Operand {
  static constexpr uint32_t eb = sizeof(T);  // element bytes (float for tf32)
  using Raw = std::conditional_t<eb == 2, uint16_t, uint32_t>;
  int mn, k;
  std::vector<float> v;  // element (mn, k) at v[mn * k_size + k]
  std::vector<Raw> global;
  TensorMap map{};
  OperandPlan plan{};

  Operand(int mn_size, int k_size, Major major, WgmmaSwizzle swizzle, int salt)
      : mn(mn_size), k(k_size), v(mn_size * k_size), global(mn_size * k_size) {
    for (int i = 0; i < mn; ++i)
      for (int j = 0; j < k; ++j) {
        v[i * k + j] = value(i, j, salt);
        global[major == Major::k ? i * k + j : j * mn + i] = static_cast<Raw>(bits_of<T>(v[i * k + j]));
      }
    const uint32_t T16 = 16 / eb;       // elements per 16-byte chunk
    const uint32_t per_step = 32 / eb;  // K elements per k-step
    const int S = span_of(swizzle);
    plan.swizzle = swizzle;
    uint64_t dims[3], strides[2];
    uint32_t box[3];
    if (major == Major::k && S > 0) {  // rows of MN, S bytes of K each; one box per S bytes of K
      const uint32_t E = S / eb;
      set(dims, {uint64_t(k), uint64_t(mn), 1}), set(strides, {uint64_t(k) * eb, uint64_t(k) * eb * mn});
      set(box, {E, uint32_t(mn), 1});
      plan.boxes = static_cast<int>(k / E);
      for (int b = 0; b < plan.boxes; ++b) place(b, {int32_t(b * E), 0, 0}, b * mn * S);
      plan.lbo = 16, plan.sbo = 8 * S;  // LBO unused (CUTLASS writes 1, in 16-byte units)
      for (int s = 0; s < k / static_cast<int>(per_step); ++s) {
        const uint32_t k0 = s * per_step;
        plan.step_offset[s] = (k0 / E) * mn * S + (k0 % E) * eb;
      }
    } else if (major == Major::k) {  // core matrices of 8 rows x 16 bytes: MN-neighbours 128 bytes apart
      set(dims, {T16, uint64_t(mn), uint64_t(k) / T16}), set(strides, {uint64_t(k) * eb, 16});
      set(box, {T16, uint32_t(mn), uint32_t(k) / T16});
      plan.boxes = 1;
      place(0, {0, 0, 0}, 0);
      plan.lbo = mn * 16, plan.sbo = 128;
      for (int s = 0; s < k / static_cast<int>(per_step); ++s) plan.step_offset[s] = 2 * s * mn * 16;
    } else if (S > 0) {  // rows of K, S bytes of MN each; one box per S bytes of MN
      const uint32_t E = S / eb;
      set(dims, {uint64_t(mn), uint64_t(k), 1}), set(strides, {uint64_t(mn) * eb, uint64_t(mn) * eb * k});
      set(box, {E, uint32_t(k), 1});
      plan.boxes = static_cast<int>(mn / E);
      for (int b = 0; b < plan.boxes; ++b) place(b, {int32_t(b * E), 0, 0}, b * k * S);
      plan.lbo = k * S, plan.sbo = 8 * S;
      for (int s = 0; s < k / static_cast<int>(per_step); ++s) plan.step_offset[s] = s * per_step * S;
    } else {  // core matrices of 8 k-rows x 16 bytes of MN: K-neighbours 128 bytes apart
      set(dims, {T16, uint64_t(k), uint64_t(mn) / T16}), set(strides, {uint64_t(mn) * eb, 16});
      set(box, {T16, uint32_t(k), uint32_t(mn) / T16});
      plan.boxes = 1;
      place(0, {0, 0, 0}, 0);
      plan.lbo = 128, plan.sbo = k * 16;
      for (int s = 0; s < k / static_cast<int>(per_step); ++s) plan.step_offset[s] = s * per_step * 16;
    }
    const uint32_t ones[3] = {1, 1, 1};
    map = make_tensor_map(tma_type<T>(), 3, global.data(), dims, strides, box, ones, tma_swizzle(swizzle));
  }
  uint32_t bytes() const { return static_cast<uint32_t>(mn * k * eb); }

 private:
  template <class X, size_t M>
  static void set(X (&to)[M], std::type_identity_t<std::initializer_list<X>> from) {
    std::copy(from.begin(), from.end(), to);
  }
  void place(int b, std::initializer_list<int32_t> at, uint32_t offset) {
    std::copy(at.begin(), at.end(), plan.coords[b]);
    plan.smem_offset[b] = offset;
  }
};

struct Options {
  bool a_in_registers = false, group_per_step = false, read_before_wait = false, zero_b_before_wait = false;
  float initial = NAN;  // scale-d is false at the first k-step: the old accumulators must not matter
};

// d = A B for A (64 x K) and B (N x K) with the given layouts, under every schedule (they must agree).
template <class T, int N, int TransA, int TransB, int ScaleA = 1, int ScaleB = 1>
std::vector<float> run_gemm(const Operand<T>& a, const Operand<T>& b, Options o = {}) {
  GemmPlan plan{};
  plan.a = a.plan;
  plan.b = b.plan;
  plan.k_size = a.k;
  plan.k_steps = a.k * static_cast<int>(sizeof(T)) / 32;
  plan.a_in_registers = o.a_in_registers;
  if (o.a_in_registers) plan.a.boxes = 0;
  plan.bytes = (o.a_in_registers ? 0 : a.bytes()) + b.bytes();
  plan.group_per_step = o.group_per_step;
  plan.initial = o.initial;
  plan.read_before_wait = o.read_before_wait;
  plan.zero_b_before_wait = o.zero_b_before_wait;
  // A's raw bits row-major (64 x K), for the register path.
  std::vector<typename Operand<T>::Raw> a_rows(a.v.size());
  for (size_t i = 0; i < a.v.size(); ++i) a_rows[i] = static_cast<typename Operand<T>::Raw>(bits_of<T>(a.v[i]));
  return unet::test::under_every_schedule([&] {
    std::vector<float> out(64 * N, -1.0f);
    unet::kernels::cuda::launch(wgmma_gemm<T, N, TransA, TransB, ScaleA, ScaleB>, dim3(1), dim3(128), 0, nullptr, a.map,
                                b.map, plan, static_cast<const void*>(a_rows.data()), out.data());
    return out;
  });
}

std::vector<float> reference(const std::vector<float>& a, const std::vector<float>& b, int n, int k) {
  std::vector<float> d(64 * n);
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < n; ++j) {
      double sum = 0;
      for (int kk = 0; kk < k; ++kk) sum += double(a[i * k + kk]) * double(b[j * k + kk]);
      d[i * n + j] = static_cast<float>(sum);
    }
  return d;
}

const WgmmaSwizzle kSwizzles[] = {WgmmaSwizzle::b128, WgmmaSwizzle::b64, WgmmaSwizzle::b32, WgmmaSwizzle::none};
const char* name(WgmmaSwizzle s) {
  return s == WgmmaSwizzle::b128 ? "128B" : s == WgmmaSwizzle::b64 ? "64B" : s == WgmmaSwizzle::b32 ? "32B" : "none";
}

// A and B in the four combinations of major-ness, each swizzle, K = 64 (four k-steps).
template <class T, int N>
void check_every_layout() {
  for (WgmmaSwizzle s : kSwizzles) {
    CAPTURE(name(s));
    const Operand<T> a_k(64, 64, Major::k, s, 1), a_mn(64, 64, Major::mn, s, 1);
    const Operand<T> b_k(N, 64, Major::k, s, 2), b_mn(N, 64, Major::mn, s, 2);
    const std::vector<float> want = reference(a_k.v, b_k.v, N, 64);
    CHECK(run_gemm<T, N, 0, 0>(a_k, b_k) == want);
    CHECK(run_gemm<T, N, 1, 0>(a_mn, b_k) == want);
    CHECK(run_gemm<T, N, 0, 1>(a_k, b_mn) == want);
    CHECK(run_gemm<T, N, 1, 1>(a_mn, b_mn) == want);
  }
}

}  // namespace

TEST_CASE("a matrix descriptor packs the start address, LBO and SBO in 16-byte units, and the swizzle mode") {
  constexpr uint64_t d = wgmma_desc_encode(0x12340, 0x80, 0x400, WgmmaSwizzle::b128);
  static_assert((d & 0x3fff) == 0x1234 && (d >> 16 & 0x3fff) == 0x8 && (d >> 32 & 0x3fff) == 0x40);
  static_assert((d >> 49 & 7) == 0 && d >> 62 == 1);
  static_assert(wgmma_desc_encode(0x3fff0, 0, 0, WgmmaSwizzle::b32) == (0x3fffull | 3ull << 62));
  static_assert(wgmma_desc_encode(0x40010, 0, 0, WgmmaSwizzle::none) == 1);  // 18 bits of address only
  static_assert(wgmma_desc_advance(wgmma_desc_encode(0x1000, 16, 1024, WgmmaSwizzle::b64), 32) ==
                wgmma_desc_encode(0x1020, 16, 1024, WgmmaSwizzle::b64));
  CHECK(d == 0x4000004000081234ull);
}

TEST_CASE("f16 wgmma (N = 64) of TMA-loaded tiles: every swizzle, A and B K-major or MN-major") {
  check_every_layout<__half, 64>();
}

TEST_CASE("bf16 wgmma (N = 128) of TMA-loaded tiles: every swizzle, A and B K-major or MN-major") {
  check_every_layout<__nv_bfloat16, 128>();
}

TEST_CASE("the largest and smallest shapes: N = 256 (f16, 128B swizzle) and N = 8 (bf16, no swizzle, MN-major)") {
  const Operand<__half> a(64, 64, Major::k, WgmmaSwizzle::b128, 3), b(256, 64, Major::k, WgmmaSwizzle::b128, 4);
  CHECK(run_gemm<__half, 256, 0, 0>(a, b) == reference(a.v, b.v, 256, 64));
  const Operand<__nv_bfloat16> a8(64, 64, Major::mn, WgmmaSwizzle::none, 5),
      b8(8, 64, Major::mn, WgmmaSwizzle::none, 6);
  CHECK(run_gemm<__nv_bfloat16, 8, 1, 1>(a8, b8) == reference(a8.v, b8.v, 8, 64));
}

TEST_CASE("A from registers in the fragment layout, B from shared memory K-major or MN-major") {
  const Operand<__half> a(64, 64, Major::k, WgmmaSwizzle::b128, 7);
  const Operand<__half> b_k(64, 64, Major::k, WgmmaSwizzle::b64, 8), b_mn(64, 64, Major::mn, WgmmaSwizzle::b128, 8);
  Options regs;
  regs.a_in_registers = true;
  const std::vector<float> want = reference(a.v, b_k.v, 64, 64);
  CHECK(run_gemm<__half, 64, 0, 0>(a, b_k, regs) == want);
  CHECK(run_gemm<__half, 64, 0, 1>(a, b_mn, regs) == want);
  const Operand<__nv_bfloat16> a16(64, 64, Major::k, WgmmaSwizzle::none, 9),
      b16(128, 64, Major::k, WgmmaSwizzle::b32, 10);
  CHECK(run_gemm<__nv_bfloat16, 128, 0, 0>(a16, b16, regs) == reference(a16.v, b16.v, 128, 64));
}

TEST_CASE("tf32 wgmma (m64nNk8, K-major) from shared memory and from registers; the low 13 mantissa bits are ignored") {
  for (WgmmaSwizzle s : kSwizzles) {
    CAPTURE(name(s));
    const Operand<float> a(64, 32, Major::k, s, 11), b(64, 32, Major::k, s, 12);
    const std::vector<float> want = reference(a.v, b.v, 64, 32);
    CHECK(run_gemm<float, 64, 0, 0>(a, b) == want);
    Options regs;
    regs.a_in_registers = true;
    CHECK(run_gemm<float, 64, 0, 0>(a, b, regs) == want);
  }
  // 1 + 2^-20 is not a tf32 value: the tensor core reads 1.
  Operand<float> a(64, 32, Major::k, WgmmaSwizzle::b128, 13), b(64, 32, Major::k, WgmmaSwizzle::b128, 14);
  const uint32_t one = bits_of<float>(1.0f), not_tf32 = bits_of<float>(1.0f + std::ldexp(1.0f, -20));
  for (uint32_t& x : a.global) x = x == one ? not_tf32 : x;
  CHECK(run_gemm<float, 64, 0, 0>(a, b) == reference(a.v, b.v, 64, 32));
}

TEST_CASE("imm-scale-a and imm-scale-b of -1 negate A and B") {
  const Operand<__nv_bfloat16> a(64, 64, Major::k, WgmmaSwizzle::b64, 25), b(64, 64, Major::mn, WgmmaSwizzle::b32, 26);
  std::vector<float> negated = reference(a.v, b.v, 64, 64);
  for (float& x : negated) x = -x;
  CHECK(run_gemm<__nv_bfloat16, 64, 0, 1, -1, 1>(a, b) == negated);
  const Operand<float> a32(64, 32, Major::k, WgmmaSwizzle::b128, 27), b32(64, 32, Major::k, WgmmaSwizzle::b128, 28);
  Options regs;
  regs.a_in_registers = true;
  CHECK(run_gemm<float, 64, 0, 0, -1, -1>(a32, b32, regs) == reference(a32.v, b32.v, 64, 32));
}

TEST_CASE("k-steps committed one group each and waited with wgmma.wait_group 1 give the same product") {
  const Operand<__half> a(64, 64, Major::k, WgmmaSwizzle::b128, 15), b(64, 64, Major::mn, WgmmaSwizzle::b64, 16);
  Options pipelined;
  pipelined.group_per_step = true;
  CHECK(run_gemm<__half, 64, 0, 1>(a, b, pipelined) == reference(a.v, b.v, 64, 64));
}

TEST_CASE("reading the accumulators before wgmma.wait_group gets their old values, not the product") {
  const Operand<__half> a(64, 64, Major::k, WgmmaSwizzle::b128, 17), b(64, 64, Major::k, WgmmaSwizzle::b128, 18);
  Options early;
  early.read_before_wait = true;
  early.initial = 7.0f;
  CHECK(run_gemm<__half, 64, 0, 0>(a, b, early) == std::vector<float>(64 * 64, 7.0f));
}

TEST_CASE("the shared operands are read when the group retires: B overwritten before wgmma.wait_group counts") {
  const Operand<__half> a(64, 64, Major::k, WgmmaSwizzle::b128, 19), b(64, 64, Major::k, WgmmaSwizzle::b128, 20);
  Options overwrite;
  overwrite.zero_b_before_wait = true;
  CHECK(run_gemm<__half, 64, 0, 0>(a, b, overwrite) == std::vector<float>(64 * 64, 0.0f));
}

namespace {
// The warp-specialized pipeline over k_tiles tiles of K = 64; returns d (64 x 64) under `schedule`.
std::vector<float> run_pipeline(const std::vector<__half>& a, const std::vector<__half>& b, int k_tiles,
                                bool release_early, const char* schedule) {
  const uint64_t dims[2] = {uint64_t(64 * k_tiles), 64}, strides[1] = {uint64_t(64 * k_tiles) * 2};
  const uint32_t box[2] = {64, 64}, ones[2] = {1, 1};
  const TensorMap map_a = make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, a.data(), dims, strides, box, ones,
                                          CU_TENSOR_MAP_SWIZZLE_128B);
  const TensorMap map_b = make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, b.data(), dims, strides, box, ones,
                                          CU_TENSOR_MAP_SWIZZLE_128B);
  unet::emu::set_schedule(unet::emu::Schedule::parse(schedule));
  std::vector<float> out(64 * 64, -1.0f);
  unet::kernels::cuda::launch(wgmma_pipeline, dim3(1), dim3(256), 0, nullptr, map_a, map_b, k_tiles, release_early,
                              out.data());
  unet::emu::set_schedule(unet::emu::Schedule::parse("forward"));
  return out;
}
}  // namespace

TEST_CASE("the warp-specialized TMA + wgmma main loop gives the product under every schedule") {
  const int k_tiles = 4, k = 64 * k_tiles;
  std::vector<float> av(64 * k), bv(64 * k);
  std::vector<__half> a(64 * k), b(64 * k);
  for (int i = 0; i < 64 * k; ++i) {
    av[i] = value(i / k, i % k, 21), bv[i] = value(i / k, i % k, 22);
    a[i] = __half(av[i]), b[i] = __half(bv[i]);
  }
  const std::vector<float> want = reference(av, bv, 64, k);
  for (const char* schedule : unet::test::kSchedules) {
    CAPTURE(schedule);
    CHECK(run_pipeline(a, b, k_tiles, false, schedule) == want);
  }
}

TEST_CASE("releasing a pipeline stage before its wgmma group retires is caught by schedule fuzzing") {
  // The producer refills the stage while the MMAs that read it are still in flight: some schedule gets a wrong sum.
  const int k_tiles = 4, k = 64 * k_tiles;
  std::vector<float> av(64 * k), bv(64 * k);
  std::vector<__half> a(64 * k), b(64 * k);
  for (int i = 0; i < 64 * k; ++i) {
    av[i] = value(i / k, i % k, 23), bv[i] = value(i / k, i % k, 24);
    a[i] = __half(av[i]), b[i] = __half(bv[i]);
  }
  const std::vector<float> want = reference(av, bv, 64, k);
  int wrong = 0;
  for (const char* schedule : unet::test::kSchedules) wrong += run_pipeline(a, b, k_tiles, true, schedule) != want;
  CHECK(wrong > 0);
}

TEST_CASE("ordinary stores into a copied operand reach wgmma after fence.proxy.async and a barrier, else an error") {
  // A and B in the copy's (and the descriptors') layout: element (mn, k) at byte 16 (mn % 8) + 256 (mn / 8) +
  // 128 (k / 8) + 2 (k % 8).
  auto at = [](int mn, int k) { return (16 * (mn % 8) + 256 * (mn / 8) + 128 * (k / 8) + 2 * (k % 8)) / 2; };
  std::vector<__half> a(1024), b(1024, __half(0.0f));
  std::vector<float> want(64 * 8, 0.0f);
  for (int m = 0; m < 64; ++m)
    for (int k = 0; k < 16; ++k) a[size_t(at(m, k))] = __half(value(m, k, 31));
  for (int n = 0; n < 8; ++n)
    for (int k = 0; k < 16; ++k) b[size_t(at(n, k))] = __half(value(n, k, 32));
  for (int m = 0; m < 64; ++m)
    for (int n = 0; n < 8; ++n)
      for (int k = 0; k < 16; ++k) want[size_t(m * 8 + n)] += 2.0f * value(m, k, 31) * value(n, k, 32);
  for (const ProxyStep omit : {ProxyStep::none, ProxyStep::fence, ProxyStep::barrier})
    for (const char* schedule : unet::test::kSchedules) {
      CAPTURE(schedule);
      CAPTURE(int(omit));
      unet::emu::set_schedule(unet::emu::Schedule::parse(schedule));
      std::vector<float> out(64 * 8, -1.0f);
      std::string what;
      try {
        unet::kernels::cuda::launch(wgmma_after_stores, dim3(1), dim3(128), 4096, nullptr, a.data(), b.data(), omit,
                                    out.data());
      } catch (const KernelError& e) {
        what = e.what();
      }
      if (omit == ProxyStep::none)
        CHECK(out == want);
      else
        CHECK_MESSAGE(what.find("no fence.proxy.async taking effect") != std::string::npos, what);
    }
  unet::emu::set_schedule(unet::emu::Schedule::parse("forward"));
}

TEST_CASE("misusing the warpgroup instructions is a KernelError") {
  auto launch_misuse = [](Misuse m, unsigned threads, const char* expected, const char* also_expected = nullptr) {
    for (const char* schedule : unet::test::kSchedules) {
      CAPTURE(schedule);
      unet::emu::set_schedule(unet::emu::Schedule::parse(schedule));
      std::string what;
      try {
        unet::kernels::cuda::launch(wgmma_misuse, dim3(1), dim3(threads), 4096, nullptr, m);
      } catch (const KernelError& e) {
        what = e.what();
      }
      const bool named =
          what.find(expected) != std::string::npos || (also_expected && what.find(also_expected) != std::string::npos);
      CHECK_MESSAGE(named, what);
    }
    unet::emu::set_schedule(unet::emu::Schedule::parse("forward"));
  };
  SUBCASE("a partial warpgroup") {
    launch_misuse(Misuse::partial_warpgroup, 96, "a warpgroup is 4 full warps");
  }
  SUBCASE("no wgmma.fence") {
    launch_misuse(Misuse::missing_fence, 128, "before the warpgroup's first wgmma.fence");
  }
  SUBCASE("no wgmma.wait_group") {
    launch_misuse(Misuse::missing_wait, 128, "a wgmma.wait_group 0 is missing");
  }
  SUBCASE("a warp skips an instruction") {
    launch_misuse(Misuse::warp_skips, 128, "exited");
  }
  SUBCASE("descriptors that differ between warps") {
    launch_misuse(Misuse::divergent_descriptor, 128, "must be the same in every thread");
  }
  SUBCASE("an operand past the end of shared memory") {
    // Past the buffer's window ("not mapped") when the dynamic shared memory happens to start on a 1024-byte line,
    // inside its window but past the buffer otherwise: which one depends on where the host allocator put it.
    launch_misuse(Misuse::descriptor_out_of_range, 128, "outside the shared memory", "is not mapped");
  }
  SUBCASE("a base offset") {
    launch_misuse(Misuse::base_offset, 128, "base offset");
  }
  SUBCASE("warps at different wgmma instructions") {
    launch_misuse(Misuse::divergent_instruction, 128, "must execute the same .aligned instruction");
  }
  SUBCASE("a warp waiting elsewhere") {
    launch_misuse(Misuse::deadlock, 128, "threads of warpgroup 0 arrived");
  }
}
