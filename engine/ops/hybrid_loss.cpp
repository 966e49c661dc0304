// hybrid_loss: UNet 3+'s focal + SSIM (or MS-SSIM) + IoU loss (kernels/cpu/hybrid_loss.h has the formulas) as one
// autograd node. The forward kernels leave four sums (focal, I, U, SSIM) where the logits are; this op reduces them
// over the ranks, and the table's finish forms the loss there,
//   L = focal_sum / M + (1 - I / U) + (1 - ssim_sum / (N C))        (M pixels, N samples, C classes; global counts)
// with the backward's coefficients dL/dfocal_sum = 1 / M, dL/dI = -1 / U, dL/dU = I / U^2, dL/dssim_sum = -1 / (N C).
// Nothing comes back to the host on a device. The node saves the logits, labels and coefficients; its backward
// recomputes the softmax and the SSIM's window sums.
#include <cmath>
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/comm.h"
#include "engine/ops.h"
#include "kernels/hybrid_loss.h"

namespace unet::ops {

Tensor hybrid_loss(const Tensor& logits, const Tensor& labels, Tensor* parts, Comm* comm,
                   const HybridLossOptions& options) {
  check_arg(logits.defined() && labels.defined(), "hybrid_loss: undefined input");
  backend::check_device("hybrid_loss", logits.device(), {logits, labels});
  check_arg(logits.dtype() == DType::f32, "hybrid_loss: logits must be f32, got " + logits.describe());
  check_arg(logits.rank() == 4, "hybrid_loss: logits must be 2D, [N, H, W, C], got " + logits.describe());
  check_arg(labels.dtype() == DType::i32 || labels.dtype() == DType::u8,
            "hybrid_loss: labels must be i32 or u8, got " + labels.describe());
  const int64_t N = logits.dim(0), H = logits.dim(1), W = logits.dim(2), C = logits.dim(3);
  check_arg(C >= 2, "hybrid_loss: need at least 2 classes (background + 1), got " + logits.describe());
  static_assert(kernels::kSsimWindow == 11 && kernels::kMsSsimMinSide == 161, "HybridLossOptions::min_side");
  check_arg(options.multiscale || (H >= kernels::kSsimWindow && W >= kernels::kSsimWindow),
            "hybrid_loss: the SSIM's 11 x 11 window needs images of at least 11 x 11, got " + logits.describe());
  check_arg(!options.multiscale || (H >= kernels::kMsSsimMinSide && W >= kernels::kMsSsimMinSide),
            "hybrid_loss: MS-SSIM's five scales (each half the last) need images of at least 161 x 161 for the 11 x 11 "
            "window at the coarsest, got " +
                logits.describe());
  check_arg(labels.shape() == Shape({N, H, W}) || labels.shape() == Shape({N, H, W, 1}),
            "hybrid_loss: labels " + labels.describe() + " do not match logits " + logits.describe());
  check_arg(options.focal_alpha > 0 && options.focal_gamma >= 0,
            "hybrid_loss: focal alpha must be > 0 and gamma >= 0, got " + std::to_string(options.focal_alpha) + ", " +
                std::to_string(options.focal_gamma));
  const Device dev = logits.device();
  const kernels::HybridLossKernels& k = backend::kernels_for(dev).hybrid_loss;
  check_arg(C <= k.max_channels, "hybrid_loss: the CUDA kernels take at most " + std::to_string(k.max_channels) +
                                     " classes, got " + logits.describe());
  const kernels::HybridLossShape shape{N, H, W, static_cast<int>(C), options.multiscale};
  const cudaStream_t stream = backend::stream(logits);

  // The sums as 8 i32 slots (4 doubles), where the logits are, so that the communicator reduces them there.
  Tensor sums = Tensor::empty({8}, DType::i32, dev), bad = Tensor::empty({4}, DType::i32, dev);
  {
    Tensor work = Tensor::empty({static_cast<int64_t>(k.workspace_bytes(shape))}, DType::u8, dev);
    k.forward(logits.data<float>(), labels.raw(), labels.dtype(), shape, options.focal_alpha, options.focal_gamma,
              work.raw(), static_cast<double*>(sums.raw()), static_cast<int64_t*>(bad.raw()), stream);
  }
  if (dev == Device::cpu) {  // the bad label is on the host already: an error naming it (a device makes the loss NaN)
    const int64_t* b = static_cast<const int64_t*>(bad.raw());
    check_arg(b[0] < 0, "hybrid_loss: label value " + std::to_string(b[1]) + " at pixel " + std::to_string(b[0]) +
                            " of " + labels.describe() + " is outside [0, " + std::to_string(C) + ")");
  }
  const int ranks = comm && comm->size() > 1 ? comm->size() : 1;
  if (ranks > 1) comm->allreduce(sums.raw(), 4, ScalarType::f64, ReduceOp::sum, dev);
  Tensor out = Tensor::empty({1}, DType::f32, dev), three = Tensor::empty({3}, DType::f32, dev);
  Tensor coef = Tensor::empty({8}, DType::i32, dev);  // 4 doubles: dL/d(focal sum, I, U, SSIM sum)
  k.finish(static_cast<const double*>(sums.raw()), double(N * H * W) * ranks, double(N * C) * ranks, out.data<float>(),
           three.data<float>(), static_cast<double*>(coef.raw()), stream);
  if (parts) *parts = three;

  if (autograd::should_record({logits})) {
    const double alpha = options.focal_alpha, gamma = options.focal_gamma;
    autograd::record("hybrid_loss", {logits, labels}, {out},
                     [logits, labels, shape, coef, alpha, gamma](const std::vector<Tensor>& g) {
                       const kernels::HybridLossKernels& k = backend::kernels_for(logits).hybrid_loss;
                       Tensor d = Tensor::empty(logits.shape(), DType::f32, logits.device());
                       Tensor work =
                           Tensor::empty({static_cast<int64_t>(k.workspace_bytes(shape))}, DType::u8, logits.device());
                       k.backward(logits.data<float>(), labels.raw(), labels.dtype(), shape, alpha, gamma,
                                  static_cast<const double*>(coef.raw()), g[0].data<float>(), work.raw(),
                                  d.data<float>(), backend::stream(logits));
                       return std::vector<Tensor>{d, Tensor()};  // labels get no gradient
                     });
  }
  return out;
}

}  // namespace unet::ops
