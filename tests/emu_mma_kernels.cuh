// Kernels for the tensor-core wrapper tests (tests/test_emu_mma.cpp): plain CUDA over kernels/cuda/mma.cuh, so the
// same text runs under the emulator and compiles with nvcc for sm_80 (tests/emu_mma_kernels_nvcc.cu).
#pragma once
#include <cstdint>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mma.cuh"

namespace emu_mma_test {

using unet::kernels::cuda::cp_async;
using unet::kernels::cuda::cp_async_commit;
using unet::kernels::cuda::cp_async_wait;
using unet::kernels::cuda::ldmatrix_x4;
using unet::kernels::cuda::ldmatrix_x4_trans;
using unet::kernels::cuda::mma_m16n8k16;
using unet::kernels::cuda::mma_m16n8k8_tf32;
using unet::kernels::cuda::to_tf32;

// One warp: d (16x8, row-major) = a (16x16, row-major) * b (16x8, k-major: b[k * 8 + n]) + c (16x8, row-major).
// A goes through ldmatrix_x4 (matrix j: rows 8(j & 1).., columns 8(j >> 1)..), B through ldmatrix_x4_trans (stored
// k-major, its transpose is the "col" operand), C and D straight from the fragment layout.
template <class T>
__global__ void mma_16x8x16(const T* a, const T* b, const float* c, float* d) {
  __shared__ __align__(16) T as[16][16];
  __shared__ __align__(16) T bs[16][8];
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  for (int i = lane; i < 16 * 16; i += 32) as[i / 16][i % 16] = a[i];
  for (int i = lane; i < 16 * 8; i += 32) bs[i / 8][i % 8] = b[i];
  __syncwarp();
  uint32_t af[4], bf[4];
  ldmatrix_x4(af, &as[(lane & 7) + 8 * ((lane >> 3) & 1)][8 * (lane >> 4)]);
  ldmatrix_x4_trans(bf, &bs[lane & 15][0]);  // lanes 16-31 repeat 0-15: bf[2], bf[3] are unused copies
  const uint32_t bfrag[2] = {bf[0], bf[1]};
  float acc[4];
  for (int i = 0; i < 4; ++i) acc[i] = c[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
  mma_m16n8k16<T>(acc, af, bfrag, acc);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = acc[i];
}

// One warp: d (16x8, row-major) = tf32(a) (16x8, row-major) * tf32(b) (8x8, k-major) + c (16x8, row-major), every
// fragment read straight from global memory through the .tf32 layout and converted by to_tf32.
__global__ void mma_16x8x8_tf32(const float* a, const float* b, const float* c, float* d) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  uint32_t af[4], bf[2];
  for (int i = 0; i < 4; ++i) af[i] = to_tf32(a[(g + 8 * (i & 1)) * 8 + t + 4 * (i >> 1)]);
  for (int i = 0; i < 2; ++i) bf[i] = to_tf32(b[(t + 4 * i) * 8 + g]);
  float acc[4];
  for (int i = 0; i < 4; ++i) acc[i] = c[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
  mma_m16n8k8_tf32(acc, af, bf, acc);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = acc[i];
}

// One warp: the four 8x8 matrices of `tile` (32 rows of 8 16-bit values; matrix j = rows 8j..8j+7) are stored in
// shared memory with their rows scattered (row p at slot (5p + 3) % 32), every lane passes the address of the row it
// names, and out[lane * 4 + j] / out_trans[lane * 4 + j] receive register j of ldmatrix_x4 / ldmatrix_x4_trans.
__global__ void ldmatrix_fragments(const uint16_t* tile, uint32_t* out, uint32_t* out_trans) {
  __shared__ __align__(16) uint16_t rows[32][8];
  const int lane = threadIdx.x;
  for (int i = 0; i < 8; ++i) rows[(5 * lane + 3) % 32][i] = tile[lane * 8 + i];
  __syncwarp();
  uint32_t r[4], rt[4];
  ldmatrix_x4(r, rows[(5 * lane + 3) % 32]);
  ldmatrix_x4_trans(rt, rows[(5 * lane + 3) % 32]);
  for (int j = 0; j < 4; ++j) {
    out[lane * 4 + j] = r[j];
    out_trans[lane * 4 + j] = rt[j];
  }
}

// C (m x n, row-major, f32) = A (m x k, row-major) * B (k x n, row-major); m, n, k multiples of 16, 8, 16. Four warps
// a block, one warp per 16x8 tile of C (grid: m * n / 512 blocks), looping over k in steps of 16. Each step's A tile
// (16x16) and B tile (16x8) are staged by cp_async into one of two per-warp buffers: step s + 1 is in flight while
// step s is multiplied (wait_group 1).
template <class T>
__global__ void gemm_tiles(const T* a, const T* b, float* c, int m, int n, int k) {
  __shared__ __align__(16) T as[4][2][16][16];
  __shared__ __align__(16) T bs[4][2][16][8];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int tile = blockIdx.x * 4 + warp, tiles_n = n / 8;
  if (tile >= (m / 16) * tiles_n) return;
  const int row0 = (tile / tiles_n) * 16, col0 = (tile % tiles_n) * 8;
  // Lane L copies 16 bytes (8 values): A row L / 2, columns 8 (L % 2)..; lanes 0-15 also B row L.
  auto stage = [&](int step, int buf) {
    const int k0 = step * 16;
    cp_async(&as[warp][buf][lane / 2][8 * (lane % 2)], a + (row0 + lane / 2) * k + k0 + 8 * (lane % 2));
    if (lane < 16) cp_async(&bs[warp][buf][lane][0], b + (k0 + lane) * n + col0);
    cp_async_commit();
  };
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const int steps = k / 16;
  stage(0, 0);
  for (int s = 0; s < steps; ++s) {
    const int buf = s % 2;
    if (s + 1 < steps) {
      stage(s + 1, 1 - buf);
      cp_async_wait<1>();  // step s has landed, step s + 1 may still be in flight
    } else {
      cp_async_wait<0>();
    }
    __syncwarp();  // every lane's copies of step s are visible to the warp
    uint32_t af[4], bf[4];
    ldmatrix_x4(af, &as[warp][buf][(lane & 7) + 8 * ((lane >> 3) & 1)][8 * (lane >> 4)]);
    ldmatrix_x4_trans(bf, &bs[warp][buf][lane & 15][0]);
    const uint32_t bfrag[2] = {bf[0], bf[1]};
    mma_m16n8k16<T>(acc, af, bfrag, acc);
    __syncwarp();  // the buffer is read before step s + 2 overwrites it
  }
  for (int i = 0; i < 4; ++i) c[(row0 + g + 8 * (i >> 1)) * n + col0 + 2 * t + (i & 1)] = acc[i];
}

// cp_async: each of the block's 64 threads copies two 16-byte chunks of `in` (1024 bytes of float) into shared memory
// in two commit groups (chunk i and chunk i + 64 of 128, the second landing at the mirrored slot), waits, and after a
// barrier thread i writes chunks written by other threads: out[chunk c] = smem slot (c + 1) % 128.
__global__ void cp_async_copy(const float* in, float* out) {
  __shared__ __align__(16) float smem[128][4];
  const int i = threadIdx.x;
  cp_async(smem[i], in + 4 * i);
  cp_async_commit();
  cp_async(smem[127 - i], in + 4 * (i + 64));
  cp_async_commit();
  cp_async_wait<1>();
  cp_async_wait<0>();
  __syncthreads();
  for (int h = 0; h < 2; ++h) {
    const int chunk = i + 64 * h;
    for (int e = 0; e < 4; ++e) out[4 * chunk + e] = smem[(chunk + 1) % 128][e];
  }
}

// Planted bug: ldmatrix from a row address that is not 16-byte aligned (a KernelError under the emulator).
__global__ void ldmatrix_misaligned(uint32_t* out) {
  __shared__ __align__(16) uint16_t rows[33][8];
  const int lane = threadIdx.x;
  for (int i = 0; i < 8; ++i) rows[lane][i] = static_cast<uint16_t>(lane);
  __syncwarp();
  uint32_t r[4];
  ldmatrix_x4(r, &rows[lane][1]);
  for (int j = 0; j < 4; ++j) out[lane * 4 + j] = r[j];
}

}  // namespace emu_mma_test
