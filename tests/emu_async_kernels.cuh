// Kernels for the Hopper asynchronous-copy wrapper tests (tests/test_emu_async.cpp): plain CUDA over
// kernels/cuda/async_copy.cuh, so the same text runs under the emulator and compiles with nvcc for sm_90a
// (tests/emu_async_kernels_nvcc.cu). Some are wrong on purpose, to show that the emulator catches the mistake.
#pragma once
#include <cstdint>

#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/launch.cuh"

namespace emu_async_test {

using unet::kernels::cuda::cp_async_bulk_global_to_shared;
using unet::kernels::cuda::fence_mbarrier_init;
using unet::kernels::cuda::fence_proxy_async_shared;
using unet::kernels::cuda::mbarrier_arrive;
using unet::kernels::cuda::mbarrier_arrive_expect_tx;
using unet::kernels::cuda::mbarrier_expect_tx;
using unet::kernels::cuda::mbarrier_init;
using unet::kernels::cuda::mbarrier_test_wait_parity;
using unet::kernels::cuda::mbarrier_wait_parity;

constexpr int kFloats = 1024;  // the copied block: 4 KiB, as four bulk copies of 1 KiB
constexpr unsigned kBytes = kFloats * sizeof(float);

// Thread 0 initialises `bar` for `count` arrivals; every thread sees it after the barrier.
__device__ inline void init_barrier(uint64_t* bar, unsigned count) {
  if (threadIdx.x == 0) {
    mbarrier_init(bar, count);
    fence_mbarrier_init();
  }
  __syncthreads();
}
// Copies in[first * 256 ..] to buf, one 1 KiB bulk copy per quarter, quarters first..last - 1, the last one first.
__device__ inline void copy_quarters(float* buf, const float* in, int first, int last, uint64_t* bar) {
  for (int q = last - 1; q >= first; --q) cp_async_bulk_global_to_shared(buf + 256 * q, in + 256 * q, 1024, bar);
}

// One block of 128 threads: thread 0 expects the 4 KiB (arrive.expect_tx) and copies `in` to shared memory, every
// thread waits for phase 0, then out[i] = the copy's element i.
__global__ void bulk_copy_then_wait(const float* in, float* out) {
  __shared__ __align__(16) float buf[kFloats];
  __shared__ __align__(8) uint64_t bar;
  init_barrier(&bar, 1);
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(&bar, kBytes);
    copy_quarters(buf, in, 0, 4, &bar);
  }
  mbarrier_wait_parity(&bar, 0);
  for (int i = threadIdx.x; i < kFloats; i += blockDim.x) out[i] = buf[i];
}

// As bulk_copy_then_wait, but the copies are issued before their bytes are expected (thread 0 expects them after a
// __syncthreads): the tx-count goes negative when a copy lands first, and the phase still completes exactly once.
__global__ void bulk_copy_before_expect_tx(const float* in, float* out) {
  __shared__ __align__(16) float buf[kFloats];
  __shared__ __align__(8) uint64_t bar;
  init_barrier(&bar, 1);
  if (threadIdx.x == 0) copy_quarters(buf, in, 0, 4, &bar);
  __syncthreads();
  if (threadIdx.x == 0) mbarrier_arrive_expect_tx(&bar, kBytes);
  mbarrier_wait_parity(&bar, 0);
  for (int i = threadIdx.x; i < kFloats; i += blockDim.x) out[i] = buf[i];
}

// Two producers on a barrier of two arrivals: thread 0 expects its half with expect_tx, copies it, then arrives;
// thread 32 arrives with arrive.expect_tx for its half, then copies it. The phase needs both arrivals and all bytes.
__global__ void bulk_copy_two_producers(const float* in, float* out) {
  __shared__ __align__(16) float buf[kFloats];
  __shared__ __align__(8) uint64_t bar;
  init_barrier(&bar, 2);
  if (threadIdx.x == 0) {
    mbarrier_expect_tx(&bar, kBytes / 2);
    copy_quarters(buf, in, 0, 2, &bar);
    mbarrier_arrive(&bar);
  } else if (threadIdx.x == 32) {
    mbarrier_arrive_expect_tx(&bar, kBytes / 2);
    copy_quarters(buf, in, 2, 4, &bar);
  }
  mbarrier_wait_parity(&bar, 0);
  for (int i = threadIdx.x; i < kFloats; i += blockDim.x) out[i] = buf[i];
}

// Planted bug: the threads read the copy after a __syncthreads but before waiting on the barrier (they wait only
// afterwards, so no copy outlives the block). Right only when the copies happen to land before the __syncthreads.
// The buffer is dynamic shared memory (kBytes), which the emulator fills with NaN bytes for every block.
__global__ void bulk_copy_read_before_wait(const float* in, float* out) {
  DYN_SMEM(float, buf);
  __shared__ __align__(8) uint64_t bar;
  init_barrier(&bar, 1);
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(&bar, kBytes);
    copy_quarters(buf, in, 0, 4, &bar);
  }
  __syncthreads();
  float v[kFloats / 128];
  for (int k = 0; k < kFloats / 128; ++k) v[k] = buf[threadIdx.x + 128 * k];
  mbarrier_wait_parity(&bar, 0);
  for (int k = 0; k < kFloats / 128; ++k) out[threadIdx.x + 128 * k] = v[k];
}

