// Tensors, the host allocator, and f16 / bf16 conversions (bit-exact round to nearest even).
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/common/allocator.h"
#include "engine/tensor.h"
#include "tests/test_util.h"

using namespace unet;

TEST_CASE("tensor copies share storage, clones do not") {
  Tensor a = Tensor::from_vector({2, 2}, {1, 2, 3, 4});
  Tensor b = a;
  Tensor c = a.clone();
  a.data<float>()[0] = 9.f;
  CHECK(b.data<float>()[0] == 9.f);
  CHECK(c.data<float>()[0] == 1.f);
  CHECK(a.describe() == "f32[2, 2] cpu");
}

TEST_CASE("data<T> with the wrong element type is an error") {
  Tensor a = Tensor::zeros({3}, DType::i32);
  CHECK_THROWS_AS(a.data<float>(), std::runtime_error);
  CHECK(a.data<int32_t>()[2] == 0);
}

TEST_CASE("allocator tracks current and peak bytes and reuses freed blocks") {
  auto& alloc = HostAllocator::instance();
  alloc.reset_peak();
  size_t base = alloc.stats().current_bytes;
  void* first;
  {
    Tensor t = Tensor::empty({1000});  // 4000 bytes -> 4032-byte class
    first = t.raw();
    CHECK(alloc.stats().current_bytes == base + 4032);
    CHECK(reinterpret_cast<uintptr_t>(first) % 64 == 0);
  }
  CHECK(alloc.stats().current_bytes == base);
  CHECK(alloc.stats().peak_bytes >= base + 4032);
  Tensor again = Tensor::empty({1001});  // same size class: the cached block comes back
  CHECK(again.raw() == first);
}

// Reference rounding through double arithmetic: the nearest representable value, ties to the even significand.
static double round_to_grid(double x, double ulp) {
  double q = x / ulp, f = std::floor(q), r = q - f;
  if (r > 0.5 || (r == 0.5 && std::fmod(f, 2.0) != 0.0)) f += 1.0;
  return f * ulp;
}

static double f16_reference(float v) {
  double x = std::abs(static_cast<double>(v));
  int e = x == 0 ? -24 : std::max(-14, static_cast<int>(std::floor(std::log2(x))));
  double r = round_to_grid(x, std::ldexp(1.0, e - 10));
  if (r >= 65536.0) r = std::numeric_limits<double>::infinity();
  return std::signbit(v) ? -r : r;
}

static double bf16_reference(float v) {
  double x = std::abs(static_cast<double>(v));
  if (x == 0) return v;
  int e = std::max(-126, static_cast<int>(std::floor(std::log2(x))));
  double r = round_to_grid(x, std::ldexp(1.0, e - 7));
  if (r >= std::ldexp(1.0, 128)) r = std::numeric_limits<double>::infinity();
  return std::signbit(v) ? -r : r;
}

TEST_CASE("every f16 value converts to float and back to the same bits") {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = f16_to_float(static_cast<uint16_t>(h));
    const float p = f16_to_float_portable(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      // NaN stays NaN. (Its bits may differ: GCC assumes no signalling NaNs and may fold a half -> float -> half
      // round trip to the identity, keeping a signalling half's bits where the instructions would quieten them.)
      CHECK(std::isnan(p));
      CHECK(std::isnan(f16_to_float(float_to_f16(f))));
      continue;
    }
    // The portable conversion and the one in use (the compiler's, where it has one) agree bit for bit.
    REQUIRE_MESSAGE(std::memcmp(&f, &p, 4) == 0, "half bits " << h);
    REQUIRE(float_to_f16_portable(f) == float_to_f16(f));
    REQUIRE(float_to_f16(f) == h);
    REQUIRE(static_cast<double>(f) == static_cast<double>(static_cast<_Float16>(f)));  // compiler's own conversion
  }
}

TEST_CASE("float NaNs convert to the same f16 bits through both conversions") {
  // Every payload pattern that reaches the half's mantissa, quiet and signalling, both signs.
  for (uint32_t sign : {0u, 0x80000000u})
    for (uint32_t m = 1; m < (1u << 23); m += 997) {
      const float f = bits_float(sign | 0x7f800000u | m);
      REQUIRE(std::isnan(f));
      REQUIRE_MESSAGE(float_to_f16(f) == float_to_f16_portable(f), "float bits " << (sign | 0x7f800000u | m));
    }
}

TEST_CASE("float to f16 rounds to nearest even, matching the compiler's _Float16 and a double reference") {
  Rng rng(3);
  auto check_one = [](float f) {
    uint16_t h = float_to_f16_portable(f);
    REQUIRE(float_to_f16(f) == h);
    _Float16 ref = static_cast<_Float16>(f);
    uint16_t ref_bits;
    std::memcpy(&ref_bits, &ref, 2);
    REQUIRE_MESSAGE(h == ref_bits, "value " << f);
    REQUIRE(static_cast<double>(f16_to_float(h)) == f16_reference(f));
  };
  // Midpoints between neighbouring halves (the ties) and their float neighbours, across the whole range.
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    double a = f16_to_float(static_cast<uint16_t>(h)), b = (h == 0x7bff) ? 65536.0 : f16_to_float(static_cast<uint16_t>(h + 1));
    float mid = static_cast<float>((a + b) / 2);
    for (float f : {mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e30f)}) {
      check_one(f);
      check_one(-f);
    }
  }
  for (int i = 0; i < 200000; ++i) {
    float f = bits_float(static_cast<uint32_t>(rng.next()));
    if (std::isnan(f)) continue;
    check_one(f);
  }
}

TEST_CASE("float to bf16 rounds to nearest even and keeps NaN a NaN") {
  Rng rng(5);
  for (int i = 0; i < 300000; ++i) {
    float f = bits_float(static_cast<uint32_t>(rng.next()));
    if (std::isnan(f)) {
      CHECK(std::isnan(bf16_to_float(float_to_bf16(f))));
      continue;
    }
    REQUIRE_MESSAGE(static_cast<double>(bf16_to_float(float_to_bf16(f))) == bf16_reference(f), "value " << f);
  }
  // Exact ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 -> rounds to the even one, 1.
  CHECK(bf16_to_float(float_to_bf16(1.0f + 0x1p-8f)) == 1.0f);
  CHECK(bf16_to_float(float_to_bf16(1.0f + 3 * 0x1p-8f)) == 1.0f + 0x1p-6f);
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = bf16_to_float(static_cast<uint16_t>(h));
    if (!std::isnan(f)) REQUIRE(float_to_bf16(f) == h);
  }
}
