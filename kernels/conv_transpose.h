// Transposed convolution with kernel == stride: the shape shared by the CPU (kernels/cpu/conv_transpose.h) and CUDA
// (kernels/cuda/conv_transpose.cuh) entry points.
#pragma once
#include <cstdint>

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

}  // namespace unet::kernels
