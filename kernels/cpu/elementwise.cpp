// CPU elementwise kernels.
#include "kernels/cpu/elementwise.h"

#include <stdexcept>
#include <vector>

#include "kernels/common/parallel.h"

namespace unet::kernels::cpu {

void add(DType dtype, const void* a, const void* b, void* out, int64_t n) {
  if (dtype == DType::f32) {
    const float* x = static_cast<const float*>(a);
    const float* y = static_cast<const float*>(b);
    float* z = static_cast<float*>(out);
    parallel_for(n, 1 << 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) z[i] = x[i] + y[i];
    });
    return;
  }
  if (dtype == DType::f16 || dtype == DType::bf16) {
    const uint16_t* x = static_cast<const uint16_t*>(a);
    const uint16_t* y = static_cast<const uint16_t*>(b);
    uint16_t* z = static_cast<uint16_t*>(out);
    bool bf = dtype == DType::bf16;
    parallel_for(n, 1 << 14, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        float s = bf ? bf16_to_float(x[i]) + bf16_to_float(y[i]) : f16_to_float(x[i]) + f16_to_float(y[i]);
        z[i] = bf ? float_to_bf16(s) : float_to_f16(s);
      }
    });
    return;
  }
  throw std::invalid_argument(std::string("add: unsupported dtype ") + dtype_name(dtype));
}

void scale(const float* a, float alpha, float* out, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[i] = alpha * a[i];
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

}  // namespace unet::kernels::cpu
