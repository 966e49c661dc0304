// hybrid_loss: UNet 3+'s focal + SSIM + IoU loss (kernels/cpu/hybrid_loss.h has the formulas) as one autograd node.
// The kernel leaves four sums (focal, I, U, SSIM); this op reduces them over the ranks, forms the loss
//   L = focal_sum / M + (1 - I / U) + (1 - ssim_sum / (N C))        (M pixels, N samples, C classes; global counts)
// and the backward's coefficients dL/dfocal_sum = 1 / M, dL/dI = -1 / U, dL/dU = I / U^2, dL/dssim_sum = -1 / (N C).
// So far the kernel runs on the CPU only: on a device the logits and labels are copied to the host and the gradient
// back (one wait for the device in the loss, which the CUDA twin will remove).
#include <cmath>
#include <string>

#include "engine/autograd.h"
#include "engine/comm.h"
#include "engine/ops.h"
#include "kernels/cpu/hybrid_loss.h"

namespace unet::ops {

Tensor hybrid_loss(const Tensor& logits, const Tensor& labels, Tensor* parts, Comm* comm,
                   const HybridLossOptions& options) {
  check_arg(logits.defined() && labels.defined(), "hybrid_loss: undefined input");
  check_arg(logits.device() == labels.device(), "hybrid_loss: logits " + logits.describe() + " and labels " +
                                                    labels.describe() + " are on different devices");
  check_arg(logits.dtype() == DType::f32, "hybrid_loss: logits must be f32, got " + logits.describe());
  check_arg(logits.rank() == 4, "hybrid_loss: logits must be 2D, [N, H, W, C], got " + logits.describe());
  check_arg(labels.dtype() == DType::i32 || labels.dtype() == DType::u8,
            "hybrid_loss: labels must be i32 or u8, got " + labels.describe());
  const int64_t N = logits.dim(0), H = logits.dim(1), W = logits.dim(2), C = logits.dim(3);
  check_arg(C >= 2, "hybrid_loss: need at least 2 classes (background + 1), got " + logits.describe());
  check_arg(H >= kernels::cpu::kSsimWindow && W >= kernels::cpu::kSsimWindow,
            "hybrid_loss: the SSIM's 11 x 11 window needs images of at least 11 x 11, got " + logits.describe());
  check_arg(labels.shape() == Shape({N, H, W}) || labels.shape() == Shape({N, H, W, 1}),
            "hybrid_loss: labels " + labels.describe() + " do not match logits " + logits.describe());
  check_arg(options.focal_alpha > 0 && options.focal_gamma >= 0,
            "hybrid_loss: focal alpha must be > 0 and gamma >= 0, got " + std::to_string(options.focal_alpha) + ", " +
                std::to_string(options.focal_gamma));
  const Device dev = logits.device();
  const Tensor z = logits.to(Device::cpu), y = labels.to(Device::cpu);
  const kernels::cpu::HybridLossShape shape{N, H, W, static_cast<int>(C)};

  // The sums as 8 i32 slots (4 doubles), so that the communicator can reduce them where the logits are.
  Tensor sums = Tensor::empty({8}, DType::i32);
  double* s = static_cast<double*>(sums.raw());
  int64_t bad_label = 0;
  const int64_t bad = kernels::cpu::hybrid_loss_forward(z.data<float>(), y.raw(), y.dtype(), shape, options.focal_alpha,
                                                        options.focal_gamma, s, &bad_label);
  check_arg(bad < 0, "hybrid_loss: label value " + std::to_string(bad_label) + " at pixel " + std::to_string(bad) +
                         " of " + labels.describe() + " is outside [0, " + std::to_string(C) + ")");
  const int ranks = comm && comm->size() > 1 ? comm->size() : 1;
  if (ranks > 1) {
    Tensor d = sums.to(dev);
    comm->allreduce(d.raw(), 4, ScalarType::f64, ReduceOp::sum, dev);
    sums = d.to(Device::cpu);
    s = static_cast<double*>(sums.raw());
  }
  const double M = double(N * H * W) * ranks, NC = double(N * C) * ranks;
  const double focal = s[0] / M, iou = 1 - s[1] / s[2], ssim = 1 - s[3] / NC;
  Tensor out = Tensor::from_vector({1}, {static_cast<float>(focal + ssim + iou)}).to(dev);
  if (parts)
    *parts = Tensor::from_vector({3}, {static_cast<float>(focal), static_cast<float>(ssim), static_cast<float>(iou)})
                 .to(dev);

  if (autograd::should_record({logits})) {
    const std::array<double, 4> coef = {1 / M, -1 / s[2], s[1] / (s[2] * s[2]), -1 / NC};
    autograd::record(
        "hybrid_loss", {logits, labels}, {out}, [z, y, shape, coef, options, dev](const std::vector<Tensor>& g) {
          const double go = g[0].to_vector()[0];
          const std::array<double, 4> c = {go * coef[0], go * coef[1], go * coef[2], go * coef[3]};
          Tensor d = Tensor::empty(z.shape(), DType::f32);
          kernels::cpu::hybrid_loss_backward(z.data<float>(), y.raw(), y.dtype(), shape, options.focal_alpha,
                                             options.focal_gamma, c.data(), d.data<float>());
          return std::vector<Tensor>{d.to(dev), Tensor()};  // labels get no gradient
        });
  }
  return out;
}

}  // namespace unet::ops
