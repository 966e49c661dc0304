// CPU sliding-window kernels. Parallel over the outer spatial axis: windows never overlap within one call, so no
// two threads write the same voxel and the result does not depend on the thread count.
#include <cmath>
#include <vector>

#include "kernels/common/parallel.h"
#include "kernels/cpu/blend.h"

namespace unet::kernels::cpu {

void importance_map(const Dims3& patch, bool gaussian, float sigma_scale, float min_value, float* map) {
  std::array<std::vector<double>, 3> g;
  for (int a = 0; a < 3; ++a) {
    g[a].assign(static_cast<size_t>(patch[a]), 1.0);
    if (!gaussian || patch[a] == 1) continue;
    double centre = (patch[a] - 1) / 2.0, sigma = sigma_scale * patch[a];
    double peak = 0;
    for (int64_t i = 0; i < patch[a]; ++i) {
      double d = i - centre;
      g[a][i] = std::exp(-d * d / (2 * sigma * sigma));
      peak = std::max(peak, g[a][i]);
    }
    for (double& v : g[a]) v /= peak;  // the product of per-axis maxima is the map's maximum
  }
  for (int64_t z = 0; z < patch[0]; ++z)
    for (int64_t y = 0; y < patch[1]; ++y)
      for (int64_t x = 0; x < patch[2]; ++x) {
        double v = g[0][z] * g[1][y] * g[2][x];
        map[(z * patch[1] + y) * patch[2] + x] = static_cast<float>(std::max(v, static_cast<double>(min_value)));
      }
}

void extract_window(const float* volume, const Dims3& size, int64_t c, const Dims3& start, const Dims3& patch,
                    const std::array<bool, 3>& flip, float* window) {
  parallel_for(patch[0], 1, [&](int64_t z0, int64_t z1) {
    for (int64_t z = z0; z < z1; ++z)
      for (int64_t y = 0; y < patch[1]; ++y)
        for (int64_t x = 0; x < patch[2]; ++x) {
          int64_t sz = start[0] + (flip[0] ? patch[0] - 1 - z : z);
          int64_t sy = start[1] + (flip[1] ? patch[1] - 1 - y : y);
          int64_t sx = start[2] + (flip[2] ? patch[2] - 1 - x : x);
          const float* src = volume + ((sz * size[1] + sy) * size[2] + sx) * c;
          float* dst = window + ((z * patch[1] + y) * patch[2] + x) * c;
          for (int64_t k = 0; k < c; ++k) dst[k] = src[k];
        }
  });
}

void accumulate_window(const float* pred, const float* weight, const Dims3& patch, int64_t c, const Dims3& start,
                       const Dims3& size, const std::array<bool, 3>& flip, float scale, float* out, float* norm) {
  parallel_for(patch[0], 1, [&](int64_t z0, int64_t z1) {
    for (int64_t z = z0; z < z1; ++z)
      for (int64_t y = 0; y < patch[1]; ++y)
        for (int64_t x = 0; x < patch[2]; ++x) {
          int64_t i = (z * patch[1] + y) * patch[2] + x;
          int64_t pz = flip[0] ? patch[0] - 1 - z : z, py = flip[1] ? patch[1] - 1 - y : y,
                  px = flip[2] ? patch[2] - 1 - x : x;
          const float* p = pred + ((pz * patch[1] + py) * patch[2] + px) * c;
          int64_t o = ((start[0] + z) * size[1] + start[1] + y) * size[2] + start[2] + x;
          float w = weight[i] * scale;
          float* dst = out + o * c;
          for (int64_t k = 0; k < c; ++k) dst[k] += w * p[k];
          if (norm) norm[o] += weight[i];
        }
  });
}

const BlendKernels blend_kernels{
    .importance_map = [](const Dims3& patch, bool gaussian, float sigma_scale, float min_value, float* map,
                         cudaStream_t) { importance_map(patch, gaussian, sigma_scale, min_value, map); },
    .extract_window = [](const float* volume, const Dims3& size, int64_t c, const Dims3& start, const Dims3& patch,
                         const std::array<bool, 3>& flip, float* window,
                         cudaStream_t) { extract_window(volume, size, c, start, patch, flip, window); },
    .accumulate_window =
        [](const float* pred, const float* weight, const Dims3& patch, int64_t c, const Dims3& start, const Dims3& size,
           const std::array<bool, 3>& flip, float scale, float* out, float* norm,
           cudaStream_t) { accumulate_window(pred, weight, patch, c, start, size, flip, scale, out, norm); },
};

}  // namespace unet::kernels::cpu
