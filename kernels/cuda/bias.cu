// CUDA per-channel bias addition, the twin of kernels/cpu/bias.cpp: one thread per element, the same rounding.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/bias.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

namespace unet::kernels::cuda {
namespace {

constexpr int kThreads = 256;

template <class E>
__global__ void __launch_bounds__(kThreads)
    bias_add_k(typename E::T* y, const float* bias, int64_t channels, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = E::store(E::load(y[i]) + bias[i % channels]);
}

}  // namespace

void bias_add(DType dt, int64_t rows, int64_t channels, const float* bias, void* y, cudaStream_t stream) {
  const int64_t n = rows * channels;
  if (n == 0) return;
  element::with_element_type(dt, "bias_add", [&](auto e) {
    using E = decltype(e);
    launch(bias_add_k<E>, grid_stride_blocks(n, kThreads), dim3(kThreads), 0, stream, static_cast<typename E::T*>(y),
           bias, channels, n);
  });
}

const BiasKernels bias_kernels = {bias_add};

}  // namespace unet::kernels::cuda
