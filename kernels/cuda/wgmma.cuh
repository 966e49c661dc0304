// Hopper warpgroup MMA leaf intrinsics (docs/emulator.md, "Warpgroup MMA"): wgmma.mma_async with its shared-memory
// matrix descriptors, wgmma.fence / commit_group / wait_group, and setmaxnreg. Under nvcc each wrapper is one inline
// PTX instruction for sm_90a (they trap when compiled for any other architecture: kernels built from them are
// dispatched to sm_90a only); under the device emulator they are warpgroup collectives with the PTX ISA's semantics,
// the MMA held asynchronous until wgmma.wait_group retires it, so the sm_90a kernels are checked on the CPU.
//
// Semantics (PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions"):
//   A warpgroup is 4 consecutive warps (threads 128g .. 128g + 127 of the block); every wgmma and setmaxnreg
//   instruction is .sync.aligned: all 128 threads execute the same one.
//   wgmma.mma_async.sync.aligned.m64nNk16.f32.{f16,bf16} (N = 8, 16, .., 256), m64nNk8.f32.tf32:
//     D (64 x N, f32) = A (64 x K) * B (K x N) + D, or A * B when the predicate scale-d is false. A comes from shared
//     memory through a descriptor, or from registers; B always from shared memory. imm-scale-a/b = -1 negates A/B.
//     imm-trans-a/b (f16 and bf16 with A from shared memory only): 0 = the operand is K-major (A row-major, B
//     column-major: K is the contiguous dimension), 1 = MN-major (M for A, N for B contiguous). tf32 is K-major only.
//     The instruction only starts the MMA: its accumulator registers (and the A registers) must not be touched until
//     a wgmma.wait_group retires it, and the shared operands must not be overwritten until then either.
//   wgmma.fence: orders this warpgroup's earlier register accesses (and shared-memory writes) before later
//     wgmma.mma_async; required before the first one and whenever the accumulators or A registers were accessed.
//   wgmma.commit_group: closes the wgmma.mma_async issued since the last commit into a wgmma-group.
//   wgmma.wait_group N: waits until at most N of the most recent groups are pending (all older ones complete).
//   setmaxnreg.{inc,dec}.sync.aligned.u32 C: the warp's per-thread register maximum becomes C (24 <= C <= 256, a
//     multiple of 8); executed by all warps of a warpgroup.
//
// Register fragments, for thread r of the warpgroup: w = r / 32 (the warp, owning rows 16w .. 16w + 15), lane L = r %
// 32, g = L >> 2, t = L % 4. A 32-bit register holds two 16-bit values, the lower-numbered element in the low half.
//   D (N / 2 floats):          d[4j + i] at row 16w + g + 8 * (i >> 1), column 8j + 2t + (i & 1), j = 0 .. N/8 - 1
//   A, f16/bf16 (4 registers): a[i] half h at row 16w + g + 8 * (i & 1), k = 2t + h + 8 * (i >> 1)
//   A, tf32 (4 registers):     a[i] at row 16w + g + 8 * (i & 1), k = t + 4 * (i >> 1)
// (per warp, the layouts of mma.sync m16n8k16 / m16n8k8 in kernels/cuda/mma.cuh, N / 8 of them side by side).
//
// Matrix descriptor (64 bits): bits 0-13 start address, 16-29 leading-dimension byte offset (LBO), 32-45 stride-
// dimension byte offset (SBO), each as (x & 0x3FFFF) >> 4 (16-byte units of an 18-bit shared address); bits 49-51
// base offset; bits 62-63 swizzle: 0 none (interleave), 1 128B, 2 64B, 3 32B. Every thread passes the same value.
// The operand is an MN x K matrix (A: 64 x K, B: N x K), K = 32 bytes (16 f16/bf16, 8 tf32); T = 16 bytes of
// elements. A "core matrix" is 8 rows of 16 bytes. The address of element (mn, k), before the swizzle, is start +
// e * (element bytes) + 16 * (the chunk's offset below), W = the swizzle span / 16 (8, 4, 2) (CUTLASS's canonical
// GMMA layouts, include/cute/atom/mma_traits_sm90_gmma.hpp):
//   K-major, none:      16 (mn % 8) + SBO (mn / 8) + LBO (k / T), e = k % T    (core matrices: MN at SBO, K at LBO)
//   K-major, swizzled:  16 W (mn % 8) + SBO (mn / 8) + 16 (k / T), e = k % T   (rows of W chunks; LBO unused)
//   MN-major, none:     SBO (mn / T) + 16 (k % 8) + LBO (k / 8), e = mn % T
//   MN-major, swizzled: 16 (c % W) + LBO (c / W) + 16 W (k % 8) + SBO (k / 8), c = mn / T, e = mn % T
// The swizzle then XORs the 16-byte chunk bits 4.. of the shared address with its bits 7.. (3, 2, 1 bits for 128B,
// 64B, 32B), the same function cp.async.bulk.tensor applies (kernels/cuda/tensor_copy.cuh): a tile that TMA wrote
// with a swizzle is read by a descriptor with that swizzle, SBO = 8 rows of the span (1024, 512, 256 bytes), and
// start addresses advanced by 32 bytes per k-step inside the span. The base offset is for patterns that do not
// start at their 1024/512/256-byte boundary; make_wgmma_desc writes 0.
//
// Emulator specifics:
//   - Descriptors hold emulated shared addresses: shared memory lives at host addresses, which do not fit 14 bits,
//     so the emulator maps it into a 256 KiB emulated space (dynamic shared memory at 0, a window per static
//     __shared__ variable when a descriptor is first made for it; kernels/emu/emu.h, shared_window_address) and
//     make_wgmma_desc encodes that address. The fields, and arithmetic on them (wgmma_desc_advance), are the same as
//     on a GPU; only the start address's value differs. A start address outside every window, an operand running
//     past its buffer, a non-zero base offset (not emulated) or descriptors differing between threads are errors.
//   - Each instruction is a rendezvous of the whole warpgroup (stricter than the hardware's per-warp .sync: a
//     warpgroup whose warps depend on each other between two wgmma instructions would deadlock here); threads at
//     different wgmma instructions, a partial warpgroup, or a thread exiting while its warpgroup waits for it are
//     errors. A wgmma.mma_async before the warpgroup's first wgmma.fence is an error; later missing fences are not
//     caught (the emulator cannot see register accesses).
//   - wgmma.mma_async takes the A registers at issue and queues the MMA. The MMA runs when a wgmma.wait_group
//     retires its group: only then does it read the shared operands and the accumulators and write the
//     accumulators. So a kernel that reads the accumulators before the wait reads their old values, and one that
//     overwrites an operand in shared memory before the wait (a producer refilling a stage too early) changes the
//     result, which schedule fuzzing shows. A thread that exits with MMAs of its warpgroup not retired is an error.
//   - Each D element is the (scaled) C plus the exact products summed in double in k order, rounded once to f32;
//     tf32 operands drop their 13 low mantissa bits first. A GPU may differ by a few ulp (as for mma.sync).
//   - The fences are no-ops beyond that check; setmaxnreg checks its count at compile time and rendezvouses.
//   - At issue, the shared operands are an async-proxy read (kernels/cuda/async_copy.cuh): bytes that ordinary stores
//     changed without a fence.proxy.async taking effect since are an error.
//   - Under nvcc, nothing stops the compiler from moving reads of the accumulators across wgmma.wait_group (the
//     asm has no register operands): call wgmma_fence_operand(d) after the wait (and before wgmma.fence), as CUTLASS
//     does; in the emulator it is a no-op.
#pragma once
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cuda_compat.cuh"

