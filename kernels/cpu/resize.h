// Bilinear resampling on the CPU: the entry points of kernels/resize.h, implemented in kernels/cpu/resize.cpp.
#pragma once
#include <cstdint>

#include "kernels/resize.h"

namespace unet::kernels::cpu {

void bilinear_forward(const ResizeShape& s, DType dt, const int32_t* ih, const float* wh, const int32_t* iw,
                      const float* ww, const void* x, void* y, cudaStream_t stream = nullptr);
void bilinear_backward(const ResizeShape& s, DType dt, const int32_t* ih, const float* wh, const int32_t* iw,
                       const float* ww, const void* dy, void* dx, cudaStream_t stream = nullptr);

extern const ResizeKernels resize_kernels;

}  // namespace unet::kernels::cpu
