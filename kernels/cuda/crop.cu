// CUDA box copy with zero fill, the twin of kernels/cpu/crop.cpp: one thread per output word.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/crop.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

namespace unet::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// cw = words per pixel.
template <class T>
__global__ void __launch_bounds__(kThreads) crop_k(const T* x, T* y, CropShape s, int64_t cw, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = i % cw, pix = i / cw;
    const int64_t q = pix % s.out[2], p = pix / s.out[2] % s.out[1], z = pix / s.out[2] / s.out[1] % s.out[0],
                  n = pix / s.out[2] / s.out[1] / s.out[0];
    const int64_t iz = z + s.offset[0], ip = p + s.offset[1], iq = q + s.offset[2];
    const bool inside = iz >= 0 && iz < s.in[0] && ip >= 0 && ip < s.in[1] && iq >= 0 && iq < s.in[2];
    y[i] = inside ? x[(((n * s.in[0] + iz) * s.in[1] + ip) * s.in[2] + iq) * cw + e] : T(0);
  }
}

}  // namespace

void crop(const CropShape& s, const void* x, int64_t elem_size, void* y, cudaStream_t stream) {
  const int64_t pixels = s.n * s.out[0] * s.out[1] * s.out[2];
  const auto go = [&](auto word, int64_t cw) {
    using T = decltype(word);
    if (pixels * cw == 0) return;
    launch(crop_k<T>, grid_stride_blocks(pixels * cw, kThreads), dim3(kThreads), 0, stream, static_cast<const T*>(x),
           static_cast<T*>(y), s, cw, pixels * cw);
  };
  switch (elem_size) {
    case 4:
      return go(uint32_t{}, s.c);
    case 2:
      return go(uint16_t{}, s.c);
    default:
      return go(uint8_t{}, s.c * elem_size);
  }
}

const CropKernels crop_kernels = {crop};

}  // namespace unet::kernels::cuda
