// Transposed convolution with kernel == stride: the shape shared by the CPU (kernels/cpu/conv_transpose.h) and CUDA
// (kernels/cuda/conv_transpose.cuh) entry points, and the table of them the engine dispatches through (one per
// backend, conv_transpose_kernels).
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

// x [n, d, h, w, c] -> y [n, d*kt, h*kr, w*ks, k]; filter [k, kt, kr, ks, c] (KTRSC). 2D: d = kt = 1; 1D: also h = kr
// = 1.
struct ConvTransposeShape {
  int64_t n = 1, d = 1, h = 1, w = 1;  // input batch and spatial size
  int64_t c = 1;                       // input channels
  int64_t k = 1;                       // output channels
  int64_t kt = 1, kr = 1, ks = 1;      // kernel (== stride) per axis
  int64_t pixels() const { return n * d * h * w; }
  int64_t taps() const { return kt * kr * ks; }
};

// x, w, y and dx in dt (f32, f16 or bf16); bias, dw and dbias f32. The CPU ignores the stream.
struct ConvTransposeKernels {
  void (*conv_transpose_fprop)(const ConvTransposeShape& s, DType dt, const void* x, const void* w, const float* bias,
                               void* y, cudaStream_t stream);
  void (*conv_transpose_dgrad)(const ConvTransposeShape& s, DType dt, const void* dy, const void* w, void* dx,
                               cudaStream_t stream);
  void (*conv_transpose_wgrad)(const ConvTransposeShape& s, DType dt, const void* x, const void* dy, float* dw,
                               float* dbias, cudaStream_t stream);
};

}  // namespace unet::kernels
