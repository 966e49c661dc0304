// Activation kernels (CPU entry points; implementation in kernels/cpu/activation.cpp).
// Semantics follow PyTorch: relu passes NaN through; the gradient masks test x > 0 (so the gradient at 0 is
// the negative-side one), and relu's backward reads its output, leaky_relu's its input, as PyTorch saves them.
// dt is the element type of every buffer (f32, f16 or bf16); products are formed in f32 and rounded to dt once.
#pragma once
#include <cstdint>

#include "kernels/activation.h"
#include "kernels/common/dtype.h"

namespace unet::kernels::cpu {

// y = x > 0 ? x : 0 (NaN stays NaN). y may alias x.
void relu_forward(DType dt, const void* x, void* y, int64_t n);
// dx = y > 0 ? dy : 0, from relu's output y. dx may alias dy.
void relu_backward(DType dt, const void* y, const void* dy, void* dx, int64_t n);
// y = x > 0 ? x : slope * x. y may alias x.
void leaky_relu_forward(DType dt, const void* x, float slope, void* y, int64_t n);
// dx = x > 0 ? dy : slope * dy, from the input x. dx may alias dy.
void leaky_relu_backward(DType dt, const void* x, const void* dy, float slope, void* dx, int64_t n);

// The table of these entry points that the engine dispatches through (kernels/activation.h); the stream is ignored.
extern const ActivationKernels activation_kernels;

}  // namespace unet::kernels::cpu
