// Transposed convolutions on f16 / bf16 tensors, on the CPU: the operands are widened to f32 (exact), the f32 kernels
// of conv_transpose.cpp run, and y or dx is rounded to dt once. These are the rounding points of the CUDA tensor-core
// kernels (products of dt operands, f32 accumulation, bias added in f32, one rounding of the output; dw and dbias stay
// f32), though not their summation order. The widened copies come from the pooled host allocator, so they show in the
// engine's peak memory; each lives for one call. (Convolutions widen their operands as they pack them, in conv.cpp.)
#include <algorithm>

#include "kernels/common/allocator.h"
#include "kernels/cpu/conv_transpose.h"
#include "kernels/cpu/shape.h"

namespace unet::kernels::cpu {
namespace {

// n floats from the pooled host allocator, filled from src (of type dt) when given.
class F32Buffer {
 public:
  F32Buffer(int64_t n, DType dt = DType::f32, const void* src = nullptr)
      : n_(std::max<int64_t>(n, 1)), data_(static_cast<float*>(HostAllocator::instance().allocate(bytes()))) {
    if (src) cast(dt, src, DType::f32, data_, n);
  }
  ~F32Buffer() { HostAllocator::instance().deallocate(data_, bytes()); }
  F32Buffer(const F32Buffer&) = delete;
  F32Buffer& operator=(const F32Buffer&) = delete;
  float* get() const { return data_; }

 private:
  size_t bytes() const { return static_cast<size_t>(n_) * sizeof(float); }
  int64_t n_;
  float* data_;
};

}  // namespace

void conv_transpose_fprop(const ConvTransposeShape& s, DType dt, const void* x, const void* w, const float* bias,
                          void* y) {
  const int64_t nx = s.pixels() * s.c, nw = s.k * s.taps() * s.c, ny = s.pixels() * s.taps() * s.k;
  if (dt == DType::f32) return conv_transpose_fprop(s, static_cast<const float*>(x), static_cast<const float*>(w),
                                                    bias, static_cast<float*>(y));
  F32Buffer xf(nx, dt, x), wf(nw, dt, w), yf(ny);
  conv_transpose_fprop(s, xf.get(), wf.get(), bias, yf.get());
  cast(DType::f32, yf.get(), dt, y, ny);
}

void conv_transpose_dgrad(const ConvTransposeShape& s, DType dt, const void* dy, const void* w, void* dx) {
  const int64_t nx = s.pixels() * s.c, nw = s.k * s.taps() * s.c, ny = s.pixels() * s.taps() * s.k;
  if (dt == DType::f32) return conv_transpose_dgrad(s, static_cast<const float*>(dy), static_cast<const float*>(w),
                                                    static_cast<float*>(dx));
  F32Buffer dyf(ny, dt, dy), wf(nw, dt, w), dxf(nx);
  conv_transpose_dgrad(s, dyf.get(), wf.get(), dxf.get());
  cast(DType::f32, dxf.get(), dt, dx, nx);
}

void conv_transpose_wgrad(const ConvTransposeShape& s, DType dt, const void* x, const void* dy, float* dw,
                          float* dbias) {
  const int64_t nx = s.pixels() * s.c, ny = s.pixels() * s.taps() * s.k;
  if (dt == DType::f32) return conv_transpose_wgrad(s, static_cast<const float*>(x), static_cast<const float*>(dy),
                                                    dw, dbias);
  F32Buffer xf(dw ? nx : 0, dt, dw ? x : nullptr), dyf(ny, dt, dy);
  conv_transpose_wgrad(s, dw ? xf.get() : nullptr, dyf.get(), dw, dbias);
}

}  // namespace unet::kernels::cpu
