// Sliding-window kernels' shared types and the table of entry points the engine dispatches through, one per backend
// (kernels::cpu::blend_kernels in kernels/cpu/blend.h, kernels::cuda::blend_kernels in kernels/cuda/blend.cuh).
// Volumes are channels-last with up to 3 spatial axes (2D: size 1 in front).
#pragma once
#include <array>
#include <cstdint>

#include "kernels/cuda/stream.h"

namespace unet::kernels {

using Dims3 = std::array<int64_t, 3>;  // sizes or positions (z, y, x)

struct BlendKernels {
  void (*importance_map)(const Dims3& patch, bool gaussian, float sigma_scale, float min_value, float* map,
                         cudaStream_t stream);
  void (*extract_window)(const float* volume, const Dims3& size, int64_t c, const Dims3& start, const Dims3& patch,
                         const std::array<bool, 3>& flip, float* window, cudaStream_t stream);
  void (*accumulate_window)(const float* pred, const float* weight, const Dims3& patch, int64_t c, const Dims3& start,
                            const Dims3& size, const std::array<bool, 3>& flip, float scale, float* out, float* norm,
                            cudaStream_t stream);
};

}  // namespace unet::kernels
