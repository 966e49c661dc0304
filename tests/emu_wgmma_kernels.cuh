// Kernels for the warpgroup MMA tests (tests/test_emu_wgmma.cpp): plain CUDA over kernels/cuda/wgmma.cuh,
// tensor_copy.cuh and async_copy.cuh, so the same text runs under the emulator and compiles with nvcc for sm_90a
// (tests/emu_async_kernels_nvcc.cu). The tiles reach shared memory as on Hopper: cp.async.bulk.tensor (TMA) into
// swizzled shared memory, an mbarrier wait, then wgmma reading them through descriptors. Some kernels are wrong on
// purpose, to show that the emulator catches the mistake.
#pragma once
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/element.cuh"  // UNET_UNROLL
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/tensor_copy.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace emu_wgmma_test {

using namespace unet::kernels::cuda;

// How one operand (an MN x K matrix) gets into shared memory and is described: `boxes` TMA boxes of a rank-3
// tensor map, box i at coords[i] landing at smem_offset[i] of the tile; the descriptor's LBO, SBO and swizzle; and the
// descriptor's start, relative to the tile, at each k-step.
struct OperandPlan {
  int boxes;
  int32_t coords[16][3];
  uint32_t smem_offset[16];
  uint32_t lbo, sbo;
  WgmmaSwizzle swizzle;
  uint32_t step_offset[16];
};

// What wgmma_gemm does. d = A (64 x K) * B (K x N) in k_steps steps of 32 bytes of K (16 f16/bf16, 8 tf32).
struct GemmPlan {
  OperandPlan a, b;
  uint32_t bytes;  // of all the boxes together (the mbarrier's transaction count)
  int k_steps, k_size;
  bool a_in_registers;      // A from registers, read from a_bits (row-major 64 x k_size, raw element bits)
  bool group_per_step;      // commit each k-step as its own group and keep one in flight (wgmma.wait_group 1)
  float initial;            // the accumulators' value before the first MMA (which has scale-d false)
  bool read_before_wait;    // planted bug: copy the accumulators out before wgmma.wait_group
  bool zero_b_before_wait;  // planted bug: overwrite the B tile with zeros before wgmma.wait_group
};

// Element (row, col) of the 64 x N accumulator held in d[v] by thread r of the warpgroup (kernels/cuda/wgmma.cuh).
__device__ inline int d_row(int r, int v) {
  return 16 * (r / 32) + (r % 32) / 4 + 8 * ((v % 4) >> 1);
}
__device__ inline int d_col(int r, int v) {
  return 8 * (v / 4) + 2 * (r % 4) + (v & 1);
}

// One k-step of d += A B with the wrapper T, N, the major-nesses and scales call for (T = float: tf32).
template <class T, int N, int TransA, int TransB, int ScaleA, int ScaleB>
__device__ inline void mma_step(float (&d)[N / 2], uint64_t desc_a, const uint32_t (&a)[4], uint64_t desc_b,
                                bool a_in_registers, bool scale_d) {
  if constexpr (std::is_same_v<T, float>) {
    if (a_in_registers)
      wgmma_m64nNk8_tf32_rs<N, ScaleA, ScaleB>(d, a, desc_b, scale_d);
    else
      wgmma_m64nNk8_tf32_ss<N, ScaleA, ScaleB>(d, desc_a, desc_b, scale_d);
  } else {
    if (a_in_registers)
      wgmma_m64nNk16_rs<T, N, TransB, ScaleA, ScaleB>(d, a, desc_b, scale_d);
    else
      wgmma_m64nNk16_ss<T, N, TransA, TransB, ScaleA, ScaleB>(d, desc_a, desc_b, scale_d);
  }
}

// This thread's A registers for k-step s (the fragment layouts in kernels/cuda/wgmma.cuh), from raw element bits.
template <class T>
__device__ inline void load_a(uint32_t (&a)[4], const void* a_bits, int k_size, int s, int r) {
  const int row0 = 16 * (r / 32) + (r % 32) / 4, t = r % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = row0 + 8 * (i & 1);
    if constexpr (std::is_same_v<T, float>) {
      a[i] = static_cast<const uint32_t*>(a_bits)[row * k_size + 8 * s + t + 4 * (i >> 1)];
    } else {
      const uint16_t* p = static_cast<const uint16_t*>(a_bits) + row * k_size + 16 * s + 2 * t + 8 * (i >> 1);
      a[i] = p[0] | static_cast<uint32_t>(p[1]) << 16;
    }
  }
}

