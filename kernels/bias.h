// A per-channel bias added in place to channels-last activations, for the ops whose main kernel has no bias epilogue
// (the general transposed convolution, computed by the convolution's dgrad kernel). Its gradient, the sum of dy over
// the rows, is the convolution wgrad kernel's bias reduction. The table of entry points the engine dispatches
// through, one per backend (kernels::cpu::bias_kernels in kernels/cpu/bias.h, kernels::cuda::bias_kernels in
// kernels/cuda/bias.cuh).
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

struct BiasKernels {
  // y[r, k] = round_dt(y[r, k] + bias[k]) for r < rows, k < channels; y of type dt (f32, f16 or bf16), bias f32.
  void (*add)(DType dt, int64_t rows, int64_t channels, const float* bias, void* y, cudaStream_t stream);
};

}  // namespace unet::kernels
