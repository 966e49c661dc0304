// One nnU-Net training step and whole-volume validation, independent of where batches come from.
#pragma once
#include <vector>

#include "engine/metrics.h"
#include "engine/optim.h"
#include "engine/sliding_window.h"
#include "models/nnunet.h"

namespace unet::models {

struct StepStats {
  double loss = 0;  // the deep-supervision weighted DiceCE that was minimised
  double dice_loss = 0, ce = 0;  // parts of the full-resolution loss
  bool stepped = true;  // false when the optimizer skipped the step (inf/nan gradients)
};

// Deep supervision (SPEC 1.1): sum_i 0.5^i L_i / sum_i 0.5^i over the network's outputs (full resolution first).
Tensor deep_supervision_loss(const std::vector<Tensor>& outputs, const Tensor& labels, StepStats* stats = nullptr);

// Forward, loss, backward and optimizer step on one batch: x [B, spatial..., C_in] f32, labels [B, spatial...].
StepStats train_step(DynUNet& net, Optimizer& optimizer, const Tensor& x, const Tensor& labels);

// Blended logits of a whole image [spatial..., C_in] by sliding window (no autograd).
Tensor predict_volume(const DynUNet& net, const Tensor& image, const SlidingWindowOptions& options);

// Label map (i32 [spatial...]) = argmax of the blended logits.
Tensor segment_volume(const DynUNet& net, const Tensor& image, const SlidingWindowOptions& options);

}  // namespace unet::models