// One warpgroup: TMA loads the A and B tiles (A unless it comes from registers), every thread waits on the mbarrier,
// then the warpgroup runs the k-steps and writes d to out (64 x N, row-major). ScaleA / ScaleB = -1 negate A / B.
template <class T, int N, int TransA, int TransB, int ScaleA = 1, int ScaleB = 1>
__global__ void wgmma_gemm(const __grid_constant__ TensorMap map_a, const __grid_constant__ TensorMap map_b,
                           GemmPlan plan, const void* a_bits, float* out) {
  __shared__ __align__(1024) unsigned char tile_a[8192];
  __shared__ __align__(1024) unsigned char tile_b[32768];
  __shared__ __align__(8) uint64_t bar;
  const int r = threadIdx.x;
  if (r == 0) {
    mbarrier_init(&bar, 1);
    fence_mbarrier_init();
  }
  __syncthreads();
  if (r == 0) {
    mbarrier_arrive_expect_tx(&bar, plan.bytes);
    for (int i = 0; i < plan.a.boxes; ++i)
      cp_async_bulk_tensor_global_to_shared<3>(tile_a + plan.a.smem_offset[i], map_a, plan.a.coords[i], &bar);
    for (int i = 0; i < plan.b.boxes; ++i)
      cp_async_bulk_tensor_global_to_shared<3>(tile_b + plan.b.smem_offset[i], map_b, plan.b.coords[i], &bar);
  }
  mbarrier_wait_parity(&bar, 0);

  float d[N / 2];
  UNET_UNROLL
  for (int v = 0; v < N / 2; ++v) d[v] = plan.initial;
  for (int s = 0; s < plan.k_steps; ++s) {
    uint32_t a[4] = {0, 0, 0, 0};
    if (plan.a_in_registers) load_a<T>(a, a_bits, plan.k_size, s, r);
    const uint64_t desc_a = make_wgmma_desc(tile_a + plan.a.step_offset[s], plan.a.lbo, plan.a.sbo, plan.a.swizzle);
    const uint64_t desc_b = make_wgmma_desc(tile_b + plan.b.step_offset[s], plan.b.lbo, plan.b.sbo, plan.b.swizzle);
    wgmma_fence_operand(d);
    wgmma_fence();  // the accumulators and A registers were written by ordinary code
    mma_step<T, N, TransA, TransB, ScaleA, ScaleB>(d, desc_a, a, desc_b, plan.a_in_registers, s > 0);
    if (plan.group_per_step) {
      wgmma_commit_group();
      wgmma_wait_group<1>();  // the previous step's group is done; this one may still run
    }
  }
  if (!plan.group_per_step) wgmma_commit_group();
  if (plan.read_before_wait) {
    UNET_UNROLL
    for (int v = 0; v < N / 2; ++v) out[d_row(r, v) * N + d_col(r, v)] = d[v];
  }
  if (plan.zero_b_before_wait)
    for (int i = r; i < static_cast<int>(sizeof tile_b); i += 128) tile_b[i] = 0;
  wgmma_wait_group<0>();
  wgmma_fence_operand(d);
  if (!plan.read_before_wait) {
    UNET_UNROLL
    for (int v = 0; v < N / 2; ++v) out[d_row(r, v) * N + d_col(r, v)] = d[v];
  }
}