#if UNET_EMULATED
#include <cstring>
#include <source_location>
#include <string>
#endif

namespace unet::kernels::cuda {

// The descriptor's swizzle field (bits 62-63).
enum class WgmmaSwizzle : uint32_t { none = 0, b128 = 1, b64 = 2, b32 = 3 };

// A matrix descriptor from its fields: an 18-bit shared address and the two byte offsets (multiples of 16), base
// offset 0. The same bits in both builds; only what a shared address is differs (see the header comment).
__host__ __device__ constexpr uint64_t wgmma_desc_encode(uint32_t smem_address, uint32_t leading_byte_offset,
                                                         uint32_t stride_byte_offset, WgmmaSwizzle swizzle) {
  auto field = [](uint32_t x) { return static_cast<uint64_t>((x & 0x3FFFFu) >> 4); };
  return field(smem_address) | field(leading_byte_offset) << 16 | field(stride_byte_offset) << 32 |
         static_cast<uint64_t>(swizzle) << 62;
}

// The descriptor moved on by `bytes` (a multiple of 16) in shared memory: the next k-step or pipeline stage.
__host__ __device__ constexpr uint64_t wgmma_desc_advance(uint64_t desc, uint32_t bytes) {
  return desc + (bytes >> 4);
}

// Compile-time rules of the wrappers below (the PTX ISA's valid shapes and immediates).
template <int N, int TransA, int TransB, int ScaleA, int ScaleB>
__host__ __device__ constexpr bool wgmma_valid() {
  static_assert(N >= 8 && N <= 256 && N % 8 == 0, "wgmma: N is a multiple of 8 in 8..256");
  static_assert((TransA == 0 || TransA == 1) && (TransB == 0 || TransB == 1), "wgmma: transpose flags are 0 or 1");
  static_assert((ScaleA == 1 || ScaleA == -1) && (ScaleB == 1 || ScaleB == -1), "wgmma: scales are 1 or -1");
  return true;
}
template <class T>
__host__ __device__ constexpr bool wgmma_16bit() {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "wgmma k16: f16 or bf16 inputs");
  return true;
}
template <unsigned Count>
__host__ __device__ constexpr bool setmaxnreg_valid() {
  static_assert(Count >= 24 && Count <= 256 && Count % 8 == 0, "setmaxnreg: a multiple of 8 in 24..256");
  return true;
}

#if !UNET_EMULATED

// wgmma exists only on sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); in nvcc's host pass no device code is emitted.
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define UNET_SM90A_PTX 1
#else
#define UNET_SM90A_PTX 0
#endif

// The descriptor of the shared-memory operand at `smem` (see the header comment for LBO and SBO).
__device__ __forceinline__ uint64_t make_wgmma_desc(const void* smem, uint32_t leading_byte_offset,
                                                    uint32_t stride_byte_offset, WgmmaSwizzle swizzle) {
  return wgmma_desc_encode(static_cast<uint32_t>(__cvta_generic_to_shared(smem)), leading_byte_offset,
                           stride_byte_offset, swizzle);
}

