// Elementwise kernels: the table of entry points the engine dispatches through, one per backend
// (kernels::cpu::elementwise_kernels in kernels/cpu/elementwise.h, kernels::cuda::elementwise_kernels in
// kernels/cuda/elementwise.cuh). Pointers are in the backend's memory; the CPU ignores the stream.
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

struct ElementwiseKernels {
  void (*add)(DType dtype, const void* a, const void* b, void* out, int64_t n, cudaStream_t stream);  // out = a + b
  void (*scale)(const float* a, float alpha, float* out, int64_t n, cudaStream_t stream);             // alpha * a
};

}  // namespace unet::kernels
