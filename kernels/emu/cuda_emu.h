// What a CUDA kernel source sees when the host compiler builds it against the device emulator: the built-in index
// variables, barriers, warp collectives, atomics and the device-only math functions. Included through
// kernels/cuda/cuda_compat.cuh, never directly by kernel sources.
//
// Barriers and collectives are functions taking a defaulted std::source_location rather than macros around
// __FILE__/__LINE__: the effect is the same (errors name the call site) without a macro per intrinsic.
#pragma once
#include "kernels/emu/emu.h"  // first: defines __shared__ & co. before the CUDA headers below
#include "kernels/emu/device_memory.h"  // device_malloc / device_memcpy: the emulated cudaMalloc and cudaMemcpy

#include <cuda_bf16.h>  // __nv_bfloat16 and its intrinsics: CUDA 13's headers have host implementations
#include <cuda_fp16.h>  // __half, __half2

#include <bit>
#include <cmath>  // expf, fmaxf, sqrtf, ... are the device functions of the same name
#include <cstdint>
#include <cstring>

// host_defines.h turns these into attributes g++ does not know (-Wattributes); on the CPU they mean nothing.
#undef __launch_bounds__
#define __launch_bounds__(...)
#ifndef __noinline__
#define __noinline__ __attribute__((noinline))
#endif

// The built-in variables: read-only views of the running thread's record.
#define threadIdx (static_cast<const uint3&>(::unet::emu::detail::current->thread_idx))
#define blockIdx (static_cast<const uint3&>(::unet::emu::detail::current->block_idx))
#define blockDim (static_cast<const dim3&>(::unet::emu::detail::current->block_dim))
#define gridDim (static_cast<const dim3&>(::unet::emu::detail::current->grid_dim))
inline constexpr int warpSize = 32;

// Dynamic shared memory: `extern __shared__ T name[]` has no host equivalent, so kernels write DYN_SMEM(T, name).
#define DYN_SMEM(T, name) T* name = static_cast<T*>(::unet::emu::detail::dynamic_smem())

// ---- barriers ------------------------------------------------------------------------------------------------------
// Releases when every live thread of the block waits at this same call site (threads that have returned do not hold
// it, as on sm_70 and later); different sites are a divergent-barrier error.
inline void __syncthreads(const std::source_location& site = std::source_location::current()) {
  int live;
  ::unet::emu::detail::barrier(0, &live, site);
}
inline int __syncthreads_count(int pred, const std::source_location& site = std::source_location::current()) {
  int live;
  return ::unet::emu::detail::barrier(pred, &live, site);
}
inline int __syncthreads_and(int pred, const std::source_location& site = std::source_location::current()) {
  int live;
  return ::unet::emu::detail::barrier(pred, &live, site) == live;
}
inline int __syncthreads_or(int pred, const std::source_location& site = std::source_location::current()) {
  int live;
  return ::unet::emu::detail::barrier(pred, &live, site) > 0;
}
// All threads of a block share one OS thread and memory is coherent, so fences only have to stop the compiler (block)
// or order memory between workers (device).
inline void __threadfence_block() {
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
}
inline void __threadfence() {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
inline void __threadfence_system() {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

// ---- warp collectives ----------------------------------------------------------------------------------------------
// Every lane named in the mask must call the same collective with the same mask (a lane that has returned, or one
// calling another collective, is an error or a reported deadlock). A shuffle from a lane outside the mask returns the
// caller's own value (undefined on a GPU).
namespace unet::emu::detail {
template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
inline int check_width(int width) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fail("shuffle width " + std::to_string(width) + " is not a power of two in [1, 32]");
  return width;
}
template <class T>
T shuffle(WarpOp op, unsigned mask, T var, int src, const std::source_location& site) {
  return from_bits<T>(warp_collective(op, mask, to_bits(var), src, site));
}
}  // namespace unet::emu::detail

inline unsigned __activemask() {
  return ::unet::emu::detail::live_lanes();
}

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
              const std::source_location& site = std::source_location::current()) {
  using namespace ::unet::emu::detail;
  const int lane = current->lane, w = check_width(width);
  const int src = (lane & ~(w - 1)) + (src_lane & (w - 1));  // srcLane is taken modulo width, within the segment
  return shuffle(WarpOp::shfl, mask, var, src, site);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                 const std::source_location& site = std::source_location::current()) {
  using namespace ::unet::emu::detail;
  const int lane = current->lane, w = check_width(width);
  const int src = (lane & (w - 1)) >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  return shuffle(WarpOp::shfl_up, mask, var, src, site);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   const std::source_location& site = std::source_location::current()) {
  using namespace ::unet::emu::detail;
  const int lane = current->lane, w = check_width(width);
  const int src = (lane & (w - 1)) + static_cast<int64_t>(delta) < w ? lane + static_cast<int>(delta) : lane;
  return shuffle(WarpOp::shfl_down, mask, var, src, site);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                  const std::source_location& site = std::source_location::current()) {
  using namespace ::unet::emu::detail;
  const int lane = current->lane, w = check_width(width);
  // Earlier segments may be read; a source in a later segment gives the caller's own value (CUDA documentation).
  int src = lane ^ lane_mask;
  if (src >= (lane & ~(w - 1)) + w) src = lane;
  return shuffle(WarpOp::shfl_xor, mask, var, src, site);
}