__device__ __forceinline__ void wgmma_fence() {
#if UNET_SM90A_PTX
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void wgmma_commit_group() {
#if UNET_SM90A_PTX
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

// Waits until at most N of this warpgroup's wgmma-groups are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait_group() {
  static_assert(N >= 0, "wgmma_wait_group: N >= 0");
#if UNET_SM90A_PTX
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#else
  __trap();
#endif
}

// Keeps the compiler from moving accesses of these registers across wgmma.fence / wait_group (see the header).
template <class R, int K>
__device__ __forceinline__ void wgmma_fence_operand(R (&r)[K]) {
#pragma unroll
  for (int i = 0; i < K; ++i) {
    if constexpr (std::is_same_v<R, float>)
      asm volatile("" : "+f"(r[i])::"memory");
    else
      asm volatile("" : "+r"(r[i])::"memory");
  }
}

template <unsigned Count>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(setmaxnreg_valid<Count>());
#if UNET_SM90A_PTX
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Count));
#else
  __trap();
#endif
}
template <unsigned Count>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(setmaxnreg_valid<Count>());
#if UNET_SM90A_PTX
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Count));
#else
  __trap();
#endif
}

// The operand lists of one wgmma.mma_async per N (nvcc has no named asm operands, so every number is spelled out):
// UNET_WGMMA_Dk is "%0, .., %(4k - 1)", the N / 2 = 4k accumulator registers of N = 8k; UNET_WGMMA_Fk(d) their
// "+f" operands; UNET_WGMMA_INk is N as a string, then the numbers of the 9 operands that follow them.
// clang-format off
#define UNET_WGMMA_D1 "%0, %1, %2, %3"
#define UNET_WGMMA_D2 UNET_WGMMA_D1 ", %4, %5, %6, %7"
#define UNET_WGMMA_D3 UNET_WGMMA_D2 ", %8, %9, %10, %11"
#define UNET_WGMMA_D4 UNET_WGMMA_D3 ", %12, %13, %14, %15"
#define UNET_WGMMA_D5 UNET_WGMMA_D4 ", %16, %17, %18, %19"
#define UNET_WGMMA_D6 UNET_WGMMA_D5 ", %20, %21, %22, %23"
#define UNET_WGMMA_D7 UNET_WGMMA_D6 ", %24, %25, %26, %27"
#define UNET_WGMMA_D8 UNET_WGMMA_D7 ", %28, %29, %30, %31"
#define UNET_WGMMA_D9 UNET_WGMMA_D8 ", %32, %33, %34, %35"
#define UNET_WGMMA_D10 UNET_WGMMA_D9 ", %36, %37, %38, %39"
#define UNET_WGMMA_D11 UNET_WGMMA_D10 ", %40, %41, %42, %43"
#define UNET_WGMMA_D12 UNET_WGMMA_D11 ", %44, %45, %46, %47"
#define UNET_WGMMA_D13 UNET_WGMMA_D12 ", %48, %49, %50, %51"
#define UNET_WGMMA_D14 UNET_WGMMA_D13 ", %52, %53, %54, %55"
#define UNET_WGMMA_D15 UNET_WGMMA_D14 ", %56, %57, %58, %59"
#define UNET_WGMMA_D16 UNET_WGMMA_D15 ", %60, %61, %62, %63"
#define UNET_WGMMA_D17 UNET_WGMMA_D16 ", %64, %65, %66, %67"
#define UNET_WGMMA_D18 UNET_WGMMA_D17 ", %68, %69, %70, %71"
#define UNET_WGMMA_D19 UNET_WGMMA_D18 ", %72, %73, %74, %75"
#define UNET_WGMMA_D20 UNET_WGMMA_D19 ", %76, %77, %78, %79"
#define UNET_WGMMA_D21 UNET_WGMMA_D20 ", %80, %81, %82, %83"
#define UNET_WGMMA_D22 UNET_WGMMA_D21 ", %84, %85, %86, %87"
#define UNET_WGMMA_D23 UNET_WGMMA_D22 ", %88, %89, %90, %91"
#define UNET_WGMMA_D24 UNET_WGMMA_D23 ", %92, %93, %94, %95"
#define UNET_WGMMA_D25 UNET_WGMMA_D24 ", %96, %97, %98, %99"
#define UNET_WGMMA_D26 UNET_WGMMA_D25 ", %100, %101, %102, %103"
#define UNET_WGMMA_D27 UNET_WGMMA_D26 ", %104, %105, %106, %107"
#define UNET_WGMMA_D28 UNET_WGMMA_D27 ", %108, %109, %110, %111"
#define UNET_WGMMA_D29 UNET_WGMMA_D28 ", %112, %113, %114, %115"
#define UNET_WGMMA_D30 UNET_WGMMA_D29 ", %116, %117, %118, %119"
#define UNET_WGMMA_D31 UNET_WGMMA_D30 ", %120, %121, %122, %123"
#define UNET_WGMMA_D32 UNET_WGMMA_D31 ", %124, %125, %126, %127"
#define UNET_WGMMA_F1(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
#define UNET_WGMMA_F2(d) UNET_WGMMA_F1(d), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
#define UNET_WGMMA_F3(d) UNET_WGMMA_F2(d), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11])
#define UNET_WGMMA_F4(d) UNET_WGMMA_F3(d), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define UNET_WGMMA_F5(d) UNET_WGMMA_F4(d), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19])
#define UNET_WGMMA_F6(d) UNET_WGMMA_F5(d), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23])
#define UNET_WGMMA_F7(d) UNET_WGMMA_F6(d), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27])
#define UNET_WGMMA_F8(d) UNET_WGMMA_F7(d), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define UNET_WGMMA_F9(d) UNET_WGMMA_F8(d), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35])
#define UNET_WGMMA_F10(d) UNET_WGMMA_F9(d), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])
#define UNET_WGMMA_F11(d) UNET_WGMMA_F10(d), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43])
#define UNET_WGMMA_F12(d) UNET_WGMMA_F11(d), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
#define UNET_WGMMA_F13(d) UNET_WGMMA_F12(d), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51])
#define UNET_WGMMA_F14(d) UNET_WGMMA_F13(d), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55])
#define UNET_WGMMA_F15(d) UNET_WGMMA_F14(d), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59])
#define UNET_WGMMA_F16(d) UNET_WGMMA_F15(d), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define UNET_WGMMA_F17(d) UNET_WGMMA_F16(d), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67])
#define UNET_WGMMA_F18(d) UNET_WGMMA_F17(d), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71])
#define UNET_WGMMA_F19(d) UNET_WGMMA_F18(d), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75])
#define UNET_WGMMA_F20(d) UNET_WGMMA_F19(d), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79])
#define UNET_WGMMA_F21(d) UNET_WGMMA_F20(d), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83])
#define UNET_WGMMA_F22(d) UNET_WGMMA_F21(d), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87])
#define UNET_WGMMA_F23(d) UNET_WGMMA_F22(d), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91])
#define UNET_WGMMA_F24(d) UNET_WGMMA_F23(d), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
#define UNET_WGMMA_F25(d) UNET_WGMMA_F24(d), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99])
#define UNET_WGMMA_F26(d) UNET_WGMMA_F25(d), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103])
#define UNET_WGMMA_F27(d) UNET_WGMMA_F26(d), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107])
#define UNET_WGMMA_F28(d) UNET_WGMMA_F27(d), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111])
#define UNET_WGMMA_F29(d) UNET_WGMMA_F28(d), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115])
#define UNET_WGMMA_F30(d) UNET_WGMMA_F29(d), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119])
#define UNET_WGMMA_F31(d) UNET_WGMMA_F30(d), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123])
#define UNET_WGMMA_F32(d) UNET_WGMMA_F31(d), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
#define UNET_WGMMA_IN1 "8", "%4", "%5", "%6", "%7", "%8", "%9", "%10", "%11", "%12"
#define UNET_WGMMA_IN2 "16", "%8", "%9", "%10", "%11", "%12", "%13", "%14", "%15", "%16"
#define UNET_WGMMA_IN3 "24", "%12", "%13", "%14", "%15", "%16", "%17", "%18", "%19", "%20"
#define UNET_WGMMA_IN4 "32", "%16", "%17", "%18", "%19", "%20", "%21", "%22", "%23", "%24"
#define UNET_WGMMA_IN5 "40", "%20", "%21", "%22", "%23", "%24", "%25", "%26", "%27", "%28"
#define UNET_WGMMA_IN6 "48", "%24", "%25", "%26", "%27", "%28", "%29", "%30", "%31", "%32"
#define UNET_WGMMA_IN7 "56", "%28", "%29", "%30", "%31", "%32", "%33", "%34", "%35", "%36"
#define UNET_WGMMA_IN8 "64", "%32", "%33", "%34", "%35", "%36", "%37", "%38", "%39", "%40"
#define UNET_WGMMA_IN9 "72", "%36", "%37", "%38", "%39", "%40", "%41", "%42", "%43", "%44"
#define UNET_WGMMA_IN10 "80", "%40", "%41", "%42", "%43", "%44", "%45", "%46", "%47", "%48"
#define UNET_WGMMA_IN11 "88", "%44", "%45", "%46", "%47", "%48", "%49", "%50", "%51", "%52"
#define UNET_WGMMA_IN12 "96", "%48", "%49", "%50", "%51", "%52", "%53", "%54", "%55", "%56"
#define UNET_WGMMA_IN13 "104", "%52", "%53", "%54", "%55", "%56", "%57", "%58", "%59", "%60"
#define UNET_WGMMA_IN14 "112", "%56", "%57", "%58", "%59", "%60", "%61", "%62", "%63", "%64"
#define UNET_WGMMA_IN15 "120", "%60", "%61", "%62", "%63", "%64", "%65", "%66", "%67", "%68"
#define UNET_WGMMA_IN16 "128", "%64", "%65", "%66", "%67", "%68", "%69", "%70", "%71", "%72"
#define UNET_WGMMA_IN17 "136", "%68", "%69", "%70", "%71", "%72", "%73", "%74", "%75", "%76"
#define UNET_WGMMA_IN18 "144", "%72", "%73", "%74", "%75", "%76", "%77", "%78", "%79", "%80"
#define UNET_WGMMA_IN19 "152", "%76", "%77", "%78", "%79", "%80", "%81", "%82", "%83", "%84"
#define UNET_WGMMA_IN20 "160", "%80", "%81", "%82", "%83", "%84", "%85", "%86", "%87", "%88"
#define UNET_WGMMA_IN21 "168", "%84", "%85", "%86", "%87", "%88", "%89", "%90", "%91", "%92"
#define UNET_WGMMA_IN22 "176", "%88", "%89", "%90", "%91", "%92", "%93", "%94", "%95", "%96"
#define UNET_WGMMA_IN23 "184", "%92", "%93", "%94", "%95", "%96", "%97", "%98", "%99", "%100"
#define UNET_WGMMA_IN24 "192", "%96", "%97", "%98", "%99", "%100", "%101", "%102", "%103", "%104"
#define UNET_WGMMA_IN25 "200", "%100", "%101", "%102", "%103", "%104", "%105", "%106", "%107", "%108"
#define UNET_WGMMA_IN26 "208", "%104", "%105", "%106", "%107", "%108", "%109", "%110", "%111", "%112"
#define UNET_WGMMA_IN27 "216", "%108", "%109", "%110", "%111", "%112", "%113", "%114", "%115", "%116"
#define UNET_WGMMA_IN28 "224", "%112", "%113", "%114", "%115", "%116", "%117", "%118", "%119", "%120"
#define UNET_WGMMA_IN29 "232", "%116", "%117", "%118", "%119", "%120", "%121", "%122", "%123", "%124"
#define UNET_WGMMA_IN30 "240", "%120", "%121", "%122", "%123", "%124", "%125", "%126", "%127", "%128"
#define UNET_WGMMA_IN31 "248", "%124", "%125", "%126", "%127", "%128", "%129", "%130", "%131", "%132"
#define UNET_WGMMA_IN32 "256", "%128", "%129", "%130", "%131", "%132", "%133", "%134", "%135", "%136"
// clang-format on
#define UNET_WGMMA_CALL(M, ...) M(__VA_ARGS__)
#define UNET_WGMMA_CASE(k, BODY, TYPE)                                                  \
  if constexpr (N == 8 * k) {                                                           \
    UNET_WGMMA_CALL(BODY, TYPE, UNET_WGMMA_D##k, UNET_WGMMA_IN##k, UNET_WGMMA_F##k(d)); \
  }
// BODY(TYPE, ...) for the one N of the instantiation, of 8 .. 256.
#define UNET_WGMMA_FOR_EACH_N(BODY, TYPE) \
  UNET_WGMMA_CASE(1, BODY, TYPE)          \
  UNET_WGMMA_CASE(2, BODY, TYPE)          \
  UNET_WGMMA_CASE(3, BODY, TYPE)          \
  UNET_WGMMA_CASE(4, BODY, TYPE)          \
  UNET_WGMMA_CASE(5, BODY, TYPE)          \
  UNET_WGMMA_CASE(6, BODY, TYPE)          \
  UNET_WGMMA_CASE(7, BODY, TYPE)          \
  UNET_WGMMA_CASE(8, BODY, TYPE)          \
  UNET_WGMMA_CASE(9, BODY, TYPE)          \
  UNET_WGMMA_CASE(10, BODY, TYPE)         \
  UNET_WGMMA_CASE(11, BODY, TYPE)         \
  UNET_WGMMA_CASE(12, BODY, TYPE)         \
  UNET_WGMMA_CASE(13, BODY, TYPE)         \
  UNET_WGMMA_CASE(14, BODY, TYPE)         \
  UNET_WGMMA_CASE(15, BODY, TYPE)         \
  UNET_WGMMA_CASE(16, BODY, TYPE)         \
  UNET_WGMMA_CASE(17, BODY, TYPE)         \
  UNET_WGMMA_CASE(18, BODY, TYPE)         \
  UNET_WGMMA_CASE(19, BODY, TYPE)         \
  UNET_WGMMA_CASE(20, BODY, TYPE)         \
  UNET_WGMMA_CASE(21, BODY, TYPE)         \
  UNET_WGMMA_CASE(22, BODY, TYPE)         \
  UNET_WGMMA_CASE(23, BODY, TYPE)         \
  UNET_WGMMA_CASE(24, BODY, TYPE)         \
  UNET_WGMMA_CASE(25, BODY, TYPE)         \
  UNET_WGMMA_CASE(26, BODY, TYPE)         \
  UNET_WGMMA_CASE(27, BODY, TYPE)         \
  UNET_WGMMA_CASE(28, BODY, TYPE)         \
  UNET_WGMMA_CASE(29, BODY, TYPE)         \
  UNET_WGMMA_CASE(30, BODY, TYPE)         \
  UNET_WGMMA_CASE(31, BODY, TYPE)         \
  UNET_WGMMA_CASE(32, BODY, TYPE)
// The four instruction forms: A from a descriptor (SS) or registers (RS), with or without transpose immediates.
// The operands after the accumulators are i0, i1, ...; scale-d becomes the predicate p.
#define UNET_WGMMA_PRED(i) "{\n.reg .pred p;\nsetp.ne.b32 p, " i ", 0;\nwgmma.mma_async.sync.aligned.m64n"
#define UNET_WGMMA_SS_TRANS(TYPE, D, NS, i0, i1, i2, i3, i4, i5, i6, i7, i8, ...)                                 \
  asm volatile(UNET_WGMMA_PRED(i2) NS TYPE " {" D "}, " i0 ", " i1 ", p, " i3 ", " i4 ", " i5 ", " i6 ";\n}\n"    \
               : __VA_ARGS__                                                                                      \
               : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(scale_d)), "n"(ScaleA), "n"(ScaleB), "n"(TransA), \
                 "n"(TransB))
