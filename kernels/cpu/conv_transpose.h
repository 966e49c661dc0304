// Transposed convolution with kernel == stride (non-overlapping windows): nnU-Net's learned upsampling.
// CPU entry points on raw channels-last f32 buffers (implementation: kernels/cpu/conv_transpose.cpp; CUDA twin:
// kernels/cuda/conv_transpose.cuh). Because the windows do not overlap, every output pixel receives exactly one input
// pixel through one filter tap: forward and dgrad are small GEMMs per tap (no im2col, no scatter-add), and wgrad is a
// GEMM reducing over pixels.
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/conv_transpose.h"

namespace unet::kernels::cpu {

using kernels::ConvTransposeShape;

// y[n, z*kt+t, p*kr+r, q*ks+s, k] = bias[k] + sum_c x[n, z, p, q, c] * w[k, t, r, s, c]. bias may be null.
void conv_transpose_fprop(const ConvTransposeShape& s, const float* x, const float* w, const float* bias, float* y);
// dx[n, z, p, q, c] = sum_{t,r,s,k} dy[n, z*kt+t, p*kr+r, q*ks+s, k] * w[k, t, r, s, c].
void conv_transpose_dgrad(const ConvTransposeShape& s, const float* dy, const float* w, float* dx);
// dw[k, t, r, s, c] = sum_pixels dy[.., k] * x[.., c]; dbias[k] = sum of dy over all output pixels.
// Either dw or dbias may be null (x is not read when dw is null).
// Pixels are split into chunks whose size depends only on the shape; chunk partials are summed in chunk order,
// so the result is bitwise identical for any thread count.
void conv_transpose_wgrad(const ConvTransposeShape& s, const float* x, const float* dy, float* dw, float* dbias);

// The same passes on tensors of element type dt (f32, f16 or bf16), with the signatures of
// kernels/cuda/conv_transpose.cuh: bias, dw and dbias f32, the rest dt (widened to f32 as the passes above pack or
// read them, outputs rounded back once: bitwise the f32 passes on the widened operands).
void conv_transpose_fprop(const ConvTransposeShape& s, DType dt, const void* x, const void* w, const float* bias,
                          void* y);
void conv_transpose_dgrad(const ConvTransposeShape& s, DType dt, const void* dy, const void* w, void* dx);
void conv_transpose_wgrad(const ConvTransposeShape& s, DType dt, const void* x, const void* dy, float* dw,
                          float* dbias);

// The table of these entry points that the engine dispatches through (kernels/conv_transpose.h); the stream is ignored.
extern const ConvTransposeKernels conv_transpose_kernels;

}  // namespace unet::kernels::cpu
