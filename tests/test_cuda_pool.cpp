// The kernels UNet2D adds (max pooling, the crop / pad box copy, seeded dropout, bias addition): the CPU kernels
// against naive references written here, and the CUDA kernels under the device emulator against the CPU, bit for bit,
// under every schedule, in f32, f16 and bf16 where the kernel computes.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/ops.h"
#include "engine/random.h"
#include "kernels/common/dtype.h"
#include "kernels/cpu/bias.h"
#include "kernels/cpu/crop.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/pool.h"
#include "kernels/cuda/bias.cuh"
#include "kernels/cuda/crop.cuh"
#include "kernels/cuda/dropout.cuh"
#include "kernels/cuda/pool.cuh"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace unet;
using test::under_every_schedule;

namespace {

// n values of dt (f32 bits or 16-bit patterns, as uint16_t pairs packed in a byte vector) from floats.
std::vector<uint8_t> encode(const std::vector<float>& v, DType dt) {
  std::vector<uint8_t> out(v.size() * dtype_size(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::f32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {
      const uint16_t h = dt == DType::f16 ? float_to_f16(v[i]) : float_to_bf16(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

float decode(const std::vector<uint8_t>& b, DType dt, size_t i) {
  if (dt == DType::f32) {
    float f;
    std::memcpy(&f, b.data() + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, b.data() + 2 * i, 2);
  return dt == DType::f16 ? f16_to_float(h) : bf16_to_float(h);
}

struct PoolCase {
  kernels::PoolShape s;
};
// 2D and 3D, remainders dropped along some axes, anisotropic windows, batch > 1.
const kernels::PoolShape kPoolCases[] = {
    {2, 1, 9, 11, 3, 1, 2, 2},  // 2D, odd sizes
    {1, 5, 6, 7, 2, 2, 2, 2},   // 3D
    {2, 4, 6, 6, 5, 1, 2, 3},   // anisotropic window
};

}  // namespace

TEST_CASE("max pooling: the CPU equals a naive reference (first maximum, NaN wins) and CUDA equals the CPU") {
  Rng rng(5);
  for (const kernels::PoolShape& s : kPoolCases) {
    const int64_t in_n = s.n * s.d * s.h * s.w * s.c, out_n = s.outputs();
    std::vector<float> x(static_cast<size_t>(in_n));
    for (float& v : x) v = static_cast<float>(std::round(rng.normal() * 4) / 4);  // many ties
    x[7] = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> dy(static_cast<size_t>(out_n));
    for (float& v : dy) v = static_cast<float>(rng.normal());
    for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
      CAPTURE(dtype_name(dt));
      const std::vector<uint8_t> xb = encode(x, dt), dyb = encode(dy, dt);
      std::vector<uint8_t> y(static_cast<size_t>(out_n) * dtype_size(dt)), dx(xb.size(), 0xff);
      std::vector<int32_t> idx(static_cast<size_t>(out_n), -7);
      kernels::cpu::max_pool_forward(s, dt, xb.data(), y.data(), idx.data());
      kernels::cpu::max_pool_backward(s, dt, dyb.data(), idx.data(), dx.data());
      // Reference: scan each window in (a, b, e) order.
      std::vector<float> dx_ref(static_cast<size_t>(in_n), 0.f);
      for (int64_t n = 0; n < s.n; ++n)
        for (int64_t z = 0; z < s.od(); ++z)
          for (int64_t p = 0; p < s.oh(); ++p)
            for (int64_t q = 0; q < s.ow(); ++q)
              for (int64_t c = 0; c < s.c; ++c) {
                const int64_t o = (((n * s.od() + z) * s.oh() + p) * s.ow() + q) * s.c + c;
                float best = -std::numeric_limits<float>::infinity();
                int64_t at = -1, where = -1;
                bool nan = false;
                for (int64_t a = 0; a < s.kd; ++a)
                  for (int64_t b = 0; b < s.kh; ++b)
                    for (int64_t e = 0; e < s.kw; ++e) {
                      const int64_t i =
                          (((n * s.d + z * s.kd + a) * s.h + p * s.kh + b) * s.w + q * s.kw + e) * s.c + c;
                      const float v = decode(xb, dt, static_cast<size_t>(i));
                      const int64_t k = (a * s.kh + b) * s.kw + e;
                      if (std::isnan(v)) {
                        nan = true;
                        at = k;
                        where = i;
                      } else if (!nan && (at < 0 || v > best)) {
                        best = v;
                        at = k;
                        where = i;
                      }
                    }
                REQUIRE(idx[static_cast<size_t>(o)] == at);
                const float got = decode(y, dt, static_cast<size_t>(o));
                if (nan)
                  CHECK(std::isnan(got));
                else
                  CHECK(got == best);
                dx_ref[static_cast<size_t>(where)] = decode(dyb, dt, static_cast<size_t>(o));
              }
      for (size_t i = 0; i < dx_ref.size(); ++i) REQUIRE(decode(dx, dt, i) == dx_ref[i]);

      const auto cuda_y = under_every_schedule([&] {
        std::vector<uint8_t> out(y.size(), 0xee);
        std::vector<int32_t> cidx(idx.size(), -5);
        kernels::cuda::max_pool_forward(s, dt, xb.data(), out.data(), cidx.data(), nullptr);
        REQUIRE(cidx == idx);
        return out;
      });
      CHECK(cuda_y == y);
      const auto cuda_dx = under_every_schedule([&] {
        std::vector<uint8_t> out(dx.size(), 0xee);
        kernels::cuda::max_pool_backward(s, dt, dyb.data(), idx.data(), out.data(), nullptr);
        return out;
      });
      CHECK(cuda_dx == dx);
    }
  }
}

TEST_CASE("crop and pad: the CPU equals a naive box copy and CUDA equals the CPU, for 1-, 2- and 4-byte elements") {
  kernels::CropShape shapes[3];
  shapes[0] = {2, 3, {1, 9, 11}, {1, 5, 6}, {0, 2, 3}};    // UNet2D's centre crop
  shapes[1] = {1, 2, {4, 5, 6}, {6, 9, 8}, {-1, -2, -1}};  // zero padding (the crop's adjoint)
  shapes[2] = {2, 1, {3, 4, 5}, {3, 4, 5}, {1, -1, 2}};    // partly outside on both sides
  for (const kernels::CropShape& s : shapes)
    for (int64_t elem : {1, 2, 4}) {
      const int64_t in_n = s.n * s.in[0] * s.in[1] * s.in[2] * s.c, out_n = s.n * s.out[0] * s.out[1] * s.out[2] * s.c;
      std::vector<uint8_t> x(static_cast<size_t>(in_n * elem));
      for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<uint8_t>(i * 131 + 7);
      std::vector<uint8_t> ref(static_cast<size_t>(out_n * elem), 0);
      for (int64_t n = 0; n < s.n; ++n)
        for (int64_t z = 0; z < s.out[0]; ++z)
          for (int64_t p = 0; p < s.out[1]; ++p)
            for (int64_t q = 0; q < s.out[2]; ++q) {
              const int64_t iz = z + s.offset[0], ip = p + s.offset[1], iq = q + s.offset[2];
              if (iz < 0 || iz >= s.in[0] || ip < 0 || ip >= s.in[1] || iq < 0 || iq >= s.in[2]) continue;
              const int64_t o = (((n * s.out[0] + z) * s.out[1] + p) * s.out[2] + q) * s.c * elem;
              const int64_t i = (((n * s.in[0] + iz) * s.in[1] + ip) * s.in[2] + iq) * s.c * elem;
              std::memcpy(ref.data() + o, x.data() + i, static_cast<size_t>(s.c * elem));
            }
      std::vector<uint8_t> cpu(ref.size(), 0xab);
      kernels::cpu::crop(s, x.data(), elem, cpu.data());
      CHECK(cpu == ref);
      const auto cuda = under_every_schedule([&] {
        std::vector<uint8_t> out(ref.size(), 0xcd);
        kernels::cuda::crop(s, x.data(), elem, out.data(), nullptr);
        return out;
      });
      CHECK(cuda == ref);
    }
}

TEST_CASE("dropout: the mask depends on (seed, first + index) only, keeps a 1 - p share, and CUDA equals the CPU") {
  const int64_t n = 200003;
  Rng rng(9);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = static_cast<float>(rng.normal());
  for (float p : {0.1f, 0.5f}) {
    const float scale = 1.f / (1.f - p);
    for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
      CAPTURE(dtype_name(dt));
      const std::vector<uint8_t> xb = encode(x, dt);
      std::vector<uint8_t> y(xb.size());
      const uint64_t first = p < 0.3f ? 0 : 777;  // a slice of a larger tensor from element 777 on
      kernels::cpu::dropout_apply(dt, 1234, first, p, scale, xb.data(), y.data(), n);
      int64_t kept = 0;
      for (int64_t i = 0; i < n; ++i) {
        const bool keep = kernels::dropout_keeps(1234, first + static_cast<uint64_t>(i), p);
        kept += keep;
        const float want = keep ? decode(encode({decode(xb, dt, size_t(i)) * scale}, dt), dt, 0) : 0.f;
        REQUIRE(decode(y, dt, static_cast<size_t>(i)) == want);
      }
      // Binomial(n, 1 - p): its standard deviation is below 250 here; 5 of them.
      CHECK(std::abs(double(kept) - double(n) * (1 - p)) < 1250);
      const auto cuda = under_every_schedule([&] {
        std::vector<uint8_t> out(xb.size(), 0xee);
        kernels::cuda::dropout_apply(dt, 1234, first, p, scale, xb.data(), out.data(), n, nullptr);
        return out;
      });
      CHECK(cuda == y);
    }
  }
  // Another seed, another mask.
  int64_t same = 0;
  for (uint64_t i = 0; i < 10000; ++i) same += kernels::dropout_keeps(1, i, 0.5f) == kernels::dropout_keeps(2, i, 0.5f);
  CHECK(std::abs(same - 5000) < 300);
}

TEST_CASE("bias addition: the CPU rounds y + bias once per element and CUDA equals it") {
  const int64_t rows = 1037, channels = 5;
  Rng rng(3);
  std::vector<float> y(static_cast<size_t>(rows * channels)), bias(static_cast<size_t>(channels));
  for (float& v : y) v = static_cast<float>(rng.normal());
  for (float& v : bias) v = static_cast<float>(rng.normal());
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    CAPTURE(dtype_name(dt));
    const std::vector<uint8_t> yb = encode(y, dt);
    std::vector<uint8_t> cpu = yb;
    kernels::cpu::bias_add(dt, rows, channels, bias.data(), cpu.data());
    for (int64_t i = 0; i < rows * channels; ++i) {
      const float want = decode(encode({decode(yb, dt, size_t(i)) + bias[size_t(i % channels)]}, dt), dt, 0);
      REQUIRE(decode(cpu, dt, size_t(i)) == want);
    }
    const auto cuda = under_every_schedule([&] {
      std::vector<uint8_t> out = yb;
      kernels::cuda::bias_add(dt, rows, channels, bias.data(), out.data(), nullptr);
      return out;
    });
    CHECK(cuda == cpu);
  }
}

TEST_CASE(
    "the UNet2D ops on the cuda-emu device equal the CPU: forward and gradients, conv_transpose_general through "
    "the convolution kernels") {
  auto randn = [](const Shape& s, uint64_t seed, float scale = 1.f) {
    Rng rng(seed);
    std::vector<float> v(static_cast<size_t>(shape_numel(s)));
    for (float& x : v) x = static_cast<float>(rng.normal()) * scale;
    return Tensor::from_vector(s, v);
  };
  const Device emu = Device::cuda_emu;
  test::check_op_against_cpu(
      emu,
      [](const std::vector<Tensor>& in) {
        return ops::max_pool(in[0], {2, 2});
      },
      {randn({2, 9, 11, 3}, 1)}, 0, 0);
  test::check_op_against_cpu(
      emu,
      [](const std::vector<Tensor>& in) {
        return ops::crop(in[0], {3, -1}, {4, 9});
      },
      {randn({2, 9, 8, 3}, 2)}, 0, 0);
  test::check_op_against_cpu(
      emu, [](const std::vector<Tensor>& in) { return ops::dropout(in[0], 0.5f, 3); }, {randn({2, 6, 5, 4}, 3)}, 0, 0);
  // The SIMT f32 convolution kernels sum in another order than the CPU's.
  test::check_op_against_cpu(
      emu,
      [](const std::vector<Tensor>& in) {
        return ops::conv_transpose_general(in[0], in[1], in[2], {2, 2}, {0, 0});
      },
      {randn({2, 6, 5, 8}, 4), randn({8, 3, 3, 4}, 5, 0.3f), randn({4}, 6)}, 1e-5, 1e-5);
  test::check_op_against_cpu(
      emu,
      [](const std::vector<Tensor>& in) {
        return ops::conv_transpose_general(in[0], in[1], in[2], {2, 2, 2}, {1, 1, 1}, {1, 1, 1});
      },
      {randn({1, 3, 4, 2, 4}, 7), randn({4, 3, 3, 3, 2}, 8, 0.3f), randn({2}, 9)}, 1e-5, 1e-5);
}
