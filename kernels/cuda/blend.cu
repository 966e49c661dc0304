// CUDA sliding-window kernels, the CUDA twin of kernels/cpu/blend.cpp. One thread per window (or map) voxel, x fastest,
// so neighbouring threads touch neighbouring voxels; the channel loop is per thread (channels-last rows).
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/blend.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

namespace unet::kernels::cuda {
namespace {

constexpr int kThreads = 256;

struct D3 {  // std::array is not usable in device code without --expt-relaxed-constexpr
  int64_t v[3];
};
struct B3 {
  bool v[3];
};

// ---- kernels ----

// The CPU's per-axis factor g(i) / max_i g(i), in double. The maximum is at i0 = floor((p - 1) / 2) (the sample
// nearest the centre; for even p, i0 and i0 + 1 tie), computed with the same expression the CPU maximizes over.
__device__ double axis_factor(int64_t i, int64_t p, bool gaussian, float sigma_scale) {
  if (!gaussian || p == 1) return 1.0;
  const double centre = (p - 1) / 2.0, sigma = sigma_scale * p;
  const double d = i - centre, d0 = (p - 1) / 2 - centre;
  return exp(-d * d / (2 * sigma * sigma)) / exp(-d0 * d0 / (2 * sigma * sigma));
}

__global__ void __launch_bounds__(kThreads)
    importance_map_kernel(D3 patch, bool gaussian, float sigma_scale, float min_value, float* map) {
  const int64_t total = patch.v[0] * patch.v[1] * patch.v[2];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % patch.v[2], y = i / patch.v[2] % patch.v[1], z = i / (patch.v[2] * patch.v[1]);
    const double v = axis_factor(z, patch.v[0], gaussian, sigma_scale) *
                     axis_factor(y, patch.v[1], gaussian, sigma_scale) *
                     axis_factor(x, patch.v[2], gaussian, sigma_scale);
    const double lo = static_cast<double>(min_value);
    map[i] = static_cast<float>(v < lo ? lo : v);
  }
}

__global__ void __launch_bounds__(kThreads)
    extract_kernel(const float* volume, D3 size, int64_t c, D3 start, D3 patch, B3 flip, float* window) {
  const int64_t total = patch.v[0] * patch.v[1] * patch.v[2];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % patch.v[2], y = i / patch.v[2] % patch.v[1], z = i / (patch.v[2] * patch.v[1]);
    const int64_t sz = start.v[0] + (flip.v[0] ? patch.v[0] - 1 - z : z);
    const int64_t sy = start.v[1] + (flip.v[1] ? patch.v[1] - 1 - y : y);
    const int64_t sx = start.v[2] + (flip.v[2] ? patch.v[2] - 1 - x : x);
    const float* src = volume + ((sz * size.v[1] + sy) * size.v[2] + sx) * c;
    float* dst = window + i * c;
    for (int64_t k = 0; k < c; ++k) dst[k] = src[k];
  }
}

__global__ void __launch_bounds__(kThreads)
    accumulate_kernel(const float* pred, const float* weight, D3 patch, int64_t c, D3 start, D3 size, B3 flip,
                      float scale, float* out, float* norm) {
  const int64_t total = patch.v[0] * patch.v[1] * patch.v[2];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % patch.v[2], y = i / patch.v[2] % patch.v[1], z = i / (patch.v[2] * patch.v[1]);
    const int64_t pz = flip.v[0] ? patch.v[0] - 1 - z : z, py = flip.v[1] ? patch.v[1] - 1 - y : y,
                  px = flip.v[2] ? patch.v[2] - 1 - x : x;
    const float* p = pred + ((pz * patch.v[1] + py) * patch.v[2] + px) * c;
    const int64_t o = ((start.v[0] + z) * size.v[1] + start.v[1] + y) * size.v[2] + start.v[2] + x;
    const float wi = weight[i];
    const float w = wi * scale;
    float* dst = out + o * c;
    for (int64_t k = 0; k < c; ++k) dst[k] += w * p[k];
    if (norm) norm[o] += wi;
  }
}

D3 d3(const Dims3& a) {
  return D3{{a[0], a[1], a[2]}};
}
B3 b3(const std::array<bool, 3>& a) {
  return B3{{a[0], a[1], a[2]}};
}
dim3 grid_for(const Dims3& patch) {
  const int64_t n = patch[0] * patch[1] * patch[2];
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return dim3(static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 4096 ? 4096 : blocks)));
}

}  // namespace

// ---- launchers ----

void importance_map(const Dims3& patch, bool gaussian, float sigma_scale, float min_value, float* map,
                    cudaStream_t stream) {
  launch(importance_map_kernel, grid_for(patch), dim3(kThreads), 0, stream, d3(patch), gaussian, sigma_scale,
         min_value, map);
}

void extract_window(const float* volume, const Dims3& size, int64_t c, const Dims3& start, const Dims3& patch,
                    const std::array<bool, 3>& flip, float* window, cudaStream_t stream) {
  launch(extract_kernel, grid_for(patch), dim3(kThreads), 0, stream, volume, d3(size), c, d3(start), d3(patch),
         b3(flip), window);
}

void accumulate_window(const float* pred, const float* weight, const Dims3& patch, int64_t c, const Dims3& start,
                       const Dims3& size, const std::array<bool, 3>& flip, float scale, float* out, float* norm,
                       cudaStream_t stream) {
  launch(accumulate_kernel, grid_for(patch), dim3(kThreads), 0, stream, pred, weight, d3(patch), c, d3(start),
         d3(size), b3(flip), scale, out, norm);
}

const BlendKernels blend_kernels{importance_map, extract_window, accumulate_window};

}  // namespace unet::kernels::cuda
