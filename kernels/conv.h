// Convolution, 2D and 3D, forward (fprop) and backward (dgrad, wgrad): the backend-neutral problem description and the
// table of entry points the engine dispatches through. Entry points: kernels/cpu/conv.h (CPU) and kernels/cuda/conv.cuh
// (CUDA), each with its table (conv_kernels). No autograd here (engine/ops/conv.cpp wires it).
// Layouts (docs/numerics.md): x [N, D, H, W, C], w [K, T, R, S, C], y [N, Z, P, Q, K], all f32 and contiguous.
// A 2D convolution is the 3D one with D = Z = T = 1, stride_d = 1, pad_d = 0.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

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

// x, w, y and dx in dt (f32, f16 or bf16); bias, dw and dbias f32. The CPU ignores the stream.
// conv_fprop's `stats`, when not null, receives per (sample n, output channel k) the sum and the sum of squares of the
// stored y (after bias and rounding to dt) as f32: stats[(n * K + k) * 2 + {0, 1}]; the instance norm that follows
// then needs no pass of its own over y (NormKernels::instance_norm_stats). Computed in a fixed order: deterministic.
// conv_fprop_norm_act convolves leaky_relu(fma(x - mean, scale, shift), slope) rounded to dt, per (n, c) coefficients
// [N * C] f32 (the previous layer's instance norm + activation, NormKernels::instance_norm_apply's transform, bit for
// bit), zero padding applied after it; on CUDA as the operand is loaded, so that activation is never stored.
struct ConvKernels {
  void (*conv_fprop)(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y,
                     float* stats, cudaStream_t stream);
  void (*conv_fprop_norm_act)(const ConvProblem& p, DType dt, const void* x, const float* mean, const float* scale,
                              const float* shift, float slope, const void* w, const float* bias, void* y, float* stats,
                              cudaStream_t stream);
  void (*conv_dgrad)(const ConvProblem& p, DType dt, const void* dy, const void* w, void* dx, cudaStream_t stream);
  void (*conv_wgrad)(const ConvProblem& p, DType dt, const void* x, const void* dy, float* dw, float* dbias,
                     cudaStream_t stream);
};

// The four ways the convolution kernels compute: f32 (SIMT), tf32 (f32 data on the TF32 tensor cores, opted in with
// conv_allow_tf32), f16 and bf16 (tensor cores). Tests and benchmarks name and store each through these.
enum class ConvPrecision { f32, tf32, f16, bf16 };
inline DType conv_storage_dtype(ConvPrecision p) {  // the element type of x, w, y: f32 for f32 and tf32
  return p == ConvPrecision::f16 ? DType::f16 : p == ConvPrecision::bf16 ? DType::bf16 : DType::f32;
}
inline const char* conv_precision_name(ConvPrecision p) {
  switch (p) {
    case ConvPrecision::f32: return "f32";
    case ConvPrecision::tf32: return "tf32";
    case ConvPrecision::f16: return "f16";
    case ConvPrecision::bf16: return "bf16";
  }
  return "?";
}

}  // namespace unet::kernels
