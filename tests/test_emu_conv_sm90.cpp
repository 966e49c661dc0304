// The Hopper convolution's operand pipeline (kernels/cuda/conv_sm90.cuh) under the device emulator: tensor copies of
// the activation and weight boxes of every k-step into swizzled stages, completed on mbarriers, read by a scalar
// consumer (tests/emu_conv_sm90_kernels.cuh). Against a direct convolution on the host, bit for bit: the inputs are
// small multiples of 1/8, so every f32 sum is exact in any order and the one rounding (to bf16 or f16) is the same.
// Odd sizes (partial M and N tiles), padding, stride 2, channels that do not fill a k-step, every swizzle width.
// Then the sm_90a kernels themselves: fprop (with its statistics epilogue), fprop with conv_fprop_norm_act's
// transform applied to each stage in shared memory, wgrad (MN-major wgmma operands, split-K), and dgrad (stride 1, and
// strides of 2 by parity classes, each a stride-1 fprop writing its positions of dx in place).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "kernels/cpu/element.h"
#include "tests/emu_conv_sm90_kernels.cuh"
#include "tests/emu_test_util.h"

namespace {

using unet::DType;
using unet::kernels::ConvProblem;
using unet::kernels::cuda::launch;
namespace sm90 = unet::kernels::cuda::sm90;

uint16_t to_bits(float v, DType dt) {
  return dt == DType::bf16 ? unet::kernels::cpu::element::BF16::store(v) : unet::kernels::cpu::element::F16::store(v);
}

enum class Consumer { scalar, wgmma, wgmma_stats };

float from_bits(uint16_t v, DType dt) {
  return dt == DType::bf16 ? unet::kernels::cpu::element::BF16::load(v) : unet::kernels::cpu::element::F16::load(v);
}

// 16-bit values at a 16-byte aligned start inside `buffer` (the tensor maps need it), sized for n of them.
uint16_t* aligned16(std::vector<uint16_t>& buffer, size_t n) {
  buffer.assign(n + 8, 0);
  return buffer.data() + (16 - reinterpret_cast<uintptr_t>(buffer.data()) % 16) % 16 / 2;
}

// The statistics of a run (stats[(n K + k) 2 + {0, 1}]) against the sums of its stored y on the host, within 1e-6 of
// the sum of magnitudes.
void check_stats(const ConvProblem& p, DType dt, const uint16_t* y, const float* stats) {
  const int64_t pixels = p.Z * p.P * p.Q;
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t k = 0; k < p.K; ++k) {
      double sum = 0, squares = 0, magnitude = 0;
      for (int64_t i = 0; i < pixels; ++i) {
        const double v = from_bits(y[size_t((n * pixels + i) * p.K + k)], dt);
        sum += v, squares += v * v, magnitude += std::fabs(v);
      }
      const float* st = &stats[size_t((n * p.K + k) * 2)];
      CHECK_MESSAGE(std::fabs(st[0] - sum) <= 1e-6 * magnitude, "sum n " << n << " k " << k << " " << p.describe());
      CHECK_MESSAGE(std::fabs(st[1] - squares) <= 1e-6 * squares,
                    "sum of squares n " << n << " k " << k << " " << p.describe());
    }
}

