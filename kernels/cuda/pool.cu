// CUDA max pooling, the twin of kernels/cpu/pool.cpp: the same comparisons in the same window order.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/pool.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

namespace unet::kernels::cuda {
namespace {

constexpr int kThreads = 256;

template <class E>
__global__ void __launch_bounds__(kThreads)
    max_pool_forward_k(const typename E::T* x, typename E::T* y, int32_t* idx, PoolShape s, int64_t total) {
  const int64_t od = s.d / s.kd, oh = s.h / s.kh, ow = s.w / s.kw, C = s.c;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, q = i / C % ow, p = i / C / ow % oh, z = i / C / ow / oh % od, n = i / C / ow / oh / od;
    float best = 0.f;
    typename E::T best_raw{};  // written as read: NaN payloads kept, no rounding
    int32_t at = -1;
    for (int64_t a = 0; a < s.kd; ++a)
      for (int64_t b = 0; b < s.kh; ++b)
        for (int64_t f = 0; f < s.kw; ++f) {
          const typename E::T raw = x[(((n * s.d + z * s.kd + a) * s.h + p * s.kh + b) * s.w + q * s.kw + f) * C + c];
          const float v = E::load(raw);
          if (at < 0 || v > best || v != v) {  // v != v: NaN
            best = v;
            best_raw = raw;
            at = static_cast<int32_t>((a * s.kh + b) * s.kw + f);
          }
        }
    y[i] = best_raw;
    idx[i] = at;
  }
}

template <class E>
__global__ void __launch_bounds__(kThreads)
    max_pool_backward_k(const typename E::T* dy, const int32_t* idx, typename E::T* dx, PoolShape s, int64_t total) {
  const int64_t od = s.d / s.kd, oh = s.h / s.kh, ow = s.w / s.kw, C = s.c;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, x = i / C % s.w, y = i / C / s.w % s.h, z = i / C / s.w / s.h % s.d,
                  n = i / C / s.w / s.h / s.d;
    const int64_t pz = z / s.kd, py = y / s.kh, px = x / s.kw;
    typename E::T v = E::store(0.f);
    if (pz < od && py < oh && px < ow) {
      const int64_t o = (((n * od + pz) * oh + py) * ow + px) * C + c;
      if (idx[o] == static_cast<int32_t>(((z % s.kd) * s.kh + y % s.kh) * s.kw + x % s.kw)) v = dy[o];
    }
    dx[i] = v;
  }
}

}  // namespace

void max_pool_forward(const PoolShape& s, DType dt, const void* x, void* y, int32_t* idx, cudaStream_t stream) {
  const int64_t total = s.outputs();
  if (total == 0) return;
  element::with_element_type(dt, "max_pool", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(max_pool_forward_k<E>, grid_stride_blocks(total, kThreads), dim3(kThreads), 0, stream,
           static_cast<const T*>(x), static_cast<T*>(y), idx, s, total);
  });
}

void max_pool_backward(const PoolShape& s, DType dt, const void* dy, const int32_t* idx, void* dx,
                       cudaStream_t stream) {
  const int64_t total = s.n * s.d * s.h * s.w * s.c;
  if (total == 0) return;
  element::with_element_type(dt, "max_pool", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(max_pool_backward_k<E>, grid_stride_blocks(total, kThreads), dim3(kThreads), 0, stream,
           static_cast<const T*>(dy), idx, static_cast<T*>(dx), s, total);
  });
}

const PoolKernels pool_kernels = {max_pool_forward, max_pool_backward};

}  // namespace unet::kernels::cuda
