// Sliding-window inference (docs/reference.md, "Sliding window"): windows of the patch size, step
// int(patch * (1 - overlap)), the last window clamped to the border; volumes smaller than the patch are zero-padded
// (half before) and cropped back. Window logits are blended with a Gaussian or constant importance map; test-time
// augmentation averages the logits of all flips.
#pragma once
#include <functional>
#include <vector>

#include "engine/tensor.h"

namespace unet {

enum class Blend { gaussian, constant };

struct SlidingWindowOptions {
  std::vector<int> patch;  // per spatial axis
  double overlap = 0.5;    // DLE README default (its code: 0.25 with constant blending)
  Blend blend = Blend::gaussian;
  bool tta = false;  // identity + every non-empty subset of spatial flips
  // Flips for tta over the last tta_axes spatial axes only (0: all). A 2D network on a volume's slices: 2 (a flip in z
  // would only repeat a one-slice window, or reverse the order of adjacent slices it takes as channels).
  int tta_axes = 0;
  int batch_size = 1;  // windows per predict call
  // Voxels of context per spatial axis that a window's input has beyond its output on each side, for networks of valid
  // convolutions (UNet2D: 92, 572 in -> 388 out); empty: none. The windows' inputs are then patch + 2 context, cut from
  // the volume zero-padded by the context (as DLE pads its images), and predict returns patch-sized logits.
  std::vector<int> context;
  float sigma_scale = 0.125f;
  float min_weight = 1e-3f;
  // Where windows are cut and their logits blended (kernels/cpu/blend.h on the cpu, kernels/cuda/blend.cu on a GPU):
  // the whole padded volume and the accumulation buffers live there during the call.
  Device device = Device::cpu;
};

// predict: [B, patch + 2 context..., C_in] -> [B, patch..., C_out] logits, both on options.device (called without
// autograd recording).
using PredictFn = std::function<Tensor(const Tensor&)>;

// image [spatial..., C_in] (2 or 3 spatial axes, on the cpu) -> blended logits [spatial..., C_out], f32, on the cpu.
Tensor sliding_window_predict(const Tensor& image, const PredictFn& predict, const SlidingWindowOptions& options);

// Start positions along one axis: i * step with step = max(1, int(patch * (1 - overlap))), the last one clamped to
// size - patch.
std::vector<int64_t> window_starts(int64_t size, int64_t patch, double overlap);

// The importance map of the options' patch as [patch...].
Tensor importance_map(const SlidingWindowOptions& options);

// Softmax over the last axis (probabilities from blended logits).
Tensor softmax_channels(const Tensor& logits);

}  // namespace unet
