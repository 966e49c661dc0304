// CUDA activation, instance-norm, batch-norm and shape kernels, run under the device emulator against the CPU backend.
// Tolerances: elementwise ops, copies, casts, argmax and the upsampling adjoint (a fixed-order sum, the CPU's order)
// are bitwise; instance-norm statistics and gradients are reductions summed in another order than the CPU's (double
// partials over other chunks), so they agree to ~1e-5 relative. Every kernel is run under the forward, reverse and
// random:7 schedules, which must give bitwise identical results (the emulator's stand-in for a race checker).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/activation.h"
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/shape.cuh"
#include "kernels/emu/emu.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/shape.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace unet;
using test::under_every_schedule;

namespace {

std::vector<float> normals(int64_t n, Rng& rng, double mean = 0.0, double stddev = 1.0) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(mean + stddev * rng.normal());
  return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Activation inputs with the edge cases: zeros of both signs and NaN.
std::vector<float> activation_input(int64_t n, Rng& rng) {
  std::vector<float> x = normals(n, rng);
  if (n > 3) {
    x[0] = 0.f;
    x[1] = -0.f;
    x[2] = std::numeric_limits<float>::quiet_NaN();
  }
  return x;
}

struct NormCase {
  int64_t n, s, c;
};
// 2D and 3D spatial sizes (odd), channel counts not multiples of 8 (one and two 32-channel tiles), batch > 1, one
// and several 1024-row chunks.
const NormCase kNormCases[] = {
    {2, 37 * 41, 5},       // 2D, two chunks
    {3, 7 * 11 * 13, 12},  // 3D, one chunk
    {2, 9 * 15 * 17, 33},  // 3D, three chunks, two channel tiles
    {2, 1, 3},             // a single position: variance 0
};

}  // namespace

// ---- activations ----

TEST_CASE("cuda relu forward and backward equal the CPU bit for bit, NaN and signed zeros included") {
  Rng rng(21);
  for (int64_t n : {1, 257, 100003}) {
    const std::vector<float> x = activation_input(n, rng), dy = normals(n, rng);
    std::vector<float> y_cpu(x.size()), dx_cpu(x.size());
    kernels::cpu::relu_forward(DType::f32, x.data(), y_cpu.data(), n);
    kernels::cpu::relu_backward(DType::f32, y_cpu.data(), dy.data(), dx_cpu.data(), n);
    const auto y = under_every_schedule([&] {
      std::vector<float> out(x.size(), -1.f);
      kernels::cuda::relu_forward(DType::f32, x.data(), out.data(), n, nullptr);
      return out;
    });
    const auto dx = under_every_schedule([&] {
      std::vector<float> out(x.size(), -1.f);
      kernels::cuda::relu_backward(DType::f32, y_cpu.data(), dy.data(), out.data(), n, nullptr);
      return out;
    });
    CHECK_MESSAGE(same_bits(y, y_cpu), "n " << n);
    CHECK_MESSAGE(same_bits(dx, dx_cpu), "n " << n);
  }
}

TEST_CASE("cuda leaky relu forward and backward equal the CPU bit for bit") {
  Rng rng(22);
  const float slope = 0.01f;
  for (int64_t n : {1, 257, 100003}) {
    const std::vector<float> x = activation_input(n, rng), dy = normals(n, rng);
    std::vector<float> y_cpu(x.size()), dx_cpu(x.size());
    kernels::cpu::leaky_relu_forward(DType::f32, x.data(), slope, y_cpu.data(), n);
    kernels::cpu::leaky_relu_backward(DType::f32, x.data(), dy.data(), slope, dx_cpu.data(), n);
    const auto y = under_every_schedule([&] {
      std::vector<float> out(x.size(), -1.f);
      kernels::cuda::leaky_relu_forward(DType::f32, x.data(), slope, out.data(), n, nullptr);
      return out;
    });
    const auto dx = under_every_schedule([&] {
      std::vector<float> out(x.size(), -1.f);
      kernels::cuda::leaky_relu_backward(DType::f32, x.data(), dy.data(), slope, out.data(), n, nullptr);
      return out;
    });
    CHECK_MESSAGE(same_bits(y, y_cpu), "n " << n);
    CHECK_MESSAGE(same_bits(dx, dx_cpu), "n " << n);
  }
}

