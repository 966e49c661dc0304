// CUDA dropout, the twin of kernels/cpu/dropout.cpp.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/dropout.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

namespace unet::kernels::cuda {
namespace {

constexpr int kThreads = 256;

template <class E>
__global__ void __launch_bounds__(kThreads)
    dropout_k(const typename E::T* x, typename E::T* y, uint64_t seed, uint64_t first, float p, float scale,
              int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = E::store(dropout_keeps(seed, first + static_cast<uint64_t>(i), p) ? E::load(x[i]) * scale : 0.f);
}

}  // namespace

void dropout_apply(DType dt, uint64_t seed, uint64_t first, float p, float scale, const void* x, void* y, int64_t n,
                   cudaStream_t stream) {
  if (n == 0) return;
  element::with_element_type(dt, "dropout", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(dropout_k<E>, grid_stride_blocks(n, kThreads), dim3(kThreads), 0, stream, static_cast<const T*>(x),
           static_cast<T*>(y), seed, first, p, scale, n);
  });
}

const DropoutKernels dropout_kernels = {dropout_apply};

}  // namespace unet::kernels::cuda
