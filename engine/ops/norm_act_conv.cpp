// norm_act_conv: conv(leaky_relu(instance_norm(x))) as one differentiable op, the second half of every nnU-Net block.
// The norm's statistics come from the convolution that made x (ops::conv_stats), so x is read once, and the
// normalised activation is never stored: on CUDA the convolution applies the norm and the activation to its input as
// it loads it (kernels/conv.h, conv_fprop_norm_act); the CPU makes it in a scratch buffer it frees at once. For
// backward only x and the per-(n, c) coefficients are kept: the backward makes the activation again with the apply
// kernel (the same transform, so the same bits) for the weight gradient and the norm's backward. A 3D nnU-Net then
// keeps one activation less per block, for one extra pass over x in backward (no convolution is recomputed). Bitwise
// instance_norm_leaky_relu (with the statistics) and conv in sequence.
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops/internal.h"

namespace unet::ops {

ConvStats norm_act_conv(const Tensor& x, const Tensor& x_stats, const Tensor& gamma, const Tensor& beta, float eps,
                        float negative_slope, const Tensor& w, const Tensor& bias, const std::vector<int>& stride,
                        const std::vector<int>& pad) {
  const internal::NormCoefficients n = internal::norm_coefficients(x, x_stats, gamma, beta, eps, negative_slope);
  internal::ConvForward c = internal::conv_forward(x, w, bias, stride, pad, true, &n);
  if (autograd::should_record({x, gamma, beta, w, bias})) {
    const bool need_dx = x.requires_grad();
    const bool need_dg = gamma.defined() && gamma.requires_grad();
    const bool need_db = beta.defined() && beta.requires_grad();
    const bool need_dw = w.requires_grad(), need_dbias = bias.defined() && bias.requires_grad();
    const bool need_da = need_dx || need_dg || need_db;  // the gradient goes on into the norm
    Tensor saved_x = x.detach(), saved_g = gamma.defined() ? gamma.detach() : Tensor();
    Tensor saved_w = need_da ? c.w_used.detach() : Tensor();
    autograd::record("norm_act_conv", {x, gamma, beta, w, bias}, {c.y},
                     [=, p = c.problem, w_shape = w.shape()](const std::vector<Tensor>& g) {
                       if (!g[0].defined()) return std::vector<Tensor>(5);
                       const Tensor a = internal::norm_apply(saved_x, n);  // the activation the forward convolved
                       internal::ConvGrads cg = internal::conv_backward(p, a.dtype(), g[0], a, saved_w, a.shape(),
                                                                        w_shape, need_da, need_dw, need_dbias);
                       internal::NormGrads ng;
                       if (need_da)
                         ng = internal::norm_backward(n.shape, saved_x, a, cg.dx, n.mean, n.rstd, saved_g,
                                                      negative_slope, need_dx, need_dg, need_db);
                       return std::vector<Tensor>{ng.dx, ng.dgamma, ng.dbeta, cg.dw, cg.dbias};
                     });
  }
  return {c.y, c.stats};
}

}  // namespace unet::ops