TEST_CASE("cuda activations work in place") {
  Rng rng(23);
  std::vector<float> x = activation_input(3001, rng), expected(x.size());
  kernels::cpu::leaky_relu_forward(DType::f32, x.data(), 0.2f, expected.data(), 3001);
  kernels::cuda::leaky_relu_forward(DType::f32, x.data(), 0.2f, x.data(), 3001, nullptr);
  CHECK(same_bits(x, expected));
}

// ---- instance norm ----

TEST_CASE("cuda instance norm forward matches the CPU to 1e-5 relative, with and without gamma and beta") {
  Rng rng(31);
  for (const NormCase& nc : kNormCases)
    for (bool affine : {true, false}) {
      const kernels::cpu::NormShape sh{nc.n, nc.s, nc.c};
      const int64_t total = nc.n * nc.s * nc.c, nc_ = nc.n * nc.c;
      const std::vector<float> x = normals(total, rng, 0.5, 2.0), gamma = normals(nc.c, rng, 1.0, 0.3),
                               beta = normals(nc.c, rng);
      const float* g = affine ? gamma.data() : nullptr;
      const float* b = affine ? beta.data() : nullptr;
      std::vector<float> y_cpu(x.size()), mean_cpu(static_cast<size_t>(nc_)), rstd_cpu(mean_cpu.size());
      kernels::cpu::instance_norm_forward(sh, DType::f32, x.data(), g, b, 1e-5f, y_cpu.data(), mean_cpu.data(), rstd_cpu.data());
      const auto out = under_every_schedule([&] {
        std::vector<float> all(static_cast<size_t>(total + 2 * nc_), -7.f);
        kernels::cuda::instance_norm_forward(sh, DType::f32, x.data(), g, b, 1e-5f, all.data(), all.data() + total,
                                             all.data() + total + nc_, nullptr);
        return all;
      });
      const std::string what = "n " + std::to_string(nc.n) + " s " + std::to_string(nc.s) + " c " +
                               std::to_string(nc.c) + (affine ? " affine" : "");
      test::check_close(std::vector<float>(out.begin(), out.begin() + total), y_cpu, 1e-5, 1e-5, what + " y");
      test::check_close(std::vector<float>(out.begin() + total, out.begin() + total + nc_), mean_cpu, 1e-5, 1e-6,
                        what + " mean");
      test::check_close(std::vector<float>(out.begin() + total + nc_, out.end()), rstd_cpu, 1e-5, 0, what + " rstd");
    }
}

TEST_CASE("cuda instance norm statistics do not cancel when the mean is large against the spread") {
  Rng rng(32);
  const kernels::cpu::NormShape sh{2, 3001, 7};
  const std::vector<float> x = normals(sh.n * sh.s * sh.c, rng, 1000.0, 0.01);
  std::vector<float> y_cpu(x.size()), m_cpu(14), r_cpu(14), y(x.size()), m(14), r(14);
  kernels::cpu::instance_norm_forward(sh, DType::f32, x.data(), nullptr, nullptr, 1e-5f, y_cpu.data(), m_cpu.data(), r_cpu.data());
  kernels::cuda::instance_norm_forward(sh, DType::f32, x.data(), nullptr, nullptr, 1e-5f, y.data(), m.data(), r.data(), nullptr);
  test::check_close(r, r_cpu, 1e-5, 0, "rstd");
  test::check_close(y, y_cpu, 1e-4, 1e-4, "y");  // x - mean keeps only ~15 bits of x at this ratio, on both sides
}

