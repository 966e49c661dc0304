// UNet 3+'s classification-guided module on CUDA, the twin of kernels/cpu/classification.cpp: the mask and the gating
// one thread per element; the loss in one block (a handful of samples): per sample a strided "any label > 0" over its
// labels and a shared-memory OR, then thread 0 adds the 2 samples terms in the CPU's order.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/classification.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

#include <stdexcept>
#include <string>

namespace unet::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) presence_mask_k(const float* z, int64_t samples, float* mask) {
  for (int64_t s = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; s < samples; s += int64_t(gridDim.x) * blockDim.x)
    mask[s] = z[s * 2 + 1] > z[s * 2] ? 1.f : 0.f;
}

template <class E>
__global__ void __launch_bounds__(kThreads)
    scale_samples_k(const typename E::T* x, const float* mask, int64_t inner, int64_t n, typename E::T* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = E::store(E::load(x[i]) * mask[i / inner]);
}

template <class L>
__global__ void __launch_bounds__(kThreads)
    presence_bce_k(const float* z, const L* labels, int64_t samples, int64_t inner, float* targets, double* sum) {
  __shared__ int any[kThreads];
  for (int64_t s = 0; s < samples; ++s) {
    int found = 0;
    for (int64_t i = threadIdx.x; i < inner && !found; i += blockDim.x) found = labels[s * inner + i] > 0;
    any[threadIdx.x] = found;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
      if (static_cast<int>(threadIdx.x) < half) any[threadIdx.x] |= any[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      const float t = any[0] ? 1.f : 0.f;
      targets[s * 2] = 1 - t;
      targets[s * 2 + 1] = t;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double total = 0;
    for (int64_t i = 0; i < samples * 2; ++i) total += bce_with_logits(z[i], targets[i]);
    sum[0] = total;
  }
}

__global__ void __launch_bounds__(1) finish_k(const double* sum, double count, float* loss) {
  loss[0] = static_cast<float>(sum[0] / count);
}

__global__ void __launch_bounds__(kThreads)
    presence_bce_backward_k(const float* z, const float* targets, int64_t n, const float* g, double scale, float* dz) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dz[i] = static_cast<float>(double(g[0]) * scale * bce_with_logits_grad(z[i], targets[i]));
}

void presence_mask(const float* z, int64_t samples, float* mask, cudaStream_t stream) {
  launch(presence_mask_k, grid_stride_blocks(samples, kThreads), dim3(kThreads), 0, stream, z, samples, mask);
}

void scale_samples(DType dt, const void* x, const float* mask, int64_t samples, int64_t inner, void* y,
                   cudaStream_t stream) {
  const int64_t n = samples * inner;
  if (n == 0) return;
  element::with_element_type(dt, "scale_samples", [&](auto e) {
    using E = decltype(e);
    launch(scale_samples_k<E>, grid_stride_blocks(n, kThreads), dim3(kThreads), 0, stream,
           static_cast<const typename E::T*>(x), mask, inner, n, static_cast<typename E::T*>(y));
  });
}

void presence_bce(const float* z, const void* labels, DType label_dtype, int64_t samples, int64_t inner, float* targets,
                  double* sum, cudaStream_t stream) {
  if (label_dtype == DType::u8)
    launch(presence_bce_k<uint8_t>, dim3(1), dim3(kThreads), 0, stream, z, static_cast<const uint8_t*>(labels), samples,
           inner, targets, sum);
  else if (label_dtype == DType::i32)
    launch(presence_bce_k<int32_t>, dim3(1), dim3(kThreads), 0, stream, z, static_cast<const int32_t*>(labels), samples,
           inner, targets, sum);
  else
    throw std::invalid_argument(std::string("cuda presence_bce: labels must be i32 or u8, got ") +
                                dtype_name(label_dtype));
}

void finish(const double* sum, double count, float* loss, cudaStream_t stream) {
  launch(finish_k, dim3(1), dim3(1), 0, stream, sum, count, loss);
}

void presence_bce_backward(const float* z, const float* targets, int64_t samples, const float* g, double scale,
                           float* dz, cudaStream_t stream) {
  launch(presence_bce_backward_k, grid_stride_blocks(samples * 2, kThreads), dim3(kThreads), 0, stream, z, targets,
         samples * 2, g, scale, dz);
}

}  // namespace

const ClassificationKernels classification_kernels{presence_mask, scale_samples, presence_bce, finish,
                                                   presence_bce_backward};

}  // namespace unet::kernels::cuda
