// CUDA bilinear resampling: the entry points of kernels/resize.h with device pointers and a stream; one thread per
// output (forward) or input (backward) element, the CPU's arithmetic in its order, so the results are bitwise the
// CPU's.
#pragma once
#include <cstdint>

#include "kernels/resize.h"

namespace unet::kernels::cuda {

void bilinear_forward(const ResizeShape& s, DType dt, const int32_t* ih, const float* wh, const int32_t* iw,
                      const float* ww, const void* x, void* y, cudaStream_t stream);
void bilinear_backward(const ResizeShape& s, DType dt, const int32_t* ih, const float* wh, const int32_t* iw,
                       const float* ww, const void* dy, void* dx, cudaStream_t stream);

extern const ResizeKernels resize_kernels;

}  // namespace unet::kernels::cuda
