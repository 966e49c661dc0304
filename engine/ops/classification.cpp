// UNet 3+'s classification-guided module as ops (kernels/classification.h): the presence mask (no gradient), the
// per-sample gating of the segmentation logits, and the head's binary cross-entropy, whose sum is reduced over the
// ranks before the mean so that the loss is the global batch's.
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/comm.h"
#include "engine/ops.h"
#include "kernels/classification.h"

namespace unet::ops {
namespace {

void check_logits(const char* op, const Tensor& z) {
  check_arg(z.defined(), std::string(op) + ": undefined logits");
  check_arg(z.dtype() == DType::f32 && z.rank() == 2 && z.dim(1) == 2,
            std::string(op) + ": expected f32 logits [N, 2] (absent, present), got " + z.describe());
}

}  // namespace

Tensor presence_mask(const Tensor& z) {
  check_logits("presence_mask", z);
  Tensor mask = Tensor::empty({z.dim(0)}, DType::f32, z.device());
  backend::kernels_for(z).classification.presence_mask(z.data<float>(), z.dim(0), mask.data<float>(),
                                                       backend::stream(z));
  return mask;
}

Tensor scale_samples(const Tensor& x, const Tensor& mask) {
  check_arg(x.defined() && mask.defined(), "scale_samples: undefined input");
  backend::check_device("scale_samples", x.device(), {x, mask});
  check_arg(backend::is_float(x.dtype()) && x.rank() >= 1,
            "scale_samples: expected f32, f16 or bf16 x, got " + x.describe());
  check_arg(mask.dtype() == DType::f32 && mask.shape() == Shape({x.dim(0)}),
            "scale_samples: expected an f32 mask [" + std::to_string(x.dim(0)) + "], got " + mask.describe());
  const DType dt = x.dtype();
  const int64_t samples = x.dim(0), inner = samples > 0 ? x.numel() / samples : 0;
  auto run = [dt, samples, inner](const Tensor& in, const Tensor& m) {
    Tensor out = Tensor::empty(in.shape(), dt, in.device());
    backend::kernels_for(in).classification.scale_samples(dt, in.raw(), m.data<float>(), samples, inner, out.raw(),
                                                          backend::stream(in));
    return out;
  };
  Tensor y = run(x, mask);
  if (autograd::should_record({x}))
    autograd::record("scale_samples", {x}, {y},
                     [run, mask](const std::vector<Tensor>& g) { return std::vector<Tensor>{run(g[0], mask)}; });
  return y;
}

Tensor presence_bce_loss(const Tensor& z, const Tensor& labels, Comm* comm) {
  check_logits("presence_bce_loss", z);
  check_arg(
      labels.defined() && (labels.dtype() == DType::i32 || labels.dtype() == DType::u8) && labels.rank() >= 1 &&
          labels.dim(0) == z.dim(0),
      "presence_bce_loss: expected i32 or u8 labels [" + std::to_string(z.dim(0)) + ", ...], got " + labels.describe());
  backend::check_device("presence_bce_loss", z.device(), {z, labels});
  const Device dev = z.device();
  const kernels::ClassificationKernels& k = backend::kernels_for(dev).classification;
  const cudaStream_t stream = backend::stream(z);
  const int64_t samples = z.dim(0), inner = samples > 0 ? labels.numel() / samples : 0;
  Tensor targets = Tensor::empty({samples, 2}, DType::f32, dev);
  Tensor sum = Tensor::empty({2}, DType::i32, dev);  // one double, where the logits are, for the communicator
  k.presence_bce(z.data<float>(), labels.raw(), labels.dtype(), samples, inner, targets.data<float>(),
                 static_cast<double*>(sum.raw()), stream);
  const int ranks = comm && comm->size() > 1 ? comm->size() : 1;
  if (ranks > 1) comm->allreduce(sum.raw(), 1, ScalarType::f64, ReduceOp::sum, dev);
  const double count = 2.0 * double(samples) * ranks;  // the global batch's logits
  Tensor loss = Tensor::empty({1}, DType::f32, dev);
  k.finish(static_cast<const double*>(sum.raw()), count, loss.data<float>(), stream);
  if (autograd::should_record({z}))
    autograd::record("presence_bce_loss", {z}, {loss}, [z, targets, count](const std::vector<Tensor>& g) {
      Tensor dz = Tensor::empty(z.shape(), DType::f32, z.device());
      backend::kernels_for(z).classification.presence_bce_backward(z.data<float>(), targets.data<float>(), z.dim(0),
                                                                   g[0].data<float>(), 1.0 / count, dz.data<float>(),
                                                                   backend::stream(z));
      return std::vector<Tensor>{dz};
    });
  return loss;
}

}  // namespace unet::ops