// The Hopper main loop, warp-specialized: warpgroup 0 produces, warpgroup 1 consumes. A (64 x 64 k_tiles, f16) and
// B (64 x 64 k_tiles, K-major) stream through two shared-memory stages of one 64 x 64 tile each, loaded by TMA with
// the 128B swizzle. Thread 0 fills stage s = kt % 2 once the consumers have released it (empty[s]); the consumers
// wait for full[s], issue the tile's four k-steps as one wgmma-group and keep it in flight while they issue the next
// tile's (wgmma.wait_group 1), releasing a stage only when its group has retired. With release_early (a planted
// race) they release the stage right after committing, so the producer may refill it while the MMAs still read it.
// __launch_bounds__ tells ptxas the register count at entry, which setmaxnreg adjusts.
__global__ void __launch_bounds__(256, 1)
    wgmma_pipeline(const __grid_constant__ TensorMap map_a, const __grid_constant__ TensorMap map_b, int k_tiles,
                   bool release_early, float* out) {
  __shared__ __align__(1024) unsigned char stage_a[2][8192];
  __shared__ __align__(1024) unsigned char stage_b[2][8192];
  __shared__ __align__(8) uint64_t full[2], empty[2];
  if (threadIdx.x == 0) {
    for (int s = 0; s < 2; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 128);
    }
    fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x < 128) {  // the producer warpgroup needs few registers
    setmaxnreg_dec<40>();
    if (threadIdx.x != 0) return;
    for (int kt = 0; kt < k_tiles; ++kt) {
      const int s = kt % 2;
      mbarrier_wait_parity(&empty[s], ((kt / 2) & 1) ^ 1);  // the first use waits for the phase before phase 0
      mbarrier_arrive_expect_tx(&full[s], 2 * 8192);
      const int32_t at[2] = {64 * kt, 0};
      cp_async_bulk_tensor_global_to_shared<2>(stage_a[s], map_a, at, &full[s]);
      cp_async_bulk_tensor_global_to_shared<2>(stage_b[s], map_b, at, &full[s]);
    }
    return;
  }
  setmaxnreg_inc<232>();
  const int r = threadIdx.x - 128;
  float d[32];
  UNET_UNROLL
  for (int v = 0; v < 32; ++v) d[v] = 0.0f;
  for (int kt = 0; kt < k_tiles; ++kt) {
    const int s = kt % 2;
    mbarrier_wait_parity(&full[s], (kt / 2) & 1);
    wgmma_fence();
    for (int step = 0; step < 4; ++step) {  // 32 bytes of K per step inside the 128-byte swizzled rows
      const uint64_t desc_a = make_wgmma_desc(stage_a[s] + 32 * step, 16, 1024, WgmmaSwizzle::b128);
      const uint64_t desc_b = make_wgmma_desc(stage_b[s] + 32 * step, 16, 1024, WgmmaSwizzle::b128);
      wgmma_m64nNk16_ss<__half, 64>(d, desc_a, desc_b, kt > 0 || step > 0);
    }
    wgmma_commit_group();
    if (release_early) mbarrier_arrive(&empty[s]);
    wgmma_wait_group<1>();  // the previous tile's group has retired: its stage may be refilled
    if (!release_early && kt > 0) mbarrier_arrive(&empty[(kt - 1) % 2]);
  }
  wgmma_wait_group<0>();
  wgmma_fence_operand(d);
  UNET_UNROLL
  for (int v = 0; v < 32; ++v) out[d_row(r, v) * 64 + d_col(r, v)] = d[v];
}

