// CPU convolution entry points (kernels/cpu/conv.cpp): fprop, dgrad, wgrad and the bias gradient of a ConvProblem
// (kernels/conv.h) on raw channels-last f32 buffers.
#pragma once
#include "kernels/conv.h"

namespace unet::kernels::cpu {

// y[n,z,p,q,k] = bias[k] + sum_{t,r,s,c} x[n, z*sd+t-pd, p*sh+r-ph, q*sw+s-pw, c] * w[k,t,r,s,c]  (zero padding).
// bias may be null (no bias). y is overwritten.
void conv_fprop(const ConvProblem& p, const float* x, const float* w, const float* bias, float* y);

// dx = gradient of the fprop sum with respect to x, given dy [N, Z, P, Q, K]. dx is overwritten (positions that no
// output reads get 0).
void conv_dgrad(const ConvProblem& p, const float* dy, const float* w, float* dx);

// dw [K, T, R, S, C] = gradient with respect to w; dbias [K] = sum of dy over n and space (skipped when null).
// Both are overwritten. Bitwise deterministic: every element is summed in one fixed order whatever the thread count.
void conv_wgrad(const ConvProblem& p, const float* x, const float* dy, float* dw, float* dbias);

// dbias [K] alone (for a frozen weight); the same fixed summation order as conv_wgrad.
void conv_bias_grad(const ConvProblem& p, const float* dy, float* dbias);

// The same passes on tensors of element type dt (f32, f16 or bf16), with the signatures of kernels/cuda/conv.cuh:
// x, w, y, dy, dx are dt; bias, dw and dbias f32 (the caller passes w already rounded to dt). f16 / bf16 operands are
// widened to f32 (exact) as the kernels above pack them, the same f32 arithmetic runs, and y or dx is rounded to dt
// once: bitwise the f32 kernels on the widened operands. conv_wgrad with a null dw computes dbias alone (x is then
// not read).
void conv_fprop(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y);
void conv_dgrad(const ConvProblem& p, DType dt, const void* dy, const void* w, void* dx);
void conv_wgrad(const ConvProblem& p, DType dt, const void* x, const void* dy, float* dw, float* dbias);

// The table of these entry points that the engine dispatches through (kernels/conv.h); the stream is ignored.
extern const ConvKernels conv_kernels;

}  // namespace unet::kernels::cpu