// Planted bug: thread 0 expects twice the bytes its copies bring, so phase 0 never completes (a deadlock).
__global__ void bulk_copy_expects_too_much(const float* in, float* out) {
  __shared__ __align__(16) float buf[kFloats];
  __shared__ __align__(8) uint64_t bar;
  init_barrier(&bar, 1);
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(&bar, 2 * kBytes);
    copy_quarters(buf, in, 0, 4, &bar);
  }
  mbarrier_wait_parity(&bar, 0);
  for (int i = threadIdx.x; i < kFloats; i += blockDim.x) out[i] = buf[i];
}

// Planted bug: nobody waits for the copies; the block exits with them in flight.
__global__ void bulk_copy_never_waited(const float* in) {
  __shared__ __align__(16) float buf[kFloats];
  __shared__ __align__(8) uint64_t bar;
  init_barrier(&bar, 1);
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(&bar, kBytes);
    copy_quarters(buf, in, 0, 4, &bar);
  }
}

// 64 threads on a barrier of 64 arrivals, three phases; thread t logs at log[t * 8 ..]:
//   0: test_wait(1) before any arrival (the phase "before phase 0" counts as complete), 1: test_wait(0) then,
//   2, 3, 4: the states arrive returns in rounds 0, 1, 2 (each round waits for the phase it arrived on),
//   5: test_wait(0) and 6: test_wait(1) after waiting for phase 0, 7: test_wait(1) after waiting for phase 1.
__global__ void mbarrier_phases(uint32_t* log) {
  __shared__ __align__(8) uint64_t bar;
  init_barrier(&bar, 64);
  uint32_t* mine = log + 8 * threadIdx.x;
  mine[0] = mbarrier_test_wait_parity(&bar, 1);
  mine[1] = mbarrier_test_wait_parity(&bar, 0);
  mine[2] = static_cast<uint32_t>(mbarrier_arrive(&bar));
  mbarrier_wait_parity(&bar, 0);
  mine[5] = mbarrier_test_wait_parity(&bar, 0);
  mine[6] = mbarrier_test_wait_parity(&bar, 1);  // phase 1 needs this thread's arrival: not complete yet
  mine[3] = static_cast<uint32_t>(mbarrier_arrive(&bar));
  mbarrier_wait_parity(&bar, 1);
  mine[7] = mbarrier_test_wait_parity(&bar, 1);
  mine[4] = static_cast<uint32_t>(mbarrier_arrive(&bar));
  mbarrier_wait_parity(&bar, 0);
}

// Planted bug: a barrier of one arrival receives two in phase 0 (which the first leaves waiting for 16 bytes).
__global__ void mbarrier_over_arrival() {
  __shared__ __align__(8) uint64_t bar;
  init_barrier(&bar, 1);
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(&bar, 16);
    mbarrier_arrive(&bar);
  }
}

// A producer/consumer ring, the shape of a Hopper main loop: `tiles` tiles of 256 floats stream through two stages.
// Thread 0 produces: for tile k into stage s = k % 2 it waits until the consumers have released the stage (empty[s],
// parity of its previous use), expects the bytes on full[s] and copies the tile. Threads 32..63 consume: they wait
// for full[s] (parity (k / 2) & 1), add up element lane + 32 j of the tile into sum[lane], and arrive on empty[s].
// With skip_empty_wait the producer overwrites a stage without waiting for its release (a planted race).
__global__ void ring_pipeline(const float* in, int tiles, float* sum, bool skip_empty_wait) {
  __shared__ __align__(16) float stage[2][256];
  __shared__ __align__(8) uint64_t full[2], empty[2];
  if (threadIdx.x == 0) {
    for (int s = 0; s < 2; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 32);
    }
    fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 0; k < tiles; ++k) {
      const int s = k % 2;
      const unsigned parity = ((k / 2) & 1) ^ 1;  // the first use of a stage waits for the phase before phase 0
      if (!skip_empty_wait) mbarrier_wait_parity(&empty[s], parity);
      mbarrier_arrive_expect_tx(&full[s], 1024);
      cp_async_bulk_global_to_shared(stage[s], in + 256 * k, 1024, &full[s]);
    }
  } else if (threadIdx.x >= 32) {
    const int lane = threadIdx.x - 32;
    float acc = 0.0f;
    for (int k = 0; k < tiles; ++k) {
      const int s = k % 2;
      mbarrier_wait_parity(&full[s], (k / 2) & 1);
      for (int j = 0; j < 8; ++j) acc += stage[s][lane + 32 * j];
      mbarrier_arrive(&empty[s]);
    }
    sum[lane] = acc;
  }
}

}  // namespace emu_async_test
