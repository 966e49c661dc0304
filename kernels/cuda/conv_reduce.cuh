// The deterministic reductions that finish a convolution, shared by the mma.sync path (kernels/cuda/conv.cu) and the
// sm_90a path (kernels/cuda/conv_sm90.cu): the per-(sample, channel) statistics of fprop from per-tile partials, and
// wgrad's sum of split-K partials. Both add in a fixed order (tile order, split order), so the result does not depend
// on the schedule or the grid. Kernels with internal linkage: each including file gets its own copy (conv_sm90.cu is
// compiled for sm_90a alone).
#pragma once
#include <cstdint>

#include "kernels/cuda/launch.cuh"

namespace unet::kernels::cuda {
namespace {

// stats[(n * K + k) * 2 + {0, 1}] from the fused epilogue's per-tile partials: the tiles that hold rows of sample n,
// in tile order, each through the slot that sample has in it. Tile mt of bm rows (rows of S per sample) left its
// column sums in part[(mt * 4 + slot * 2 + {sum, squares}) * K + k], slot 0 for the sample it starts in, 1 for the
// next one (bm <= S: a tile spans at most two samples).
__global__ void __launch_bounds__(256)
    tile_stats_finalize(const float* part, int64_t samples, int64_t S, int64_t K, int bm, float* stats) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < samples * K;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / K, k = i % K;
    double s1 = 0.0, s2 = 0.0;
    for (int64_t mt = n * S / bm; mt <= ((n + 1) * S - 1) / bm; ++mt) {
      const int64_t slot = mt * bm / S == n ? 0 : 1;
      s1 += part[(mt * 4 + slot * 2 + 0) * K + k];
      s2 += part[(mt * 4 + slot * 2 + 1) * K + k];
    }
    stats[i * 2 + 0] = float(s1);
    stats[i * 2 + 1] = float(s2);
  }
}

// dw[i] = sum over splits, in split order, of part[split][i].
__global__ void __launch_bounds__(256) sum_splits(const float* part, int64_t count, int splits, float* dw) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    float s = part[i];
    for (int k = 1; k < splits; ++k) s += part[k * count + i];
    dw[i] = s;
  }
}

// Blocks of 256 threads for `count` elements, at most 1024 (the kernels loop over the rest).
inline dim3 reduce_grid(int64_t count) {
  return dim3(unsigned(count / 256 + 1 < 1024 ? count / 256 + 1 : 1024));
}

inline void finalize_tile_stats(const float* part, int64_t samples, int64_t S, int64_t K, int bm, float* stats,
                                cudaStream_t stream) {
  launch(tile_stats_finalize, reduce_grid(samples * K), dim3(256), 0, stream, part, samples, S, K, bm, stats);
}

inline void sum_split_partials(const float* part, int64_t count, int splits, float* dw, cudaStream_t stream) {
  launch(sum_splits, reduce_grid(count), dim3(256), 0, stream, part, count, splits, dw);
}

}  // namespace
}  // namespace unet::kernels::cuda
