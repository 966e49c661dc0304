// CUDA convolution kernels: 2D and 3D fprop, dgrad and wgrad as implicit GEMM on channels-last
// tensors, x [N, D, H, W, C], w [K, T, R, S, C], y [N, Z, P, Q, K] (kernels/conv.h describes the problem; a 2D
// convolution is the 3D one with D = Z = T = 1). Pointers are device memory (host memory under the emulator).
//
// Data types: `dt` is the type of the activations and weights (x, w, y, dy, dx):
//   f32        SIMT path (fp32 FMA);
//   f16, bf16  tensor cores (mma.sync m16n8k16, f32 accumulation), operands staged with cp.async + ldmatrix.
//   f32 with set_conv_allow_tf32(true): tensor cores in TF32 (operands rounded to 10 mantissa bits, mma.sync m16n8k8
//              .tf32, f32 accumulation); the thin first-layer path below stays fp32.
// A thin first layer (1 to 4 input channels, filter extents <= 3) takes the direct convolution of conv_thin.cuh in
// fprop and wgrad instead, where implicit GEMM would waste its reduction axis.
// Bias, dw and dbias are always f32 (fp32 master weights); for f16/bf16 the caller passes the
// weights already cast to dt.
//
// GEMM views (CUTLASS's implicit GEMM, written by us):
//   fprop  M = N*Z*P*Q, N = K, K = T*R*S*C
//   dgrad  M = N*D*H*W, N = C, K = T*R*S*K
//   wgrad  M = K,       N = T*R*S*C, K = N*Z*P*Q   (split-K over pixels, partials summed in a fixed order)
// Every result is deterministic: no float atomics; the same inputs give the same bits on every run and schedule.
#pragma once
#include "kernels/common/dtype.h"
#include "kernels/conv.h"  // ConvProblem (plain C++, no CUDA)
#include "kernels/cuda/stream.h"

namespace unet::kernels::cuda {

// Whether f32 convolutions may run on the TF32 tensor cores (process-wide, read at each call; thread-safe), like
// PyTorch's torch.backends.cudnn.allow_tf32. PyTorch's default is on; ours is off, so f32 results match the CPU backend
// to fp32 accuracy unless a caller opts in. With it on, results are those of the inputs rounded to tf32 (relative
// error about 2^-11 per operand) with f32 accumulation.
void set_conv_allow_tf32(bool allow);
bool conv_allow_tf32();

// The Hopper path for f16 / bf16 (kernels/cuda/conv_sm90.cu: wgmma on operands the tensor memory accelerator
// stages), used when enabled, on an sm_90 device of a build with sm_90a code (or under the emulator), for problems it
// takes: conv_fprop with or without statistics (C a multiple of 8, 16-byte aligned x and w), conv_fprop_norm_act
// likewise (the transform applied to each stage in shared memory; mean, scale and shift 16-byte aligned too),
// conv_dgrad with strides 1 or 2 per axis (K a multiple of 8, padding below the kernel size, 16-byte aligned dy; by
// parity classes, each a stride-1 fprop), conv_wgrad's dw (C
// and K multiples of 8, 16-byte aligned x and dy; dbias stays on the column sums); otherwise the mma.sync path. Off by default until it
// has run on a GPU: set_conv_sm90(true), or UNET_CONV_SM90=1 in the environment (read at first use).
void set_conv_sm90(bool enable);
bool conv_sm90_enabled();

// y = conv(x, w) + bias. bias [K] f32 or null. When stats is not null it receives, per (sample, output channel), the
// sum and the sum of squares of the stored y (after bias, after rounding to dt) as f32 pairs: stats[(n * K + k) * 2 +
// 0] = sum, [.. + 1] = sum of squares; instance norm then needs no second pass over y.
void conv_fprop(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y, float* stats,
                cudaStream_t stream);

// conv_fprop whose input is the previous layer's instance norm + leaky ReLU, applied while x is loaded, so the
// normalised activation is never written: x' = leaky_relu(fma(x - mean[n, c], scale[n, c], shift[n, c]), slope)
// rounded to dt (as the materialised tensor would be), zero padding applied after the transform. mean, scale, shift
// [N * C] f32 (instance norm: scale = rstd * gamma, shift = beta). Otherwise as conv_fprop.
void conv_fprop_norm_act(const ConvProblem& p, DType dt, const void* x, const float* mean, const float* scale,
                         const float* shift, float slope, const void* w, const float* bias, void* y, float* stats,
                         cudaStream_t stream);

// dx = gradient of the fprop sum with respect to x, given dy [N, Z, P, Q, K]; dx is overwritten (positions that no
// output reads get 0).
void conv_dgrad(const ConvProblem& p, DType dt, const void* dy, const void* w, void* dx, cudaStream_t stream);

// dw [K, T, R, S, C] f32 and dbias [K] f32 (either may be null), overwritten; x may be null when dw is.
void conv_wgrad(const ConvProblem& p, DType dt, const void* x, const void* dy, float* dw, float* dbias,
                cudaStream_t stream);

// Test hooks (tests/test_cuda_conv.cpp): pin the tensor-core tile (128x64, 128x32, 64x64, or 128x128 for wgrad; 0, 0 =
// chosen per problem) and wgrad's number of pixel splits (0 = chosen per problem) so every variant can be checked on
// small shapes. Not thread-safe; production code never calls them.
namespace testing {
void force_conv_tile(int bm, int bn);
void force_wgrad_splits(int splits);
// Caps column_sums' gridDim.y (default: CUDA's 65535) so tests reach its in-kernel chunk loop at small sizes; 0 resets.
void force_column_sums_max_grid_y(int64_t most);
}  // namespace testing

// The table of these entry points that the engine dispatches through (kernels/conv.h).
extern const ConvKernels conv_kernels;

}  // namespace unet::kernels::cuda
