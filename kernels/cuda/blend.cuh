// CUDA sliding-window kernels, the CUDA twin of kernels/cpu/blend.h: Gaussian importance map, window extraction and
// weighted accumulation, same arguments (channels-last volumes, up to 3 spatial axes, 2D with size 1 in front) with
// pointers in device memory (host memory under the emulator) plus a stream. Shapes and flips are host values.
#pragma once
#include <array>
#include <cstdint>

#include "kernels/blend.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels::cuda {

using kernels::Dims3;

void importance_map(const Dims3& patch, bool gaussian, float sigma_scale, float min_value, float* map,
                    cudaStream_t stream);

void extract_window(const float* volume, const Dims3& size, int64_t c, const Dims3& start, const Dims3& patch,
                    const std::array<bool, 3>& flip, float* window, cudaStream_t stream);

// out[start + i] += weight[i] * scale * pred[i] (pred mirrored back by flip); norm[start + i] += weight[i] when norm is
// not null. One thread per window voxel: a window never covers a voxel twice, so there are no write conflicts; windows
// of one volume are accumulated by successive calls in stream order, so the sum order is the caller's window order.
void accumulate_window(const float* pred, const float* weight, const Dims3& patch, int64_t c, const Dims3& start,
                       const Dims3& size, const std::array<bool, 3>& flip, float scale, float* out, float* norm,
                       cudaStream_t stream);

// The table of these entry points that the engine dispatches through (kernels/blend.h).
extern const BlendKernels blend_kernels;

}  // namespace unet::kernels::cuda