#define UNET_WGMMA_SS(TYPE, D, NS, i0, i1, i2, i3, i4, i5, i6, i7, i8, ...)                    \
  asm volatile(UNET_WGMMA_PRED(i2) NS TYPE " {" D "}, " i0 ", " i1 ", p, " i3 ", " i4 ";\n}\n" \
               : __VA_ARGS__                                                                   \
               : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(scale_d)), "n"(ScaleA), "n"(ScaleB))
#define UNET_WGMMA_RS_TRANS(TYPE, D, NS, i0, i1, i2, i3, i4, i5, i6, i7, i8, ...)                                      \
  asm volatile(UNET_WGMMA_PRED(i5) NS TYPE " {" D "}, {" i0 ", " i1 ", " i2 ", " i3 "}, " i4 ", p, " i6 ", " i7        \
                                           ", " i8 ";\n}\n"                                                            \
               : __VA_ARGS__                                                                                           \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(static_cast<int>(scale_d)), "n"(ScaleA), \
                 "n"(ScaleB), "n"(TransB))
#define UNET_WGMMA_RS(TYPE, D, NS, i0, i1, i2, i3, i4, i5, i6, i7, i8, ...)                                            \
  asm volatile(UNET_WGMMA_PRED(i5) NS TYPE " {" D "}, {" i0 ", " i1 ", " i2 ", " i3 "}, " i4 ", p, " i6 ", " i7        \
                                           ";\n}\n"                                                                    \
               : __VA_ARGS__                                                                                           \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(static_cast<int>(scale_d)), "n"(ScaleA), \
                 "n"(ScaleB))

