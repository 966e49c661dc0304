// Kernels for the device emulator's tests (tests/test_emu.cpp): small, each with an answer known in closed form, and
// a few with planted bugs. Plain CUDA through kernels/cuda/cuda_compat.cuh, so this text also compiles with nvcc.
#pragma once
#include "kernels/cuda/launch.cuh"

namespace emu_test {

constexpr unsigned kFull = 0xffffffffu;

// ---- indexing ----
// 2D grid of 2D blocks over a w x h image: out[y * w + x] = 1000 * y + x.
__global__ void write_2d_coords(int* out, int w, int h) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x < w && y < h) out[y * w + x] = 1000 * y + x;
}

// 3D grid of 3D blocks: every thread writes its 6 coordinates into its own slot, slots numbered block-major.
__global__ void write_3d_coords(int* out) {
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int* slot = out + 6 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
  slot[0] = blockIdx.x, slot[1] = blockIdx.y, slot[2] = blockIdx.z;
  slot[3] = threadIdx.x, slot[4] = threadIdx.y, slot[5] = threadIdx.z;
}

// ---- shared memory ----
// Each block of 128 threads reverses its 128 elements through a static shared tile.
__global__ void reverse_blocks_static(const float* in, float* out) {
  __shared__ float tile[128];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  tile[threadIdx.x] = in[i];
  __syncthreads();
  out[i] = tile[blockDim.x - 1 - threadIdx.x];
}

// The same with dynamic shared memory of blockDim.x floats.
__global__ void reverse_blocks_dynamic(const float* in, float* out) {
  DYN_SMEM(float, tile);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  tile[threadIdx.x] = in[i];
  __syncthreads();
  out[i] = tile[blockDim.x - 1 - threadIdx.x];
}

// Reads dynamic shared memory before anything writes it, then scribbles on it.
__global__ void read_fresh_dynamic_smem(unsigned* out) {
  DYN_SMEM(unsigned, s);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  out[i] = s[threadIdx.x];
  __syncthreads();
  s[threadIdx.x] = 7;
}

