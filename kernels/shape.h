// Shape kernels' shared description: nearest upsampling's shape, for the CPU (kernels/cpu/shape.h) and CUDA
// (kernels/cuda/shape.cuh) entry points, and the table of them the engine dispatches through (one per backend,
// shape_kernels; the CPU ignores the stream).
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

// x [n, d, h, w, c] -> y [n, d*fd, h*fh, w*fw, c]; 2D: d = fd = 1.
struct UpsampleShape {
  int64_t n = 1, d = 1, h = 1, w = 1, c = 1;
  int64_t fd = 1, fh = 1, fw = 1;
};

struct ShapeKernels {
  void (*concat_channels)(int64_t rows, int count, const void* const* xs, const int64_t* widths, int64_t elem_size,
                          void* out, cudaStream_t stream);
  void (*split_channels)(int64_t rows, int count, const void* x, const int64_t* widths, int64_t elem_size,
                         void* const* outs, cudaStream_t stream);
  void (*upsample_nearest_forward)(const UpsampleShape& s, const void* x, int64_t elem_size, void* y,
                                   cudaStream_t stream);
  void (*upsample_nearest_backward)(const UpsampleShape& s, DType dt, const void* dy, void* dx, cudaStream_t stream);
  void (*cast)(DType src_dtype, const void* src, DType dst_dtype, void* dst, int64_t n, cudaStream_t stream);
  void (*argmax_channels)(DType dtype, const void* x, int64_t rows, int64_t c, int32_t* out, cudaStream_t stream);
};

}  // namespace unet::kernels