// d = A * B + (scale_d ? d : 0), A (64 x 16) and B (16 x N) from shared memory; T is __half or __nv_bfloat16.
// TransA / TransB: 0 = K-major, 1 = MN-major. Asynchronous: see the header comment.
template <class T, int N, int TransA = 0, int TransB = 0, int ScaleA = 1, int ScaleB = 1>
__device__ __forceinline__ void wgmma_m64nNk16_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool scale_d) {
  static_assert(wgmma_16bit<T>() && wgmma_valid<N, TransA, TransB, ScaleA, ScaleB>());
#if UNET_SM90A_PTX
  if constexpr (std::is_same_v<T, __half>) {
    UNET_WGMMA_FOR_EACH_N(UNET_WGMMA_SS_TRANS, "k16.f32.f16.f16")
  } else {
    UNET_WGMMA_FOR_EACH_N(UNET_WGMMA_SS_TRANS, "k16.f32.bf16.bf16")
  }
#else
  __trap();
#endif
}

// The same with A (64 x 16, K-major) from registers (the fragment layout in the header comment).
template <class T, int N, int TransB = 0, int ScaleA = 1, int ScaleB = 1>
__device__ __forceinline__ void wgmma_m64nNk16_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                                  bool scale_d) {
  static_assert(wgmma_16bit<T>() && wgmma_valid<N, 0, TransB, ScaleA, ScaleB>());
#if UNET_SM90A_PTX
  if constexpr (std::is_same_v<T, __half>) {
    UNET_WGMMA_FOR_EACH_N(UNET_WGMMA_RS_TRANS, "k16.f32.f16.f16")
  } else {
    UNET_WGMMA_FOR_EACH_N(UNET_WGMMA_RS_TRANS, "k16.f32.bf16.bf16")
  }
#else
  __trap();
#endif
}