TEST_CASE("cuda instance norm backward matches the CPU to 1e-5 relative for dx, dgamma and dbeta") {
  Rng rng(33);
  for (const NormCase& nc : kNormCases)
    for (bool affine : {true, false}) {
      const kernels::cpu::NormShape sh{nc.n, nc.s, nc.c};
      const int64_t total = nc.n * nc.s * nc.c, nc_ = nc.n * nc.c;
      const std::vector<float> x = normals(total, rng, -0.3, 1.5), dy = normals(total, rng),
                               gamma = normals(nc.c, rng, 1.0, 0.3);
      const float* g = affine ? gamma.data() : nullptr;
      std::vector<float> y(x.size()), mean(static_cast<size_t>(nc_)), rstd(mean.size());
      kernels::cpu::instance_norm_forward(sh, DType::f32, x.data(), g, nullptr, 1e-5f, y.data(), mean.data(), rstd.data());
      std::vector<float> dx_cpu(x.size()), dg_cpu(static_cast<size_t>(nc.c)), db_cpu(dg_cpu.size());
      kernels::cpu::instance_norm_backward(sh, DType::f32, x.data(), dy.data(), mean.data(), rstd.data(), g, dx_cpu.data(),
                                           dg_cpu.data(), db_cpu.data());
      const auto out = under_every_schedule([&] {
        std::vector<float> all(static_cast<size_t>(total + 2 * nc.c), -7.f);
        kernels::cuda::instance_norm_backward(sh, DType::f32, x.data(), dy.data(), mean.data(), rstd.data(), g, all.data(),
                                              all.data() + total, all.data() + total + nc.c, nullptr);
        return all;
      });
      const std::string what = "n " + std::to_string(nc.n) + " s " + std::to_string(nc.s) + " c " +
                               std::to_string(nc.c) + (affine ? " affine" : "");
      test::check_close(std::vector<float>(out.begin(), out.begin() + total), dx_cpu, 1e-5, 1e-5, what + " dx");
      test::check_close(std::vector<float>(out.begin() + total, out.begin() + total + nc.c), dg_cpu, 1e-5, 1e-4,
                        what + " dgamma");
      test::check_close(std::vector<float>(out.begin() + total + nc.c, out.end()), db_cpu, 1e-5, 1e-4, what + " dbeta");
    }
}

TEST_CASE("cuda instance norm backward leaves outputs passed as null alone and computes the others") {
  Rng rng(34);
  const kernels::cpu::NormShape sh{2, 1517, 5};
  const int64_t total = sh.n * sh.s * sh.c;
  const std::vector<float> x = normals(total, rng), dy = normals(total, rng);
  std::vector<float> y(x.size()), mean(10), rstd(10);
  kernels::cpu::instance_norm_forward(sh, DType::f32, x.data(), nullptr, nullptr, 1e-5f, y.data(), mean.data(), rstd.data());
  std::vector<float> dg_all(5), dg_only(5), dx(x.size()), dx_only(x.size());
  kernels::cuda::instance_norm_backward(sh, DType::f32, x.data(), dy.data(), mean.data(), rstd.data(), nullptr, dx.data(),
                                        dg_all.data(), nullptr, nullptr);
  kernels::cuda::instance_norm_backward(sh, DType::f32, x.data(), dy.data(), mean.data(), rstd.data(), nullptr, nullptr,
                                        dg_only.data(), nullptr, nullptr);
  kernels::cuda::instance_norm_backward(sh, DType::f32, x.data(), dy.data(), mean.data(), rstd.data(), nullptr, dx_only.data(),
                                        nullptr, nullptr, nullptr);
  CHECK(same_bits(dg_all, dg_only));
  CHECK(same_bits(dx, dx_only));
}

