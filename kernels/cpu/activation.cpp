// CPU activation kernels (see kernels/cpu/activation.h): branch-free selects the compiler vectorizes, written once
// over the element traits of kernels/cpu/element.h.
#include "kernels/cpu/activation.h"

#include "kernels/common/parallel.h"
#include "kernels/cpu/element.h"

namespace unet::kernels::cpu {
namespace {

constexpr int64_t kGrain = 1 << 15;

// Calls op(in, out, lo, hi) over chunks of [0, n) with the buffers typed for dt.
template <class Op>
void elementwise(DType dt, const char* who, int64_t n, Op&& op) {
  element::with_element_type(dt, who, [&](auto e) {
    parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) { op(e, lo, hi); });
  });
}

}  // namespace

void relu_forward(DType dt, const void* x, void* y, int64_t n) {
  elementwise(dt, "relu", n, [&](auto e, int64_t lo, int64_t hi) {
    using E = decltype(e);
    const auto* in = static_cast<const typename E::T*>(x);
    auto* out = static_cast<typename E::T*>(y);
    for (int64_t i = lo; i < hi; ++i) out[i] = E::load(in[i]) <= 0.f ? E::store(0.f) : in[i];  // NaN passes
  });
}

void relu_backward(DType dt, const void* y, const void* dy, void* dx, int64_t n) {
  elementwise(dt, "relu", n, [&](auto e, int64_t lo, int64_t hi) {
    using E = decltype(e);
    const auto* yy = static_cast<const typename E::T*>(y);
    const auto* g = static_cast<const typename E::T*>(dy);
    auto* out = static_cast<typename E::T*>(dx);
    for (int64_t i = lo; i < hi; ++i) out[i] = E::load(yy[i]) > 0.f ? g[i] : E::store(0.f);
  });
}

void leaky_relu_forward(DType dt, const void* x, float slope, void* y, int64_t n) {
  elementwise(dt, "leaky_relu", n, [&](auto e, int64_t lo, int64_t hi) {
    using E = decltype(e);
    const auto* in = static_cast<const typename E::T*>(x);
    auto* out = static_cast<typename E::T*>(y);
    const float s = slope;  // a local copy: a store through `out` could otherwise alias it, and nothing vectorises
    for (int64_t i = lo; i < hi; ++i) {
      const float v = E::load(in[i]);
      out[i] = E::store(v > 0.f ? v : v * s);  // exact for v > 0: store(load(x)) == x
    }
  });
}

void leaky_relu_backward(DType dt, const void* x, const void* dy, float slope, void* dx, int64_t n) {
  elementwise(dt, "leaky_relu", n, [&](auto e, int64_t lo, int64_t hi) {
    using E = decltype(e);
    const auto* in = static_cast<const typename E::T*>(x);
    const auto* g = static_cast<const typename E::T*>(dy);
    auto* out = static_cast<typename E::T*>(dx);
    const float s = slope;
    for (int64_t i = lo; i < hi; ++i) {
      const float gv = E::load(g[i]);
      out[i] = E::store(E::load(in[i]) > 0.f ? gv : gv * s);
    }
  });
}

const ActivationKernels activation_kernels{
    .relu_forward = [](DType dt, const void* x, void* y, int64_t n, cudaStream_t) { relu_forward(dt, x, y, n); },
    .relu_backward = [](DType dt, const void* y, const void* dy, void* dx, int64_t n,
                        cudaStream_t) { relu_backward(dt, y, dy, dx, n); },
    .leaky_relu_forward = [](DType dt, const void* x, float slope, void* y, int64_t n,
                             cudaStream_t) { leaky_relu_forward(dt, x, slope, y, n); },
    .leaky_relu_backward = [](DType dt, const void* x, const void* dy, float slope, void* dx, int64_t n,
                              cudaStream_t) { leaky_relu_backward(dt, x, dy, slope, dx, n); },
};

}  // namespace unet::kernels::cpu
