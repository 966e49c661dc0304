// ops::conv_transpose_general: transposed convolution with any kernel, stride and padding (PyTorch's ConvTranspose2d /
// ConvTranspose3d), computed by the convolution's own kernels: its forward pass is the dgrad of the convolution that
// maps its output back to its input, its backward passes are that convolution's fprop (dx) and wgrad (dw). So it runs
// on the same GEMM core, tensor cores included, with no kernel of its own; the bias is added by kernels/bias.h and
// its gradient is the wgrad kernel's bias reduction.
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/ops/internal.h"
#include "kernels/bias.h"

namespace unet::ops {
namespace {

using internal::vec_str;

// The sum of dy [rows, channels] over the rows (f32 [channels]) by the wgrad kernel's bias reduction: the gradient
// of a 1x1 convolution's bias over a 1 x rows image.
Tensor bias_gradient(const Tensor& dy) {
  kernels::ConvProblem p;
  p.W = dy.numel() / dy.dim(-1);
  p.K = dy.dim(-1);
  p.compute_output_size();
  return internal::conv_backward(p, dy.dtype(), dy, Tensor(), Tensor(), {}, {}, false, false, true).dbias;
}

}  // namespace

Tensor conv_transpose_general(const Tensor& x, const Tensor& w, const Tensor& bias, const std::vector<int>& stride,
                              const std::vector<int>& pad, const std::vector<int>& output_pad) {
  check_arg(x.defined() && w.defined(), "conv_transpose_general: undefined input or weight");
  check_arg(backend::is_float(x.dtype()),
            "conv_transpose_general: input must be f32, f16 or bf16, got " + x.describe());
  check_arg(w.dtype() == DType::f32, "conv_transpose_general: weight must be f32, got " + w.describe());
  const std::string shapes = "input " + shape_str(x.shape()) + ", weight " + shape_str(w.shape());
  check_arg((x.rank() == 4 || x.rank() == 5) && w.rank() == x.rank(),
            "conv_transpose_general: expected x [N, spatial..., C_in] and w [C_in, kernel..., C_out] of rank 4 or 5, "
            "got " +
                shapes);
  check_arg(w.dim(0) == x.dim(-1), "conv_transpose_general: channel mismatch, " + shapes +
                                       " (the weight's first axis is the input's channels)");
  const size_t spatial = static_cast<size_t>(x.rank() - 2);
  const std::vector<int> op = output_pad.empty() ? std::vector<int>(spatial, 0) : output_pad;
  check_arg(stride.size() == spatial && pad.size() == spatial && op.size() == spatial,
            "conv_transpose_general: stride " + vec_str(stride) + ", pad " + vec_str(pad) + " and output_pad " +
                vec_str(op) + " need " + std::to_string(spatial) + " values each for " + shapes);
  backend::check_device("conv_transpose_general", x.device(), {x, w, bias});
  const int64_t c_out = w.dim(-1);
  if (bias.defined())
    check_arg(bias.dtype() == DType::f32 && bias.rank() == 1 && bias.dim(0) == c_out,
              "conv_transpose_general: bias " + bias.describe() + " must be f32 [" + std::to_string(c_out) + "]");
  // The output's size, then the convolution that maps it back to x's size.
  Shape y_shape = {x.dim(0)};
  for (size_t i = 0; i < spatial; ++i) {
    check_arg(stride[i] >= 1 && pad[i] >= 0 && op[i] >= 0 && op[i] < stride[i],
              "conv_transpose_general: stride " + vec_str(stride) + " (>= 1), pad " + vec_str(pad) +
                  " (>= 0), output_pad " + vec_str(op) + " (0 <= output_pad < stride)");
    const int64_t out = (x.dim(1 + int(i)) - 1) * stride[i] - 2 * pad[i] + w.dim(1 + int(i)) + op[i];
    check_arg(out >= 1, "conv_transpose_general: output size < 1 for " + shapes + ", stride " + vec_str(stride) +
                            ", pad " + vec_str(pad));
    y_shape.push_back(out);
  }
  y_shape.push_back(c_out);
  // The convolution y -> x: input y [N, out..., C_out], weight w as [K = C_in, kernel..., C = C_out].
  const int off = 3 - static_cast<int>(spatial);
  kernels::ConvProblem p;
  int64_t* in[3] = {&p.D, &p.H, &p.W};
  int* kernel[3] = {&p.T, &p.R, &p.S};
  int* st[3] = {&p.stride_d, &p.stride_h, &p.stride_w};
  int* pd[3] = {&p.pad_d, &p.pad_h, &p.pad_w};
  for (size_t i = 0; i < spatial; ++i) {
    *in[off + int(i)] = y_shape[1 + i];
    *kernel[off + int(i)] = static_cast<int>(w.dim(1 + int(i)));
    *st[off + int(i)] = stride[i];
    *pd[off + int(i)] = pad[i];
  }
  p.N = x.dim(0);
  p.C = c_out;
  p.K = x.dim(-1);
  p.compute_output_size();  // x's spatial size, by the choice of `out` above
  const DType dt = x.dtype();
  const Tensor w_used = backend::converted(w, dt);
  Tensor y = internal::conv_backward(p, dt, x, Tensor(), w_used, y_shape, w.shape(), true, false, false).dx;
  if (bias.defined()) {
    backend::kernels_for(y).bias.add(dt, y.numel() / c_out, c_out, bias.data<float>(), y.raw(), backend::stream(y));
  }
  if (autograd::should_record({x, w, bias})) {
    const bool need_dx = x.requires_grad(), need_dw = w.requires_grad();
    const bool need_db = bias.defined() && bias.requires_grad();
    Tensor saved_x = need_dw ? x.detach() : Tensor();
    Tensor saved_w = need_dx ? w.detach() : Tensor();
    autograd::record(
        "conv_transpose_general", {x, w, bias}, {y},
        [=, w_shape = w.shape(), x_shape = x.shape()](const std::vector<Tensor>& g) {
          std::vector<Tensor> grads(3);
          if (need_dx) grads[0] = internal::conv_forward(g[0], saved_w, Tensor(), stride, pad).y;
          if (need_dw)
            grads[1] = internal::conv_backward(p, dt, saved_x, g[0], Tensor(), y_shape, w_shape, false, true, false).dw;
          if (need_db) grads[2] = bias_gradient(g[0]);
          return grads;
        });
  }
  return y;
}

}  // namespace unet::ops
