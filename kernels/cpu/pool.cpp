#include "kernels/cpu/pool.h"

#include <cmath>
#include <cstring>

#include "kernels/common/parallel.h"
#include "kernels/cpu/element.h"

namespace unet::kernels::cpu {

void max_pool_forward(const PoolShape& s, DType dt, const void* x, void* y, int32_t* idx, cudaStream_t) {
  const int64_t od = s.od(), oh = s.oh(), ow = s.ow(), C = s.c;
  element::with_element_type(dt, "max_pool", [&](auto e) {
    using E = decltype(e);
    const auto* in = static_cast<const typename E::T*>(x);
    auto* out = static_cast<typename E::T*>(y);
    parallel_for(s.outputs(), 1024, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t c = i % C, q = i / C % ow, p = i / C / ow % oh, z = i / C / ow / oh % od,
                      n = i / C / ow / oh / od;
        float best = 0.f;
        typename E::T best_raw{};  // written as read: NaN payloads kept, no rounding
        int32_t at = -1;
        for (int64_t a = 0; a < s.kd; ++a)
          for (int64_t b = 0; b < s.kh; ++b)
            for (int64_t f = 0; f < s.kw; ++f) {
              const typename E::T raw =
                  in[(((n * s.d + z * s.kd + a) * s.h + p * s.kh + b) * s.w + q * s.kw + f) * C + c];
              const float v = E::load(raw);
              if (at < 0 || v > best || v != v) {  // v != v: NaN
                best = v;
                best_raw = raw;
                at = static_cast<int32_t>((a * s.kh + b) * s.kw + f);
              }
            }
        out[i] = best_raw;
        idx[i] = at;
      }
    });
  });
}

void max_pool_backward(const PoolShape& s, DType dt, const void* dy, const int32_t* idx, void* dx, cudaStream_t) {
  const int64_t od = s.od(), oh = s.oh(), ow = s.ow(), C = s.c;
  element::with_element_type(dt, "max_pool", [&](auto e) {
    using E = decltype(e);
    const auto* g = static_cast<const typename E::T*>(dy);
    auto* out = static_cast<typename E::T*>(dx);
    // One work item per input element: the gradient of the window holding it, if it is that window's argmax.
    parallel_for(s.n * s.d * s.h * s.w * C, 1024, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t c = i % C, x = i / C % s.w, y = i / C / s.w % s.h, z = i / C / s.w / s.h % s.d,
                      n = i / C / s.w / s.h / s.d;
        const int64_t pz = z / s.kd, py = y / s.kh, px = x / s.kw;
        typename E::T v = E::store(0.f);
        if (pz < od && py < oh && px < ow) {
          const int64_t o = (((n * od + pz) * oh + py) * ow + px) * C + c;
          if (idx[o] == static_cast<int32_t>(((z % s.kd) * s.kh + y % s.kh) * s.kw + x % s.kw)) v = g[o];
        }
        out[i] = v;
      }
    });
  });
}

const PoolKernels pool_kernels = {max_pool_forward, max_pool_backward};

}  // namespace unet::kernels::cpu