// Runs problem p with tile t in dt on values (i * 7 + salt) % 9 - 4, in eighths, and checks y against the host:
// through the scalar test consumer, or through the sm_90a kernel itself, conv_fprop_sm90, with statistics or without.
// The statistics (the kernel's f32 per-tile partials, finalized in double) against the sums of the stored y on the
// host, within 1e-6 of the sum of magnitudes; y and the statistics bitwise the same under every schedule.
void check_conv(ConvProblem p, const sm90::ConvTile& t, DType dt, Consumer consumer = Consumer::scalar) {
  p.compute_output_size();
  REQUIRE(sm90::conv_sm90_problem(p, dt, t) == "");
  REQUIRE(t.bm() == 128);
  const int64_t taps = p.taps();
  auto value = [](int64_t i, int salt) { return float((i * 7 + salt) % 9 - 4) / 8.0f; };
  std::vector<float> x(size_t(p.N * p.D * p.H * p.W * p.C)), w(size_t(p.K * taps * p.C)), bias(size_t(p.K));
  for (size_t i = 0; i < x.size(); ++i) x[i] = value(int64_t(i), 1);
  for (size_t i = 0; i < w.size(); ++i) w[i] = value(int64_t(i) / 3, 2);  // runs of equal values: not symmetric
  for (size_t i = 0; i < bias.size(); ++i) bias[i] = value(int64_t(i), 5);
  // 16-byte aligned 16-bit copies (the tensor maps need it).
  std::vector<uint16_t> x16(x.size() + 8), w16(w.size() + 8);
  uint16_t* xa = x16.data() + (16 - reinterpret_cast<uintptr_t>(x16.data()) % 16) % 16 / 2;
  uint16_t* wa = w16.data() + (16 - reinterpret_cast<uintptr_t>(w16.data()) % 16) % 16 / 2;
  for (size_t i = 0; i < x.size(); ++i) xa[i] = to_bits(x[i], dt);
  for (size_t i = 0; i < w.size(); ++i) wa[i] = to_bits(w[i], dt);

  // The host: y[n][z][p][q][k] = bias[k] + sum over taps inside the input and channels.
  const int64_t outputs = p.N * p.Z * p.P * p.Q * p.K;
  std::vector<uint16_t> want(static_cast<size_t>(outputs));
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t z = 0; z < p.Z; ++z)
      for (int64_t pp = 0; pp < p.P; ++pp)
        for (int64_t q = 0; q < p.Q; ++q)
          for (int64_t k = 0; k < p.K; ++k) {
            double s = bias[size_t(k)];
            for (int tt = 0; tt < p.T; ++tt)
              for (int r = 0; r < p.R; ++r)
                for (int ss = 0; ss < p.S; ++ss) {
                  const int64_t d = z * p.stride_d + tt - p.pad_d, h = pp * p.stride_h + r - p.pad_h,
                                wi = q * p.stride_w + ss - p.pad_w;
                  if (d < 0 || d >= p.D || h < 0 || h >= p.H || wi < 0 || wi >= p.W) continue;
                  const int64_t tap = (tt * p.R + r) * p.S + ss;
                  for (int64_t c = 0; c < p.C; ++c)
                    s += double(x[size_t((((n * p.D + d) * p.H + h) * p.W + wi) * p.C + c)]) *
                         double(w[size_t((k * taps + tap) * p.C + c)]);
                }
            want[size_t((((n * p.Z + z) * p.P + pp) * p.Q + q) * p.K + k)] = to_bits(float(s), dt);
          }

  const sm90::ConvGeometry g = sm90::make_geometry(p, t);
  const unet::kernels::cuda::TensorMap x_map = sm90::make_activation_map(p, dt, xa, t);
  const unet::kernels::cuda::TensorMap w_map = sm90::make_weight_map(p, dt, wa, t);
  const dim3 grid(unsigned(p.N * g.tiles_z * g.tiles_p * g.tiles_q), unsigned((p.K + t.bn - 1) / t.bn));
  const bool stats = consumer == Consumer::wgmma_stats;
  const size_t stat_count = size_t(p.N * p.K * 2);
  const std::vector<uint16_t> got = unet::test::under_every_schedule([&] {
    std::vector<uint16_t> y(size_t(outputs), 0xFFFF);  // a NaN where nothing is written
    if (consumer != Consumer::scalar) {
      std::vector<float> s(stat_count, -1.0f);
      sm90::conv_fprop_sm90(p, dt, xa, wa, bias.data(), y.data(), stats ? s.data() : nullptr, t, nullptr);
      if (stats) {  // appended as raw bits, so that the schedules are compared on them too
        y.resize(size_t(outputs) + 2 * stat_count);
        std::memcpy(y.data() + outputs, s.data(), stat_count * sizeof(float));
      }
    } else if (dt == DType::bf16)
      launch(emu_conv_sm90_test::conv_fprop_scalar_consumer<unet::kernels::cuda::element::BF16>, grid, dim3(256),
             emu_conv_sm90_test::smem_bytes(t), nullptr, x_map, w_map, g, t, bias.data(), y.data());
    else
      launch(emu_conv_sm90_test::conv_fprop_scalar_consumer<unet::kernels::cuda::element::F16>, grid, dim3(256),
             emu_conv_sm90_test::smem_bytes(t), nullptr, x_map, w_map, g, t, bias.data(), y.data());
    return y;
  });
  int64_t wrong = 0, first = -1;
  for (int64_t i = 0; i < outputs; ++i)
    if (got[size_t(i)] != want[size_t(i)] && wrong++ == 0) first = i;
  CHECK_MESSAGE(wrong == 0,
                wrong << " of " << outputs << " outputs differ, the first at " << first << " (" << p.describe() << ")");
  if (!stats) return;
  std::vector<float> s(stat_count);
  std::memcpy(s.data(), got.data() + outputs, stat_count * sizeof(float));
  check_stats(p, dt, got.data(), s.data());
}

