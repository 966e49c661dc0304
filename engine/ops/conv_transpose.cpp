// conv_transpose: the differentiable transposed convolution with kernel == stride (nnU-Net's upsampling layer).
// Validates shapes, runs kernels/cpu/conv_transpose.cpp or kernels/cuda/conv_transpose.cu by x's device, and records
// one node whose backward computes dx, dw and dbias; it saves x only when w needs a gradient and w only when x does.
// x may be f32, f16 or bf16 (y and dx have its type); w, bias and their gradients are f32 (the weight is rounded to x's
// type for the kernels).
#include "kernels/conv_transpose.h"
#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"

namespace unet::ops {

Tensor conv_transpose(const Tensor& x, const Tensor& w, const Tensor& bias) {
  check_arg(x.defined() && w.defined(), "conv_transpose: undefined input or weight");
  const std::string args = "conv_transpose(x " + x.describe() + ", w " + w.describe() + ", bias " +
                           (bias.defined() ? bias.describe() : std::string("none")) + "): ";
  backend::check_device("conv_transpose", x.device(), {x, w, bias});
  const Device dev = x.device();
  check_arg(backend::is_float(x.dtype()), args + "x must be f32, f16 or bf16");
  check_arg(w.dtype() == DType::f32 && (!bias.defined() || bias.dtype() == DType::f32),
            args + "w and bias must be f32 (the master weights)");
  check_arg(x.rank() >= 3 && x.rank() <= 5, args + "x must be [N, spatial..., C] with 1 to 3 spatial axes");
  check_arg(w.rank() == x.rank(), args + "w must be [K, kernel..., C] with one kernel size per spatial axis of x");
  check_arg(w.dim(-1) == x.dim(-1), args + "the last axis of w must equal the channels of x");
  for (int i = 0; i < w.rank() - 1; ++i) check_arg(w.dim(i) >= 1, args + "w has an empty axis");
  check_arg(!bias.defined() || (bias.rank() == 1 && bias.dim(0) == w.dim(0)),
            args + "bias must be [K] with K = w.shape[0]");

  const int sr = x.rank() - 2;
  kernels::ConvTransposeShape s;
  int64_t in[3] = {1, 1, 1}, ker[3] = {1, 1, 1};
  for (int i = 0; i < sr; ++i) {
    in[3 - sr + i] = x.dim(1 + i);
    ker[3 - sr + i] = w.dim(1 + i);
  }
  s.n = x.dim(0);
  s.d = in[0], s.h = in[1], s.w = in[2];
  s.kt = ker[0], s.kr = ker[1], s.ks = ker[2];
  s.c = x.dim(-1);
  s.k = w.dim(0);
  Shape out_shape = x.shape();
  for (int i = 0; i < sr; ++i) out_shape[1 + i] *= w.dim(1 + i);
  out_shape.back() = s.k;

  const DType dt = x.dtype();
  const Tensor w_dt = backend::converted(w, dt);
  Tensor y = Tensor::empty(out_shape, dt, dev);
  const float* b_ptr = bias.defined() ? bias.data<float>() : nullptr;
  if (y.numel() > 0)
    backend::kernels_for(x).conv_transpose.conv_transpose_fprop(s, dt, x.raw(), w_dt.raw(), b_ptr, y.raw(),
                                                                backend::stream(x));

  if (autograd::should_record({x, w, bias})) {
    const bool need_dx = x.requires_grad(), need_dw = w.requires_grad();
    const bool need_db = bias.defined() && bias.requires_grad();
    Tensor saved_x = need_dw ? x.detach() : Tensor();
    Tensor saved_w = need_dx ? w_dt.detach() : Tensor();
    Shape x_shape = x.shape(), w_shape = w.shape();
    autograd::record("conv_transpose", {x, w, bias}, {y}, [=](const std::vector<Tensor>& grads) {
      const Tensor& dy = grads[0];
      const kernels::ConvTransposeKernels& k = backend::kernels_for(dy).conv_transpose;
      Tensor dx, dw, db;
      if (need_dx) {
        dx = Tensor::empty(x_shape, dt, dev);
        if (dx.numel() > 0) k.conv_transpose_dgrad(s, dt, dy.raw(), saved_w.raw(), dx.raw(), backend::stream(dy));
      }
      if (need_dw || need_db) {
        if (need_dw) dw = Tensor::empty(w_shape, DType::f32, dev);
        if (need_db) db = Tensor::empty({s.k}, DType::f32, dev);
        const void* x_ptr = need_dw ? saved_x.raw() : nullptr;
        float* dw_ptr = need_dw ? dw.data<float>() : nullptr;
        float* db_ptr = need_db ? db.data<float>() : nullptr;
        k.conv_transpose_wgrad(s, dt, x_ptr, dy.raw(), dw_ptr, db_ptr, backend::stream(dy));
      }
      return std::vector<Tensor>{dx, dw, db};
    });
  }
  return y;
}

}  // namespace unet::ops