inline unsigned __ballot_sync(unsigned mask, int pred,
                              const std::source_location& site = std::source_location::current()) {
  return static_cast<unsigned>(
      ::unet::emu::detail::warp_collective(::unet::emu::detail::WarpOp::ballot, mask, pred != 0, 0, site));
}
inline int __any_sync(unsigned mask, int pred, const std::source_location& site = std::source_location::current()) {
  return static_cast<int>(
      ::unet::emu::detail::warp_collective(::unet::emu::detail::WarpOp::any, mask, pred != 0, 0, site));
}
inline int __all_sync(unsigned mask, int pred, const std::source_location& site = std::source_location::current()) {
  return static_cast<int>(
      ::unet::emu::detail::warp_collective(::unet::emu::detail::WarpOp::all, mask, pred != 0, 0, site));
}
inline void __syncwarp(unsigned mask = 0xffffffffu,
                       const std::source_location& site = std::source_location::current()) {
  ::unet::emu::detail::warp_collective(::unet::emu::detail::WarpOp::syncwarp, mask, 0, 0, site);
}

#define UNET_EMU_WARP_REDUCE(name, T, op)                                                                     \
  inline T name(unsigned mask, T value, const std::source_location& site = std::source_location::current()) { \
    return static_cast<T>(::unet::emu::detail::warp_collective(::unet::emu::detail::WarpOp::op, mask,         \
                                                               static_cast<uint32_t>(value), 0, site));       \
  }
UNET_EMU_WARP_REDUCE(__reduce_add_sync, unsigned, reduce_add)
UNET_EMU_WARP_REDUCE(__reduce_add_sync, int, reduce_add)
UNET_EMU_WARP_REDUCE(__reduce_min_sync, unsigned, reduce_min_u)
UNET_EMU_WARP_REDUCE(__reduce_min_sync, int, reduce_min_i)
UNET_EMU_WARP_REDUCE(__reduce_max_sync, unsigned, reduce_max_u)
UNET_EMU_WARP_REDUCE(__reduce_max_sync, int, reduce_max_i)
UNET_EMU_WARP_REDUCE(__reduce_and_sync, unsigned, reduce_and)
UNET_EMU_WARP_REDUCE(__reduce_or_sync, unsigned, reduce_or)
UNET_EMU_WARP_REDUCE(__reduce_xor_sync, unsigned, reduce_xor)
#undef UNET_EMU_WARP_REDUCE