// d = A * B + (scale_d ? d : 0) for tf32 A (64 x 8) and B (8 x N), both K-major in shared memory.
template <int N, int ScaleA = 1, int ScaleB = 1>
__device__ __forceinline__ void wgmma_m64nNk8_tf32_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                                      bool scale_d) {
  static_assert(wgmma_valid<N, 0, 0, ScaleA, ScaleB>());
#if UNET_SM90A_PTX
  UNET_WGMMA_FOR_EACH_N(UNET_WGMMA_SS, "k8.f32.tf32.tf32")
#else
  __trap();
#endif
}

// The same with A from registers (tf32 values, e.g. from to_tf32 in kernels/cuda/mma.cuh).
template <int N, int ScaleA = 1, int ScaleB = 1>
__device__ __forceinline__ void wgmma_m64nNk8_tf32_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                                      bool scale_d) {
  static_assert(wgmma_valid<N, 0, 0, ScaleA, ScaleB>());
#if UNET_SM90A_PTX
  UNET_WGMMA_FOR_EACH_N(UNET_WGMMA_RS, "k8.f32.tf32.tf32")
#else
  __trap();
#endif
}

#undef UNET_SM90A_PTX

#else  // the device emulator (see the header comment)

namespace wgmma_emu {
enum class Type : uint8_t { f16, bf16, tf32 };

// One wgmma.mma_async instruction's static part.
struct Shape {
  Type type;
  int n, trans_a, trans_b, scale_a, scale_b;
  bool a_in_registers;
  bool operator==(const Shape&) const = default;
};

// What each thread brings to the rendezvous.
struct Issue {
  Shape shape;
  float* d;
  uint64_t desc_a, desc_b;
  uint32_t a[4];
  bool scale_d;
};

// The MMA as queued: the warpgroup's operands, run when its group retires.
struct Op {
  Shape shape;
  uint64_t desc_a, desc_b;
  bool scale_d;
  float* d[128];
  uint32_t a[128][4];
};

inline int element_bytes(Type t) {
  return t == Type::tf32 ? 4 : 2;
}

inline float to_float(Type t, uint32_t bits) {
  if (t == Type::f16) {
    __half_raw raw;
    raw.x = static_cast<uint16_t>(bits);
    return __half2float(__half(raw));
  }
  if (t == Type::bf16) {
    __nv_bfloat16_raw raw;
    raw.x = static_cast<uint16_t>(bits);
    return __bfloat162float(__nv_bfloat16(raw));
  }
  bits &= ~0x1fffu;  // the tensor core reads only the 19 high bits of a tf32 operand
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The emulated shared address of element (mn, k) of the MN x K operand that `desc` describes (header comment).
inline uint32_t element_address(uint64_t desc, bool mn_major, int mn, int k, int bytes) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3fff) << 4,
                 lbo = static_cast<uint32_t>(desc >> 16 & 0x3fff) << 4,
                 sbo = static_cast<uint32_t>(desc >> 32 & 0x3fff) << 4;
  const int mode = static_cast<int>(desc >> 62);
  const uint32_t w = mode == 0 ? 1 : 16u >> mode;  // 16-byte chunks per swizzled row: 128B 8, 64B 4, 32B 2
  const int per_chunk = 16 / bytes;
  uint32_t offset;
  if (!mn_major) {
    const uint32_t r = mn % 8, j = mn / 8, kc = k / per_chunk, e = k % per_chunk;
    offset = (mode == 0 ? 16 * r + sbo * j + lbo * kc : 16 * w * r + sbo * j + 16 * kc) + e * bytes;
  } else {
    const uint32_t c = mn / per_chunk, r = k % 8, kk = k / 8, e = mn % per_chunk;
    offset =
        (mode == 0 ? sbo * c + 16 * r + lbo * kk : 16 * (c % w) + lbo * (c / w) + 16 * w * r + sbo * kk) + e * bytes;
  }
  const uint32_t a = start + offset;
  const uint32_t mask = mode == 0 ? 0 : w - 1;  // 7, 3 or 1 chunk-index bits
  return a ^ ((a >> 7 & mask) << 4);
}