// conv_fprop_sm90 with the norm + act transform (conv_fprop_norm_act's) against the plain kernel on the transformed
// input, formed on the host as the engine's norm would store it (the same fmaf, compare and rounding): y and the
// statistics bit for bit, under every schedule, and the statistics against the sums of the stored y. Random-looking
// inputs (not exact: the comparison is with the same kernel's MMAs), coefficients that differ per sample and
// channel, transform(0) != 0 (so padding must be zeroed, not transformed), a slope that is not 0.
void check_norm_act(ConvProblem p, const sm90::ConvTile& t, DType dt) {
  p.compute_output_size();
  REQUIRE(sm90::conv_sm90_problem(p, dt, t) == "");
  const int64_t xs = p.N * p.D * p.H * p.W * p.C, ws = p.K * p.taps() * p.C;
  auto value = [](int64_t i, int mul, int salt) { return float((i * mul + salt) % 1009 - 504) / 256.0f; };
  std::vector<uint16_t> x_buf, xt_buf, w_buf;
  uint16_t *x = aligned16(x_buf, size_t(xs)), *xt = aligned16(xt_buf, size_t(xs)), *w = aligned16(w_buf, size_t(ws));
  for (int64_t i = 0; i < xs; ++i) x[i] = to_bits(value(i, 37, 11), dt);
  for (int64_t i = 0; i < ws; ++i) w[i] = to_bits(value(i, 53, 7) / 16.0f, dt);
  std::vector<float> bias(size_t(p.K));
  for (size_t i = 0; i < bias.size(); ++i) bias[i] = value(int64_t(i), 11, 3);
  std::vector<float> mean(size_t(p.N * p.C)), scale(mean.size()), shift(mean.size());
  for (size_t i = 0; i < mean.size(); ++i) {
    mean[i] = value(int64_t(i), 97, 5);
    scale[i] = 0.5f + float(i % 7) / 5.0f;
    shift[i] = value(int64_t(i), 61, 2) / 2.0f;
  }
  const float slope = 0.125f;
  for (int64_t i = 0; i < xs; ++i) {
    const size_t j = size_t(i / (p.D * p.H * p.W * p.C) * p.C + i % p.C);
    float v = std::fma(from_bits(x[i], dt) - mean[j], scale[j], shift[j]);
    v = v > 0.f ? v : v * slope;
    xt[i] = to_bits(v, dt);
  }
  const size_t outputs = size_t(p.N * p.Z * p.P * p.Q * p.K), stat_count = size_t(p.N * p.K * 2);
  const size_t run_size = outputs + 2 * stat_count;  // y, then the statistics as raw bits
  const std::vector<uint16_t> got = unet::test::under_every_schedule([&] {
    std::vector<uint16_t> out(2 * run_size, 0xFFFF);  // the plain kernel on xt, then the transforming one on x
    std::vector<float> s(stat_count, -1.0f);
    sm90::conv_fprop_sm90(p, dt, xt, w, bias.data(), out.data(), s.data(), t, nullptr);
    std::memcpy(out.data() + outputs, s.data(), stat_count * sizeof(float));
    s.assign(stat_count, -1.0f);
    sm90::conv_fprop_sm90(p, dt, x, w, bias.data(), out.data() + run_size, s.data(), t, nullptr,
                          {mean.data(), scale.data(), shift.data(), slope});
    std::memcpy(out.data() + run_size + outputs, s.data(), stat_count * sizeof(float));
    return out;
  });
  size_t wrong = 0, first = 0;
  for (size_t i = 0; i < run_size; ++i)
    if (got[i] != got[run_size + i] && wrong++ == 0) first = i;
  CHECK_MESSAGE(wrong == 0, wrong << " of " << outputs << " outputs and " << 2 * stat_count
                                  << " statistics halves differ from the plain kernel's on the transformed input, the "
                                     "first at "
                                  << first << " (" << p.describe() << ")");
  std::vector<float> s(stat_count);
  std::memcpy(s.data(), got.data() + run_size + outputs, stat_count * sizeof(float));
  check_stats(p, dt, got.data() + run_size, s.data());
}

