// Element types of the CPU kernels' f32 / f16 / bf16 buffers, as traits (the CPU twin of kernels/cuda/element.cuh):
// T is the stored type (f16 and bf16 are raw 16-bit patterns), load widens to f32 exactly and store rounds to nearest
// even (kernels/common/dtype.h). Kernels written once over a trait compute in f32 and round where the CUDA kernels do,
// so mixed precision on the CPU has the GPU's rounding points. with_element_type is the run-time dtype -> trait switch.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/common/dtype.h"

namespace unet::kernels::cpu::element {

struct F32 {
  using T = float;
  static float load(float v) { return v; }
  static float store(float f) { return f; }
};
struct F16 {
  using T = uint16_t;
  static float load(uint16_t v) { return f16_to_float(v); }
  static uint16_t store(float f) { return float_to_f16(f); }
};
struct BF16 {
  using T = uint16_t;
  static float load(uint16_t v) { return bf16_to_float(v); }
  static uint16_t store(float f) { return float_to_bf16(f); }
};

// dst[i] = E::load(src[i]) (exact) and dst[i] = E::store(src[i]) (rounded once) for i < n: where the kernels copy
// their operands anyway (packing, padding, small tiles), 16-bit operands are widened in the copy.
template <class E>
void widen(const typename E::T* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = E::load(src[i]);
}
template <class E>
void round_to(const float* src, typename E::T* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = E::store(src[i]);
}

// The n elements at src as f32: src itself for F32, otherwise widened into tmp[n].
template <class E>
const float* as_f32(const typename E::T* src, int64_t n, float* tmp) {
  if constexpr (std::is_same_v<E, F32>) {
    (void)n, (void)tmp;
    return src;
  } else {
    widen<E>(src, tmp, n);
    return tmp;
  }
}

// Calls f(F32{}), f(F16{}) or f(BF16{}) for dt; any other dtype is std::invalid_argument
// "<who>: dtype X not supported, expected f32, f16 or bf16".
template <class F>
void with_element_type(DType dt, const std::string& who, F&& f) {
  switch (dt) {
    case DType::f32:
      return f(F32{});
    case DType::f16:
      return f(F16{});
    case DType::bf16:
      return f(BF16{});
    default:
      throw std::invalid_argument(who + ": dtype " + dtype_name(dt) + " not supported, expected f32, f16 or bf16");
  }
}

}  // namespace unet::kernels::cpu::element