// ---- reductions ----
// Block-wide tree reduction (blockDim.x a power of two, at most 1024): out[blockIdx.x] = sum of a grid-stride slice.
__global__ void block_sum(const float* in, float* out, int n) {
  __shared__ float partial[1024];
  float s = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) s += in[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

// Only warp 0 reduces: the other warps have returned, and only warp 0 must rendezvous at the shuffles.
__global__ void warp0_sum(const float* in, float* out) {
  __shared__ float partial[1024];
  partial[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  if (threadIdx.x < 32) {
    float s = 0.0f;
    for (unsigned i = threadIdx.x; i < blockDim.x; i += 32) s += partial[i];
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_down_sync(kFull, s, offset);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
  }
}

// __syncthreads_count / _and / _or over the predicate threadIdx.x % 3 == 0, and an always-true one.
__global__ void barrier_votes(int* out) {
  const int p = threadIdx.x % 3 == 0;
  const int count = __syncthreads_count(p), all = __syncthreads_and(p), any = __syncthreads_or(p),
            all_true = __syncthreads_and(1);
  if (threadIdx.x == 0) out[0] = count, out[1] = all, out[2] = any, out[3] = all_true;
}

// ---- warp collectives ----
// Every thread's value is 100 * warp + lane; out[thread] = what the chosen shuffle returns.
enum ShuffleKind { kIdx, kUp, kDown, kXor };
__global__ void shuffle(int* out, int kind, int arg, int width) {
  const int t = threadIdx.x, v = 100 * (t / 32) + t % 32;
  int r = 0;
  switch (kind) {
    case kIdx:
      r = __shfl_sync(kFull, v, arg, width);
      break;
    case kUp:
      r = __shfl_up_sync(kFull, v, arg, width);
      break;
    case kDown:
      r = __shfl_down_sync(kFull, v, arg, width);
      break;
    case kXor:
      r = __shfl_xor_sync(kFull, v, arg, width);
      break;
  }
  out[t] = r;
}

// Inclusive prefix sum within each warp by __shfl_up_sync, on doubles (8-byte shuffles).
__global__ void warp_inclusive_scan(const double* in, double* out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
  double v = in[t];
  for (int d = 1; d < 32; d *= 2) {
    const double u = __shfl_up_sync(kFull, v, d);
    if (lane >= d) v += u;
  }
  out[t] = v;
}

// ballot / any / all over lane % 3 == 0 and lane < 32; out has 5 ints per warp.
__global__ void votes(unsigned* out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned ballot = __ballot_sync(kFull, lane % 3 == 0);
  const int any = __any_sync(kFull, lane == 31), none = __any_sync(kFull, lane > 40);
  const int all = __all_sync(kFull, lane < 32), not_all = __all_sync(kFull, lane % 2);
  __syncwarp();
  if (lane == 0) {
    unsigned* o = out + 5 * warp;
    o[0] = ballot, o[1] = any, o[2] = none, o[3] = all, o[4] = not_all;
  }
}

// __reduce_*_sync over value = lane - 10 (int) and lane + 5 (unsigned); 6 results per warp.
__global__ void warp_reduces(int* out) {
  const int lane = threadIdx.x % 32;
  const int a = __reduce_add_sync(kFull, lane - 10), lo = __reduce_min_sync(kFull, lane - 10),
            hi = __reduce_max_sync(kFull, lane - 10);
  const unsigned ua = __reduce_add_sync(kFull, unsigned(lane + 5)), ulo = __reduce_min_sync(kFull, unsigned(lane + 5)),
                 uhi = __reduce_max_sync(kFull, unsigned(lane + 5));
  if (lane == 0) {
    int* o = out + 6 * (threadIdx.x / 32);
    o[0] = a, o[1] = lo, o[2] = hi, o[3] = int(ua), o[4] = int(ulo), o[5] = int(uhi);
  }
}

// The two half-warps synchronise separately (disjoint masks), each reading what its own half wrote.
__global__ void half_warp_syncs(int* out) {
  __shared__ int s[32];
  s[threadIdx.x] = 10 * threadIdx.x;
  if (threadIdx.x < 16) {
    __syncwarp(0x0000ffffu);
    out[threadIdx.x] = s[15 - threadIdx.x];
  } else {
    __syncwarp(0xffff0000u);
    out[threadIdx.x] = s[47 - threadIdx.x];
  }
}

// A block of 40 threads: its second warp has 8 lanes. out[2 * warp] = ballot, out[2 * warp + 1] = sum of lanes'
// threadIdx.x, both with a full mask; out[4 + warp] = __activemask() after lane 0 of each warp has returned.
__global__ void partial_warp(unsigned* out) {
  const unsigned warp = threadIdx.x / 32;
  const unsigned ballot = __ballot_sync(kFull, 1), sum = __reduce_add_sync(kFull, threadIdx.x);
  if (threadIdx.x % 32 == 0) out[2 * warp] = ballot, out[2 * warp + 1] = sum;
  __syncthreads();
  if (threadIdx.x % 32 == 0) return;
  __syncthreads();
  const unsigned active = __activemask();
  if (threadIdx.x % 32 == 1) out[4 + warp] = active;
}

// ---- atomics ----
// counters: [0] int sum of 1..n, [1..2] unsigned long long sum (as two words), float count in fsum, double sum.
__global__ void atomic_sums(int n, int* isum, unsigned long long* usum, float* fcount, double* dsum) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  atomicAdd(isum, i + 1);
  atomicAdd(usum, static_cast<unsigned long long>(i + 1));
  atomicAdd(fcount, 1.0f);
  atomicAdd(dsum, static_cast<double>(i + 1));
}

// out[0] = max, out[1] = min of (i * 7919) % n - n / 2; out[2] = how many threads won the CAS from -1 on out[3];
// out[4] = atomicExch's last value (any thread's index + 1, never 0 once all ran).
__global__ void atomic_extremes(int n, int* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int v = static_cast<int>((static_cast<long long>(i) * 7919) % n) - n / 2;
  atomicMax(&out[0], v);
  atomicMin(&out[1], v);
  if (atomicCAS(&out[3], -1, i) == -1) atomicAdd(&out[2], 1);
  atomicExch(&out[4], i + 1);
}

// ---- half and bfloat16 ----
// out = [x * 2 in half, x rounded to bf16, x rounded to half]
__global__ void half_and_bf16(const float* in, float* out) {
  const int i = threadIdx.x;
  const __half h = __float2half(in[i]);
  out[3 * i] = __half2float(__hmul(h, __float2half(2.0f)));
  out[3 * i + 1] = __bfloat162float(__float2bfloat16(in[i]));
  out[3 * i + 2] = __half2float(h);
}

// ---- planted bugs ----
// Threads 0..15 and 16..31 wait at different __syncthreads: a divergent barrier.
constexpr int kDivergentLineA = __LINE__ + 4;
constexpr int kDivergentLineB = __LINE__ + 5;
__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Odd threads return before the barrier; the even ones must still get through it (exited threads do not hold it).
__global__ void early_exit_then_barrier(int* out) {
  __shared__ int s[64];
  if (threadIdx.x % 2) return;
  s[threadIdx.x] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 2) % blockDim.x];
}

// Thread 0 waits at a __syncthreads for lanes 1..31, which wait in a __shfl_sync for lane 0: neither can proceed.
constexpr int kDeadlockBarrierLine = __LINE__ + 4;
constexpr int kDeadlockShuffleLine = __LINE__ + 4;
__global__ void barrier_shuffle_deadlock(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x == 0) __syncthreads();
  v = __shfl_sync(kFull, v, 0);
  if (threadIdx.x != 0) __syncthreads();
  out[threadIdx.x] = v;
}

// Lane 5 returns, yet the others name it in a full-mask shuffle.
__global__ void shuffle_with_exited_lane(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_down_sync(kFull, static_cast<int>(threadIdx.x), 1);
}

// Half the warp votes, the other half shuffles: two different collectives meet.
constexpr int kMismatchBallotLine = __LINE__ + 4;
constexpr int kMismatchAnyLine = __LINE__ + 5;
__global__ void mismatched_collectives(int* out) {
  if (threadIdx.x < 16) {
    out[threadIdx.x] = __ballot_sync(kFull, 1);
  } else {
    out[threadIdx.x] = __any_sync(kFull, 1);
  }
}

// Thread 3 of block 1 asks for a shuffle width that is not a power of two.
__global__ void bad_shuffle_width(int* out) {
  int v = threadIdx.x;
  if (blockIdx.x == 1 && threadIdx.x == 3) v = __shfl_sync(1u << 3, v, 0, 3);
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

// Each thread reads its neighbour's shared slot. With `synced` false the barrier between the write and the read is
// missing: a race, whose outcome depends on the order in which threads run.
__global__ void neighbour_read(int* out, bool synced) {
  __shared__ int s[256];
  s[threadIdx.x] = 0;
  __syncthreads();
  s[threadIdx.x] = threadIdx.x + 1;
  if (synced) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

}  // namespace emu_test