// conv_wgrad_sm90 with `splits` split-K ranges against the host's dw, on the values of check_conv (x) and
// ((i * 5 + 3) % 9 - 4) / 8 (dy): every product is a multiple of 1/64 and every partial sum small, so f32 sums are
// exact in any order and dw must match bit for bit (the random-input comparison with the CPU backend, within an f32
// tolerance, is test_cuda_conv.cpp's under UNET_CONV_SM90=1). Bitwise the same under every schedule. Returns dw.
std::vector<float> check_wgrad(ConvProblem p, DType dt, int splits) {
  p.compute_output_size();
  REQUIRE(sm90::conv_wgrad_sm90_problem(p, dt) == "");
  const int64_t taps = p.taps();
  auto value = [](int64_t i, int mul, int salt) { return float((i * mul + salt) % 9 - 4) / 8.0f; };
  std::vector<float> x(size_t(p.N * p.D * p.H * p.W * p.C)), dy(size_t(p.N * p.Z * p.P * p.Q * p.K));
  for (size_t i = 0; i < x.size(); ++i) x[i] = value(int64_t(i), 7, 1);
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = value(int64_t(i), 5, 3);
  std::vector<uint16_t> x16(x.size() + 8), dy16(dy.size() + 8);
  uint16_t* xa = x16.data() + (16 - reinterpret_cast<uintptr_t>(x16.data()) % 16) % 16 / 2;
  uint16_t* dya = dy16.data() + (16 - reinterpret_cast<uintptr_t>(dy16.data()) % 16) % 16 / 2;
  for (size_t i = 0; i < x.size(); ++i) xa[i] = to_bits(x[i], dt);
  for (size_t i = 0; i < dy.size(); ++i) dya[i] = to_bits(dy[i], dt);

  // The host: dw[k][tap][c] = sum over outputs (n, z, p, q) and the input each reads through the tap.
  std::vector<float> want(size_t(p.K * taps * p.C));
  for (int64_t k = 0; k < p.K; ++k)
    for (int tt = 0; tt < p.T; ++tt)
      for (int r = 0; r < p.R; ++r)
        for (int ss = 0; ss < p.S; ++ss)
          for (int64_t c = 0; c < p.C; ++c) {
            double s = 0;
            for (int64_t n = 0; n < p.N; ++n)
              for (int64_t z = 0; z < p.Z; ++z)
                for (int64_t pp = 0; pp < p.P; ++pp)
                  for (int64_t q = 0; q < p.Q; ++q) {
                    const int64_t d = z * p.stride_d + tt - p.pad_d, h = pp * p.stride_h + r - p.pad_h,
                                  wi = q * p.stride_w + ss - p.pad_w;
                    if (d < 0 || d >= p.D || h < 0 || h >= p.H || wi < 0 || wi >= p.W) continue;
                    s += double(dy[size_t((((n * p.Z + z) * p.P + pp) * p.Q + q) * p.K + k)]) *
                         double(x[size_t((((n * p.D + d) * p.H + h) * p.W + wi) * p.C + c)]);
                  }
            want[size_t((k * taps + (tt * p.R + r) * p.S + ss) * p.C + c)] = float(s);
          }

  const std::vector<float> got = unet::test::under_every_schedule([&] {
    std::vector<float> dw(want.size(), NAN);
    sm90::conv_wgrad_sm90(p, dt, xa, dya, dw.data(), splits, nullptr);
    return dw;
  });
  int64_t wrong = 0, first = -1;
  for (size_t i = 0; i < want.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0 && wrong++ == 0) first = int64_t(i);
  CHECK_MESSAGE(wrong == 0, wrong << " of " << want.size() << " weights differ, the first at " << first << " (got "
                                  << (first >= 0 ? got[size_t(first)] : 0.f) << ", want "
                                  << (first >= 0 ? want[size_t(first)] : 0.f) << "; " << p.describe() << ", " << splits
                                  << " splits)");
  return got;
}

