// CUDA per-channel bias addition: the entry point of kernels/bias.h with device pointers and a stream.
#pragma once
#include <cstdint>

#include "kernels/bias.h"

namespace unet::kernels::cuda {

void bias_add(DType dt, int64_t rows, int64_t channels, const float* bias, void* y, cudaStream_t stream);

extern const BiasKernels bias_kernels;

}  // namespace unet::kernels::cuda
