// Sliding-window kernels' shared types, for the CPU (kernels/cpu/blend.h) and CUDA (kernels/cuda/blend.cuh) entry
// points. Volumes are channels-last with up to 3 spatial axes (2D: size 1 in front).
#pragma once
#include <array>
#include <cstdint>

namespace unet::kernels {

using Dims3 = std::array<int64_t, 3>;  // sizes or positions (z, y, x)

}  // namespace unet::kernels
