// Max pooling (window == stride) on the CPU: the entry points of kernels/pool.h, implemented in kernels/cpu/pool.cpp.
#pragma once
#include <cstdint>

#include "kernels/pool.h"

namespace unet::kernels::cpu {

void max_pool_forward(const PoolShape& s, DType dt, const void* x, void* y, int32_t* idx,
                      cudaStream_t stream = nullptr);
void max_pool_backward(const PoolShape& s, DType dt, const void* dy, const int32_t* idx, void* dx,
                       cudaStream_t stream = nullptr);

extern const PoolKernels pool_kernels;

}  // namespace unet::kernels::cpu
