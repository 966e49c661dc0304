// Instance and batch normalisation kernels (CPU entry points; implementation in kernels/cpu/norm.cpp).
// Layout channels-last: x is [n, s, c] with s = the product of the spatial sizes; statistics per (n, c) over s.
// dt is the element type of x, y, dy and dx (f32, f16 or bf16); statistics, gamma, beta and their gradients are f32,
// and each output element is computed in f32 and rounded to dt once.
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"

#include "kernels/norm.h"

namespace unet::kernels::cpu {

using kernels::NormShape;

// mean, var (biased) per (n, c), accumulated in double: exact two-pass statistics per cache-sized chunk, merged
// across chunks by Chan's formula, so a large mean does not cancel the variance and x is read from memory once.
// y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps).
// gamma and beta are [c] or null (1 and 0). mean and rstd ([n, c]) are written for the backward pass.
void instance_norm_forward(const NormShape& sh, DType dt, const void* x, const float* gamma, const float* beta,
                           float eps, void* y, float* mean, float* rstd);

// With xhat = (x - mean) * rstd, per (n, c) sums s1 = sum dy and s2 = sum dy * xhat (double):
// dx = rstd * gamma * (dy - s1 / s - xhat * s2 / s), dgamma[c] = sum_n s2, dbeta[c] = sum_n s1.
// dx, dgamma, dbeta may each be null (not computed); gamma null means 1.
void instance_norm_backward(const NormShape& sh, DType dt, const void* x, const void* dy, const float* mean,
                            const float* rstd, const float* gamma, void* dx, float* dgamma, float* dbeta);

// sums[(n * c + j) * 2 + {0, 1}] = the sum of x and of x^2 over the s positions of (n, j): double partials per
// cache-sized chunk added in chunk order (the same bits for any thread count), rounded to f32 once. The CPU
// convolution's statistics (kernels/conv.h).
void instance_sums(const NormShape& sh, DType dt, const void* x, float* sums);
// Instance norm from those sums and its apply pass (kernels/norm.h: instance_norm_stats, instance_norm_apply).
void instance_norm_stats(const NormShape& sh, const float* sums, const float* gamma, const float* beta, float eps,
                         float* mean, float* rstd, float* scale, float* shift);
void instance_norm_apply(const NormShape& sh, DType dt, const void* x, const float* mean, const float* scale,
                         const float* shift, float slope, void* y);

// Batch norm in evaluation and the running statistics' update after a training forward (kernels/norm.h).
void batch_norm_inference(const NormShape& sh, DType dt, const void* x, const float* running_mean,
                          const float* running_var, const float* gamma, const float* beta, float eps, bool relu,
                          void* y);
void batch_norm_update_running(int64_t c, int64_t count, float eps, float momentum, const float* mean,
                               const float* rstd, float* running_mean, float* running_var);
// Batch norm synchronised over ranks (kernels/norm.h): the rows in chunks of 1024, each chunk's double sums added in
// chunk order (the same bits for any thread count).
void batch_norm_sums(const NormShape& sh, DType dt, const void* x, double* sums);
void batch_norm_stats(int64_t c, int64_t count, float eps, const double* sums, float* mean, float* var, float* rstd);
void batch_norm_backward_sums(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                              const float* mean, const float* rstd, bool relu, double* sums, float* dgamma,
                              float* dbeta);
void batch_norm_backward_apply(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                               const float* mean, const float* rstd, const float* gamma, const double* sums,
                               int64_t count, bool relu, void* dx);

// The table of these entry points that the engine dispatches through (kernels/norm.h); the stream is ignored, and the
// fused pair runs the norm, then kernels/cpu/activation.h's leaky ReLU.
extern const NormKernels norm_kernels;

}  // namespace unet::kernels::cpu
