// Element types of tensors and the exact float <-> f16 / bf16 conversions (round to nearest, ties to even).
// Storage types only: every kernel accumulates in f32.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__F16C__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif
#include <string>

namespace unet {

enum class DType : uint8_t { f32, f16, bf16, i32, u8 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::u8: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::u8: return "u8";
  }
  return "?";
}

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// bfloat16: the upper 16 bits of an IEEE float, rounded to nearest even; NaN stays a (quiet) NaN.
// Written as a select rather than a branch, so that loops over it vectorise.
inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x0040u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}
inline float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// The compiler's own IEEE binary16 type, where it has one (GCC 12 and Clang on x86-64; not in CUDA sources, which
// nvcc's front end compiles): its conversions are the F16C instructions on x86-64-v3 and newer, and vectorise.
#if defined(__FLT16_MAX__) && !defined(__CUDACC__)
#define UNET_HAVE_FLOAT16 1
#else
#define UNET_HAVE_FLOAT16 0
#endif

// IEEE binary16, round to nearest even, with subnormals, overflow to infinity and NaN kept quiet, written out in
// integer arithmetic (the reference for the compiler's conversion, and the conversion where there is none).
inline uint16_t float_to_f16_portable(float f) {
  uint32_t u = float_bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((a >> 13) & 0x3ffu);  // NaN
  if (a >= 0x47800000u) {  // >= 65536 before rounding: always infinity (also handles inf)
    return sign | 0x7c00u;
  }
  if (a >= 0x38800000u) {  // normal half range (>= 2^-14)
    uint32_t mant_round = a + 0xfffu + ((a >> 13) & 1u);  // round at bit 13
    uint32_t h = (mant_round >> 13) - (112u << 10);       // rebias exponent 127 -> 15
    return sign | static_cast<uint16_t>(h);               // may round up to 0x7c00 = inf, which is correct
  }
  // subnormal half (or zero): value = m * 2^-24 with m < 1024
  if (a < 0x33000000u) return sign;  // < 2^-25: rounds to zero (2^-25 exactly is a tie -> even -> 0)
  uint32_t exp = a >> 23;
  uint32_t mant = (a & 0x7fffffu) | 0x800000u;  // 24-bit significand, value = mant * 2^(exp-150)
  uint32_t shift = 126u - exp;                  // to express in units of 2^-24: shift right by (-24 - (exp-150)) = 126-exp
  uint32_t q = mant >> shift;
  uint32_t rem = mant & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return sign | static_cast<uint16_t>(q);
}

inline float f16_to_float_portable(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f && mant == 0) return bits_float(sign | 0x7f800000u);          // infinity
  if (exp == 0x1f) return bits_float(sign | 0x7fc00000u | (mant << 13));       // NaN: payload kept, quietened (as F16C)
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    // subnormal: mant * 2^-24, exact in float
    float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// The conversions the engine uses: the compiler's (the same bits for every input, NaN payloads included: tests/
// test_tensor.cpp compares all 2^16 halves and the float roundings) where it has them, else the portable ones.
inline uint16_t float_to_f16(float f) {
#if UNET_HAVE_FLOAT16
  const _Float16 h = static_cast<_Float16>(f);
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
#else
  return float_to_f16_portable(f);
#endif
}

inline float f16_to_float(uint16_t h) {
#if defined(__F16C__) && !defined(__CUDACC__)
  // F16C's vcvtph2ps by intrinsic: through _Float16, GCC 12 turns a widening to double (a norm kernel's f64 sums)
  // into one call of libgcc's software __extendhfdf2, which took a fifth of a CPU fp16 training step.
  return _cvtsh_ss(h);
#elif UNET_HAVE_FLOAT16
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
#else
  return f16_to_float_portable(h);
#endif
}

}  // namespace unet