TEST_CASE("cuda fused instance norm + leaky relu forward equals the two kernels run one after the other") {
  Rng rng(35);
  const float slope = 0.01f;
  for (const NormCase& nc : kNormCases) {
    const kernels::cpu::NormShape sh{nc.n, nc.s, nc.c};
    const int64_t total = nc.n * nc.s * nc.c, nc_ = nc.n * nc.c;
    const std::vector<float> x = normals(total, rng), gamma = normals(nc.c, rng, 1.0, 0.3), beta = normals(nc.c, rng);
    // Unfused on the CUDA side: bitwise equal, since the fused kernel applies the same float operations.
    std::vector<float> z(x.size()), y_two(x.size()), mean(static_cast<size_t>(nc_)), rstd(mean.size());
    kernels::cuda::instance_norm_forward(sh, DType::f32, x.data(), gamma.data(), beta.data(), 1e-5f, z.data(), mean.data(),
                                         rstd.data(), nullptr);
    kernels::cuda::leaky_relu_forward(DType::f32, z.data(), slope, y_two.data(), total, nullptr);
    // Against the CPU: the statistics' tolerance.
    std::vector<float> z_cpu(x.size()), y_cpu(x.size()), m_cpu(mean.size()), r_cpu(mean.size());
    kernels::cpu::instance_norm_forward(sh, DType::f32, x.data(), gamma.data(), beta.data(), 1e-5f, z_cpu.data(), m_cpu.data(),
                                        r_cpu.data());
    kernels::cpu::leaky_relu_forward(DType::f32, z_cpu.data(), slope, y_cpu.data(), total);
    const auto out = under_every_schedule([&] {
      std::vector<float> all(static_cast<size_t>(total + 2 * nc_), -7.f);
      kernels::cuda::instance_norm_leaky_relu_forward(sh, DType::f32, x.data(), gamma.data(), beta.data(), 1e-5f, slope, all.data(),
                                                      all.data() + total, all.data() + total + nc_, nullptr);
      return all;
    });
    const std::vector<float> y(out.begin(), out.begin() + total);
    CHECK_MESSAGE(same_bits(y, y_two), "s " << nc.s << " c " << nc.c);
    CHECK(same_bits(std::vector<float>(out.begin() + total, out.begin() + total + nc_), mean));
    test::check_close(y, y_cpu, 1e-5, 1e-5, "fused y vs CPU");
  }
}

TEST_CASE("cuda fused instance norm + leaky relu backward matches the CPU's leaky relu then instance norm backward") {
  Rng rng(36);
  const float slope = 0.01f;
  for (const NormCase& nc : kNormCases) {
    const kernels::cpu::NormShape sh{nc.n, nc.s, nc.c};
    const int64_t total = nc.n * nc.s * nc.c, nc_ = nc.n * nc.c;
    const std::vector<float> x = normals(total, rng), dy = normals(total, rng), gamma = normals(nc.c, rng, 1.0, 0.3),
                             beta = normals(nc.c, rng, 0.0, 0.5);
    std::vector<float> z(x.size()), y(x.size()), mean(static_cast<size_t>(nc_)), rstd(mean.size());
    kernels::cpu::instance_norm_forward(sh, DType::f32, x.data(), gamma.data(), beta.data(), 1e-5f, z.data(), mean.data(),
                                        rstd.data());
    kernels::cpu::leaky_relu_forward(DType::f32, z.data(), slope, y.data(), total);
    std::vector<float> dz(x.size()), dx_cpu(x.size()), dg_cpu(static_cast<size_t>(nc.c)), db_cpu(dg_cpu.size());
    kernels::cpu::leaky_relu_backward(DType::f32, z.data(), dy.data(), slope, dz.data(), total);
    kernels::cpu::instance_norm_backward(sh, DType::f32, x.data(), dz.data(), mean.data(), rstd.data(), gamma.data(), dx_cpu.data(),
                                         dg_cpu.data(), db_cpu.data());
    const auto out = under_every_schedule([&] {
      std::vector<float> all(static_cast<size_t>(total + 2 * nc.c), -7.f);
      kernels::cuda::instance_norm_leaky_relu_backward(sh, DType::f32, x.data(), y.data(), dy.data(), mean.data(), rstd.data(),
                                                       gamma.data(), slope, all.data(), all.data() + total,
                                                       all.data() + total + nc.c, nullptr);
      return all;
    });
    const std::string what = "s " + std::to_string(nc.s) + " c " + std::to_string(nc.c);
    test::check_close(std::vector<float>(out.begin(), out.begin() + total), dx_cpu, 1e-5, 1e-5, what + " dx");
    test::check_close(std::vector<float>(out.begin() + total, out.begin() + total + nc.c), dg_cpu, 1e-5, 1e-4,
                      what + " dgamma");
    test::check_close(std::vector<float>(out.begin() + total + nc.c, out.end()), db_cpu, 1e-5, 1e-4, what + " dbeta");
  }
}

// ---- batch norm ----

