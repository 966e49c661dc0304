// Convolution kernels, 2D and 3D, forward (fprop) and backward (dgrad, wgrad): backend-neutral problem description and
// entry points. CPU implementations in kernels/cpu/conv.cpp. No autograd here (engine/ops/conv.cpp wires it).
// Layouts (docs/numerics.md): x [N, D, H, W, C], w [K, T, R, S, C], y [N, Z, P, Q, K], all f32 and contiguous.
// A 2D convolution is the 3D one with D = Z = T = 1, stride_d = 1, pad_d = 0.
#pragma once
#include <cstdint>
#include <string>

namespace unet::kernels {

struct ConvProblem {
  int64_t N = 1;
  int64_t D = 1, H = 1, W = 1;  // input spatial size
  int64_t C = 1;                // input channels
  int64_t K = 1;                // output channels
  int T = 1, R = 1, S = 1;      // filter size along D, H, W
  int stride_d = 1, stride_h = 1, stride_w = 1;
  int pad_d = 0, pad_h = 0, pad_w = 0;  // zeros added on both sides of each axis
  int64_t Z = 1, P = 1, Q = 1;          // output spatial size; set by compute_output_size()

  // Z = (D + 2 pad_d - T) / stride_d + 1 (floor), likewise P and Q. May be < 1 for invalid problems: check it.
  void compute_output_size();
  int64_t taps() const { return int64_t(T) * R * S; }
  // Multiply-adds times two of one pass (fprop, dgrad and wgrad all do the same amount of arithmetic).
  double flops() const { return 2.0 * double(N) * double(Z * P * Q) * double(K) * double(taps()) * double(C); }
  std::string describe() const;  // for messages and benchmark tables
};

}  // namespace unet::kernels

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

}  // namespace unet::kernels::cpu
