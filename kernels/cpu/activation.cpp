// CPU activation kernels (see kernels/activation.h): branch-free selects the compiler vectorizes.
#include "kernels/cpu/activation.h"

#include "kernels/common/parallel.h"

namespace unet::kernels::cpu {

static constexpr int64_t kGrain = 1 << 15;

void relu_forward(const float* x, float* y, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) y[i] = x[i] <= 0.f ? 0.f : x[i];  // NaN <= 0 is false: NaN passes through
  });
}

void relu_backward(const float* y, const float* dy, float* dx, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) dx[i] = y[i] > 0.f ? dy[i] : 0.f;
  });
}

void leaky_relu_forward(const float* x, float slope, float* y, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) y[i] = x[i] > 0.f ? x[i] : x[i] * slope;
  });
}

void leaky_relu_backward(const float* x, const float* dy, float slope, float* dx, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) dx[i] = x[i] > 0.f ? dy[i] : dy[i] * slope;
  });
}

}  // namespace unet::kernels::cpu
