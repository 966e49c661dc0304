// Sliding-window kernels: the Gaussian importance map, window extraction, and weighted accumulation of window
// predictions into a whole-volume buffer. Volumes are channels-last with up to 3 spatial axes (2D: size 1 in front).
#pragma once
#include <array>
#include <cstdint>

#include "kernels/blend.h"

namespace unet::kernels::cpu {

using kernels::Dims3;

// map[z][y][x] = g(z) g(y) g(x) / max, g(i) = exp(-(i - (p - 1) / 2)^2 / (2 (sigma_scale p)^2)); values < min_value
// are raised to min_value. A constant map (all ones) when gaussian is false.
void importance_map(const Dims3& patch, bool gaussian, float sigma_scale, float min_value, float* map);

// Copies the window at `start` of size `patch` from volume [size..., c] into window [patch..., c]; with flip[a] the
// window is mirrored along spatial axis a (test-time augmentation).
void extract_window(const float* volume, const Dims3& size, int64_t c, const Dims3& start, const Dims3& patch,
                    const std::array<bool, 3>& flip, float* window);

// out[start + i] += weight[i] * pred[i] (pred mirrored back by flip), norm[start + i] += weight[i] when norm != nullptr.
void accumulate_window(const float* pred, const float* weight, const Dims3& patch, int64_t c, const Dims3& start,
                       const Dims3& size, const std::array<bool, 3>& flip, float scale, float* out, float* norm);

// The table of these entry points that the engine dispatches through (kernels/blend.h); the stream is ignored.
extern const BlendKernels blend_kernels;

}  // namespace unet::kernels::cpu