// ---- atomics -------------------------------------------------------------------------------------------------------
// Blocks run concurrently on several workers, so atomics must be real; relaxed order is what CUDA's atomics promise.
namespace unet::emu::detail {
// Read-modify-write through a compare-and-swap loop on the value's bits (float add, min/max).
template <class T, class F>
T atomic_update(T* address, F f) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(address, &old, f(old), true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <class T, class U, class F>
T atomic_update_bits(T* address, F f) {
  static_assert(sizeof(T) == sizeof(U));
  U* bits = reinterpret_cast<U*>(address);
  U old = __atomic_load_n(bits, __ATOMIC_RELAXED);
  for (;;) {
    T value;
    std::memcpy(&value, &old, sizeof(T));
    const T updated = f(value);
    U next;
    std::memcpy(&next, &updated, sizeof(T));
    if (__atomic_compare_exchange_n(bits, &old, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return value;
  }
}
}  // namespace unet::emu::detail

#define UNET_EMU_ATOMIC_INT(T)                                                              \
  inline T atomicAdd(T* a, T v) {                                                           \
    return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);                                      \
  }                                                                                         \
  inline T atomicSub(T* a, T v) {                                                           \
    return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED);                                      \
  }                                                                                         \
  inline T atomicAnd(T* a, T v) {                                                           \
    return __atomic_fetch_and(a, v, __ATOMIC_RELAXED);                                      \
  }                                                                                         \
  inline T atomicOr(T* a, T v) {                                                            \
    return __atomic_fetch_or(a, v, __ATOMIC_RELAXED);                                       \
  }                                                                                         \
  inline T atomicXor(T* a, T v) {                                                           \
    return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED);                                      \
  }                                                                                         \
  inline T atomicExch(T* a, T v) {                                                          \
    return __atomic_exchange_n(a, v, __ATOMIC_RELAXED);                                     \
  }                                                                                         \
  inline T atomicMax(T* a, T v) {                                                           \
    return ::unet::emu::detail::atomic_update(a, [v](T old) { return old < v ? v : old; }); \
  }                                                                                         \
  inline T atomicMin(T* a, T v) {                                                           \
    return ::unet::emu::detail::atomic_update(a, [v](T old) { return v < old ? v : old; }); \
  }                                                                                         \
  inline T atomicCAS(T* a, T compare, T v) {                                                \
    __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); \
    return compare; /* the old value either way */                                          \
  }
UNET_EMU_ATOMIC_INT(int)
UNET_EMU_ATOMIC_INT(unsigned)
UNET_EMU_ATOMIC_INT(long long)
UNET_EMU_ATOMIC_INT(unsigned long long)
#undef UNET_EMU_ATOMIC_INT
inline float atomicAdd(float* a, float v) {
  return ::unet::emu::detail::atomic_update_bits<float, uint32_t>(a, [v](float old) { return old + v; });
}
inline double atomicAdd(double* a, double v) {
  return ::unet::emu::detail::atomic_update_bits<double, uint64_t>(a, [v](double old) { return old + v; });
}
inline float atomicExch(float* a, float v) {
  return ::unet::emu::detail::atomic_update_bits<float, uint32_t>(a, [v](float) { return v; });
}
// atomicInc/Dec wrap as the CUDA documentation specifies: ((old >= limit) ? 0 : old + 1).
inline unsigned atomicInc(unsigned* a, unsigned limit) {
  return ::unet::emu::detail::atomic_update(a, [limit](unsigned old) { return old >= limit ? 0u : old + 1; });
}
inline unsigned atomicDec(unsigned* a, unsigned limit) {
  return ::unet::emu::detail::atomic_update(
      a, [limit](unsigned old) { return (old == 0 || old > limit) ? limit : old - 1; });
}