// conv_dgrad_sm90 against the host's dx, on dy ((i * 5 + 3) % 9 - 4) / 8 and w ((i * 7 + 2) % 11 - 5) / 8: exact f32
// sums, so dx must match bit for bit, under every schedule; dx starts as NaNs, so a position no class writes is
// caught. (w's period 11 does not divide the stride of its output channels, taps x C, as 9 would for 3x3x3 kernels:
// w varies with k, so the sub-kernels' channel swap is checked.)
// `plant` may alter the parity classes first (then they run one by one through conv_dgrad_sm90_phase): a planted
// fault must be caught. Returns the number of dx elements that differ.
int64_t dgrad_mismatches(ConvProblem p, DType dt,
                         const std::function<void(std::vector<sm90::DgradPhase>&)>& plant = nullptr) {
  p.compute_output_size();
  REQUIRE(sm90::conv_dgrad_sm90_problem(p, dt) == "");
  const int64_t taps = p.taps();
  auto value = [](int64_t i, int mul, int salt) { return float((i * mul + salt) % 9 - 4) / 8.0f; };
  std::vector<float> dy(size_t(p.N * p.Z * p.P * p.Q * p.K)), w(size_t(p.K * taps * p.C));
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = value(int64_t(i), 5, 3);
  for (size_t i = 0; i < w.size(); ++i) w[i] = float((int64_t(i) * 7 + 2) % 11 - 5) / 8.0f;
  std::vector<uint16_t> dy_buf, w_buf;
  uint16_t *dya = aligned16(dy_buf, dy.size()), *wa = aligned16(w_buf, w.size());
  for (size_t i = 0; i < dy.size(); ++i) dya[i] = to_bits(dy[i], dt);
  for (size_t i = 0; i < w.size(); ++i) wa[i] = to_bits(w[i], dt);

  // The host: dx[n][d][h][w][c] = sum over the taps and output channels of the outputs that read x there.
  const int64_t inputs = p.N * p.D * p.H * p.W * p.C;
  std::vector<uint16_t> want(static_cast<size_t>(inputs));
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t d = 0; d < p.D; ++d)
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t wi = 0; wi < p.W; ++wi)
          for (int64_t c = 0; c < p.C; ++c) {
            double s = 0;
            for (int tt = 0; tt < p.T; ++tt)
              for (int r = 0; r < p.R; ++r)
                for (int ss = 0; ss < p.S; ++ss) {
                  const int64_t zs = d + p.pad_d - tt, ps = h + p.pad_h - r, qs = wi + p.pad_w - ss;
                  if (zs < 0 || ps < 0 || qs < 0 || zs % p.stride_d || ps % p.stride_h || qs % p.stride_w) continue;
                  const int64_t z = zs / p.stride_d, pp = ps / p.stride_h, q = qs / p.stride_w;
                  if (z >= p.Z || pp >= p.P || q >= p.Q) continue;
                  const int64_t tap = (tt * p.R + r) * p.S + ss;
                  for (int64_t k = 0; k < p.K; ++k)
                    s += double(dy[size_t((((n * p.Z + z) * p.P + pp) * p.Q + q) * p.K + k)]) *
                         double(w[size_t((k * taps + tap) * p.C + c)]);
                }
            want[size_t((((n * p.D + d) * p.H + h) * p.W + wi) * p.C + c)] = to_bits(float(s), dt);
          }

  const std::vector<uint16_t> got = unet::test::under_every_schedule([&] {
    std::vector<uint16_t> dx(size_t(inputs), 0xFFFF);  // a NaN where nothing is written
    if (plant) {
      std::vector<sm90::DgradPhase> phases = sm90::dgrad_phases(p);
      plant(phases);
      for (const sm90::DgradPhase& ph : phases) sm90::conv_dgrad_sm90_phase(p, dt, dya, wa, dx.data(), ph, nullptr);
    } else {
      sm90::conv_dgrad_sm90(p, dt, dya, wa, dx.data(), nullptr);
    }
    return dx;
  });
  int64_t wrong = 0, first = -1;
  for (int64_t i = 0; i < inputs; ++i)
    if (got[size_t(i)] != want[size_t(i)] && wrong++ == 0) first = i;
  if (!plant)
    CHECK_MESSAGE(wrong == 0, wrong << " of " << inputs << " dx elements differ, the first at " << first << " (got "
                                    << (first >= 0 ? from_bits(got[size_t(first)], dt) : 0.f) << ", want "
                                    << (first >= 0 ? from_bits(want[size_t(first)], dt) : 0.f) << "; " << p.describe()
                                    << ")");
  return wrong;
}

void check_dgrad_ok(const ConvProblem& p, DType dt) {
  dgrad_mismatches(p, dt);
}

ConvProblem problem(int64_t n, int64_t d, int64_t h, int64_t w, int64_t c, int64_t k, int kernel, int stride, int pad) {
  ConvProblem p;
  p.N = n, p.D = d, p.H = h, p.W = w, p.C = c, p.K = k;
  p.T = p.R = p.S = kernel;
  p.stride_d = p.stride_h = p.stride_w = stride;
  p.pad_d = p.pad_h = p.pad_w = pad;
  return p;
}

}  // namespace

TEST_CASE("sm90 conv pipeline: 3x3x3 convolutions with padding over partial tiles, bf16, BK 16, 32 and 64") {
  // 128 outputs per block as 2 x 4 x 16; Z, P, Q of 3, 6, 9 leave every tile partial; K = 40 a partial N tile.
  sm90::ConvTile t{.zt = 2, .pt = 4, .qt = 16, .bn = 64, .bk = 16};
  check_conv(problem(1, 3, 6, 9, 16, 40, 3, 1, 1), t, DType::bf16);
  t.bk = 32;  // 24 channels: the k-step's last 8 are the copy's zeros, in x and in w
  check_conv(problem(2, 3, 5, 7, 24, 16, 3, 1, 1), t, DType::bf16);
  t.bk = 64;  // 72 channels: two k-steps per tap, the second mostly zeros
  check_conv(problem(1, 2, 4, 5, 72, 8, 3, 1, 1), t, DType::bf16);
}

TEST_CASE("sm90 conv pipeline: stride 2 (element strides of the activation box), 1x1x1 and f16") {
  sm90::ConvTile t{.zt = 1, .pt = 8, .qt = 16, .bn = 32, .bk = 32};
  check_conv(problem(1, 5, 9, 13, 32, 24, 3, 2, 1), t, DType::bf16);  // outputs 3 x 5 x 7
  t.bk = 16;
  check_conv(problem(1, 4, 6, 11, 16, 33, 1, 1, 0), t, DType::f16);
  t = {.zt = 4, .pt = 4, .qt = 8, .bn = 16, .bk = 64};
  check_conv(problem(1, 8, 8, 8, 64, 16, 2, 2, 0), t, DType::f16);  // the 2x2x2 stride-2 downsampling shape
}

