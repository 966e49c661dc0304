// CUDA activation kernels (relu, leaky relu, forward and backward), the CUDA twin of kernels/cpu/activation.cpp.
// Each output element is one select on its own inputs (a product rounded once to the element type), so results are
// bitwise those of the CPU in f32, f16 and bf16.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

namespace unet::kernels::cuda {
namespace {

// Threads per block of every launch below; __launch_bounds__ uses the same constant, so ptxas budgets registers for
// exactly the block size the launchers use.
constexpr int kThreads = 256;

// ---- kernels (E: the element traits of element.cuh) ----

// Written as the CPU writes them: x <= 0 is false for NaN, so relu passes NaN through.
template <class E>
__global__ void __launch_bounds__(kThreads) relu_forward_k(const typename E::T* x, typename E::T* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const typename E::T v = x[i];
    y[i] = E::load(v) <= 0.f ? E::store(0.f) : v;
  }
}

template <class E>
__global__ void __launch_bounds__(kThreads)
    relu_backward_k(const typename E::T* y, const typename E::T* dy, typename E::T* dx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = E::load(y[i]) > 0.f ? dy[i] : E::store(0.f);
}

template <class E>
__global__ void __launch_bounds__(kThreads)
    leaky_relu_forward_k(const typename E::T* x, float slope, typename E::T* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = E::load(x[i]);
    y[i] = v > 0.f ? x[i] : E::store(v * slope);
  }
}

template <class E>
__global__ void __launch_bounds__(kThreads)
    leaky_relu_backward_k(const typename E::T* x, const typename E::T* dy, float slope, typename E::T* dx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = E::load(x[i]) > 0.f ? dy[i] : E::store(E::load(dy[i]) * slope);
}

// Grid-stride loops: enough blocks to fill a GPU, capped so tiny tensors do not launch empty blocks.

}  // namespace

// ---- launchers ----

void relu_forward(DType dt, const void* x, void* y, int64_t n, cudaStream_t stream) {
  element::with_element_type(dt, "relu", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(relu_forward_k<E>, grid_stride_blocks(n, kThreads), dim3(kThreads), 0, stream, static_cast<const T*>(x),
           static_cast<T*>(y), n);
  });
}

void relu_backward(DType dt, const void* y, const void* dy, void* dx, int64_t n, cudaStream_t stream) {
  element::with_element_type(dt, "relu", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(relu_backward_k<E>, grid_stride_blocks(n, kThreads), dim3(kThreads), 0, stream, static_cast<const T*>(y),
           static_cast<const T*>(dy), static_cast<T*>(dx), n);
  });
}

void leaky_relu_forward(DType dt, const void* x, float slope, void* y, int64_t n, cudaStream_t stream) {
  element::with_element_type(dt, "leaky_relu", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(leaky_relu_forward_k<E>, grid_stride_blocks(n, kThreads), dim3(kThreads), 0, stream,
           static_cast<const T*>(x), slope, static_cast<T*>(y), n);
  });
}

void leaky_relu_backward(DType dt, const void* x, const void* dy, float slope, void* dx, int64_t n,
                         cudaStream_t stream) {
  element::with_element_type(dt, "leaky_relu", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(leaky_relu_backward_k<E>, grid_stride_blocks(n, kThreads), dim3(kThreads), 0, stream,
           static_cast<const T*>(x), static_cast<const T*>(dy), slope, static_cast<T*>(dx), n);
  });
}

const ActivationKernels activation_kernels{relu_forward, relu_backward, leaky_relu_forward, leaky_relu_backward};

}  // namespace unet::kernels::cuda
