// nnU-Net plan rule. Per level: an axis whose spacing is at most twice the finest is downsampled (stride 2) while
// its size stays >= 2 * min_fmap, and gets a 3-wide kernel; coarser axes get stride 1 and kernel 1, until the
// spacing has caught up. Stops when nothing can be downsampled or `depth` downsamplings exist.
#include "models/nnunet_plan.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace unet::models {

UNetPlan plan_unet(const std::vector<int>& patch, const std::vector<double>& spacing_in, int depth, int min_fmap) {
  size_t dims = patch.size();
  if (dims < 2 || dims > 3 || spacing_in.size() != dims)
    throw std::invalid_argument("plan_unet: patch size and spacing must both have 2 or 3 entries, got " +
                                std::to_string(patch.size()) + " and " + std::to_string(spacing_in.size()));
  for (size_t a = 0; a < dims; ++a)
    if (patch[a] < 1 || !(spacing_in[a] > 0))
      throw std::invalid_argument("plan_unet: patch sizes and spacings must be positive");
  std::vector<double> sizes(patch.begin(), patch.end()), spacing = spacing_in;
  UNetPlan plan;
  while (static_cast<int>(plan.strides.size()) < depth) {
    double finest = *std::min_element(spacing.begin(), spacing.end());
    std::vector<int> stride(dims), kernel(dims);
    for (size_t a = 0; a < dims; ++a) {
      double ratio = spacing[a] / finest;
      stride[a] = (ratio <= 2 && sizes[a] >= 2 * min_fmap) ? 2 : 1;
      kernel[a] = ratio <= 2 ? 3 : 1;
    }
    if (std::all_of(stride.begin(), stride.end(), [](int s) { return s == 1; })) break;
    for (size_t a = 0; a < dims; ++a) {
      sizes[a] /= stride[a];
      spacing[a] *= stride[a];
    }
    plan.kernels.push_back(kernel);
    plan.strides.push_back(stride);
  }
  plan.strides.insert(plan.strides.begin(), std::vector<int>(dims, 1));
  plan.kernels.push_back(std::vector<int>(dims, 3));
  int cap = dims == 3 ? 320 : 512;
  for (size_t i = 0; i < plan.strides.size(); ++i) plan.filters.push_back(std::min(32 << i, cap));
  return plan;
}

}  // namespace unet::models
