// nnU-Net's preprocessing geometry (docs/reference.md, "Preprocessing"): cropping to the non-zero region, resampling
// images and labels to a target spacing, the target spacing of a dataset, and the way back for predictions.
//
// Resizing follows nnU-Net (skimage.transform.resize with mode "edge", no anti-aliasing): output voxel i samples the
// input at (i + 0.5) * n_in / n_out - 0.5 along each axis, values beyond the edge are the edge's, one axis after the
// other (the interpolations are tensor products, so this equals resampling the 3D grid at once). Orders: 0 nearest,
// 1 linear, 3 cubic B-spline (scipy.ndimage's spline of order 3, with its prefilter). Checked against scipy.ndimage
// fixtures (tests/golden/make_resample_fixtures.py).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace unet::io {

using Orders = std::array<int, 3>;  // interpolation order per axis (z, y, x): 0, 1 or 3

// image f32 [Z, Y, X, C] resized to `size`, each channel alike.
Tensor resize_image(const Tensor& image, const std::array<int64_t, 3>& size, const Orders& orders);
// label u8 [Z, Y, X] resized to `size` as nnU-Net does: each class present, in ascending order, has its mask resized
// with `orders` (order 3 counts as 1: labels are never resized with splines) and takes the voxels where it is
// >= 0.5; the rest is background.
Tensor resize_label(const Tensor& label, const std::array<int64_t, 3>& size, const Orders& orders);

// The size a grid of `size` voxels at spacing `from` has at spacing `to`: round(size * from / to), at least 1.
// std::runtime_error (naming both spacings) when it overflows (more than kMaxResampledVoxels voxels, or not finite)
// or collapses (an axis to under kMinResampledExtent of a voxel; a small axis at a coarser spacing may still become
// one voxel): a wrong spacing, not a volume to segment.
inline constexpr double kMaxResampledVoxels = 2147483648.0;  // 2^31
inline constexpr double kMinResampledExtent = 0.01;
std::array<int64_t, 3> resampled_size(const std::array<int64_t, 3>& size, const std::array<double, 3>& from,
                                      const std::array<double, 3>& to);

// nnU-Net's anisotropy rule: the axis resampled apart from the others (nearest neighbour along it, as slices are
// not to be interpolated across a large gap): the axis of the largest spacing in `from` when its largest spacing is
// at least 3 times its smallest, else the same in `to`; -1 when neither is anisotropic.
int separate_axis(const std::array<double, 3>& from, const std::array<double, 3>& to);

// The orders for images (3 in-plane, 0 along the separate axis) and labels (1 in-plane, 0 along it).
Orders image_orders(int separate);
Orders label_orders(int separate);

// nnU-Net's target spacing from the training cases' spacings: the median per axis; when the largest median is more
// than 3 times the others' largest and that axis would have less than a third of the voxels of the others (median
// sizes), its target becomes the 10th percentile of its spacings (at least the others' largest, plus 1e-5).
std::array<double, 3> target_spacing(const std::vector<std::array<double, 3>>& spacings,
                                     const std::vector<std::array<int64_t, 3>>& sizes);

// The bounding box of the voxels where any channel is non-zero: [begin, end) per axis. A volume with no non-zero
// voxel gives the whole volume.
struct Box {
  std::array<int64_t, 3> begin{}, end{};
  std::array<int64_t, 3> size() const { return {end[0] - begin[0], end[1] - begin[1], end[2] - begin[2]}; }
};
Box nonzero_box(const Tensor& image);
// The box's part of a [Z, Y, X, ...] tensor (an image or a label).
Tensor crop(const Tensor& t, const Box& box);
// A tensor of `full` spatial size holding `t` at `box`, `fill` elsewhere (the inverse of crop).
Tensor uncrop(const Tensor& t, const Box& box, const std::array<int64_t, 3>& full, float fill = 0);

}  // namespace unet::io
