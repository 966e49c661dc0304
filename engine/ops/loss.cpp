// Loss ops: nnU-Net's DiceCE (softmax + batch Dice over foreground classes + cross-entropy) as one autograd node.
// The forward keeps only per-class sums (computed in double by the fused kernel) and turns them into the loss and the
// gradient's per-class coefficients on the logits' device; the node saves the logits, the labels and the
// coefficients, and its backward recomputes the softmax while writing d logits.
//
// Gradient (derived here because the kernel only evaluates it): with I_c = sum p_c y_c, P_c = sum p_c,
// Y_c = sum y_c, num_c = 2 I_c + s, den_c = P_c + Y_c + s, F = C - 1 foreground classes and V voxels,
//   D = (1/F) sum_{c>=1} (1 - num_c / den_c)
//   dD/dp_vc = (1/F) (num_c / den_c^2 - 2 y_vc / den_c) = a_c - b_c y_vc,
//   a_c = num_c / (F den_c^2), b_c = 2 / (F den_c)
// (a_0 = b_0 = 0: background is not in the dice mean). Through the softmax Jacobian dp_c/dz_k = p_c ([c==k] - p_k):
//   dD/dz_vk = p_vk (g_vk - sum_c p_vc g_vc);   dCE/dz_vk = (p_vk - [y_v == k]) / V.
// DLE's form (squared): den_c = Q_c + Y_c + s with Q_c = sum p_c^2, so dden_c/dp_vc = 2 p_vc and
//   dD/dp_vc = a_c p_vc - b_c y_vc,   a_c = 2 num_c / (F den_c^2)
// with F the number of Dice terms averaged (classes times samples), one (a, b) per sample (group).
#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/comm.h"
#include "engine/ops.h"
#include "kernels/loss.h"

namespace unet::ops {

Tensor dice_ce_loss(const Tensor& logits, const Tensor& labels, Tensor* parts, Comm* comm, const DiceCeForm& form) {
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
  const Device dev = logits.device();
  // Groups of voxels with a Dice each: the whole batch (nnU-Net) or each sample (DLE). Group g is voxels
  // [g Vg, (g + 1) Vg), the labels' and logits' rows in order.
  const int groups = form.per_sample ? static_cast<int>(logits.dim(0)) : 1;
  const int64_t Vg = V / groups;
  // Data parallel: every rank holds V voxels of the global batch; CE is the mean over all ranks' voxels. A batch Dice
  // needs the sums of every rank before it is formed (they are reduced); per-sample Dice terms are each rank's own,
  // so each rank forms its share of the global mean and the shares are summed.
  const bool reduce = comm && comm->size() > 1;
  const int ranks = reduce ? comm->size() : 1;
  const int64_t V_mean = V * ranks;
  const int64_t dice_groups = form.per_sample ? int64_t(groups) * ranks : 1;

  // The sums, then the loss, its parts and the gradient's coefficients, all where the logits are: on a device nothing
  // comes back to the host (a training step waits for the device once, in the optimizer).
  Tensor out = Tensor::empty({1}, DType::f32, dev), dice_ce = Tensor::empty({2}, DType::f32, dev);
  Tensor coef = Tensor::empty({2 * groups * C}, DType::f32, dev);  // a [groups][C] then b [groups][C]
  float* a = coef.data<float>();
  float* b = a + groups * C;
  const kernels::LossKernels& k = backend::kernels_for(dev).loss;
  check_arg(n <= k.max_channels, "dice_ce_loss: the CUDA kernels take at most " + std::to_string(k.max_channels) +
                                     " classes, got " + logits.describe());  // the CPU's take any number
  const cudaStream_t s = backend::stream(logits);
  const int q = 3 * n + 1;  // doubles per group
  Tensor work = Tensor::empty({static_cast<int64_t>(k.softmax_dice_ce_workspace_bytes(Vg, n))}, DType::u8, dev);
  Tensor sums = Tensor::empty({int64_t(groups) * q * 2}, DType::i32, dev);  // [groups][3C + 1] doubles
  Tensor bad = Tensor::empty({int64_t(groups) * 4}, DType::i32, dev);       // [groups][2] int64
  double* sums_at = static_cast<double*>(sums.raw());
  int64_t* bad_at = static_cast<int64_t*>(bad.raw());
  const size_t label_bytes = dtype_size(labels.dtype());
  for (int g = 0; g < groups; ++g)
    k.softmax_dice_ce_forward(logits.data<float>() + g * Vg * n,
                              static_cast<const char*>(labels.raw()) + g * Vg * label_bytes, labels.dtype(), Vg, n,
                              form.squared, work.raw(), sums_at + g * q, bad_at + 2 * g, s);
  if (dev == Device::cpu) {  // the bad label is on the host already: an error naming it (a device makes the loss NaN)
    for (int g = 0; g < groups; ++g)
      check_arg(bad_at[2 * g] < 0, "dice_ce_loss: label value " + std::to_string(bad_at[2 * g + 1]) + " at voxel " +
                                       std::to_string(g * Vg + bad_at[2 * g]) + " of " + labels.describe() +
                                       " is outside [0, " + std::to_string(C) + ")");
  }
  if (reduce) {  // a bad label anywhere (bad[0] >= 0, else -1) makes every rank's loss NaN
    if (!form.per_sample) comm->allreduce(sums.raw(), q, ScalarType::f64, ReduceOp::sum, dev);
    comm->allreduce(bad.raw(), 2 * groups, ScalarType::i64, ReduceOp::max, dev);
  }
  const kernels::DiceForm dice_form{form.squared, form.background, form.smooth};
  k.softmax_dice_ce_finish(sums_at, bad_at, groups, dice_groups, n, V_mean, dice_form, out.data<float>(),
                           dice_ce.data<float>(), a, b, s);
  if (reduce && form.per_sample) {  // each rank's share of the global loss and parts, summed
    comm->allreduce(out.raw(), 1, ScalarType::f32, ReduceOp::sum, dev);
    comm->allreduce(dice_ce.raw(), 2, ScalarType::f32, ReduceOp::sum, dev);
  }
  if (parts) *parts = dice_ce;

  if (autograd::should_record({logits})) {
    const bool squared = form.squared;
    autograd::record("dice_ce_loss", {logits, labels}, {out},
                     [logits, labels, coef, groups, Vg, V_mean, n, squared, label_bytes](const std::vector<Tensor>& g) {
                       const float* a = coef.data<float>();
                       const float* b = a + groups * n;
                       Tensor d = Tensor::empty(logits.shape(), DType::f32, logits.device());
                       const kernels::LossKernels& k = backend::kernels_for(logits).loss;
                       for (int i = 0; i < groups; ++i)
                         k.softmax_dice_ce_backward(logits.data<float>() + i * Vg * n,
                                                    static_cast<const char*>(labels.raw()) + i * Vg * label_bytes,
                                                    labels.dtype(), Vg, V_mean, n, squared, a + i * n, b + i * n,
                                                    g[0].data<float>(), d.data<float>() + i * Vg * n,
                                                    backend::stream(logits));
                       return std::vector<Tensor>{d, Tensor()};  // labels get no gradient
                     });
  }
  return out;
}

}  // namespace unet::ops
