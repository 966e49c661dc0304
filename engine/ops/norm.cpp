// instance_norm: the differentiable instance normalisation used after every nnU-Net convolution. x may be f32, f16 or
// bf16 (y and dx have its type); the statistics, gamma, beta and their gradients are f32 (mixed precision).
// Validates shapes, runs kernels/cpu/norm.cpp or kernels/cuda/norm.cu by x's device, and records one node that saves x and the per-(n, c) mean and
// 1/std (small), so backward need not recompute the statistics.
#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/backend.h"
#include "kernels/cuda/norm.cuh"
#include "kernels/cpu/norm.h"

namespace unet::ops {

Tensor instance_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps) {
  check_arg(x.defined(), "instance_norm: undefined input");
  const std::string args = "instance_norm(x " + x.describe() + ", gamma " +
                           (gamma.defined() ? gamma.describe() : std::string("none")) + ", beta " +
                           (beta.defined() ? beta.describe() : std::string("none")) + "): ";
  check_arg(backend::is_float(x.dtype()), args + "x must be f32, f16 or bf16");
  for (const Tensor* t : {&gamma, &beta}) {
    if (!t->defined()) continue;
    check_arg(t->dtype() == DType::f32, args + "gamma and beta must be f32 (the master weights)");
  }
  backend::check_device("instance_norm", x.device(), {x, gamma, beta});
  check_arg(x.rank() >= 3 && x.rank() <= 5, args + "x must be [N, spatial..., C] with 1 to 3 spatial axes");
  const int64_t C = x.dim(-1);
  check_arg(!gamma.defined() || (gamma.rank() == 1 && gamma.dim(0) == C),
            args + "gamma must be [C] = [" + std::to_string(C) + "]");
  check_arg(!beta.defined() || (beta.rank() == 1 && beta.dim(0) == C),
            args + "beta must be [C] = [" + std::to_string(C) + "]");
  check_arg(std::isfinite(eps) && eps >= 0.f, args + "eps must be finite and >= 0, got " + std::to_string(eps));

  kernels::cpu::NormShape sh;
  sh.n = x.dim(0);
  sh.c = C;
  sh.s = x.numel() / std::max<int64_t>(1, sh.n * C);
  check_arg(sh.s > 0 || x.numel() == 0, args + "empty spatial extent");
  const Device dev = x.device();
  const DType dt = x.dtype();
  Tensor y = Tensor::empty(x.shape(), dt, dev);
  Tensor mean = Tensor::empty({sh.n, C}, DType::f32, dev), rstd = Tensor::empty({sh.n, C}, DType::f32, dev);
  const float* g_ptr = gamma.defined() ? gamma.data<float>() : nullptr;
  const float* b_ptr = beta.defined() ? beta.data<float>() : nullptr;
  if (x.numel() > 0 && backend::on_cuda(x))
    UNET_CUDA_KERNEL("instance_norm",
                     kernels::cuda::instance_norm_forward(sh, dt, x.raw(), g_ptr, b_ptr, eps, y.raw(),
                                                          mean.data<float>(), rstd.data<float>(), backend::stream(x)));
  else if (x.numel() > 0)
    kernels::cpu::instance_norm_forward(sh, dt, x.raw(), g_ptr, b_ptr, eps, y.raw(), mean.data<float>(),
                                        rstd.data<float>());

  if (autograd::should_record({x, gamma, beta})) {
    const bool need_dx = x.requires_grad();
    const bool need_dg = gamma.defined() && gamma.requires_grad();
    const bool need_db = beta.defined() && beta.requires_grad();
    // x is needed for dx and dgamma; dbeta alone needs only dy, but the kernel reads x for its sums anyway.
    Tensor saved_x = x.detach(), saved_g = gamma.defined() ? gamma.detach() : Tensor();
    Shape x_shape = x.shape();
    autograd::record("instance_norm", {x, gamma, beta}, {y}, [=](const std::vector<Tensor>& grads) {
      const Tensor& dy = grads[0];
      Tensor dx = need_dx ? Tensor::empty(x_shape, dt, dev) : Tensor();
      Tensor dg = need_dg ? Tensor::zeros({C}, DType::f32, dev) : Tensor();
      Tensor db = need_db ? Tensor::zeros({C}, DType::f32, dev) : Tensor();
      const float* g = saved_g.defined() ? saved_g.data<float>() : nullptr;
      void* dx_p = need_dx ? dx.raw() : nullptr;
      float* dg_p = need_dg ? dg.data<float>() : nullptr;
      float* db_p = need_db ? db.data<float>() : nullptr;
      if (saved_x.numel() > 0 && backend::on_cuda(saved_x))
        UNET_CUDA_KERNEL("instance_norm",
                         kernels::cuda::instance_norm_backward(sh, dt, saved_x.raw(), dy.raw(),
                                                               mean.data<float>(), rstd.data<float>(), g, dx_p, dg_p,
                                                               db_p, backend::stream(dy)));
      else if (saved_x.numel() > 0)
        kernels::cpu::instance_norm_backward(sh, dt, saved_x.raw(), dy.raw(), mean.data<float>(),
                                             rstd.data<float>(), g, dx_p, dg_p, db_p);
      return std::vector<Tensor>{dx, dg, db};
    });
  }
  return y;
}

}  // namespace unet::ops
