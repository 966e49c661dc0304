// CUDA transposed convolution with kernel == stride (nnU-Net's learned upsampling): the entry points mirror
// kernels/cpu/conv_transpose.h (CPU) on channels-last buffers, x [n, d, h, w, c], w [k, kt, kr, ks, c],
// y [n, d*kt, h*kr, w*ks, k]. `dt` is the type of x, w, y, dy and dx (f32, f16 or bf16; f32 accumulation throughout);
// bias, dw and dbias are f32 (fp32 master weights; the caller passes weights already cast to dt). Deterministic: no
// float atomics, fixed-order reductions.
#pragma once
#include "kernels/common/dtype.h"
#include "kernels/conv_transpose.h"  // ConvTransposeShape (plain C++, no CUDA)
#include "kernels/cuda/stream.h"

namespace unet::kernels::cuda {

using kernels::ConvTransposeShape;

// bias [k] f32 or null.
void conv_transpose_fprop(const ConvTransposeShape& s, DType dt, const void* x, const void* w, const float* bias,
                          void* y, cudaStream_t stream);
void conv_transpose_dgrad(const ConvTransposeShape& s, DType dt, const void* dy, const void* w, void* dx,
                          cudaStream_t stream);
// dw [k, kt, kr, ks, c] f32 and dbias [k] f32, either may be null; overwritten.
void conv_transpose_wgrad(const ConvTransposeShape& s, DType dt, const void* x, const void* dy, float* dw,
                          float* dbias, cudaStream_t stream);

// The table of these entry points that the engine dispatches through (kernels/conv_transpose.h).
extern const ConvTransposeKernels conv_transpose_kernels;

}  // namespace unet::kernels::cuda
