// Loss ops: nnU-Net's DiceCE (softmax + batch Dice over foreground classes + cross-entropy) as one autograd node.
// The forward keeps only per-class sums (computed in double by the fused kernel); the node saves the logits, the
// labels and the per-class dice coefficients, and its backward recomputes the softmax while writing d logits.
//
// Gradient (derived here because the kernel only evaluates it): with I_c = sum p_c y_c, P_c = sum p_c,
// Y_c = sum y_c, num_c = 2 I_c + s, den_c = P_c + Y_c + s, F = C - 1 foreground classes and V voxels,
//   D = (1/F) sum_{c>=1} (1 - num_c / den_c)
//   dD/dp_vc = (1/F) (num_c / den_c^2 - 2 y_vc / den_c) = a_c - b_c y_vc,
//   a_c = num_c / (F den_c^2), b_c = 2 / (F den_c)
// (a_0 = b_0 = 0: background is not in the dice mean). Through the softmax Jacobian dp_c/dz_k = p_c ([c==k] - p_k):
//   dD/dz_vk = p_vk (g_vk - sum_c p_vc g_vc);   dCE/dz_vk = (p_vk - [y_v == k]) / V.
#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/backend.h"
#include "kernels/cuda/loss.cuh"
#include "kernels/cpu/loss.h"