TEST_CASE("sm90 conv pipeline: conv_sm90_problem names what the path cannot run") {
  const sm90::ConvTile t;
  ConvProblem p = problem(1, 4, 4, 4, 4, 8, 3, 1, 1);
  p.compute_output_size();
  CHECK(sm90::conv_sm90_problem(p, DType::bf16, t) == "needs C a multiple of 8 (C = 4)");
  p.C = 16;
  CHECK(sm90::conv_sm90_problem(p, DType::f32, t) == "needs f16 or bf16 storage");
  CHECK(sm90::conv_sm90_problem(p, DType::bf16, t) == "");
  sm90::ConvTile wide = t;
  wide.qt = 200;
  p.stride_w = 2;
  CHECK(sm90::conv_sm90_problem(p, DType::bf16, wide) == "a box exceeds 256 elements along a dim");
}

TEST_CASE("sm90 conv fprop with wgmma: the same problems through the kernel's consumer warpgroups") {
  // BN 64 and 128; BK 16, 32, 64 (the 32B, 64B and 128B swizzles read by the descriptors); partial tiles; stride 2.
  sm90::ConvTile t{.zt = 2, .pt = 4, .qt = 16, .bn = 64, .bk = 16};
  check_conv(problem(1, 3, 6, 9, 16, 40, 3, 1, 1), t, DType::bf16, Consumer::wgmma);
  t.bk = 32;
  check_conv(problem(2, 3, 5, 7, 24, 16, 3, 1, 1), t, DType::bf16, Consumer::wgmma);
  t.bk = 64;
  t.bn = 128;
  check_conv(problem(1, 2, 4, 5, 72, 136, 3, 1, 1), t, DType::bf16,
             Consumer::wgmma);  // two N tiles, the second partial
  t = {.zt = 1, .pt = 8, .qt = 16, .bn = 64, .bk = 32};
  check_conv(problem(1, 5, 9, 13, 32, 24, 3, 2, 1), t, DType::f16, Consumer::wgmma);
  t = {.zt = 4, .pt = 4, .qt = 8, .bn = 64, .bk = 64};
  check_conv(problem(2, 8, 8, 8, 64, 64, 2, 2, 0), t, DType::bf16, Consumer::wgmma);
}

TEST_CASE("sm90 conv fprop statistics: per-tile partials in the epilogue, finalized in tile order") {
  // Tiles never span samples here (a tile is a box of one sample); batches of 2 and 3 with partial tiles in every
  // direction: 2 x 4 x 16 boxes over 3 x 6 x 9 and 3 x 5 x 7 outputs; K = 40 and 136 leave partial N tiles.
  sm90::ConvTile t{.zt = 2, .pt = 4, .qt = 16, .bn = 64, .bk = 16};
  check_conv(problem(3, 3, 6, 9, 16, 40, 3, 1, 1), t, DType::bf16, Consumer::wgmma_stats);
  t.bk = 32;
  check_conv(problem(2, 3, 5, 7, 24, 16, 3, 1, 1), t, DType::f16, Consumer::wgmma_stats);
  t = {.zt = 1, .pt = 8, .qt = 16, .bn = 128, .bk = 64};
  check_conv(problem(2, 5, 9, 13, 64, 136, 3, 2, 1), t, DType::bf16, Consumer::wgmma_stats);  // stride 2, 2 N tiles
}

TEST_CASE("sm90 conv fprop with norm + leaky ReLU on load equals the plain kernel on the transformed input") {
  // 3D 3x3x3 padded, batch 3, C = 16 (BK 16, 32B swizzle), K = 40 (a partial N tile), 2 x 4 x 16 boxes over 3 x 6 x 9
  // outputs (partial M tiles); the padding ring at every tile's border.
  sm90::ConvTile t{.zt = 2, .pt = 4, .qt = 16, .bn = 64, .bk = 16};
  check_norm_act(problem(3, 3, 6, 9, 16, 40, 3, 1, 1), t, DType::bf16);
  // C = 24 in a BK 32 chunk (64B swizzle): the chunk's last 8 channels lie past C and must stay zero; batch 2, f16.
  t.bk = 32;
  check_norm_act(problem(2, 3, 5, 7, 24, 16, 3, 1, 1), t, DType::f16);
  // Stride 2 with padding, C = 72 (two BK 64 chunks, 128B swizzle, the second partial), K = 136 (BN 128, two N tiles).
  t = {.zt = 1, .pt = 8, .qt = 16, .bn = 128, .bk = 64};
  check_norm_act(problem(2, 5, 9, 13, 72, 136, 3, 2, 1), t, DType::bf16);
  // 2D 3x3 padded, batch 3, C = 32 (BK 32), f16; 2D stride 2, C = 8 in a BK 16 chunk, bf16.
  ConvProblem flat = problem(3, 1, 9, 11, 32, 64, 3, 1, 1);
  flat.T = 1, flat.pad_d = 0;
  check_norm_act(flat, {.zt = 1, .pt = 8, .qt = 16, .bn = 64, .bk = 32}, DType::f16);
  ConvProblem flat_s2 = problem(2, 1, 13, 21, 8, 24, 3, 2, 1);
  flat_s2.T = 1, flat_s2.pad_d = 0, flat_s2.stride_d = 1;
  check_norm_act(flat_s2, {.zt = 1, .pt = 8, .qt = 16, .bn = 64, .bk = 16}, DType::bf16);
}

