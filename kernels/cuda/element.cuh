// Element types of the kernels' f32 / f16 / bf16 buffers, as traits: T is the stored type (f16 and bf16 are kept as
// raw 16-bit patterns, which the tensor cores read as they are), Mma the tensor cores' operand type, load widens to
// f32 and store rounds to nearest even. Also UNET_UNROLL: full unrolling of small fixed loops (so per-thread arrays
// live in registers), spelled for either compiler. And with_element_type, the one run-time dtype -> trait dispatch.
#pragma once
#include "kernels/cuda/cuda_compat.cuh"

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/common/dtype.h"

#if UNET_EMULATED
#define UNET_UNROLL _Pragma("GCC unroll 16")
#else
#define UNET_UNROLL _Pragma("unroll")
#endif

namespace unet::kernels::cuda::element {

struct F32 {
  using T = float;
  static __device__ float load(float v) { return v; }
  static __device__ float store(float f) { return f; }
};
struct F16 {
  using T = uint16_t;
  using Mma = __half;
  static __device__ float load(uint16_t v) { return __half2float(__ushort_as_half(v)); }
  static __device__ uint16_t store(float f) { return __half_as_ushort(__float2half_rn(f)); }
};
struct BF16 {
  using T = uint16_t;
  using Mma = __nv_bfloat16;
  static __device__ float load(uint16_t v) { return __bfloat162float(__ushort_as_bfloat16(v)); }
  static __device__ uint16_t store(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
};

// Calls f(F32{}), f(F16{}) or f(BF16{}) for dt, the storage type of a kernel's tensors; any other dtype is
// std::invalid_argument "<who>: dtype X not supported, expected f32, f16 or bf16".
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

}  // namespace unet::kernels::cuda::element
