// Activation kernels: the table of entry points the engine dispatches through, one per backend
// (kernels::cpu::activation_kernels in kernels/cpu/activation.h, kernels::cuda::activation_kernels in
// kernels/cuda/activation.cuh). Pointers are in the backend's memory; the CPU ignores the stream.
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

struct ActivationKernels {
  void (*relu_forward)(DType dt, const void* x, void* y, int64_t n, cudaStream_t stream);
  void (*relu_backward)(DType dt, const void* y, const void* dy, void* dx, int64_t n, cudaStream_t stream);
  void (*leaky_relu_forward)(DType dt, const void* x, float slope, void* y, int64_t n, cudaStream_t stream);
  void (*leaky_relu_backward)(DType dt, const void* x, const void* dy, float slope, void* dx, int64_t n,
                              cudaStream_t stream);
};

}  // namespace unet::kernels