TEST_CASE("sm90 conv wgrad with wgmma on MN-major operands: partial tiles, padding, stride 2, 2D and 3D, split-K") {
  // 3D 3x3x3 padded, batch 2: 64-pixel boxes of 1 x 8 x 8 over 3 x 5 x 7 outputs (6 boxes, more than the 4 stages);
  // C = 16 (BK 16), K = 40 (one partial M tile of BN 64: one consumer warpgroup). One split and three.
  const ConvProblem padded = problem(2, 3, 5, 7, 16, 40, 3, 1, 1);
  check_wgrad(padded, DType::bf16, 1);
  check_wgrad(padded, DType::bf16, 3);
  // Stride 2 (the element strides of the x box), C = 24 in a BK 32 chunk (8 zero channels), f16, two splits.
  check_wgrad(problem(1, 5, 9, 13, 24, 24, 3, 2, 1), DType::f16, 2);
  // 2D 3x3: C = 72 (two BK 64 chunks, the second partial), K = 136 (BN 128, two consumer warpgroups: two M tiles,
  // the second partial, its second warpgroup all zeros), batch 2.
  ConvProblem flat = problem(2, 1, 9, 11, 72, 136, 3, 1, 1);
  flat.T = 1, flat.pad_d = 0;
  check_wgrad(flat, DType::bf16, 2);
  // 1x1x1 with C = K = 8; the 2x2x2 stride-2 downsampling shape, default splits.
  check_wgrad(problem(1, 3, 4, 5, 8, 8, 1, 1, 0), DType::f16, 0);
  check_wgrad(problem(2, 8, 8, 8, 32, 64, 2, 2, 0), DType::bf16, 0);
  // Default splits above one: 32 boxes of 1 x 4 x 16 for 27 blocks make 4 splits of 8 boxes; equal to one split.
  const ConvProblem deep = problem(1, 8, 16, 16, 16, 16, 3, 1, 1);
  CHECK(check_wgrad(deep, DType::f16, 0) == check_wgrad(deep, DType::f16, 1));
}

TEST_CASE("sm90 conv wgrad: conv_wgrad_sm90_problem names what the path cannot run") {
  ConvProblem p = problem(1, 4, 4, 4, 16, 12, 3, 1, 1);
  p.compute_output_size();
  CHECK(sm90::conv_wgrad_sm90_problem(p, DType::bf16) == "needs K a multiple of 8 (K = 12)");
  p.K = 16, p.C = 12;
  CHECK(sm90::conv_wgrad_sm90_problem(p, DType::bf16) == "needs C a multiple of 8 (C = 12)");
  p.C = 16;
  CHECK(sm90::conv_wgrad_sm90_problem(p, DType::f32) == "needs f16 or bf16 storage");
  CHECK(sm90::conv_wgrad_sm90_problem(p, DType::f16) == "");
}

TEST_CASE("sm90 conv dgrad: stride 2 by parity classes, odd sizes, every class written, bit for bit") {
  // 3D 3x3x3 stride 2 padding 1 over 5 x 7 x 9 (outputs 3 x 4 x 5): along each axis the odd class is one position
  // shorter than the even one. C = 24 (the classes' fprop has K = 24, a partial N tile), K = 40 (its reduction: a BK 32
  // chunk and one of 8 channels, padded with zeros). The even class has 1 tap per axis, the odd one 2.
  check_dgrad_ok(problem(1, 5, 7, 9, 24, 40, 3, 2, 1), DType::bf16);
  // Batch 2, f16, even sizes (6 x 6 x 8): the odd class reaches past dy's end on the far side.
  check_dgrad_ok(problem(2, 6, 6, 8, 16, 8, 3, 2, 1), DType::f16);
  // 2x2x2 stride 2 without padding (the downsampling shape) on odd sizes 5 x 6 x 7: one tap per class, and the last
  // position along D and W read by no output (zeros through the copy's out-of-bounds fill).
  check_dgrad_ok(problem(1, 5, 6, 7, 32, 24, 2, 2, 0), DType::f16);
  // 1x1x1 stride 2: only the class (0, 0, 0) has a tap, the other 7 are zeros.
  check_dgrad_ok(problem(2, 5, 4, 7, 8, 16, 1, 2, 0), DType::bf16);
  // Paddings past nnU-Net's that the path admits (below the kernel size): 3x3x3 padding 2, where the odd class's fprop
  // has padding -1 (its copies start one row into dy), and 2x2x2 padding 1.
  check_dgrad_ok(problem(1, 5, 6, 7, 8, 16, 3, 2, 2), DType::f16);
  check_dgrad_ok(problem(1, 5, 6, 7, 16, 8, 2, 2, 1), DType::bf16);
  // Stride 1 (one class, the whole problem), C = 72 (BN 128 for the class's K, a partial tile).
  check_dgrad_ok(problem(1, 3, 5, 6, 72, 16, 3, 1, 1), DType::bf16);
}

