// CUDA activation kernels: the entry points mirror kernels/cpu/activation.h (CPU), with pointers in device memory (host
// memory under the emulator) and a stream. Same semantics: NaN passes relu, the gradient masks test > 0; dt is the
// element type of every buffer (f32, f16 or bf16).
#pragma once
#include <cstdint>

#include "kernels/activation.h"
#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels::cuda {

void relu_forward(DType dt, const void* x, void* y, int64_t n, cudaStream_t stream);                     // y may alias x
void relu_backward(DType dt, const void* y, const void* dy, void* dx, int64_t n, cudaStream_t stream);  // dx may alias dy
void leaky_relu_forward(DType dt, const void* x, float slope, void* y, int64_t n, cudaStream_t stream);
void leaky_relu_backward(DType dt, const void* x, const void* dy, float slope, void* dx, int64_t n,
                         cudaStream_t stream);

// The table of these entry points that the engine dispatches through (kernels/activation.h).
extern const ActivationKernels activation_kernels;

}  // namespace unet::kernels::cuda