// Ordinary stores into operands a copy brought, then wgmma reading them (the async proxy). One warpgroup: one bulk copy
// each brings A (64 x 16 f16) and B (8 x 16), K-major without swizzle (core matrices: LBO 128, SBO 256) into 4 KiB of
// dynamic shared memory; every thread doubles its share of A with ordinary stores, then fence.proxy.async and a
// named barrier of the 128 threads make the stores visible to the wgmma that reads all of A; out = 2 A B^T (64 x 8).
// `omit` drops the fence or the barrier, which the emulator reports as a KernelError.
enum class ProxyStep : int { none, fence, barrier };
__global__ void wgmma_after_stores(const __half* a, const __half* b, ProxyStep omit, float* out) {
  DYN_SMEM(unsigned char, smem);
  __shared__ __align__(8) uint64_t full;
  if (threadIdx.x == 0) {
    mbarrier_init(&full, 1);
    fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(&full, 4096);
    cp_async_bulk_global_to_shared(smem, a, 2048, &full);
    cp_async_bulk_global_to_shared(smem + 2048, b, 2048, &full);
  }
  mbarrier_wait_parity(&full, 0);
  __half* const ah = reinterpret_cast<__half*>(smem);
  for (int i = threadIdx.x; i < 64 * 16; i += 128) ah[i] = __float2half(2.0f * __half2float(ah[i]));
  if (omit != ProxyStep::fence) fence_proxy_async_shared();
  if (omit != ProxyStep::barrier) named_barrier_sync(1, 128);
  float d[4] = {0, 0, 0, 0};
  wgmma_fence();
  wgmma_m64nNk16_ss<__half, 8>(d, make_wgmma_desc(smem, 128, 256, WgmmaSwizzle::none),
                               make_wgmma_desc(smem + 2048, 128, 256, WgmmaSwizzle::none), false);
  wgmma_commit_group();
  wgmma_wait_group<0>();
  wgmma_fence_operand(d);
  for (int v = 0; v < 4; ++v) out[d_row(threadIdx.x, v) * 8 + d_col(threadIdx.x, v)] = d[v];
}

// Planted bugs and misuse, each reported by the emulator as a KernelError (see the test for the messages).
enum class Misuse : int {
  partial_warpgroup,        // launched with 96 threads: no full warpgroup
  missing_fence,            // wgmma.mma_async without a wgmma.fence before it
  missing_wait,             // the block exits with the MMA committed but not waited for
  warp_skips,               // warp 3 skips the wgmma.fence the others execute
  divergent_descriptor,     // each warp passes its own B descriptor
  descriptor_out_of_range,  // B's SBO reaches past the dynamic shared memory
  base_offset,              // a descriptor with a base offset, which the emulator does not model
  divergent_instruction,    // warps 0-1 and 2-3 reach wgmma.fence at different instructions
  deadlock,                 // warp 3 waits at a __syncthreads while warps 0-2 wait for it at wgmma.fence
};

// 64 x 8 x 16 f16 MMA on dynamic shared memory (4 KiB, launched with exactly that) filled with ones.
__global__ void wgmma_misuse(Misuse m) {
  DYN_SMEM(unsigned char, smem);
  for (int i = threadIdx.x; i < 4096; i += blockDim.x) smem[i] = 0;
  __syncthreads();
  if (m == Misuse::warp_skips && threadIdx.x >= 96) return;
  float d[4] = {0, 0, 0, 0};
  uint64_t desc_a = make_wgmma_desc(smem, 128, 256, WgmmaSwizzle::none);  // A: 64 x 16 f16 = 2 KiB
  uint64_t desc_b = make_wgmma_desc(smem + 2048, 128, 256, WgmmaSwizzle::none);
  if (m == Misuse::divergent_descriptor) desc_b = wgmma_desc_advance(desc_b, 16 * (threadIdx.x / 32));
  if (m == Misuse::descriptor_out_of_range)  // its second core matrix along K starts at the end of the 4 KiB
    desc_b = make_wgmma_desc(smem + 3840, 256, 256, WgmmaSwizzle::none);
  if (m == Misuse::base_offset) desc_a |= uint64_t{1} << 49;
  if (m == Misuse::divergent_instruction && threadIdx.x >= 64)
    wgmma_fence();
  else if (m == Misuse::deadlock && threadIdx.x >= 96)
    __syncthreads();
  else if (m != Misuse::missing_fence)
    wgmma_fence();
  wgmma_m64nNk16_ss<__half, 8>(d, desc_a, desc_b, false);
  wgmma_commit_group();
  if (m != Misuse::missing_wait) wgmma_wait_group<0>();
}

}  // namespace emu_wgmma_test
