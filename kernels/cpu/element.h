// Element types of the CPU kernels' f32 / f16 / bf16 buffers, as traits (the CPU twin of kernels/cuda/element.cuh):
// T is the stored type (f16 and bf16 are raw 16-bit patterns), load widens to f32 exactly and store rounds to nearest
// even (kernels/common/dtype.h). Kernels written once over a trait compute in f32 and round where the CUDA kernels do,
// so mixed precision on the CPU has the GPU's rounding points. with_element_type is the run-time dtype -> trait switch.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

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
