// Per-channel bias addition on the CPU: the entry point of kernels/bias.h.
#pragma once
#include <cstdint>

#include "kernels/bias.h"

namespace unet::kernels::cpu {

void bias_add(DType dt, int64_t rows, int64_t channels, const float* bias, void* y, cudaStream_t stream = nullptr);

extern const BiasKernels bias_kernels;

}  // namespace unet::kernels::cpu
