// instance_norm: the differentiable instance normalisation used after every nnU-Net convolution, and
// instance_norm_leaky_relu, the same followed by leaky ReLU as one op; batch_norm (UNet 3+), whose training forward is
// the instance norm of x seen as one sample, and whose evaluation applies the running statistics. x may be f32, f16 or
// bf16 (y and dx have its type); the statistics, gamma, beta and their gradients are f32 (mixed precision). Validates
// shapes, runs kernels/cpu/norm.cpp or kernels/cuda/norm.cu by x's device, and records one node that saves x (and,
// fused, the output y) and the per-(n, c) mean and 1/std (small), so backward need not recompute the statistics. The
// fused op never stores the normalised value before the activation: a 3D nnU-Net's training saves one activation less
// per normalisation.
#include <algorithm>
#include <cmath>
#include <optional>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/comm.h"
#include "engine/ops.h"
#include "engine/ops/internal.h"
#include "kernels/norm.h"

namespace unet::ops::internal {

namespace {

// Validates the arguments of a normalisation and returns its shape.
kernels::NormShape check_norm(const char* op, const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                              std::optional<float> slope, bool over_batch) {
  check_arg(x.defined(), std::string(op) + ": undefined input");
  const std::string args = std::string(op) + "(x " + x.describe() + ", gamma " +
                           (gamma.defined() ? gamma.describe() : std::string("none")) + ", beta " +
                           (beta.defined() ? beta.describe() : std::string("none")) + "): ";
  check_arg(backend::is_float(x.dtype()), args + "x must be f32, f16 or bf16");
  for (const Tensor* t : {&gamma, &beta}) {
    if (!t->defined()) continue;
    check_arg(t->dtype() == DType::f32, args + "gamma and beta must be f32 (the master weights)");
  }
  backend::check_device(op, x.device(), {x, gamma, beta});
  check_arg(x.rank() >= 3 && x.rank() <= 5, args + "x must be [N, spatial..., C] with 1 to 3 spatial axes");
  const int64_t C = x.dim(-1);
  check_arg(!gamma.defined() || (gamma.rank() == 1 && gamma.dim(0) == C),
            args + "gamma must be [C] = [" + std::to_string(C) + "]");
  check_arg(!beta.defined() || (beta.rank() == 1 && beta.dim(0) == C),
            args + "beta must be [C] = [" + std::to_string(C) + "]");
  check_arg(std::isfinite(eps) && eps >= 0.f, args + "eps must be finite and >= 0, got " + std::to_string(eps));
  // The backward tells the activation's two sides apart by the sign of its output: y > 0 exactly where the normalised
  // value is > 0, which needs slope >= 0 (nnU-Net's is 0.01).
  if (slope)
    check_arg(std::isfinite(*slope) && *slope >= 0.f,
              args + "negative_slope must be finite and >= 0, got " + std::to_string(*slope));

  kernels::NormShape sh;
  sh.n = over_batch ? 1 : x.dim(0);
  sh.c = C;
  sh.s = x.numel() / std::max<int64_t>(1, sh.n * C);
  check_arg(sh.s > 0 || x.numel() == 0, args + "empty spatial extent");
  return sh;
}

}  // namespace

NormForward norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                         std::optional<float> slope, bool over_batch) {
  const char* op = over_batch ? "batch_norm" : slope ? "instance_norm_leaky_relu" : "instance_norm";
  NormForward r;
  const kernels::NormShape& sh = r.shape = check_norm(op, x, gamma, beta, eps, slope, over_batch);
  const int64_t C = sh.c;
  const Device dev = x.device();
  const DType dt = x.dtype();
  const float s = slope.value_or(0.f);
  r.y = Tensor::empty(x.shape(), dt, dev);
  r.mean = Tensor::empty({sh.n, C}, DType::f32, dev);
  r.rstd = Tensor::empty({sh.n, C}, DType::f32, dev);
  const float* g_ptr = gamma.defined() ? gamma.data<float>() : nullptr;
  const float* b_ptr = beta.defined() ? beta.data<float>() : nullptr;
  float* mean = r.mean.data<float>();
  float* rstd = r.rstd.data<float>();
  if (x.numel() == 0) return r;
  const kernels::NormKernels& k = backend::kernels_for(x).norm;
  if (slope)
    k.instance_norm_leaky_relu_forward(sh, dt, x.raw(), g_ptr, b_ptr, eps, s, r.y.raw(), mean, rstd,
                                       backend::stream(x));
  else
    k.instance_norm_forward(sh, dt, x.raw(), g_ptr, b_ptr, eps, r.y.raw(), mean, rstd, backend::stream(x));
  return r;
}

