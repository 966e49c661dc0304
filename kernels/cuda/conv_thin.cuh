// CUDA direct convolution for the thin first layer (1 to 4 input channels, nnU-Net's image input), where implicit GEMM
// would waste its reduction axis (T*R*S*C = 27 * C at most). Same layouts and the same semantics as conv_fprop /
// conv_wgrad in kernels/cuda/conv.cuh, which dispatch here when conv_thin_applies(p); dgrad is not needed (the first
// layer's input takes no gradient) and stays with conv_dgrad.
#pragma once
#include "kernels/common/dtype.h"
#include "kernels/conv.h"  // ConvProblem (plain C++, no CUDA)
#include "kernels/cuda/stream.h"

namespace unet::kernels::cuda {

// True when the thin path handles p: 1 <= C <= 4 and every filter extent <= 3 (the filter then fits in shared memory).
bool conv_thin_applies(const ConvProblem& p);

// y = conv(x, w) + bias, stats as conv_fprop (per-(n, k) sum and sum of squares of the stored y; deterministic).
void conv_fprop_thin(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y,
                     float* stats, cudaStream_t stream);

// dw [K, T, R, S, C] f32 and dbias [K] f32 (either may be null; x is not read when dw is null), overwritten.
void conv_wgrad_thin(const ConvProblem& p, DType dt, const void* x, const void* dy, float* dw, float* dbias,
                     cudaStream_t stream);

}  // namespace unet::kernels::cuda