TEST_CASE("cuda batch norm evaluation equals the CPU bit for bit, f32 f16 bf16, with and without ReLU and affine") {
  Rng rng(34);
  const kernels::cpu::NormShape sh{1, 3 * 7 * 9, 37};  // rows of a [3, 7, 9, 37] batch; two channel tiles' worth
  const int64_t total = sh.s * sh.c;
  const std::vector<float> x = normals(total, rng, 0.5, 2.0), rm = normals(sh.c, rng),
                           gamma = normals(sh.c, rng, 1.0, 0.3), beta = normals(sh.c, rng);
  std::vector<float> rv = normals(sh.c, rng);
  for (float& v : rv) v = v * v + 0.1f;
  for (DType dt : {DType::f32, DType::f16, DType::bf16})
    for (bool relu : {false, true})
      for (bool affine : {true, false}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(relu);
        CAPTURE(affine);
        std::vector<uint8_t> xd(x.size() * dtype_size(dt));
        kernels::cpu::cast(DType::f32, x.data(), dt, xd.data(), total);
        const float* g = affine ? gamma.data() : nullptr;
        const float* b = affine ? beta.data() : nullptr;
        std::vector<uint8_t> y_cpu(xd.size());
        kernels::cpu::batch_norm_inference(sh, dt, xd.data(), rm.data(), rv.data(), g, b, 1e-3f, relu, y_cpu.data());
        const auto y = under_every_schedule([&] {
          std::vector<uint8_t> out(xd.size(), 0xAB);
          kernels::cuda::batch_norm_inference(sh, dt, xd.data(), rm.data(), rv.data(), g, b, 1e-3f, relu, out.data(),
                                              nullptr);
          return out;
        });
        CHECK(same_bits(y, y_cpu));
      }
}

TEST_CASE("cuda batch norm running statistics update equals the CPU bit for bit") {
  Rng rng(35);
  const int64_t C = 300;  // two blocks of channels
  const std::vector<float> mean = normals(C, rng);
  std::vector<float> rstd = normals(C, rng), rm0 = normals(C, rng), rv0 = normals(C, rng);
  for (float& v : rstd) v = std::abs(v) + 0.2f;
  for (float& v : rv0) v = v * v;
  std::vector<float> rm_cpu = rm0, rv_cpu = rv0;
  kernels::cpu::batch_norm_update_running(C, 77, 1e-5f, 0.1f, mean.data(), rstd.data(), rm_cpu.data(), rv_cpu.data());
  const auto out = under_every_schedule([&] {
    std::vector<float> both = rm0;
    both.insert(both.end(), rv0.begin(), rv0.end());
    kernels::cuda::batch_norm_update_running(C, 77, 1e-5f, 0.1f, mean.data(), rstd.data(), both.data(), both.data() + C,
                                             nullptr);
    return both;
  });
  CHECK(same_bits(std::vector<float>(out.begin(), out.begin() + C), rm_cpu));
  CHECK(same_bits(std::vector<float>(out.begin() + C, out.end()), rv_cpu));
}

// ---- shape ----

