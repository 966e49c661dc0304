// CUDA elementwise kernels (add, scale), the CUDA twin of kernels/cpu/elementwise.cpp. The same text is compiled by
// nvcc for GPUs and by the host compiler against the device emulator (docs/emulator.md), which is how CI runs it.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

#include <stdexcept>
#include <string>

namespace unet::kernels::cuda {
namespace {

// Threads per block of every launch below; __launch_bounds__ uses the same constant, so ptxas budgets registers for
// exactly the block size the launchers use.
constexpr int kThreads = 256;

// ---- kernels ----

__global__ void __launch_bounds__(kThreads) add_f32(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}

// f16 / bf16 are stored as raw 16-bit patterns; the sum is formed in f32 and rounded to nearest even, as on the CPU.
struct F16 {
  static __device__ float load(uint16_t v) { return __half2float(__ushort_as_half(v)); }
  static __device__ uint16_t store(float f) { return __half_as_ushort(__float2half_rn(f)); }
};
struct BF16 {
  static __device__ float load(uint16_t v) { return __bfloat162float(__ushort_as_bfloat16(v)); }
  static __device__ uint16_t store(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
};

template <class H>
__global__ void __launch_bounds__(kThreads) add_16(const uint16_t* a, const uint16_t* b, uint16_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = H::store(H::load(a[i]) + H::load(b[i]));
}

__global__ void __launch_bounds__(kThreads) scale_f32(const float* a, float alpha, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = alpha * a[i];
}

// Grid-stride loops: enough blocks to fill a GPU, capped so tiny tensors do not launch empty blocks.

}  // namespace

// ---- launchers ----

void add(DType dtype, const void* a, const void* b, void* out, int64_t n, cudaStream_t stream) {
  switch (dtype) {
    case DType::f32:
      launch(add_f32, grid_stride_blocks(n, kThreads), dim3(kThreads), 0, stream, static_cast<const float*>(a),
             static_cast<const float*>(b), static_cast<float*>(out), n);
      return;
    case DType::f16:
      launch(add_16<F16>, grid_stride_blocks(n, kThreads), dim3(kThreads), 0, stream, static_cast<const uint16_t*>(a),
             static_cast<const uint16_t*>(b), static_cast<uint16_t*>(out), n);
      return;
    case DType::bf16:
      launch(add_16<BF16>, grid_stride_blocks(n, kThreads), dim3(kThreads), 0, stream, static_cast<const uint16_t*>(a),
             static_cast<const uint16_t*>(b), static_cast<uint16_t*>(out), n);
      return;
    default:
      throw std::invalid_argument(std::string("cuda add: unsupported dtype ") + dtype_name(dtype));
  }
}

void scale(const float* a, float alpha, float* out, int64_t n, cudaStream_t stream) {
  launch(scale_f32, grid_stride_blocks(n, kThreads), dim3(kThreads), 0, stream, a, alpha, out, n);
}

const ElementwiseKernels elementwise_kernels{add, scale};

}  // namespace unet::kernels::cuda
