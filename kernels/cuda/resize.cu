// CUDA bilinear resampling, the twin of kernels/cpu/resize.cpp: the same expressions in the same order.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/resize.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

namespace unet::kernels::cuda {
namespace {

constexpr int kThreads = 256;

template <class E>
__global__ void __launch_bounds__(kThreads)
    bilinear_forward_k(ResizeShape s, const int32_t* ih, const float* wh, const int32_t* iw, const float* ww,
                       const typename E::T* x, typename E::T* y, int64_t total) {
  const int64_t C = s.c;
  const int32_t *h0 = ih, *h1 = ih + s.oh, *w0 = iw, *w1 = iw + s.ow;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, q = i / C % s.ow, p = i / C / s.ow % s.oh, n = i / C / s.ow / s.oh;
    const float lh = wh[p], lw = ww[q];
    const typename E::T* base = x + n * s.h * s.w * C + c;
    const float x00 = E::load(base[(int64_t(h0[p]) * s.w + w0[q]) * C]);
    const float x01 = E::load(base[(int64_t(h0[p]) * s.w + w1[q]) * C]);
    const float x10 = E::load(base[(int64_t(h1[p]) * s.w + w0[q]) * C]);
    const float x11 = E::load(base[(int64_t(h1[p]) * s.w + w1[q]) * C]);
    const float top = (1.f - lw) * x00 + lw * x01;
    const float bottom = (1.f - lw) * x10 + lw * x11;
    y[i] = E::store((1.f - lh) * top + lh * bottom);
  }
}

template <class E>
__global__ void __launch_bounds__(kThreads)
    bilinear_backward_k(ResizeShape s, const int32_t* ih, const float* wh, const int32_t* iw, const float* ww,
                        const typename E::T* dy, typename E::T* dx, int64_t total) {
  const int64_t C = s.c;
  const int32_t *hs = ih + 2 * s.oh, *ho = hs + s.h + 1, *ws = iw + 2 * s.ow, *wo = ws + s.w + 1;
  const float *hw = wh + s.oh, *wt = ww + s.ow;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, b = i / C % s.w, a = i / C / s.w % s.h, n = i / C / s.w / s.h;
    float acc = 0.f;
    for (int32_t t = hs[a]; t < hs[a + 1]; ++t) {
      float row = 0.f;
      for (int32_t u = ws[b]; u < ws[b + 1]; ++u)
        row += wt[u] * E::load(dy[((n * s.oh + ho[t]) * s.ow + wo[u]) * C + c]);
      acc += hw[t] * row;
    }
    dx[i] = E::store(acc);
  }
}

}  // namespace

void bilinear_forward(const ResizeShape& s, DType dt, const int32_t* ih, const float* wh, const int32_t* iw,
                      const float* ww, const void* x, void* y, cudaStream_t stream) {
  const int64_t total = s.n * s.oh * s.ow * s.c;
  if (total == 0) return;
  element::with_element_type(dt, "bilinear", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(bilinear_forward_k<E>, grid_stride_blocks(total, kThreads), dim3(kThreads), 0, stream, s, ih, wh, iw, ww,
           static_cast<const T*>(x), static_cast<T*>(y), total);
  });
}

void bilinear_backward(const ResizeShape& s, DType dt, const int32_t* ih, const float* wh, const int32_t* iw,
                       const float* ww, const void* dy, void* dx, cudaStream_t stream) {
  const int64_t total = s.n * s.h * s.w * s.c;
  if (total == 0) return;
  element::with_element_type(dt, "bilinear", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(bilinear_backward_k<E>, grid_stride_blocks(total, kThreads), dim3(kThreads), 0, stream, s, ih, wh, iw, ww,
           static_cast<const T*>(dy), static_cast<T*>(dx), total);
  });
}

const ResizeKernels resize_kernels{bilinear_forward, bilinear_backward};

}  // namespace unet::kernels::cuda
