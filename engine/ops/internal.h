// Pieces of the ops that more than one op is built from (engine/ops/*.cpp only; the public API is engine/ops.h): the
// instance norm's forward and backward (norm.cpp) and the convolution's (conv.cpp), each validating its arguments and
// running the kernels of the tensors' device, without recording autograd nodes. ops::norm_act_conv composes them.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "kernels/conv.h"
#include "kernels/norm.h"

namespace unet::ops::internal {

// "[1, 2, 3]": stride, padding and size lists in messages.
std::string vec_str(const std::vector<int>& v);

// Instance norm of x [N, spatial..., C] (f32, f16 or bf16), followed by leaky ReLU when `slope` is set (>= 0).
struct NormForward {
  Tensor y;           // x's shape and type
  Tensor mean, rstd;  // f32 [N, C]
  kernels::NormShape shape;
};
// over_batch: batch norm's statistics, per channel over batch and space (x seen as [1, N * spatial, C]; mean and
// rstd [1, C]).
NormForward norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                         std::optional<float> slope, bool over_batch = false);

// The instance norm of x from a convolution's statistics of x (stats f32 [N, C, 2]: per (n, c) the sum and the sum
// of squares, kernels/conv.h), validated as norm_forward: mean and rstd for the backward, and the per-(n, c) scale and
// shift of the apply transform y = leaky_relu(fma(x - mean, scale, shift), slope) (kernels/norm.h).
struct NormCoefficients {
  Tensor mean, rstd, scale, shift;  // f32 [N, C]
  kernels::NormShape shape;
  float slope = 0.f;
};
NormCoefficients norm_coefficients(const Tensor& x, const Tensor& stats, const Tensor& gamma, const Tensor& beta,
                                   float eps, float slope);
Tensor norm_apply(const Tensor& x, const NormCoefficients& c);  // the transform, into a tensor of x's shape and type

// Its gradients from dy; y is the forward's output (read only when `slope` is set). Undefined where not needed.
struct NormGrads {
  Tensor dx, dgamma, dbeta;
};
NormGrads norm_backward(const kernels::NormShape& shape, const Tensor& x, const Tensor& y, const Tensor& dy,
                        const Tensor& mean, const Tensor& rstd, const Tensor& gamma, std::optional<float> slope,
                        bool need_dx, bool need_dgamma, bool need_dbeta);

// Convolution of x [N, spatial..., C] (f32, f16 or bf16) with the f32 weight w [K, kernel..., C] and bias [K] (or
// undefined): validates, then y (x's type) with w rounded to x's type. w_used receives that rounded weight (what dgrad
// reads).
// With `want_stats`, stats receives y's statistics (f32 [N, K, 2], for norm_coefficients) from the kernels' epilogue.
// With `act`, the convolution reads norm_apply(x, *act) instead of x, made as x is loaded (CUDA) and never stored.
struct ConvForward {
  Tensor y, w_used, stats;
  kernels::ConvProblem problem;
};
ConvForward conv_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const std::vector<int>& stride,
                         const std::vector<int>& pad, bool want_stats = false, const NormCoefficients* act = nullptr);

// Its gradients from dy: dx (x's type) from w_used, dw and dbias (f32) from x. x may be undefined when dw is not
// needed, w_used when dx is not.
struct ConvGrads {
  Tensor dx, dw, dbias;
};
ConvGrads conv_backward(const kernels::ConvProblem& p, DType dt, const Tensor& dy, const Tensor& x, const Tensor& w_used,
                        const Shape& x_shape, const Shape& w_shape, bool need_dx, bool need_dw, bool need_dbias);

}  // namespace unet::ops::internal
