// CUDA elementwise kernels: the entry points mirror kernels/cpu/elementwise.h (CPU), with pointers in device memory
// (host memory under the emulator) and a stream.
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels::cuda {

void add(DType dtype, const void* a, const void* b, void* out, int64_t n, cudaStream_t stream);  // out = a + b
void scale(const float* a, float alpha, float* out, int64_t n, cudaStream_t stream);              // out = alpha * a

}  // namespace unet::kernels::cuda
