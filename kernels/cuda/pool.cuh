// CUDA max pooling (window == stride): the entry points of kernels/pool.h with device pointers and a stream; one
// thread per output (forward) or input (backward) element, so results are bitwise the CPU's.
#pragma once
#include <cstdint>

#include "kernels/pool.h"

namespace unet::kernels::cuda {

void max_pool_forward(const PoolShape& s, DType dt, const void* x, void* y, int32_t* idx, cudaStream_t stream);
void max_pool_backward(const PoolShape& s, DType dt, const void* dy, const int32_t* idx, void* dx, cudaStream_t stream);

extern const PoolKernels pool_kernels;

}  // namespace unet::kernels::cuda