// ---- device-only math and bit functions ----------------------------------------------------------------------------
// The fast-math intrinsics are computed exactly here; on a GPU they are approximations (a few ulp), so tests compare
// emulated kernels with tolerances that allow for that.
inline float rsqrtf(float x) {
  return 1.0f / std::sqrt(x);
}
inline double rsqrt(double x) {
  return 1.0 / std::sqrt(x);
}
inline float __expf(float x) {
  return std::exp(x);
}
inline float __exp10f(float x) {
  return std::pow(10.0f, x);
}
inline float __logf(float x) {
  return std::log(x);
}
inline float __log2f(float x) {
  return std::log2(x);
}
inline float __powf(float x, float y) {
  return std::pow(x, y);
}
inline float __sinf(float x) {
  return std::sin(x);
}
inline float __cosf(float x) {
  return std::cos(x);
}
inline float __tanf(float x) {
  return std::tan(x);
}
inline float __fdividef(float x, float y) {
  return x / y;
}
inline float __frcp_rn(float x) {
  return 1.0f / x;
}
inline float __fsqrt_rn(float x) {
  return std::sqrt(x);
}
inline float __fadd_rn(float x, float y) {
  return x + y;
}
// nvcc never contracts __fmul_rn into an FMA; the host compiler (GCC's default -ffp-contract=fast) would fuse an
// inlined x * y with a following add. The volatile store rounds the product to f32 first, as on the GPU.
inline float __fmul_rn(float x, float y) {
  volatile float product = x * y;
  return product;
}
inline float __fmaf_rn(float x, float y, float z) {
  return std::fma(x, y, z);
}
inline float __saturatef(float x) {
  return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f));
}
inline int __float2int_rn(float x) {
  return static_cast<int>(std::nearbyint(x));
}
inline int __float2int_rz(float x) {
  return static_cast<int>(x);
}
inline int __float2int_rd(float x) {
  return static_cast<int>(std::floor(x));
}
inline int __float2int_ru(float x) {
  return static_cast<int>(std::ceil(x));
}
inline float __int2float_rn(int x) {
  return static_cast<float>(x);
}
inline int __float_as_int(float x) {
  return std::bit_cast<int>(x);
}
inline unsigned __float_as_uint(float x) {
  return std::bit_cast<unsigned>(x);
}
inline float __int_as_float(int x) {
  return std::bit_cast<float>(x);
}
inline float __uint_as_float(unsigned x) {
  return std::bit_cast<float>(x);
}
inline long long __double_as_longlong(double x) {
  return std::bit_cast<long long>(x);
}
inline double __longlong_as_double(long long x) {
  return std::bit_cast<double>(x);
}
inline int __popc(unsigned x) {
  return __builtin_popcount(x);
}
inline int __popcll(unsigned long long x) {
  return __builtin_popcountll(x);
}
inline int __clz(int x) {
  return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x));
}
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) {
  return __builtin_ffs(x);
}
inline int __ffsll(long long x) {
  return __builtin_ffsll(x);
}
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  return __builtin_bswap32(x);
}
inline unsigned __umulhi(unsigned x, unsigned y) {
  return static_cast<unsigned>((uint64_t{x} * y) >> 32);
}
inline int __mulhi(int x, int y) {
  return static_cast<int>((int64_t{x} * y) >> 32);
}
template <class T>
T __ldg(const T* p) {
  return *p;
}
// CUDA's min/max overloads for same-typed integer and floating arguments.
#define UNET_EMU_MINMAX(T) \
  inline T min(T a, T b) { \
    return b < a ? b : a;  \
  }                        \
  inline T max(T a, T b) { \
    return a < b ? b : a;  \
  }
UNET_EMU_MINMAX(int)
UNET_EMU_MINMAX(unsigned)
UNET_EMU_MINMAX(long long)
UNET_EMU_MINMAX(unsigned long long)
UNET_EMU_MINMAX(float)
UNET_EMU_MINMAX(double)
#undef UNET_EMU_MINMAX