// The MN x K operand (K = 32 bytes of elements) from shared memory, element (mn, k) at out[mn * k_size + k].
inline void read_operand(uint64_t desc, bool mn_major, int mn_size, Type t, float* out) {
  const int bytes = element_bytes(t), k_size = 32 / bytes;
  for (int mn = 0; mn < mn_size; ++mn)
    for (int k = 0; k < k_size; ++k) {
      const void* p = ::unet::emu::detail::shared_window_pointer(element_address(desc, mn_major, mn, k, bytes),
                                                                 static_cast<uint32_t>(bytes));
      uint32_t bits = 0;
      std::memcpy(&bits, p, bytes);
      out[mn * k_size + k] = to_float(t, bits);
    }
}

// The async-proxy read of the operand, one 16-byte chunk at a time (each holds one element at its start).
inline void check_visible(uint64_t desc, bool mn_major, int mn_size, Type t) {
  const int bytes = element_bytes(t), k_size = 32 / bytes;
  for (int mn = 0; mn < mn_size; ++mn)
    for (int k = 0; k < k_size; ++k)
      if (const uint32_t a = element_address(desc, mn_major, mn, k, bytes); a % 16 == 0)
        ::unet::emu::detail::async_proxy_read(::unet::emu::detail::shared_window_pointer(a, 16), 16,
                                              "wgmma.mma_async");
}

inline void check_descriptor(uint64_t desc, const char* which) {
  if ((desc >> 49 & 7) != 0)
    ::unet::emu::detail::fail(std::string("wgmma.mma_async: the descriptor of ") + which +
                              " has a non-zero base offset, which the emulator does not model");
  ::unet::emu::detail::shared_window_pointer(static_cast<uint32_t>(desc & 0x3fff) << 4, 16);
}

// Runs a queued MMA: reads A, B and the accumulators now, writes the accumulators.
inline void run(const Op& op) {
  const Shape& s = op.shape;
  const int k_size = 32 / element_bytes(s.type);
  float a[64 * 16], b[256 * 16];
  if (s.a_in_registers) {
    for (int r = 0; r < 128; ++r) {
      const int row0 = 16 * (r / 32) + (r % 32) / 4, t = r % 4;
      for (int i = 0; i < 4; ++i) {
        const int row = row0 + 8 * (i & 1);
        if (s.type == Type::tf32) {
          a[row * 8 + t + 4 * (i >> 1)] = to_float(s.type, op.a[r][i]);
        } else {
          for (int h = 0; h < 2; ++h) a[row * 16 + 2 * t + h + 8 * (i >> 1)] = to_float(s.type, op.a[r][i] >> 16 * h);
        }
      }
    }
  } else {
    read_operand(op.desc_a, s.trans_a != 0, 64, s.type, a);
  }
  read_operand(op.desc_b, s.trans_b != 0, s.n, s.type, b);
  for (int r = 0; r < 128; ++r) {
    const int row0 = 16 * (r / 32) + (r % 32) / 4, t = r % 4;
    for (int v = 0; v < s.n / 2; ++v) {
      const int j = v / 4, i = v % 4, row = row0 + 8 * (i >> 1), col = 8 * j + 2 * t + (i & 1);
      double sum = op.scale_d ? op.d[r][v] : 0.0;
      for (int k = 0; k < k_size; ++k)
        sum +=
            static_cast<double>(s.scale_a * a[row * k_size + k]) * static_cast<double>(s.scale_b * b[col * k_size + k]);
      op.d[r][v] = static_cast<float>(sum);
    }
  }
}

