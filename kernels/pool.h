// Max pooling with the window equal to the stride (PyTorch's MaxPool2d(k) / MaxPool3d(k), default stride, no padding):
// the shape and the table of entry points the engine dispatches through, one per backend
// (kernels::cpu::pool_kernels in kernels/cpu/pool.h, kernels::cuda::pool_kernels in kernels/cuda/pool.cuh).
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

// x [n, d, h, w, c] -> y [n, d / kd, h / kh, w / kw, c] (floor, as PyTorch: a remainder along an axis is dropped).
// 2D: d = kd = 1.
struct PoolShape {
  int64_t n = 1, d = 1, h = 1, w = 1, c = 1;
  int64_t kd = 1, kh = 1, kw = 1;
  int64_t od() const { return d / kd; }
  int64_t oh() const { return h / kh; }
  int64_t ow() const { return w / kw; }
  int64_t outputs() const { return n * od() * oh() * ow() * c; }
};

// Pointers are in the backend's memory; the CPU ignores the stream. Types f32, f16 or bf16 (x, y, dy, dx alike).
struct PoolKernels {
  // y = the largest x of each window; idx = its position in the window, (a * kh + b) * kw + e for offsets (a, b, e).
  // Ties go to the first position in that order; NaN wins over any number, the last NaN of a window (as PyTorch).
  void (*max_pool_forward)(const PoolShape& s, DType dt, const void* x, void* y, int32_t* idx, cudaStream_t stream);
  // dx = dy at each window's idx, 0 elsewhere (also in the dropped remainder). Windows do not overlap: no sums.
  void (*max_pool_backward)(const PoolShape& s, DType dt, const void* dy, const int32_t* idx, void* dx,
                            cudaStream_t stream);
};

}  // namespace unet::kernels