TEST_CASE("sm90 conv dgrad: mixed strides (1, 2, 2) and 2D, as anisotropic nnU-Net plans have") {
  // Kernel 1x3x3 (padding 0, 1, 1) and 3x3x3, strides 1 x 2 x 2: 2 x 2 classes, each of the whole depth.
  ConvProblem flat_kernel = problem(1, 3, 7, 9, 16, 24, 3, 2, 1);
  flat_kernel.T = 1, flat_kernel.pad_d = 0, flat_kernel.stride_d = 1;
  check_dgrad_ok(flat_kernel, DType::f16);
  ConvProblem deep_kernel = problem(2, 3, 6, 5, 8, 32, 3, 2, 1);
  deep_kernel.stride_d = 1;
  check_dgrad_ok(deep_kernel, DType::bf16);
  // 2D 3x3 stride 2 over 9 x 11, C = 72 (BN 128, a partial tile), K = 80 (two BK 64 chunks, the second of 16): 4
  // classes. (K not a multiple of 9: dy's values would repeat from pixel to pixel.)
  ConvProblem flat = problem(1, 1, 9, 11, 72, 80, 3, 2, 1);
  flat.T = 1, flat.pad_d = 0, flat.stride_d = 1;
  check_dgrad_ok(flat, DType::bf16);
}

TEST_CASE("sm90 conv dgrad: a class written at the wrong parity, or not at all, is caught") {
  // The check itself: with the classes' first positions swapped along H, dx differs; with the last class dropped, its
  // positions keep the NaNs. (H even: both classes along H have 3 positions, so the swapped ones stay inside dx.)
  ConvProblem p = problem(1, 3, 6, 7, 8, 16, 3, 2, 1);
  p.stride_d = 1;
  CHECK(dgrad_mismatches(p, DType::f16, [](std::vector<sm90::DgradPhase>&) {}) == 0);  // unaltered: agrees
  CHECK(dgrad_mismatches(p, DType::f16, [](std::vector<sm90::DgradPhase>& phases) {
          for (sm90::DgradPhase& ph : phases) ph.h0 = 1 - ph.h0;
        }) > 0);
  CHECK(dgrad_mismatches(p, DType::f16, [](std::vector<sm90::DgradPhase>& phases) { phases.pop_back(); }) > 0);
}

TEST_CASE("sm90 conv dgrad: dgrad_phases splits the taps and positions by parity") {
  // 3 taps, stride 2, padding 1, 7 positions: the even class has 4 positions and the middle tap (padding 0: position
  // 2i reads dy[i]); the odd class 3 positions and taps 0 and 2 (position 2i + 1 reads dy[i + 1] and dy[i]).
  ConvProblem p = problem(1, 1, 1, 7, 8, 8, 1, 1, 0);
  p.S = 3, p.pad_w = 1, p.stride_w = 2;
  p.compute_output_size();
  const std::vector<sm90::DgradPhase> phases = sm90::dgrad_phases(p);
  REQUIRE(phases.size() == 2);
  CHECK(phases[0].w0 == 0);
  CHECK(phases[0].s0 == 1);
  CHECK(phases[0].q.S == 1);
  CHECK(phases[0].q.Q == 4);
  CHECK(phases[0].q.pad_w == 0);
  CHECK(phases[1].w0 == 1);
  CHECK(phases[1].s0 == 0);
  CHECK(phases[1].q.S == 2);
  CHECK(phases[1].q.Q == 3);
  CHECK(phases[1].q.pad_w == 0);
  CHECK(phases[1].q.W == 4);  // dy's width
  // Stride 3 is left to the mma.sync path.
  p.stride_w = 3;
  p.compute_output_size();
  CHECK(sm90::conv_dgrad_sm90_problem(p, DType::f16) == "needs strides 1 or 2");
}
