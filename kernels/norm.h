// Instance and batch normalisation: the shape shared by the CPU (kernels/cpu/norm.h) and CUDA (kernels/cuda/norm.cuh)
// entry points, and the table of them the engine dispatches through (one per backend, norm_kernels). Layout
// channels-last: x is [n, s, c] with s = the product of the spatial sizes; statistics per (n, c) over s. Batch norm in
// training is the instance norm of x seen as [1, n * s, c] (statistics per channel over batch and space).
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

struct NormShape {
  int64_t n = 1;  // batch
  int64_t s = 1;  // spatial positions per sample
  int64_t c = 1;  // channels
};

// x, y, dy and dx in dt (f32, f16 or bf16); statistics, gamma, beta and their gradients f32; gamma and beta may be
// null (1 and 0), as may any of dx, dgamma, dbeta not wanted. The _leaky_relu pair is the norm followed by leaky ReLU
// (slope >= 0), whose backward reads the output y. The CPU ignores the stream and runs the norm's and the activation's
// kernels one after the other (bitwise the two ops).
struct NormKernels {
  void (*instance_norm_forward)(const NormShape& sh, DType dt, const void* x, const float* gamma, const float* beta,
                                float eps, void* y, float* mean, float* rstd, cudaStream_t stream);
  void (*instance_norm_backward)(const NormShape& sh, DType dt, const void* x, const void* dy, const float* mean,
                                 const float* rstd, const float* gamma, void* dx, float* dgamma, float* dbeta,
                                 cudaStream_t stream);
  void (*instance_norm_leaky_relu_forward)(const NormShape& sh, DType dt, const void* x, const float* gamma,
                                           const float* beta, float eps, float slope, void* y, float* mean, float* rstd,
                                           cudaStream_t stream);
  void (*instance_norm_leaky_relu_backward)(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                                            const float* mean, const float* rstd, const float* gamma, float slope,
                                            void* dx, float* dgamma, float* dbeta, cudaStream_t stream);
  // Instance norm from statistics a convolution computed as it stored x (kernels/conv.h, conv_fprop's `stats`):
  // sums[(n * c + j) * 2 + {0, 1}] = the sum of x and of x^2 over the s positions of (n, j). In double, rounded once:
  // mean = sum / s, var = max(sum of squares / s - mean^2, 0), rstd = 1 / sqrt(var + eps), and the apply pass's
  // scale = rstd * gamma, shift = beta (gamma, beta null: 1, 0). mean, rstd, scale, shift [n, c].
  void (*instance_norm_stats)(const NormShape& sh, const float* sums, const float* gamma, const float* beta, float eps,
                              float* mean, float* rstd, float* scale, float* shift, cudaStream_t stream);
  // y = leaky_relu(fma(x - mean, scale, shift), slope) per (n, c), rounded to dt once (slope 1: the norm alone): the
  // transform conv_fprop_norm_act applies to its input as it loads it, so both give the same bits.
  void (*instance_norm_apply)(const NormShape& sh, DType dt, const void* x, const float* mean, const float* scale,
                              const float* shift, float slope, void* y, cudaStream_t stream);
  // Batch norm in evaluation, per channel c over all n * s rows: y = (x - running_mean) * gamma / sqrt(running_var +
  // eps) + beta (the scale in double, rounded to f32 once; y rounded to dt once), then ReLU when `relu`.
  void (*batch_norm_inference)(const NormShape& sh, DType dt, const void* x, const float* running_mean,
                               const float* running_var, const float* gamma, const float* beta, float eps, bool relu,
                               void* y, cudaStream_t stream);
  // After a training forward over `count` values per channel (count >= 2) that wrote mean and rstd [c]:
  // running_mean = (1 - momentum) * running_mean + momentum * mean and running_var likewise with the unbiased batch
  // variance (1 / rstd^2 - eps) * count / (count - 1), as torch.nn.BatchNorm. Computed in double.
  void (*batch_norm_update_running)(int64_t c, int64_t count, float eps, float momentum, const float* mean,
                                    const float* rstd, float* running_mean, float* running_var, cudaStream_t stream);

  // Batch norm synchronised over ranks (SyncBatchNorm): the engine reduces `sums` over the ranks between the calls.
  // Forward: sums[2c] = per channel sum x, then sum x^2, over this rank's n * s rows (double, a fixed order), then
  // from the reduced sums over `count` values per channel: mean, the biased variance var (>= 0) and rstd =
  // 1 / sqrt(var + eps), in double, rounded once; batch_norm_inference with (mean, var) then normalises.
  void (*batch_norm_sums)(const NormShape& sh, DType dt, const void* x, double* sums, cudaStream_t stream);
  void (*batch_norm_stats)(int64_t c, int64_t count, float eps, const double* sums, float* mean, float* var,
                           float* rstd, cudaStream_t stream);
  // Backward, with g = dy (with ReLU: dy where y > 0, else 0) and xhat = (x - mean) rstd: sums[2c] = per channel
  // sum g, then sum g xhat over this rank's rows, also written (rounded to f32) to dbeta and dgamma, this rank's share
  // of their gradient (either may be null); then with the reduced sums A, B over `count` values:
  // dx = gamma rstd (g - A / count - xhat B / count) (gamma null: 1).
  void (*batch_norm_backward_sums)(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                                   const float* mean, const float* rstd, bool relu, double* sums, float* dgamma,
                                   float* dbeta, cudaStream_t stream);
  void (*batch_norm_backward_apply)(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                                    const float* mean, const float* rstd, const float* gamma, const double* sums,
                                    int64_t count, bool relu, void* dx, cudaStream_t stream);
};

}  // namespace unet::kernels