NormCoefficients norm_coefficients(const Tensor& x, const Tensor& stats, const Tensor& gamma, const Tensor& beta,
                                   float eps, float slope) {
  NormCoefficients r;
  const kernels::NormShape& sh = r.shape = check_norm("instance_norm_leaky_relu", x, gamma, beta, eps, slope, false);
  check_arg(stats.defined() && stats.dtype() == DType::f32 && stats.shape() == Shape{sh.n, sh.c, 2},
            "instance_norm_leaky_relu: the statistics of x " + x.describe() + " must be f32 [" + std::to_string(sh.n) +
                ", " + std::to_string(sh.c) + ", 2] (a convolution's, ops::conv_stats), got " +
                (stats.defined() ? stats.describe() : std::string("none")));
  backend::check_device("instance_norm_leaky_relu", x.device(), {stats});
  r.slope = slope;
  const Device dev = x.device();
  for (Tensor* t : {&r.mean, &r.rstd, &r.scale, &r.shift}) *t = Tensor::empty({sh.n, sh.c}, DType::f32, dev);
  backend::kernels_for(x).norm.instance_norm_stats(
      sh, stats.data<float>(), gamma.defined() ? gamma.data<float>() : nullptr,
      beta.defined() ? beta.data<float>() : nullptr, eps, r.mean.data<float>(), r.rstd.data<float>(),
      r.scale.data<float>(), r.shift.data<float>(), backend::stream(x));
  return r;
}

Tensor norm_apply(const Tensor& x, const NormCoefficients& c) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend::kernels_for(x).norm.instance_norm_apply(c.shape, x.dtype(), x.raw(), c.mean.data<float>(),
                                                   c.scale.data<float>(), c.shift.data<float>(), c.slope, y.raw(),
                                                   backend::stream(x));
  return y;
}

NormGrads norm_backward(const kernels::NormShape& sh, const Tensor& x, const Tensor& y, const Tensor& dy,
                        const Tensor& mean, const Tensor& rstd, const Tensor& gamma, std::optional<float> slope,
                        bool need_dx, bool need_dgamma, bool need_dbeta) {
  const Device dev = x.device();
  const DType dt = x.dtype();
  const float s = slope.value_or(0.f);
  NormGrads r;
  if (need_dx) r.dx = Tensor::empty(x.shape(), dt, dev);
  if (need_dgamma) r.dgamma = Tensor::zeros({sh.c}, DType::f32, dev);
  if (need_dbeta) r.dbeta = Tensor::zeros({sh.c}, DType::f32, dev);
  if (x.numel() == 0) return r;
  const float* g = gamma.defined() ? gamma.data<float>() : nullptr;
  void* dx_p = need_dx ? r.dx.raw() : nullptr;
  float* dg_p = need_dgamma ? r.dgamma.data<float>() : nullptr;
  float* db_p = need_dbeta ? r.dbeta.data<float>() : nullptr;
  const kernels::NormKernels& k = backend::kernels_for(x).norm;
  if (slope)
    k.instance_norm_leaky_relu_backward(sh, dt, x.raw(), y.raw(), dy.raw(), mean.data<float>(), rstd.data<float>(), g,
                                        s, dx_p, dg_p, db_p, backend::stream(dy));
  else
    k.instance_norm_backward(sh, dt, x.raw(), dy.raw(), mean.data<float>(), rstd.data<float>(), g, dx_p, dg_p, db_p,
                             backend::stream(dy));
  return r;
}

}  // namespace unet::ops::internal

namespace unet::ops {
namespace {

// Instance norm, and batch norm in training (over_batch); `slope` set: the fused leaky ReLU.
internal::NormForward norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                           std::optional<float> slope, bool over_batch) {
  internal::NormForward f = internal::norm_forward(x, gamma, beta, eps, slope, over_batch);
  if (autograd::should_record({x, gamma, beta})) {
    const bool need_dx = x.requires_grad();
    const bool need_dg = gamma.defined() && gamma.requires_grad();
    const bool need_db = beta.defined() && beta.requires_grad();
    // x is needed for dx and dgamma; dbeta alone needs only dy, but the kernel reads x for its sums anyway. The fused
    // op also keeps its output (detached: the node must not own its own output's autograd state), whose sign is the
    // activation's side.
    Tensor saved_x = x.detach(), saved_g = gamma.defined() ? gamma.detach() : Tensor();
    Tensor saved_y = slope ? f.y.detach() : Tensor();
    const char* name = over_batch ? "batch_norm" : slope ? "instance_norm_leaky_relu" : "instance_norm";
    autograd::record(name, {x, gamma, beta}, {f.y},
                     [=, sh = f.shape, mean = f.mean, rstd = f.rstd](const std::vector<Tensor>& grads) {
                       internal::NormGrads g = internal::norm_backward(sh, saved_x, saved_y, grads[0], mean, rstd,
                                                                       saved_g, slope, need_dx, need_dg, need_db);
                       return std::vector<Tensor>{g.dx, g.dgamma, g.dbeta};
                     });
  }
  return f;
}

}  // namespace

