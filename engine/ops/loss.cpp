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
#include "kernels/loss.h"

namespace unet::ops {

namespace {
constexpr double kDiceSmooth = 1e-5;  // MONAI DiceLoss smooth_nr = smooth_dr = 1e-5 (DLE nnU-Net)
}

Tensor dice_ce_loss(const Tensor& logits, const Tensor& labels, float* dice_out, float* ce_out) {
  check_arg(logits.defined() && labels.defined(), "dice_ce_loss: undefined input");
  check_arg(logits.device() == Device::cpu && labels.device() == Device::cpu,
            "dice_ce_loss: " + logits.describe() + ", " + labels.describe() + ": only the cpu backend is implemented");
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
  int64_t bad_at = kernels::cpu::softmax_dice_ce_forward(logits.data<float>(), labels.raw(), labels.dtype(), V, n,
                                                         I.data(), P.data(), Y.data(), &ce_sum, &bad_label);
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
  Tensor out = Tensor::full({1}, static_cast<float>(dice + ce));

  if (autograd::should_record({logits})) {
    autograd::record("dice_ce_loss", {logits, labels}, {out},
                     [logits, labels, a = std::move(a), b = std::move(b), V, n](const std::vector<Tensor>& g) {
                       const double go = g[0].item();
                       std::vector<float> af(a.size()), bf(b.size());
                       for (size_t c = 0; c < a.size(); ++c) {
                         af[c] = static_cast<float>(go * a[c]);
                         bf[c] = static_cast<float>(go * b[c]);
                       }
                       Tensor d = Tensor::empty(logits.shape());
                       kernels::cpu::softmax_dice_ce_backward(
                           logits.data<float>(), labels.raw(), labels.dtype(), V, n, af.data(), bf.data(),
                           static_cast<float>(go / static_cast<double>(V)), d.data<float>());
                       return std::vector<Tensor>{d, Tensor()};  // labels get no gradient
                     });
  }
  return out;
}

}  // namespace unet::ops