namespace unet::ops {

namespace {
constexpr double kDiceSmooth = 1e-5;  // MONAI DiceLoss smooth_nr = smooth_dr = 1e-5 (DLE nnU-Net)

// The forward sums on the logits' device; returns the first invalid voxel (or -1) as the CPU kernel does.
int64_t forward_sums(const Tensor& logits, const Tensor& labels, int64_t V, int n, std::vector<double>& I,
                     std::vector<double>& P, std::vector<double>& Y, double* ce_sum, int64_t* bad_label) {
  if (!backend::on_cuda(logits))
    return kernels::cpu::softmax_dice_ce_forward(logits.data<float>(), labels.raw(), labels.dtype(), V, n, I.data(),
                                                 P.data(), Y.data(), ce_sum, bad_label);
#if UNET_HAVE_CUDA_KERNELS
  // Device buffers for the partial sums, the 3C + 1 results and the first bad voxel; both copied back (synchronous).
  check_arg(n <= kernels::cuda::kMaxLossChannels, "dice_ce_loss: the CUDA kernels take at most " +
                                                       std::to_string(kernels::cuda::kMaxLossChannels) +
                                                       " classes, got " + logits.describe());
  const Device dev = logits.device();
  Tensor work = Tensor::empty({static_cast<int64_t>(kernels::cuda::softmax_dice_ce_workspace_bytes(V, n))}, DType::u8,
                              dev);
  Tensor sums = Tensor::empty({static_cast<int64_t>(3 * n + 1) * 2}, DType::i32, dev);  // 3C + 1 doubles
  Tensor bad = Tensor::empty({4}, DType::i32, dev);                                      // 2 int64
  kernels::cuda::softmax_dice_ce_forward(logits.data<float>(), labels.raw(), labels.dtype(), V, n, work.raw(),
                                         static_cast<double*>(sums.raw()), static_cast<int64_t*>(bad.raw()),
                                         backend::stream(logits));
  std::vector<double> host(3 * static_cast<size_t>(n) + 1);
  int64_t host_bad[2] = {-1, 0};
  device::copy(host.data(), Device::cpu, sums.raw(), dev, host.size() * sizeof(double));
  device::copy(host_bad, Device::cpu, bad.raw(), dev, sizeof host_bad);
  for (int c = 0; c < n; ++c) I[c] = host[c], P[c] = host[n + c], Y[c] = host[2 * n + c];
  *ce_sum = host[3 * static_cast<size_t>(n)];
  *bad_label = host_bad[1];
  return host_bad[0];
#else
  (void)labels, (void)V, (void)I, (void)P, (void)Y, (void)ce_sum, (void)bad_label;
  backend::no_cuda_kernels("dice_ce_loss");
#endif
}

}  // namespace

Tensor dice_ce_loss(const Tensor& logits, const Tensor& labels, float* dice_out, float* ce_out) {
  check_arg(logits.defined() && labels.defined(), "dice_ce_loss: undefined input");
  backend::check_device("dice_ce_loss", logits.device(), {logits, labels});
  check_arg(logits.dtype() == DType::f32, "dice_ce_loss: logits must be f32, got " + logits.describe());
  check_arg(logits.rank() >= 3 && logits.rank() <= 5,
            "dice_ce_loss: logits must be [N, spatial..., C] with 1 to 3 spatial axes, got " + logits.describe());
  check_arg(labels.dtype() == DType::i32 || labels.dtype() == DType::u8,
            "dice_ce_loss: labels must be i32 or u8, got " + labels.describe());
  const int64_t C = logits.dim(-1);
  check_arg(C >= 2, "dice_ce_loss: need at least 2 classes (background + 1), got " + logits.describe());
  Shape spatial(logits.shape().begin(), logits.shape().end() - 1);
  Shape spatial1 = spatial;
  spatial1.push_back(1);
  check_arg(labels.shape() == spatial || labels.shape() == spatial1,
            "dice_ce_loss: labels " + labels.describe() + " do not match logits " + logits.describe() + " (expected " +
                shape_str(spatial) + " or " + shape_str(spatial1) + ")");
  const int64_t V = shape_numel(spatial);
  const int n = static_cast<int>(C);

  std::vector<double> I(C), P(C), Y(C);
  double ce_sum = 0.0;
  int64_t bad_label = 0;
  int64_t bad_at = forward_sums(logits, labels, V, n, I, P, Y, &ce_sum, &bad_label);
  check_arg(bad_at < 0, "dice_ce_loss: label value " + std::to_string(bad_at < 0 ? 0 : bad_label) + " at voxel " +
                            std::to_string(bad_at) + " of " + labels.describe() + " is outside [0, " +
                            std::to_string(C) + ")");

  const double F = static_cast<double>(C - 1);
  double dice = 0.0;
  std::vector<double> a(C, 0.0), b(C, 0.0);
  for (int64_t c = 1; c < C; ++c) {
    double num = 2.0 * I[c] + kDiceSmooth, den = P[c] + Y[c] + kDiceSmooth;
    dice += 1.0 - num / den;
    a[c] = num / (F * den * den);
    b[c] = 2.0 / (F * den);
  }
  dice /= F;
  const double ce = ce_sum / static_cast<double>(V);
  if (dice_out) *dice_out = static_cast<float>(dice);
  if (ce_out) *ce_out = static_cast<float>(ce);
  Tensor out = Tensor::full({1}, static_cast<float>(dice + ce)).to(logits.device());

  if (autograd::should_record({logits})) {
    autograd::record("dice_ce_loss", {logits, labels}, {out},
                     [logits, labels, a = std::move(a), b = std::move(b), V, n](const std::vector<Tensor>& g) {
                       const double go = g[0].item();
                       std::vector<float> af(a.size()), bf(b.size());
                       for (size_t c = 0; c < a.size(); ++c) {
                         af[c] = static_cast<float>(go * a[c]);
                         bf[c] = static_cast<float>(go * b[c]);
                       }
                       const Device dev = logits.device();
                       const float ce_scale = static_cast<float>(go / static_cast<double>(V));
                       Tensor d = Tensor::empty(logits.shape(), DType::f32, dev);
                       if (backend::on_cuda(logits)) {
                         // The coefficients as device memory (C floats each).
                         Tensor ad = Tensor::from_vector({n}, af).to(dev), bd = Tensor::from_vector({n}, bf).to(dev);
                         UNET_CUDA_KERNEL("dice_ce_loss", kernels::cuda::softmax_dice_ce_backward(
                                                              logits.data<float>(), labels.raw(), labels.dtype(), V, n,
                                                              ad.data<float>(), bd.data<float>(), ce_scale,
                                                              d.data<float>(), backend::stream(logits)));
                       } else {
                         kernels::cpu::softmax_dice_ce_backward(logits.data<float>(), labels.raw(), labels.dtype(), V,
                                                                n, af.data(), bf.data(), ce_scale, d.data<float>());
                       }
                       return std::vector<Tensor>{d, Tensor()};  // labels get no gradient
                     });
  }
  return out;
}

}  // namespace unet::ops