TEST_CASE("cuda concat and split along channels equal the CPU bit for bit for 1-, 2-, 3- and 4-byte elements") {
  Rng rng(41);
  const int64_t rows = 3 * 7 * 11 * 5;  // 1155 positions
  const std::vector<int64_t> widths = {3, 5, 1, 13};
  for (int64_t es : {1, 2, 3, 4}) {
    std::vector<std::vector<uint8_t>> xs;
    std::vector<const void*> ptrs;
    for (int64_t w : widths) {
      std::vector<uint8_t> v(static_cast<size_t>(rows * w * es));
      for (uint8_t& b : v) b = static_cast<uint8_t>(rng.below(256));
      xs.push_back(std::move(v));
    }
    for (const auto& v : xs) ptrs.push_back(v.data());
    const size_t out_bytes = static_cast<size_t>(rows * 22 * es);
    std::vector<uint8_t> cpu(out_bytes);
    kernels::cpu::concat_channels(rows, 4, ptrs.data(), widths.data(), es, cpu.data());
    const auto cat = under_every_schedule([&] {
      std::vector<uint8_t> out(out_bytes, 0xee);
      kernels::cuda::concat_channels(rows, 4, ptrs.data(), widths.data(), es, out.data(), nullptr);
      return out;
    });
    CHECK_MESSAGE(same_bits(cat, cpu), "elem size " << es);
    // split, with the third part skipped
    const auto parts = under_every_schedule([&] {
      std::vector<uint8_t> all(out_bytes, 0xee);
      std::vector<void*> outs;
      size_t off = 0;
      for (int64_t w : widths) {
        outs.push_back(all.data() + off);
        off += static_cast<size_t>(rows * w * es);
      }
      outs[2] = nullptr;
      kernels::cuda::split_channels(rows, 4, cpu.data(), widths.data(), es, outs.data(), nullptr);
      return all;
    });
    size_t off = 0;
    for (size_t i = 0; i < widths.size(); ++i) {
      const size_t bytes = static_cast<size_t>(rows * widths[i] * es);
      if (i == 2) {
        CHECK(std::all_of(parts.begin() + off, parts.begin() + off + bytes, [](uint8_t b) { return b == 0xee; }));
      } else {
        CHECK_MESSAGE(std::memcmp(parts.data() + off, xs[i].data(), bytes) == 0, "part " << i << " elem size " << es);
      }
      off += bytes;
    }
  }
}

TEST_CASE("cuda nearest upsampling forward and backward equal the CPU bit for bit, 2D and 3D") {
  Rng rng(42);
  const kernels::cpu::UpsampleShape shapes[] = {
      {2, 1, 9, 11, 5, 1, 2, 2},  // 2D, x2
      {2, 5, 7, 3, 6, 2, 2, 2},   // 3D, x2
      {1, 3, 5, 7, 3, 1, 2, 3},   // 3D, anisotropic factors
  };
  for (const auto& s : shapes) {
    const int64_t in = s.n * s.d * s.h * s.w * s.c, out_n = in * s.fd * s.fh * s.fw;
    const std::string what = "d " + std::to_string(s.d) + " h " + std::to_string(s.h) + " w " + std::to_string(s.w);
    const std::vector<float> x = normals(in, rng), dy = normals(out_n, rng);
    std::vector<float> y_cpu(static_cast<size_t>(out_n)), dx_cpu(static_cast<size_t>(in));
    kernels::cpu::upsample_nearest_forward(s, x.data(), 4, y_cpu.data());
    kernels::cpu::upsample_nearest_backward(s, DType::f32, dy.data(), dx_cpu.data());
    const auto y = under_every_schedule([&] {
      std::vector<float> out(static_cast<size_t>(out_n), -7.f);
      kernels::cuda::upsample_nearest_forward(s, x.data(), 4, out.data(), nullptr);
      return out;
    });
    const auto dx = under_every_schedule([&] {
      std::vector<float> out(static_cast<size_t>(in), -7.f);
      kernels::cuda::upsample_nearest_backward(s, DType::f32, dy.data(), out.data(), nullptr);
      return out;
    });
    CHECK_MESSAGE(same_bits(y, y_cpu), what);
    CHECK_MESSAGE(same_bits(dx, dx_cpu), what);
    // 16-bit elements (f16 / bf16 activations) move as 2-byte words
    std::vector<uint16_t> x16(static_cast<size_t>(in)), y16_cpu(static_cast<size_t>(out_n));
    for (uint16_t& v : x16) v = static_cast<uint16_t>(rng.below(65536));
    kernels::cpu::upsample_nearest_forward(s, x16.data(), 2, y16_cpu.data());
    const auto y16 = under_every_schedule([&] {
      std::vector<uint16_t> out(static_cast<size_t>(out_n), 0xeeee);
      kernels::cuda::upsample_nearest_forward(s, x16.data(), 2, out.data(), nullptr);
      return out;
    });
    CHECK_MESSAGE(same_bits(y16, y16_cpu), what << " 16-bit");
  }
}