Tensor instance_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps) {
  return norm(x, gamma, beta, eps, std::nullopt, false).y;
}

Tensor instance_norm_leaky_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                                float negative_slope) {
  return norm(x, gamma, beta, eps, negative_slope, false).y;
}

Tensor instance_norm_leaky_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                                float negative_slope, const Tensor& stats) {
  const internal::NormCoefficients c = internal::norm_coefficients(x, stats, gamma, beta, eps, negative_slope);
  Tensor y = internal::norm_apply(x, c);
  if (autograd::should_record({x, gamma, beta})) {
    const bool need_dx = x.requires_grad();
    const bool need_dg = gamma.defined() && gamma.requires_grad();
    const bool need_db = beta.defined() && beta.requires_grad();
    // The backward of the two-argument form: x, the output (the activation's side) and the per-(n, c) statistics.
    Tensor saved_x = x.detach(), saved_y = y.detach(), saved_g = gamma.defined() ? gamma.detach() : Tensor();
    autograd::record("instance_norm_leaky_relu", {x, gamma, beta}, {y},
                     [=, sh = c.shape, mean = c.mean, rstd = c.rstd](const std::vector<Tensor>& grads) {
                       internal::NormGrads g =
                           internal::norm_backward(sh, saved_x, saved_y, grads[0], mean, rstd, saved_g, negative_slope,
                                                   need_dx, need_dg, need_db);
                       return std::vector<Tensor>{g.dx, g.dgamma, g.dbeta};
                     });
  }
  return y;
}

