// CUDA elementwise kernels: the entry points mirror kernels/cpu/elementwise.h (CPU), with pointers in device memory
// (host memory under the emulator) and a stream.
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"
#include "kernels/elementwise.h"

namespace unet::kernels::cuda {

void add(DType dtype, const void* a, const void* b, void* out, int64_t n, cudaStream_t stream);  // out = a + b
void scale(const float* a, float alpha, float* out, int64_t n, cudaStream_t stream);              // out = alpha * a

// The table of these entry points that the engine dispatches through (kernels/elementwise.h).
extern const ElementwiseKernels elementwise_kernels;

}  // namespace unet::kernels::cuda
