// instance_norm: the differentiable instance normalisation used after every nnU-Net convolution, and
// instance_norm_leaky_relu, the same followed by leaky ReLU as one op. x may be f32, f16 or bf16 (y and dx have its
// type); the statistics, gamma, beta and their gradients are f32 (mixed precision).
// Validates shapes, runs kernels/cpu/norm.cpp or kernels/cuda/norm.cu by x's device, and records one node that saves x
// (and, fused, the output y) and the per-(n, c) mean and 1/std (small), so backward need not recompute the statistics.
// The fused op never stores the normalised value before the activation: a 3D nnU-Net's training saves one activation
// less per normalisation.
#include <algorithm>
#include <cmath>
#include <optional>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/backend.h"
#include "kernels/cuda/norm.cuh"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/norm.h"

namespace unet::ops {
namespace {

// Both ops; `slope` set: the fused leaky ReLU.
Tensor norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, std::optional<float> slope) {
  const char* op = slope ? "instance_norm_leaky_relu" : "instance_norm";
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

  kernels::cpu::NormShape sh;
  sh.n = x.dim(0);
  sh.c = C;
  sh.s = x.numel() / std::max<int64_t>(1, sh.n * C);
  check_arg(sh.s > 0 || x.numel() == 0, args + "empty spatial extent");
  const Device dev = x.device();
  const DType dt = x.dtype();
  const float s = slope.value_or(0.f);
  Tensor y = Tensor::empty(x.shape(), dt, dev);
  Tensor mean = Tensor::empty({sh.n, C}, DType::f32, dev), rstd = Tensor::empty({sh.n, C}, DType::f32, dev);
  const float* g_ptr = gamma.defined() ? gamma.data<float>() : nullptr;
  const float* b_ptr = beta.defined() ? beta.data<float>() : nullptr;
  if (x.numel() > 0 && backend::on_cuda(x)) {
    if (slope)
      UNET_CUDA_KERNEL(op, kernels::cuda::instance_norm_leaky_relu_forward(sh, dt, x.raw(), g_ptr, b_ptr, eps, s,
                                                                            y.raw(), mean.data<float>(),
                                                                            rstd.data<float>(), backend::stream(x)));
    else
      UNET_CUDA_KERNEL(op, kernels::cuda::instance_norm_forward(sh, dt, x.raw(), g_ptr, b_ptr, eps, y.raw(),
                                                                 mean.data<float>(), rstd.data<float>(),
                                                                 backend::stream(x)));
  } else if (x.numel() > 0) {
    kernels::cpu::instance_norm_forward(sh, dt, x.raw(), g_ptr, b_ptr, eps, y.raw(), mean.data<float>(),
                                        rstd.data<float>());
    if (slope) kernels::cpu::leaky_relu_forward(dt, y.raw(), s, y.raw(), y.numel());  // in place, in cache order
  }

  if (autograd::should_record({x, gamma, beta})) {
    const bool need_dx = x.requires_grad();
    const bool need_dg = gamma.defined() && gamma.requires_grad();
    const bool need_db = beta.defined() && beta.requires_grad();
    // x is needed for dx and dgamma; dbeta alone needs only dy, but the kernel reads x for its sums anyway. The fused
    // op also keeps its output (detached: the node must not own its own output's autograd state), whose sign is the
    // activation's side.
    Tensor saved_x = x.detach(), saved_g = gamma.defined() ? gamma.detach() : Tensor();
    Tensor saved_y = slope ? y.detach() : Tensor();
    Shape x_shape = x.shape();
    autograd::record(op, {x, gamma, beta}, {y}, [=](const std::vector<Tensor>& grads) {
      const Tensor& dy = grads[0];
      Tensor dx = need_dx ? Tensor::empty(x_shape, dt, dev) : Tensor();
      Tensor dg = need_dg ? Tensor::zeros({C}, DType::f32, dev) : Tensor();
      Tensor db = need_db ? Tensor::zeros({C}, DType::f32, dev) : Tensor();
      const float* g = saved_g.defined() ? saved_g.data<float>() : nullptr;
      void* dx_p = need_dx ? dx.raw() : nullptr;
      float* dg_p = need_dg ? dg.data<float>() : nullptr;
      float* db_p = need_db ? db.data<float>() : nullptr;
      if (saved_x.numel() > 0 && backend::on_cuda(saved_x)) {
        if (slope)
          UNET_CUDA_KERNEL(op, kernels::cuda::instance_norm_leaky_relu_backward(
                                   sh, dt, saved_x.raw(), saved_y.raw(), dy.raw(), mean.data<float>(),
                                   rstd.data<float>(), g, s, dx_p, dg_p, db_p, backend::stream(dy)));
        else
          UNET_CUDA_KERNEL(op, kernels::cuda::instance_norm_backward(sh, dt, saved_x.raw(), dy.raw(),
                                                                      mean.data<float>(), rstd.data<float>(), g, dx_p,
                                                                      dg_p, db_p, backend::stream(dy)));
      } else if (saved_x.numel() > 0) {
        Tensor dz = dy;  // the gradient reaching the normalised value: through the activation when fused
        if (slope) {
          dz = Tensor::empty(x_shape, dt, dev);
          kernels::cpu::leaky_relu_backward(dt, saved_y.raw(), dy.raw(), s, dz.raw(), dz.numel());
        }
        kernels::cpu::instance_norm_backward(sh, dt, saved_x.raw(), dz.raw(), mean.data<float>(), rstd.data<float>(),
                                             g, dx_p, dg_p, db_p);
      }
      return std::vector<Tensor>{dx, dg, db};
    });
  }
  return y;
}

}  // namespace

Tensor instance_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps) {
  return norm(x, gamma, beta, eps, std::nullopt);
}

Tensor instance_norm_leaky_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                                float negative_slope) {
  return norm(x, gamma, beta, eps, negative_slope);
}

}  // namespace unet::ops
