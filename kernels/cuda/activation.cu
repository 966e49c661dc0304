// CUDA activation kernels (relu, leaky relu, forward and backward), the CUDA twin of kernels/cpu/activation.cpp.
// Each output element is one select on its own inputs, so results are bitwise those of the CPU.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

namespace unet::kernels::cuda {
namespace {

// Threads per block of every launch below; __launch_bounds__ uses the same constant, so ptxas budgets registers for
// exactly the block size the launchers use.
constexpr int kThreads = 256;

// ---- kernels ----

// Written as the CPU writes them: x <= 0 is false for NaN, so relu passes NaN through.
__global__ void __launch_bounds__(kThreads) relu_forward_f32(const float* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    y[i] = v <= 0.f ? 0.f : v;
  }
}

__global__ void __launch_bounds__(kThreads) relu_backward_f32(const float* y, const float* dy, float* dx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = y[i] > 0.f ? dy[i] : 0.f;
}

__global__ void __launch_bounds__(kThreads) leaky_relu_forward_f32(const float* x, float slope, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    y[i] = v > 0.f ? v : v * slope;
  }
}

__global__ void __launch_bounds__(kThreads)
    leaky_relu_backward_f32(const float* x, const float* dy, float slope, float* dx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = dy[i];
    dx[i] = x[i] > 0.f ? g : g * slope;
  }
}

// Grid-stride loops: enough blocks to fill a GPU, capped so tiny tensors do not launch empty blocks.
dim3 grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return dim3(static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 4096 ? 4096 : blocks)));
}

}  // namespace

// ---- launchers ----

void relu_forward(const float* x, float* y, int64_t n, cudaStream_t stream) {
  launch(relu_forward_f32, grid_for(n), dim3(kThreads), 0, stream, x, y, n);
}

void relu_backward(const float* y, const float* dy, float* dx, int64_t n, cudaStream_t stream) {
  launch(relu_backward_f32, grid_for(n), dim3(kThreads), 0, stream, y, dy, dx, n);
}

void leaky_relu_forward(const float* x, float slope, float* y, int64_t n, cudaStream_t stream) {
  launch(leaky_relu_forward_f32, grid_for(n), dim3(kThreads), 0, stream, x, slope, y, n);
}

void leaky_relu_backward(const float* x, const float* dy, float slope, float* dx, int64_t n, cudaStream_t stream) {
  launch(leaky_relu_backward_f32, grid_for(n), dim3(kThreads), 0, stream, x, dy, slope, dx, n);
}

}  // namespace unet::kernels::cuda
