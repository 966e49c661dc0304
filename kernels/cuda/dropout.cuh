// CUDA dropout: the entry point of kernels/dropout.h with device pointers and a stream; the mask is
// kernels::dropout_keeps, the CPU's, so both drop the same elements.
#pragma once
#include <cstdint>

#include "kernels/dropout.h"

namespace unet::kernels::cuda {

void dropout_apply(DType dt, uint64_t seed, uint64_t first, float p, float scale, const void* x, void* y, int64_t n,
                   cudaStream_t stream);

extern const DropoutKernels dropout_kernels;

}  // namespace unet::kernels::cuda
