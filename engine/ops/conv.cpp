// ops::conv: 2D and 3D convolution on channels-last tensors, with its autograd node (dx, dw, dbias). The input may be
// f32, f16 or bf16 (mixed precision: y and dx have its type); the weight and bias are f32 and so are their gradients.
// Validation happens here, once, so the kernels (kernels/cpu/conv.cpp, kernels/cuda/conv.cu, chosen by x's device)
// can assume a well-formed problem.
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/ops/internal.h"
#include "kernels/conv.h"
#include "kernels/cuda/conv.cuh"

namespace unet::ops::internal {

std::string vec_str(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace unet::ops::internal

namespace unet::ops {
namespace {

using internal::vec_str;

void check_f32(const Tensor& t, const char* what) {
  check_arg(t.dtype() == DType::f32, std::string("conv: ") + what + " must be f32, got " + t.describe());
}

// Builds the kernel problem from validated shapes: 2D tensors [N, H, W, C] map to D = T = 1.
kernels::ConvProblem make_problem(const Tensor& x, const Tensor& w, const std::vector<int>& stride,
                                  const std::vector<int>& pad) {
  const int spatial = x.rank() - 2;
  const int off = 3 - spatial;  // index of the first given axis among (d, h, w)
  int64_t in[3] = {1, 1, 1}, kernel[3] = {1, 1, 1};
  int st[3] = {1, 1, 1}, pd[3] = {0, 0, 0};
  for (int i = 0; i < spatial; ++i) {
    in[off + i] = x.dim(1 + i);
    kernel[off + i] = w.dim(1 + i);
    st[off + i] = stride[static_cast<size_t>(i)];
    pd[off + i] = pad[static_cast<size_t>(i)];
  }
  kernels::ConvProblem p;
  p.N = x.dim(0);
  p.D = in[0], p.H = in[1], p.W = in[2];
  p.C = x.dim(-1);
  p.K = w.dim(0);
  p.T = static_cast<int>(kernel[0]), p.R = static_cast<int>(kernel[1]), p.S = static_cast<int>(kernel[2]);
  p.stride_d = st[0], p.stride_h = st[1], p.stride_w = st[2];
  p.pad_d = pd[0], p.pad_h = pd[1], p.pad_w = pd[2];
  p.compute_output_size();
  return p;
}

}  // namespace

void set_conv_allow_tf32(bool allow) {
#if UNET_HAVE_CUDA_KERNELS
  kernels::cuda::set_conv_allow_tf32(allow);
#else
  (void)allow;  // no CUDA kernels in this build: every convolution runs on the CPU in fp32
#endif
}

}  // namespace unet::ops

namespace unet::ops::internal {

ConvForward conv_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const std::vector<int>& stride,
                         const std::vector<int>& pad, bool want_stats, const NormCoefficients* act) {
  check_arg(x.defined() && w.defined(), "conv: undefined input or weight");
  check_arg(backend::is_float(x.dtype()), "conv: input must be f32, f16 or bf16, got " + x.describe());
  check_f32(w, "weight");
  const std::string shapes = "input " + shape_str(x.shape()) + ", weight " + shape_str(w.shape());
  check_arg(x.rank() == 4 || x.rank() == 5,
            "conv: input must be [N, H, W, C] or [N, D, H, W, C] (rank 4 or 5), got " + shapes);
  check_arg(w.rank() == x.rank(), "conv: weight rank must match the input rank (" + shapes + "; weight is [K, " +
                                      (x.rank() == 5 ? "T, R, S" : "R, S") + ", C])");
  check_arg(w.dim(-1) == x.dim(-1), "conv: channel mismatch, " + shapes + " (last axes must be equal)");
  const size_t spatial = static_cast<size_t>(x.rank() - 2);
  check_arg(stride.size() == spatial && pad.size() == spatial, "conv: stride " + vec_str(stride) + " and pad " +
                                                                   vec_str(pad) + " need " + std::to_string(spatial) +
                                                                   " values each for " + shapes);
  for (int64_t d : x.shape()) check_arg(d >= 1, "conv: empty input, " + shapes);
  for (int64_t d : w.shape()) check_arg(d >= 1, "conv: empty weight, " + shapes);
  for (size_t i = 0; i < spatial; ++i) {
    check_arg(stride[i] >= 1, "conv: stride " + vec_str(stride) + " must be >= 1");
    check_arg(pad[i] >= 0, "conv: pad " + vec_str(pad) + " must be >= 0");
  }
  backend::check_device("conv", x.device(), {x, w, bias});
  if (bias.defined()) {
    check_f32(bias, "bias");
    check_arg(
        bias.rank() == 1 && bias.dim(0) == w.dim(0),
        "conv: bias " + shape_str(bias.shape()) + " must be [K] = [" + std::to_string(w.dim(0)) + "] for " + shapes);
  }
  ConvForward r;
  const kernels::ConvProblem& p = r.problem = make_problem(x, w, stride, pad);
  check_arg(p.Z >= 1 && p.P >= 1 && p.Q >= 1,
            "conv: output size < 1 for " + shapes + ", stride " + vec_str(stride) + ", pad " + vec_str(pad));

  Shape out_shape = {p.N};
  if (x.rank() == 5) out_shape.push_back(p.Z);
  out_shape.insert(out_shape.end(), {p.P, p.Q, p.K});
  // Mixed precision: the input's type is the compute type; the f32 weight is rounded to it (bias stays f32).
  const DType dt = x.dtype();
  r.w_used = backend::converted(w, dt);
  r.y = Tensor::empty(out_shape, dt, x.device());
  const float* b_ptr = bias.defined() ? bias.data<float>() : nullptr;
  if (want_stats) r.stats = Tensor::empty({p.N, p.K, 2}, DType::f32, x.device());
  float* stats = want_stats ? r.stats.data<float>() : nullptr;
  const kernels::ConvKernels& k = backend::kernels_for(x).conv;
  if (act)
    k.conv_fprop_norm_act(p, dt, x.raw(), act->mean.data<float>(), act->scale.data<float>(), act->shift.data<float>(),
                          act->slope, r.w_used.raw(), b_ptr, r.y.raw(), stats, backend::stream(x));
  else
    k.conv_fprop(p, dt, x.raw(), r.w_used.raw(), b_ptr, r.y.raw(), stats, backend::stream(x));
  return r;
}

ConvGrads conv_backward(const kernels::ConvProblem& p, DType dt, const Tensor& dy, const Tensor& x, const Tensor& w_used,
                        const Shape& x_shape, const Shape& w_shape, bool need_dx, bool need_dw, bool need_dbias) {
  ConvGrads r;
  const Device dev = dy.device();
  const kernels::ConvKernels& k = backend::kernels_for(dev).conv;
  if (need_dx) {
    r.dx = Tensor::empty(x_shape, dt, dev);
    k.conv_dgrad(p, dt, dy.raw(), w_used.raw(), r.dx.raw(), backend::stream(dy));
  }
  if (need_dw || need_dbias) {  // dw and dbias are f32 whatever dt (the master weights' type)
    if (need_dw) r.dw = Tensor::empty(w_shape, DType::f32, dev);
    if (need_dbias) r.dbias = Tensor::empty({p.K}, DType::f32, dev);
    float* dw_ptr = need_dw ? r.dw.data<float>() : nullptr;
    float* db_ptr = need_dbias ? r.dbias.data<float>() : nullptr;
    const void* x_ptr = need_dw ? x.raw() : nullptr;  // x is not read without dw
    k.conv_wgrad(p, dt, x_ptr, dy.raw(), dw_ptr, db_ptr, backend::stream(dy));
  }
  return r;
}

}  // namespace unet::ops::internal

namespace unet::ops {

namespace {

// The convolution and its autograd node (y's statistics, when wanted, are not differentiable: the instance norm that
// reads them differentiates through its own input).
internal::ConvForward conv_recorded(const Tensor& x, const Tensor& w, const Tensor& bias,
                                    const std::vector<int>& stride, const std::vector<int>& pad, bool want_stats) {
  internal::ConvForward f = internal::conv_forward(x, w, bias, stride, pad, want_stats);
  if (autograd::should_record({x, w, bias})) {
    const bool need_dx = x.requires_grad(), need_dw = w.requires_grad();
    const bool need_db = bias.defined() && bias.requires_grad();
    // dx needs only w, dw needs only x: keep nothing else alive until backward.
    Tensor saved_x = need_dw ? x.detach() : Tensor();
    Tensor saved_w = need_dx ? f.w_used.detach() : Tensor();
    autograd::record("conv", {x, w, bias}, {f.y},
                     [=, p = f.problem, dt = x.dtype(), x_shape = x.shape(), w_shape = w.shape()](
                         const std::vector<Tensor>& g) {
                       if (!g[0].defined()) return std::vector<Tensor>(3);
                       internal::ConvGrads r = internal::conv_backward(p, dt, g[0], saved_x, saved_w, x_shape, w_shape,
                                                                       need_dx, need_dw, need_db);
                       return std::vector<Tensor>{r.dx, r.dw, r.dbias};
                     });
  }
  return f;
}

}  // namespace

Tensor conv(const Tensor& x, const Tensor& w, const Tensor& bias, const std::vector<int>& stride,
            const std::vector<int>& pad) {
  return conv_recorded(x, w, bias, stride, pad, false).y;
}

ConvStats conv_stats(const Tensor& x, const Tensor& w, const Tensor& bias, const std::vector<int>& stride,
                     const std::vector<int>& pad) {
  internal::ConvForward f = conv_recorded(x, w, bias, stride, pad, true);
  return {f.y, f.stats};
}

}  // namespace unet::ops
