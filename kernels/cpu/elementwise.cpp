// CPU elementwise kernels.
#include "kernels/cpu/elementwise.h"

#include <stdexcept>
#include <vector>

#include "kernels/common/parallel.h"
#include "kernels/cpu/element.h"

namespace unet::kernels::cpu {

void add(DType dtype, const void* a, const void* b, void* out, int64_t n) {
  // The sum in f32, rounded once to the element type (kernels/cpu/element.h).
  element::with_element_type(dtype, "add", [&](auto e) {
    using E = decltype(e);
    const auto* x = static_cast<const typename E::T*>(a);
    const auto* y = static_cast<const typename E::T*>(b);
    auto* z = static_cast<typename E::T*>(out);
    parallel_for(n, 1 << 15, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) z[i] = E::store(E::load(x[i]) + E::load(y[i]));
    });
  });
}

void scale(const float* a, float alpha, float* out, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t lo, int64_t hi) {
    const float s = alpha;  // a local copy, as in activation.cpp: a captured reference stops the vectoriser
    for (int64_t i = lo; i < hi; ++i) out[i] = s * a[i];
  });
}

double sum(const float* a, int64_t n) {
  // Fixed chunking (independent of the thread count) keeps the result bitwise reproducible on any machine.
  constexpr int64_t chunk = 1 << 14;
  int64_t chunks = (n + chunk - 1) / chunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  parallel_for(chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      double s = 0.0;
      for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) s += a[i];
      partial[static_cast<size_t>(c)] = s;
    }
  });
  double s = 0.0;
  for (double p : partial) s += p;
  return s;
}

const ElementwiseKernels elementwise_kernels{
    .add = [](DType dtype, const void* a, const void* b, void* out, int64_t n,
              cudaStream_t) { add(dtype, a, b, out, n); },
    .scale = [](const float* a, float alpha, float* out, int64_t n, cudaStream_t) { scale(a, alpha, out, n); },
};

}  // namespace unet::kernels::cpu