namespace {
// Random bit patterns of every class: normals, subnormals, zeros, infinities, NaNs with payloads, and ties of both
// 16-bit roundings.
std::vector<uint32_t> special_float_bits(Rng& rng, int64_t n) {
  std::vector<uint32_t> v;
  for (uint32_t b : {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u, 0xffc12345u,
                     0x00000001u, 0x33000000u, 0x33000001u, 0x387fe000u, 0x38800000u, 0x477fefffu, 0x477ff000u,
                     0x47800000u, 0x3f808000u, 0x3f818000u, 0x7f7fffffu})
    v.push_back(b);
  while (static_cast<int64_t>(v.size()) < n) {
    const uint32_t r = static_cast<uint32_t>(rng.below(int64_t(1) << 32));
    switch (rng.below(4)) {
      case 0:
        v.push_back(r);
        break;  // anything
      case 1:
        v.push_back((r & 0x807fffffu) | (uint32_t(100 + rng.below(60)) << 23));
        break;  // around f16 range
      case 2:
        v.push_back((r & 0x80ff0000u) | 0x8000u);
        break;  // bf16 ties
      default:
        v.push_back((r & 0x8fffe000u) | 0x1000u);
        break;  // f16 ties
    }
  }
  return v;
}
}  // namespace

TEST_CASE("cuda casts between f32, f16 and bf16 equal kernels/common/dtype.h bit for bit, NaN payloads and ties included") {
  Rng rng(43);
  const int64_t n = 20011;
  const std::vector<uint32_t> f32 = special_float_bits(rng, n);
  std::vector<uint16_t> h16(static_cast<size_t>(n)), b16(static_cast<size_t>(n));
  for (size_t i = 0; i < h16.size(); ++i) {
    h16[i] = static_cast<uint16_t>(rng.below(65536));
    b16[i] = static_cast<uint16_t>(rng.below(65536));
  }
  const struct {
    DType dt;
    const void* data;
  } sources[] = {{DType::f32, f32.data()}, {DType::f16, h16.data()}, {DType::bf16, b16.data()}};
  for (const auto& src : sources)
    for (DType dst : {DType::f32, DType::f16, DType::bf16}) {
      const size_t bytes = static_cast<size_t>(n) * dtype_size(dst);
      std::vector<uint8_t> cpu(bytes);
      kernels::cpu::cast(src.dt, src.data, dst, cpu.data(), n);
      const auto gpu = under_every_schedule([&] {
        std::vector<uint8_t> out(bytes, 0xee);
        kernels::cuda::cast(src.dt, src.data, dst, out.data(), n, nullptr);
        return out;
      });
      CHECK_MESSAGE(same_bits(gpu, cpu), dtype_name(src.dt) << " -> " << dtype_name(dst));
    }
}

TEST_CASE("cuda cast rejects integer dtypes") {
  int32_t a[4] = {}, b[4] = {};
  CHECK_THROWS_AS(kernels::cuda::cast(DType::i32, a, DType::f32, b, 4, nullptr), std::invalid_argument);
}

TEST_CASE("cuda argmax over channels equals the CPU: first maximum on ties, first NaN wins, f32 f16 bf16") {
  Rng rng(44);
  for (int64_t c : {1, 3, 13}) {
    const int64_t rows = 2 * 9 * 11 * 7;  // 1386
    std::vector<float> x(static_cast<size_t>(rows * c));
    for (float& v : x) v = static_cast<float>(rng.below(5)) - 2.f;  // few values: many ties
    for (int k = 0; k < 40; ++k) x[static_cast<size_t>(rng.below(rows * c))] = std::numeric_limits<float>::quiet_NaN();
    for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
      std::vector<uint8_t> xt(x.size() * dtype_size(dt));
      kernels::cpu::cast(DType::f32, x.data(), dt, xt.data(), static_cast<int64_t>(x.size()));
      std::vector<int32_t> cpu(static_cast<size_t>(rows));
      kernels::cpu::argmax_channels(dt, xt.data(), rows, c, cpu.data());
      const auto gpu = under_every_schedule([&] {
        std::vector<int32_t> out(static_cast<size_t>(rows), -1);
        kernels::cuda::argmax_channels(dt, xt.data(), rows, c, out.data(), nullptr);
        return out;
      });
      CHECK_MESSAGE(same_bits(gpu, cpu), dtype_name(dt) << " c " << c);
    }
  }
}
