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
#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/comm.h"
#include "engine/ops.h"
#include "kernels/loss.h"

namespace unet::ops {

namespace {
constexpr double kDiceSmooth = 1e-5;  // MONAI DiceLoss smooth_nr = smooth_dr = 1e-5 (DLE nnU-Net)
}  // namespace

Tensor dice_ce_loss(const Tensor& logits, const Tensor& labels, Tensor* parts, Comm* comm) {
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
  // Data parallel: every rank holds V voxels of the global batch; the sums are reduced before the loss is formed, and
  // CE is the mean over all ranks' voxels.
  const bool reduce = comm && comm->size() > 1;
  const int64_t V_mean = reduce ? V * comm->size() : V;

  // The sums, then the loss, its parts and the gradient's coefficients, all where the logits are: on a device nothing
  // comes back to the host (a training step waits for the device once, in the optimizer).
  Tensor out = Tensor::empty({1}, DType::f32, dev), dice_ce = Tensor::empty({2}, DType::f32, dev);
  Tensor coef = Tensor::empty({2 * C}, DType::f32, dev);  // a [C] then b [C]
  float* a = coef.data<float>();
  float* b = a + C;
  const kernels::LossKernels& k = backend::kernels_for(dev).loss;
  check_arg(n <= k.max_channels, "dice_ce_loss: the CUDA kernels take at most " + std::to_string(k.max_channels) +
                                     " classes, got " + logits.describe());  // the CPU's take any number
  const cudaStream_t s = backend::stream(logits);
  Tensor work = Tensor::empty({static_cast<int64_t>(k.softmax_dice_ce_workspace_bytes(V, n))}, DType::u8, dev);
  Tensor sums = Tensor::empty({static_cast<int64_t>(3 * n + 1) * 2}, DType::i32, dev);  // 3C + 1 doubles
  Tensor bad = Tensor::empty({4}, DType::i32, dev);                                     // 2 int64
  k.softmax_dice_ce_forward(logits.data<float>(), labels.raw(), labels.dtype(), V, n, work.raw(),
                            static_cast<double*>(sums.raw()), static_cast<int64_t*>(bad.raw()), s);
  if (dev == Device::cpu) {  // the bad label is on the host already: an error naming it (a device makes the loss NaN)
    const int64_t* bad_at = static_cast<const int64_t*>(bad.raw());
    check_arg(bad_at[0] < 0, "dice_ce_loss: label value " + std::to_string(bad_at[1]) + " at voxel " +
                                 std::to_string(bad_at[0]) + " of " + labels.describe() + " is outside [0, " +
                                 std::to_string(C) + ")");
  }
  if (reduce) {  // a bad label anywhere (bad[0] >= 0, else -1) makes every rank's loss NaN
    comm->allreduce(sums.raw(), 3 * n + 1, ScalarType::f64, ReduceOp::sum, dev);
    comm->allreduce(bad.raw(), 1, ScalarType::i64, ReduceOp::max, dev);
  }
  k.softmax_dice_ce_finish(static_cast<const double*>(sums.raw()), static_cast<const int64_t*>(bad.raw()), n, V_mean,
                           kDiceSmooth, out.data<float>(), dice_ce.data<float>(), a, b, s);
  if (parts) *parts = dice_ce;

  if (autograd::should_record({logits})) {
    autograd::record(
        "dice_ce_loss", {logits, labels}, {out}, [logits, labels, coef, V, V_mean, n](const std::vector<Tensor>& g) {
          const float* a = coef.data<float>();
          const float* b = a + n;
          Tensor d = Tensor::empty(logits.shape(), DType::f32, logits.device());
          backend::kernels_for(logits).loss.softmax_dice_ce_backward(logits.data<float>(), labels.raw(), labels.dtype(),
                                                                     V, V_mean, n, a, b, g[0].data<float>(),
                                                                     d.data<float>(), backend::stream(logits));
          return std::vector<Tensor>{d, Tensor()};  // labels get no gradient
        });
  }
  return out;
}

}  // namespace unet::ops
