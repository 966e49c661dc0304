// Dropout on the CPU: the entry point of kernels/dropout.h.
#pragma once
#include <cstdint>

#include "kernels/dropout.h"

namespace unet::kernels::cpu {

void dropout_apply(DType dt, uint64_t seed, uint64_t first, float p, float scale, const void* x, void* y, int64_t n,
                   cudaStream_t stream = nullptr);

extern const DropoutKernels dropout_kernels;

}  // namespace unet::kernels::cpu
