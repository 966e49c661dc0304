#include "kernels/cpu/crop.h"

#include <algorithm>
#include <cstring>

#include "kernels/common/parallel.h"

namespace unet::kernels::cpu {

void crop(const CropShape& s, const void* x, int64_t elem_size, void* y, cudaStream_t) {
  const int64_t row = s.c * elem_size;  // bytes of one pixel
  const auto* in = static_cast<const uint8_t*>(x);
  auto* out = static_cast<uint8_t*>(y);
  // One work item per output row (fixed n, z, p): the part of it inside x is one memcpy, the rest zeros.
  const int64_t rows = s.n * s.out[0] * s.out[1];
  const int64_t q0 = std::max<int64_t>(0, -s.offset[2]), q1 = std::min<int64_t>(s.out[2], s.in[2] - s.offset[2]);
  parallel_for(rows, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t p = r % s.out[1], z = r / s.out[1] % s.out[0], n = r / s.out[1] / s.out[0];
      uint8_t* dst = out + r * s.out[2] * row;
      const int64_t iz = z + s.offset[0], ip = p + s.offset[1];
      if (iz < 0 || iz >= s.in[0] || ip < 0 || ip >= s.in[1] || q0 >= q1) {
        std::memset(dst, 0, static_cast<size_t>(s.out[2] * row));
        continue;
      }
      std::memset(dst, 0, static_cast<size_t>(q0 * row));
      const uint8_t* src = in + (((n * s.in[0] + iz) * s.in[1] + ip) * s.in[2] + q0 + s.offset[2]) * row;
      std::memcpy(dst + q0 * row, src, static_cast<size_t>((q1 - q0) * row));
      std::memset(dst + q1 * row, 0, static_cast<size_t>((s.out[2] - q1) * row));
    }
  });
}

const CropKernels crop_kernels = {crop};

}  // namespace unet::kernels::cpu
