// Convolutions and transposed convolutions on f16 / bf16 tensors, on the CPU: the operands are widened to f32 (exact),
// the f32 kernels of conv.cpp and conv_transpose.cpp run, and y or dx is rounded to dt once. These are the rounding
// points of the CUDA tensor-core kernels (products of dt operands, f32 accumulation, bias added in f32, one rounding
// of the output; dw and dbias stay f32), though not their summation order. The widened copies come from the pooled
// host allocator, so they show in the engine's peak memory; each lives for one call.
#include <algorithm>

#include "kernels/common/allocator.h"
#include "kernels/cpu/conv.h"
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

int64_t x_elems(const ConvProblem& p) { return p.N * p.D * p.H * p.W * p.C; }
int64_t w_elems(const ConvProblem& p) { return p.K * p.taps() * p.C; }
int64_t y_elems(const ConvProblem& p) { return p.N * p.Z * p.P * p.Q * p.K; }

}  // namespace

void conv_fprop(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y) {
  if (dt == DType::f32) return conv_fprop(p, static_cast<const float*>(x), static_cast<const float*>(w), bias,
                                          static_cast<float*>(y));
  F32Buffer xf(x_elems(p), dt, x), wf(w_elems(p), dt, w), yf(y_elems(p));
  conv_fprop(p, xf.get(), wf.get(), bias, yf.get());
  cast(DType::f32, yf.get(), dt, y, y_elems(p));
}

void conv_dgrad(const ConvProblem& p, DType dt, const void* dy, const void* w, void* dx) {
  if (dt == DType::f32) return conv_dgrad(p, static_cast<const float*>(dy), static_cast<const float*>(w),
                                          static_cast<float*>(dx));
  F32Buffer dyf(y_elems(p), dt, dy), wf(w_elems(p), dt, w), dxf(x_elems(p));
  conv_dgrad(p, dyf.get(), wf.get(), dxf.get());
  cast(DType::f32, dxf.get(), dt, dx, x_elems(p));
}

void conv_wgrad(const ConvProblem& p, DType dt, const void* x, const void* dy, float* dw, float* dbias) {
  if (dt == DType::f32) {
    if (dw) return conv_wgrad(p, static_cast<const float*>(x), static_cast<const float*>(dy), dw, dbias);
    return conv_bias_grad(p, static_cast<const float*>(dy), dbias);
  }
  F32Buffer dyf(y_elems(p), dt, dy);
  if (!dw) return conv_bias_grad(p, dyf.get(), dbias);
  F32Buffer xf(x_elems(p), dt, x);
  conv_wgrad(p, xf.get(), dyf.get(), dw, dbias);
}

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
