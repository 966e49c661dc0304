// CUDA activation kernels: the entry points mirror kernels/cpu/activation.h (CPU), with pointers in device memory (host
// memory under the emulator) and a stream. Same semantics: NaN passes relu, the gradient masks test > 0.
#pragma once
#include <cstdint>

#include "kernels/cuda/stream.h"

namespace unet::kernels::cuda {

void relu_forward(const float* x, float* y, int64_t n, cudaStream_t stream);                     // y may alias x
void relu_backward(const float* y, const float* dy, float* dx, int64_t n, cudaStream_t stream);  // dx may alias dy
void leaky_relu_forward(const float* x, float slope, float* y, int64_t n, cudaStream_t stream);
void leaky_relu_backward(const float* x, const float* dy, float slope, float* dx, int64_t n, cudaStream_t stream);

}  // namespace unet::kernels::cuda
