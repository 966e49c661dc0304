// norm_act_conv: conv(leaky_relu(instance_norm(x))) as one differentiable op, the second half of every nnU-Net block.
// Its input for backward is x alone: the normalised activation is made in the forward, convolved and dropped, and the
// backward makes it again (the same kernels, so the same bits) for the weight gradient and the norm's backward. A 3D
// nnU-Net then keeps one activation less per block for backward, for one extra pass of the normalisation (two memory
// passes; no convolution is recomputed). Bitwise the three ops in sequence.
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops/internal.h"

namespace unet::ops {

Tensor norm_act_conv(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, float negative_slope,
                     const Tensor& w, const Tensor& bias, const std::vector<int>& stride, const std::vector<int>& pad) {
  internal::NormForward n = internal::norm_forward(x, gamma, beta, eps, negative_slope);
  internal::ConvForward c = internal::conv_forward(n.y, w, bias, stride, pad);
  if (autograd::should_record({x, gamma, beta, w, bias})) {
    const bool need_dx = x.requires_grad();
    const bool need_dg = gamma.defined() && gamma.requires_grad();
    const bool need_db = beta.defined() && beta.requires_grad();
    const bool need_dw = w.requires_grad(), need_dbias = bias.defined() && bias.requires_grad();
    const bool need_da = need_dx || need_dg || need_db;  // the gradient goes on into the norm
    Tensor saved_x = x.detach(), saved_g = gamma.defined() ? gamma.detach() : Tensor();
    Tensor saved_b = beta.defined() ? beta.detach() : Tensor();
    Tensor saved_w = need_da ? c.w_used.detach() : Tensor();
    autograd::record("norm_act_conv", {x, gamma, beta, w, bias}, {c.y},
                     [=, p = c.problem, w_shape = w.shape()](const std::vector<Tensor>& g) {
                       if (!g[0].defined()) return std::vector<Tensor>(5);
                       // The activation again, with its statistics: deterministic kernels give the forward's bits.
                       const internal::NormForward a =
                           internal::norm_forward(saved_x, saved_g, saved_b, eps, negative_slope);
                       internal::ConvGrads cg = internal::conv_backward(p, a.y.dtype(), g[0], a.y, saved_w,
                                                                        a.y.shape(), w_shape, need_da, need_dw,
                                                                        need_dbias);
                       internal::NormGrads ng;
                       if (need_da)
                         ng = internal::norm_backward(a.shape, saved_x, a.y, cg.dx, a.mean, a.rstd, saved_g,
                                                      negative_slope, need_dx, need_dg, need_db);
                       return std::vector<Tensor>{ng.dx, ng.dgamma, ng.dbeta, cg.dw, cg.dbias};
                     });
  }
  return c.y;  // n.y, the normalised activation, is freed here
}

}  // namespace unet::ops
