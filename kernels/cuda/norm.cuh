// CUDA instance normalisation kernels: the entry points mirror kernels/cpu/norm.h (CPU) — channels-last x [n, s, c],
// statistics per (n, c) over s, gamma / beta [c] or null — with pointers in device memory (host memory under the
// emulator) and a stream. Reductions are deterministic (fixed-order trees, no atomics): the same inputs give the same
// bits on every run; against the CPU they agree to about 1e-6 relative, since the summation order differs.
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"
#include "kernels/norm.h"  // NormShape (plain C++, no CUDA)

namespace unet::kernels::cuda {

using kernels::NormShape;

// dt is the element type of x, y, dy and dx (f32, f16 or bf16); statistics, gamma, beta and their gradients are f32,
// each output element is computed in f32 and rounded to dt once (as the CPU).

// y = (x - mean) * rstd * gamma + beta; mean and rstd [n, c] are written for the backward pass.
void instance_norm_forward(const NormShape& sh, DType dt, const void* x, const float* gamma, const float* beta,
                           float eps, void* y, float* mean, float* rstd, cudaStream_t stream);

// dx, dgamma, dbeta as kernels/cpu/norm.h; each may be null (not computed); gamma null means 1.
void instance_norm_backward(const NormShape& sh, DType dt, const void* x, const void* dy, const float* mean,
                            const float* rstd, const float* gamma, void* dx, float* dgamma, float* dbeta,
                            cudaStream_t stream);

// The forward followed by leaky ReLU in one pass over x: y = leaky_relu(instance_norm(x), slope). Same results as
// instance_norm_forward then leaky_relu_forward.
void instance_norm_leaky_relu_forward(const NormShape& sh, DType dt, const void* x, const float* gamma,
                                      const float* beta, float eps, float slope, void* y, float* mean, float* rstd,
                                      cudaStream_t stream);

// Its backward from the fused output y (slope >= 0, so y > 0 exactly where the normalised value is > 0): the same
// results as leaky_relu_backward on the normalised value followed by instance_norm_backward (the leaky ReLU's
// gradient rounded to dt in between, as that pair stores it).
void instance_norm_leaky_relu_backward(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                                       const float* mean, const float* rstd, const float* gamma, float slope, void* dx,
                                       float* dgamma, float* dbeta, cudaStream_t stream);

// Instance norm from a convolution's statistics (kernels/conv.h) and its apply pass, as kernels/norm.h: one thread per
// (n, c) in double, then elementwise; the same bits as the CPU's for the same sums.
void instance_norm_stats(const NormShape& sh, const float* sums, const float* gamma, const float* beta, float eps,
                         float* mean, float* rstd, float* scale, float* shift, cudaStream_t stream);
void instance_norm_apply(const NormShape& sh, DType dt, const void* x, const float* mean, const float* scale,
                         const float* shift, float slope, void* y, cudaStream_t stream);
// Batch norm in evaluation and the running statistics' update after a training forward, as kernels/cpu/norm.h.
void batch_norm_inference(const NormShape& sh, DType dt, const void* x, const float* running_mean,
                          const float* running_var, const float* gamma, const float* beta, float eps, bool relu,
                          void* y, cudaStream_t stream);
void batch_norm_update_running(int64_t c, int64_t count, float eps, float momentum, const float* mean,
                               const float* rstd, float* running_mean, float* running_var, cudaStream_t stream);
// Batch norm synchronised over ranks, as kernels/norm.h: block b sums rows [256 b, 256 (b + 1)), a thread per channel,
// then one thread per (channel, sum) adds the blocks in order (the same bits on any GPU).
void batch_norm_sums(const NormShape& sh, DType dt, const void* x, double* sums, cudaStream_t stream);
void batch_norm_stats(int64_t c, int64_t count, float eps, const double* sums, float* mean, float* var, float* rstd,
                      cudaStream_t stream);
void batch_norm_backward_sums(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                              const float* mean, const float* rstd, bool relu, double* sums, float* dgamma,
                              float* dbeta, cudaStream_t stream);
void batch_norm_backward_apply(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                               const float* mean, const float* rstd, const float* gamma, const double* sums,
                               int64_t count, bool relu, void* dx, cudaStream_t stream);

// The table of these entry points that the engine dispatches through (kernels/norm.h).
extern const NormKernels norm_kernels;

}  // namespace unet::kernels::cuda
