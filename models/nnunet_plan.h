// The nnU-Net topology rule (DLE get_unet_params; docs/reference.md, "nnU-Net plan rule"): kernel sizes, strides and
// filters per level from the patch size and the target spacing.
#pragma once
#include <vector>

namespace unet::models {

struct UNetPlan {
  std::vector<std::vector<int>> kernels;  // per level, per spatial axis (level 0 = input block, last = bottleneck)
  std::vector<std::vector<int>> strides;  // per level; level 0 is all ones
  std::vector<int> filters;               // per level: min(2^(5+i), 320 in 3D / 512 in 2D)
};

// patch and spacing in the engine's axis order ((D,) H, W); depth = maximum number of downsamplings.
UNetPlan plan_unet(const std::vector<int>& patch, const std::vector<double>& spacing, int depth = 5, int min_fmap = 4);

}  // namespace unet::models
