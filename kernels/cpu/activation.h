// Activation kernels (CPU entry points; implementation in kernels/cpu/activation.cpp).
// Semantics follow PyTorch: relu passes NaN through; the gradient masks test x > 0 (so the gradient at 0 is
// the negative-side one), and relu's backward reads its output, leaky_relu's its input, as PyTorch saves them.
#pragma once
#include <cstdint>

namespace unet::kernels::cpu {

// y = x > 0 ? x : 0 (NaN stays NaN). y may alias x.
void relu_forward(const float* x, float* y, int64_t n);
// dx = y > 0 ? dy : 0, from relu's output y. dx may alias dy.
void relu_backward(const float* y, const float* dy, float* dx, int64_t n);
// y = x > 0 ? x : slope * x. y may alias x.
void leaky_relu_forward(const float* x, float slope, float* y, int64_t n);
// dx = x > 0 ? dy : slope * dy, from the input x. dx may alias dy.
void leaky_relu_backward(const float* x, const float* dy, float slope, float* dx, int64_t n);

}  // namespace unet::kernels::cpu
