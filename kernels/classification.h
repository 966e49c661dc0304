// UNet 3+'s classification-guided module (CGM, Huang et al. 2020): an image-level head says whether the organ is in
// the image at all, and its argmax gates the segmentation (an image classified "absent" gets zero logits, hence
// background). The kernels: that argmax, the per-sample gating, and the head's loss, binary cross-entropy with logits
// against the presence target {absent, present} read from the labels. The table of entry points the engine
// dispatches through, one per backend (kernels::cpu::classification_kernels in kernels/cpu/classification.h,
// kernels::cuda::classification_kernels in kernels/cuda/classification.cuh). Pointers are in the backend's memory; the
// CPU ignores the stream.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/common/host_device.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

// BCE with logits of one logit z against target t, stably: max(z, 0) - t z + log(1 + exp(-|z|)); and its derivative
// sigmoid(z) - t.
UNET_HOST_DEVICE inline double bce_with_logits(double z, double t) {
  return (z > 0 ? z : 0.0) - t * z + log1p(exp(-fabs(z)));
}
UNET_HOST_DEVICE inline double bce_with_logits_grad(double z, double t) {
  return 1 / (1 + exp(-z)) - t;
}

struct ClassificationKernels {
  // mask[s] = 1 where z[s, 1] > z[s, 0] (the argmax of the two logits, the first on ties: "present"), else 0; z f32
  // [samples, 2].
  void (*presence_mask)(const float* z, int64_t samples, float* mask, cudaStream_t stream);
  // y[s, i] = round_dt(x[s, i] * mask[s]) for i < inner; x and y of type dt (f32, f16 or bf16), mask f32.
  void (*scale_samples)(DType dt, const void* x, const float* mask, int64_t samples, int64_t inner, void* y,
                        cudaStream_t stream);
  // targets[s] = {1 - t_s, t_s} with t_s = 1 when any of sample s's `inner` labels (i32 or u8) is > 0; sum[0] = the
  // sum over s and both logits of bce_with_logits(z, target), in double, in a fixed order.
  void (*presence_bce)(const float* z, const void* labels, DType label_dtype, int64_t samples, int64_t inner,
                       float* targets, double* sum, cudaStream_t stream);
  // loss[0] = sum[0] / count.
  void (*finish)(const double* sum, double count, float* loss, cudaStream_t stream);
  // dz = g[0] * scale * bce_with_logits_grad(z, target) for the 2 samples logits.
  void (*presence_bce_backward)(const float* z, const float* targets, int64_t samples, const float* g, double scale,
                                float* dz, cudaStream_t stream);
};

}  // namespace unet::kernels