// The rendezvous of wgmma.mma_async: checks that the warpgroup agrees, takes the A registers, queues the MMA.
inline void mma_async(const Issue& mine, const std::source_location& site) {
  ::unet::emu::detail::warpgroup_collective(
      "wgmma.mma_async", &mine,
      [](const void* const* all) {
        auto issue = [all](int r) { return *static_cast<const Issue*>(all[r]); };
        const Issue first = issue(0);
        Op op;
        op.shape = first.shape;
        op.desc_a = first.desc_a;
        op.desc_b = first.desc_b;
        op.scale_d = first.scale_d;
        for (int r = 0; r < 128; ++r) {
          const Issue x = issue(r);
          if (!(x.shape == first.shape) || x.desc_b != first.desc_b || x.scale_d != first.scale_d ||
              (!first.shape.a_in_registers && x.desc_a != first.desc_a))
            ::unet::emu::detail::fail("wgmma.mma_async: thread " + std::to_string(r) +
                                      " of the warpgroup passes a different shape, descriptor or scale-d than "
                                      "thread 0 (they must be the same in every thread)");
          op.d[r] = x.d;
          std::memcpy(op.a[r], x.a, sizeof x.a);
        }
        if (!first.shape.a_in_registers) check_descriptor(first.desc_a, "A");
        check_descriptor(first.desc_b, "B");
        if (!first.shape.a_in_registers) check_visible(first.desc_a, first.shape.trans_a != 0, 64, first.shape.type);
        check_visible(first.desc_b, first.shape.trans_b != 0, first.shape.n, first.shape.type);
        ::unet::emu::detail::wgmma_issue([op] { run(op); });
      },
      site);
}

template <class T>
constexpr Type type_of() {
  return std::is_same_v<T, __half> ? Type::f16 : Type::bf16;
}
}  // namespace wgmma_emu

inline uint64_t make_wgmma_desc(const void* smem, uint32_t leading_byte_offset, uint32_t stride_byte_offset,
                                WgmmaSwizzle swizzle) {
  return wgmma_desc_encode(::unet::emu::detail::shared_window_address(smem), leading_byte_offset, stride_byte_offset,
                           swizzle);
}

inline void wgmma_fence(const std::source_location& site = std::source_location::current()) {
  ::unet::emu::detail::warpgroup_collective(
      "wgmma.fence", nullptr, [](const void* const*) { ::unet::emu::detail::wgmma_fence(); }, site);
}

inline void wgmma_commit_group(const std::source_location& site = std::source_location::current()) {
  ::unet::emu::detail::warpgroup_collective(
      "wgmma.commit_group", nullptr, [](const void* const*) { ::unet::emu::detail::wgmma_commit(); }, site);
}

template <int N>
void wgmma_wait_group(const std::source_location& site = std::source_location::current()) {
  static_assert(N >= 0, "wgmma_wait_group: N >= 0");
  ::unet::emu::detail::warpgroup_collective(
      "wgmma.wait_group", nullptr, [](const void* const*) { ::unet::emu::detail::wgmma_wait(N); }, site);
}

template <class R, int K>
void wgmma_fence_operand(R (&)[K]) {}

template <unsigned Count>
void setmaxnreg_inc(const std::source_location& site = std::source_location::current()) {
  static_assert(setmaxnreg_valid<Count>());
  ::unet::emu::detail::warpgroup_collective(
      "setmaxnreg.inc", nullptr, [](const void* const*) {}, site);
}
template <unsigned Count>
void setmaxnreg_dec(const std::source_location& site = std::source_location::current()) {
  static_assert(setmaxnreg_valid<Count>());
  ::unet::emu::detail::warpgroup_collective(
      "setmaxnreg.dec", nullptr, [](const void* const*) {}, site);
}

template <class T, int N, int TransA = 0, int TransB = 0, int ScaleA = 1, int ScaleB = 1>
void wgmma_m64nNk16_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool scale_d,
                       const std::source_location& site = std::source_location::current()) {
  static_assert(wgmma_16bit<T>() && wgmma_valid<N, TransA, TransB, ScaleA, ScaleB>());
  const wgmma_emu::Shape shape{wgmma_emu::type_of<T>(), N, TransA, TransB, ScaleA, ScaleB, false};
  wgmma_emu::mma_async(wgmma_emu::Issue{shape, d, desc_a, desc_b, {}, scale_d}, site);
}

template <class T, int N, int TransB = 0, int ScaleA = 1, int ScaleB = 1>
void wgmma_m64nNk16_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, bool scale_d,
                       const std::source_location& site = std::source_location::current()) {
  static_assert(wgmma_16bit<T>() && wgmma_valid<N, 0, TransB, ScaleA, ScaleB>());
  const wgmma_emu::Shape shape{wgmma_emu::type_of<T>(), N, 0, TransB, ScaleA, ScaleB, true};
  wgmma_emu::mma_async(wgmma_emu::Issue{shape, d, 0, desc_b, {a[0], a[1], a[2], a[3]}, scale_d}, site);
}

template <int N, int ScaleA = 1, int ScaleB = 1>
void wgmma_m64nNk8_tf32_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool scale_d,
                           const std::source_location& site = std::source_location::current()) {
  static_assert(wgmma_valid<N, 0, 0, ScaleA, ScaleB>());
  const wgmma_emu::Shape shape{wgmma_emu::Type::tf32, N, 0, 0, ScaleA, ScaleB, false};
  wgmma_emu::mma_async(wgmma_emu::Issue{shape, d, desc_a, desc_b, {}, scale_d}, site);
}

template <int N, int ScaleA = 1, int ScaleB = 1>
void wgmma_m64nNk8_tf32_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, bool scale_d,
                           const std::source_location& site = std::source_location::current()) {
  static_assert(wgmma_valid<N, 0, 0, ScaleA, ScaleB>());
  const wgmma_emu::Shape shape{wgmma_emu::Type::tf32, N, 0, 0, ScaleA, ScaleB, true};
  wgmma_emu::mma_async(wgmma_emu::Issue{shape, d, 0, desc_b, {a[0], a[1], a[2], a[3]}, scale_d}, site);
}

#endif

}  // namespace unet::kernels::cuda
