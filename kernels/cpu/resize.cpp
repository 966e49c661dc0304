// CPU bilinear resampling (kernels/resize.h): one work item per output element (forward) or input element
// (backward), the arithmetic of kernels/cuda/resize.cu in the same order.
#include "kernels/cpu/resize.h"

#include "kernels/common/parallel.h"
#include "kernels/cpu/element.h"

namespace unet::kernels::cpu {

void bilinear_forward(const ResizeShape& s, DType dt, const int32_t* ih, const float* wh, const int32_t* iw,
                      const float* ww, const void* x, void* y, cudaStream_t) {
  const int64_t C = s.c;
  const int32_t *h0 = ih, *h1 = ih + s.oh, *w0 = iw, *w1 = iw + s.ow;
  element::with_element_type(dt, "bilinear", [&](auto e) {
    using E = decltype(e);
    const auto* in = static_cast<const typename E::T*>(x);
    auto* out = static_cast<typename E::T*>(y);
    parallel_for(s.n * s.oh * s.ow * C, 1024, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t c = i % C, q = i / C % s.ow, p = i / C / s.ow % s.oh, n = i / C / s.ow / s.oh;
        const float lh = wh[p], lw = ww[q];
        const auto at = [&](int32_t a, int32_t b) { return E::load(in[((n * s.h + a) * s.w + b) * C + c]); };
        const float top = (1.f - lw) * at(h0[p], w0[q]) + lw * at(h0[p], w1[q]);
        const float bottom = (1.f - lw) * at(h1[p], w0[q]) + lw * at(h1[p], w1[q]);
        out[i] = E::store((1.f - lh) * top + lh * bottom);
      }
    });
  });
}

void bilinear_backward(const ResizeShape& s, DType dt, const int32_t* ih, const float* wh, const int32_t* iw,
                       const float* ww, const void* dy, void* dx, cudaStream_t) {
  const int64_t C = s.c;
  const int32_t *hs = ih + 2 * s.oh, *ho = hs + s.h + 1, *ws = iw + 2 * s.ow, *wo = ws + s.w + 1;
  const float *hw = wh + s.oh, *wt = ww + s.ow;
  element::with_element_type(dt, "bilinear", [&](auto e) {
    using E = decltype(e);
    const auto* g = static_cast<const typename E::T*>(dy);
    auto* out = static_cast<typename E::T*>(dx);
    parallel_for(s.n * s.h * s.w * C, 1024, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t c = i % C, b = i / C % s.w, a = i / C / s.w % s.h, n = i / C / s.w / s.h;
        float acc = 0.f;
        for (int32_t t = hs[a]; t < hs[a + 1]; ++t) {
          float row = 0.f;
          for (int32_t u = ws[b]; u < ws[b + 1]; ++u)
            row += wt[u] * E::load(g[((n * s.oh + ho[t]) * s.ow + wo[u]) * C + c]);
          acc += hw[t] * row;
        }
        out[i] = E::store(acc);
      }
    });
  });
}

const ResizeKernels resize_kernels{bilinear_forward, bilinear_backward};

}  // namespace unet::kernels::cpu