namespace {

// The checks of x, gamma, beta and eps on the paths that do not go through norm(): evaluation and SyncBatchNorm.
void check_batch_norm_args(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                           const std::string& args) {
  check_arg(backend::is_float(x.dtype()), args + "x must be f32, f16 or bf16");
  check_arg(x.rank() >= 3 && x.rank() <= 5, args + "x must be [N, spatial..., C] with 1 to 3 spatial axes");
  const int64_t C = x.dim(-1);
  for (const Tensor* t : {&gamma, &beta})
    check_arg(!t->defined() || (t->dtype() == DType::f32 && t->rank() == 1 && t->dim(0) == C),
              args + "gamma and beta must be f32 [C] = [" + std::to_string(C) + "]");
  backend::check_device("batch_norm", x.device(), {x, gamma, beta});
  check_arg(std::isfinite(eps) && eps >= 0.f, args + "eps must be finite and >= 0, got " + std::to_string(eps));
}

// SyncBatchNorm's training forward and its backward (BatchNormOptions::comm): the per-channel sums of x (and in
// backward of g and g xhat) are reduced over the ranks between the kernels; the normalisation itself is the
// evaluation kernel applied with the batch's mean and biased variance.
Tensor sync_batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                       const Tensor& running_var, const BatchNormOptions& o, const std::string& args) {
  check_batch_norm_args(x, gamma, beta, o.eps, args);
  const int64_t C = x.dim(-1), rows = x.numel() / C;
  Comm* comm = o.comm;
  const Device dev = x.device();
  const cudaStream_t stream = backend::stream(x);
  const kernels::NormKernels& k = backend::kernels_for(dev).norm;
  const kernels::NormShape sh{1, rows, C};
  const int64_t count = rows * comm->size();
  Tensor sums = Tensor::empty({4 * C}, DType::i32, dev);  // 2C doubles
  k.batch_norm_sums(sh, x.dtype(), x.raw(), static_cast<double*>(sums.raw()), stream);
  comm->allreduce(sums.raw(), 2 * C, ScalarType::f64, ReduceOp::sum, dev);
  Tensor mean = Tensor::empty({C}, DType::f32, dev), var = Tensor::empty({C}, DType::f32, dev),
         rstd = Tensor::empty({C}, DType::f32, dev);
  k.batch_norm_stats(C, count, o.eps, static_cast<const double*>(sums.raw()), mean.data<float>(), var.data<float>(),
                     rstd.data<float>(), stream);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), dev);
  k.batch_norm_inference(sh, x.dtype(), x.raw(), mean.data<float>(), var.data<float>(),
                         gamma.defined() ? gamma.data<float>() : nullptr, beta.defined() ? beta.data<float>() : nullptr,
                         o.eps, o.relu, y.raw(), stream);
  k.batch_norm_update_running(C, count, o.eps, o.momentum, mean.data<float>(), rstd.data<float>(),
                              running_mean.data<float>(), running_var.data<float>(), stream);
  if (autograd::should_record({x, gamma, beta})) {
    const bool relu = o.relu;
    autograd::record("batch_norm", {x, gamma, beta}, {y},
                     [x, y, gamma, beta, mean, rstd, comm, count, relu, sh](const std::vector<Tensor>& g) {
                       const Device d = x.device();
                       const kernels::NormKernels& k = backend::kernels_for(d).norm;
                       const cudaStream_t stream = backend::stream(x);
                       Tensor dgamma = gamma.defined() ? Tensor::empty({sh.c}, DType::f32, d) : Tensor();
                       Tensor dbeta = beta.defined() ? Tensor::empty({sh.c}, DType::f32, d) : Tensor();
                       Tensor sums = Tensor::empty({4 * sh.c}, DType::i32, d);
                       k.batch_norm_backward_sums(sh, x.dtype(), x.raw(), y.raw(), g[0].raw(), mean.data<float>(),
                                                  rstd.data<float>(), relu, static_cast<double*>(sums.raw()),
                                                  dgamma.defined() ? dgamma.data<float>() : nullptr,
                                                  dbeta.defined() ? dbeta.data<float>() : nullptr, stream);
                       comm->allreduce(sums.raw(), 2 * sh.c, ScalarType::f64, ReduceOp::sum, d);
                       Tensor dx = Tensor::empty(x.shape(), x.dtype(), d);
                       k.batch_norm_backward_apply(sh, x.dtype(), x.raw(), y.raw(), g[0].raw(), mean.data<float>(),
                                                   rstd.data<float>(), gamma.defined() ? gamma.data<float>() : nullptr,
                                                   static_cast<const double*>(sums.raw()), count, relu, dx.raw(),
                                                   stream);
                       return std::vector<Tensor>{dx, dgamma, dbeta};
                     });
  }
  return y;
}

}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                  const Tensor& running_var, const BatchNormOptions& o) {
  check_arg(x.defined() && running_mean.defined() && running_var.defined(), "batch_norm: undefined input");
  const std::string args = "batch_norm(x " + x.describe() + ", running_mean " + running_mean.describe() +
                           ", running_var " + running_var.describe() + "): ";
  const int64_t C = x.rank() > 0 ? x.dim(-1) : 0;
  for (const Tensor* t : {&running_mean, &running_var}) {
    check_arg(t->dtype() == DType::f32 && t->rank() == 1 && t->dim(0) == C,
              args + "running statistics must be f32 [C] = [" + std::to_string(C) + "]");
    check_arg(!t->requires_grad(), args + "running statistics are buffers, not parameters (no gradient)");
  }
  backend::check_device("batch_norm", x.device(), {x, running_mean, running_var});
  check_arg(std::isfinite(o.momentum) && o.momentum >= 0.f && o.momentum <= 1.f,
            args + "momentum must be in [0, 1], got " + std::to_string(o.momentum));
  const std::optional<float> slope = o.relu ? std::optional<float>(0.f) : std::nullopt;
  if (o.training) {
    // Over every rank's share with SyncBatchNorm (each rank holds as many rows), as PyTorch's SyncBatchNorm counts.
    const int64_t count = C > 0 ? x.numel() / C : 0, ranks = o.comm ? o.comm->size() : 1;
    check_arg(count * ranks >= 2,
              args +
                  "training needs more than one value per channel (batch x spatial >= 2, over the ranks with a "
                  "comm), as PyTorch");
    if (ranks > 1) return sync_batch_norm(x, gamma, beta, running_mean, running_var, o, args);
    internal::NormForward f = norm(x, gamma, beta, o.eps, slope, true);
    backend::kernels_for(x).norm.batch_norm_update_running(C, count, o.eps, o.momentum, f.mean.data<float>(),
                                                           f.rstd.data<float>(), running_mean.data<float>(),
                                                           running_var.data<float>(), backend::stream(x));
    return f.y;
  }
  check_arg(!autograd::should_record({x, gamma, beta}),
            args + "evaluation mode (training = false) has no gradient here: run it under autograd::NoGradGuard");
  // The shape and argument checks of the training path (whose kernels make their own in norm()).
  check_batch_norm_args(x, gamma, beta, o.eps, args);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return y;
  const kernels::NormShape sh{1, x.numel() / std::max<int64_t>(1, C), C};
  backend::kernels_for(x).norm.batch_norm_inference(
      sh, x.dtype(), x.raw(), running_mean.data<float>(), running_var.data<float>(),
      gamma.defined() ? gamma.data<float>() : nullptr, beta.defined() ? beta.data<float>() : nullptr, o.eps, o.relu,
      y.raw(), backend::stream(x));
  return y;
}

}  // namespace unet::ops
