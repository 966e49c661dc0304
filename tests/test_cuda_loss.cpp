// CUDA loss (fused softmax + Dice + CE), optimizer (fused Adam/AdamW/SGD) and sliding-window blend kernels, run under
// the device emulator against the CPU kernels they mirror, and under the forward, reverse and random:7 thread
// schedules, which must give bitwise identical results (the emulator's stand-in for a race checker).
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/blend.h"
#include "kernels/cuda/blend.cuh"
#include "kernels/cuda/loss.cuh"
#include "kernels/cuda/optim.cuh"
#include "kernels/emu/emu.h"
#include "kernels/cpu/loss.h"
#include "kernels/cpu/optim.h"
#include "tests/test_util.h"

using namespace unet;

namespace {

const char* kSchedules[] = {"forward", "reverse", "random:7"};

struct ResetSchedule {
  ~ResetSchedule() { emu::set_schedule(emu::Schedule::parse("forward")); }
};

std::vector<float> normals(int64_t n, Rng& rng, double stddev = 1.0) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(rng.normal() * stddev);
  return v;
}

// ---- loss fixtures ----

struct LossCase {
  int64_t batch;
  std::array<int64_t, 3> spatial;  // 2D: spatial[0] == 1
  int channels;
  DType label_dtype;
  int64_t voxels() const { return batch * spatial[0] * spatial[1] * spatial[2]; }
};

struct LossData {
  std::vector<float> logits;
  std::vector<int32_t> labels_i32;
  std::vector<uint8_t> labels_u8;
  const void* labels(DType t) const {
    return t == DType::i32 ? static_cast<const void*>(labels_i32.data()) : labels_u8.data();
  }
};

LossData make_loss_data(const LossCase& lc, Rng& rng) {
  LossData d;
  d.logits = normals(lc.voxels() * lc.channels, rng, 3.0);
  for (int64_t v = 0; v < lc.voxels(); ++v) {
    const int32_t y = static_cast<int32_t>(rng.below(lc.channels));
    d.labels_i32.push_back(y);
    d.labels_u8.push_back(static_cast<uint8_t>(y));
  }
  return d;
}

// Randomized 2D and 3D cases, batch > 1, odd sizes, C = 2..5 (unrolled kernels) and 11 (the generic kernel).
std::vector<LossCase> loss_cases() {
  Rng rng(2024);
  std::vector<LossCase> cases;
  for (int C = 2; C <= 5; ++C)
    for (bool three_d : {false, true}) {
      LossCase lc;
      lc.batch = 2 + rng.below(2);
      lc.spatial = three_d ? std::array<int64_t, 3>{5 + 2 * rng.below(3), 7 + 2 * rng.below(4), 9 + 2 * rng.below(3)}
                           : std::array<int64_t, 3>{1, 21 + 2 * rng.below(8), 23 + 2 * rng.below(8)};
      lc.channels = C;
      lc.label_dtype = (C % 2) ? DType::u8 : DType::i32;
      cases.push_back(lc);
    }
  cases.push_back({2, {1, 151, 163}, 3, DType::i32});  // ~49k voxels: 49 partial blocks
  cases.push_back({2, {3, 11, 13}, 11, DType::u8});    // generic channel count
  return cases;
}

struct GpuSums {
  std::vector<double> sums;
  int64_t bad[2] = {-1, -1};
};

GpuSums gpu_forward(const LossCase& lc, const LossData& d, bool squared = false) {
  std::vector<unsigned char> ws(kernels::cuda::softmax_dice_ce_workspace_bytes(lc.voxels(), lc.channels), 0xff);
  GpuSums g;
  g.sums.assign(3 * lc.channels + 1, std::nan(""));
  g.bad[0] = g.bad[1] = 12345;
  kernels::cuda::softmax_dice_ce_forward(d.logits.data(), d.labels(lc.label_dtype), lc.label_dtype, lc.voxels(),
                                         lc.channels, squared, ws.data(), g.sums.data(), g.bad, nullptr);
  return g;
}

// Intersections, probability sums and CE sums are sums of the same f32 per-voxel terms in double, in another order
// than the CPU's (threads, shuffle tree, blocks vs 4096-voxel chunks): the difference is a few double roundings,
// far below 1e-9 relative, but a GPU's expf/logf may differ from glibc's by an ulp or two, which moves each term by
// ~1e-7 relative, hence 1e-6. Label counts are sums of 1.0: exact.
void check_sums(const LossCase& lc, const GpuSums& g, const std::vector<double>& I, const std::vector<double>& P,
                const std::vector<double>& Y, double ce, const std::string& what) {
  const int C = lc.channels;
  auto close = [](double a, double b) { return std::abs(a - b) <= 1e-6 * std::abs(b) + 1e-9; };
  for (int c = 0; c < C; ++c) {
    CHECK_MESSAGE(close(g.sums[c], I[c]), what << " intersect[" << c << "] " << g.sums[c] << " vs " << I[c]);
    CHECK_MESSAGE(close(g.sums[C + c], P[c]), what << " prob_sum[" << c << "] " << g.sums[C + c] << " vs " << P[c]);
    CHECK_MESSAGE(g.sums[2 * C + c] == Y[c], what << " label_sum[" << c << "]");
  }
  CHECK_MESSAGE(close(g.sums[3 * C], ce), what << " ce " << g.sums[3 * C] << " vs " << ce);
}

std::string describe(const LossCase& lc) {
  std::ostringstream os;
  os << "B" << lc.batch << " " << lc.spatial[0] << "x" << lc.spatial[1] << "x" << lc.spatial[2] << " C" << lc.channels
     << " " << dtype_name(lc.label_dtype);
  return os.str();
}

}  // namespace

TEST_CASE("cuda softmax_dice_ce_forward sums match the CPU sums on random 2D and 3D batches with 2 to 5 classes") {
  Rng rng(1);
  for (const LossCase& lc : loss_cases())
    for (bool squared : {false, true}) {  // sum p (nnU-Net) or sum p^2 (DLE UNet2D)
      LossData d = make_loss_data(lc, rng);
      const int C = lc.channels;
      std::vector<double> I(C), P(C), Y(C);
      double ce = 0;
      int64_t bad_label = 0;
      const int64_t cpu_bad =
          kernels::cpu::softmax_dice_ce_forward(d.logits.data(), d.labels(lc.label_dtype), lc.label_dtype, lc.voxels(),
                                                C, squared, I.data(), P.data(), Y.data(), &ce, &bad_label);
      REQUIRE(cpu_bad == -1);
      GpuSums g = gpu_forward(lc, d, squared);
      CHECK(g.bad[0] == -1);
      check_sums(lc, g, I, P, Y, ce, describe(lc) + (squared ? " squared" : ""));
    }
}

TEST_CASE("cuda softmax_dice_ce_forward reports the first invalid label and leaves invalid voxels out of the sums") {
  Rng rng(2);
  for (DType t : {DType::i32, DType::u8}) {
    LossCase lc{3, {3, 17, 19}, 4, t};  // 2907 voxels, 3 partial blocks: the first bad voxel is not in block 0's
    LossData d = make_loss_data(lc, rng);
    for (int64_t v : {int64_t(2500), int64_t(1500), int64_t(2906)}) {  // 1500 is the first: in block 1
      d.labels_i32[v] = v == 1500 ? -1 : 7;
      d.labels_u8[v] = v == 1500 ? 200 : 7;
    }
    std::vector<double> I(4), P(4), Y(4);
    double ce = 0;
    int64_t bad_label = 0;
    const int64_t cpu_bad = kernels::cpu::softmax_dice_ce_forward(d.logits.data(), d.labels(t), t, lc.voxels(), 4,
                                                                  false, I.data(), P.data(), Y.data(), &ce, &bad_label);
    GpuSums g = gpu_forward(lc, d);
    CHECK(g.bad[0] == 1500);
    CHECK(g.bad[0] == cpu_bad);
    CHECK(g.bad[1] == bad_label);
    CHECK(g.bad[1] == (t == DType::i32 ? -1 : 200));
    check_sums(lc, g, I, P, Y, ce, describe(lc));
  }
}

TEST_CASE("cuda softmax_dice_ce_forward gives bitwise identical sums under every schedule") {
  ResetSchedule reset;
  Rng rng(3);
  for (const LossCase& lc : {LossCase{2, {3, 13, 15}, 3, DType::i32}, LossCase{2, {1, 37, 41}, 5, DType::u8}}) {
    LossData d = make_loss_data(lc, rng);
    d.labels_i32[777] = 9;
    d.labels_u8[777] = 9;
    std::vector<GpuSums> runs;
    for (const char* s : kSchedules) {
      emu::set_schedule(emu::Schedule::parse(s));
      runs.push_back(gpu_forward(lc, d));
    }
    for (size_t r = 1; r < runs.size(); ++r) {
      CHECK_MESSAGE(std::memcmp(runs[0].sums.data(), runs[r].sums.data(), runs[0].sums.size() * sizeof(double)) == 0,
                    describe(lc) << " " << kSchedules[r]);
      CHECK(runs[r].bad[0] == 777);
      CHECK(runs[r].bad[1] == 9);
    }
  }
}

namespace {
std::vector<float> gpu_backward(const LossCase& lc, const LossData& d, const std::vector<float>& a,
                                const std::vector<float>& b, float grad_out, bool squared = false) {
  std::vector<float> g(static_cast<size_t>(lc.voxels() * lc.channels), std::nanf(""));
  kernels::cuda::softmax_dice_ce_backward(d.logits.data(), d.labels(lc.label_dtype), lc.label_dtype, lc.voxels(),
                                          lc.voxels(), lc.channels, squared, a.data(), b.data(), &grad_out, g.data(),
                                          nullptr);
  return g;
}
}  // namespace

TEST_CASE("cuda softmax_dice_ce_finish computes the cpu's loss, parts and coefficients bit for bit, NaN on a bad label") {
  Rng rng(6);
  for (const LossCase& lc : loss_cases()) {
    LossData d = make_loss_data(lc, rng);
    GpuSums g = gpu_forward(lc, d);
    const int C = lc.channels;
    std::vector<float> cpu(3 + 2 * C), gpu(3 + 2 * C);  // loss, dice, ce, a [C], b [C]
    const kernels::DiceForm form;
    kernels::cpu::softmax_dice_ce_finish(g.sums.data(), g.bad, 1, 1, C, lc.voxels(), form, &cpu[0], &cpu[1], &cpu[3],
                                         &cpu[3 + C]);
    kernels::cuda::softmax_dice_ce_finish(g.sums.data(), g.bad, 1, 1, C, lc.voxels(), form, &gpu[0], &gpu[1], &gpu[3],
                                          &gpu[3 + C], nullptr);
    CHECK_MESSAGE(cpu == gpu, describe(lc));  // the same double arithmetic, each result rounded once
    CHECK(cpu[0] == doctest::Approx(cpu[1] + cpu[2]).epsilon(1e-6));
    CHECK(cpu[3] == 0.f);  // background: not in the Dice mean
    const int64_t bad[2] = {17, 9};
    kernels::cuda::softmax_dice_ce_finish(g.sums.data(), bad, 1, 1, C, lc.voxels(), form, &gpu[0], &gpu[1], &gpu[3],
                                          &gpu[3 + C], nullptr);
    CHECK(std::isnan(gpu[0]));
    CHECK(std::isnan(gpu[1]));
    CHECK(std::isnan(gpu[2]));
  }
}

TEST_CASE("cuda softmax_dice_ce_finish of per-sample squared Dice (DLE) computes the cpu's results bit for bit") {
  Rng rng(16);
  for (const LossCase& lc : loss_cases()) {
    LossData d = make_loss_data(lc, rng);
    const int C = lc.channels, q = 3 * C + 1;
    // Three groups' sums (the first three variants of this batch), with the Dice mean over 5 groups (two on other
    // ranks) and a bad label in none, then in the last.
    std::vector<double> sums;
    std::vector<int64_t> bad;
    for (int g = 0; g < 3; ++g) {
      GpuSums s = gpu_forward(lc, make_loss_data(lc, rng), true);
      sums.insert(sums.end(), s.sums.begin(), s.sums.end());
      bad.insert(bad.end(), {s.bad[0], s.bad[1]});
    }
    REQUIRE(sums.size() == size_t(3 * q));
    const kernels::DiceForm form{true, true, 1e-6};
    std::vector<float> cpu(3 + 6 * C), gpu(3 + 6 * C);  // loss, dice, ce, a [3][C], b [3][C]
    kernels::cpu::softmax_dice_ce_finish(sums.data(), bad.data(), 3, 5, C, 3 * lc.voxels(), form, &cpu[0], &cpu[1],
                                         &cpu[3], &cpu[3 + 3 * C]);
    kernels::cuda::softmax_dice_ce_finish(sums.data(), bad.data(), 3, 5, C, 3 * lc.voxels(), form, &gpu[0], &gpu[1],
                                          &gpu[3], &gpu[3 + 3 * C], nullptr);
    CHECK_MESSAGE(cpu == gpu, describe(lc));
    // Independent: 3 of 5 groups' Dice terms (background included), each 1 - (2 I + s) / (Q + Y + s), over 5 C.
    double dice = 0, ce = 0;
    for (int g = 0; g < 3; ++g) {
      for (int c = 0; c < C; ++c)
        dice += 1 - (2 * sums[g * q + c] + 1e-6) / (sums[g * q + C + c] + sums[g * q + 2 * C + c] + 1e-6);
      ce += sums[g * q + 3 * C];
    }
    CHECK(cpu[1] == doctest::Approx(dice / (5 * C)).epsilon(1e-6));
    CHECK(cpu[2] == doctest::Approx(ce / (3 * lc.voxels())).epsilon(1e-6));
    CHECK(cpu[3] != 0.f);  // background is in the Dice mean
    bad[4] = 3;
    kernels::cuda::softmax_dice_ce_finish(sums.data(), bad.data(), 3, 5, C, 3 * lc.voxels(), form, &gpu[0], &gpu[1],
                                          &gpu[3], &gpu[3 + 3 * C], nullptr);
    CHECK(std::isnan(gpu[0]));
  }
}

TEST_CASE("cuda softmax_dice_ce_backward matches the CPU gradient on random 2D and 3D batches with 2 to 5 classes") {
  Rng rng(4);
  for (const LossCase& lc : loss_cases()) {
    LossData d = make_loss_data(lc, rng);
    std::vector<float> a = normals(lc.channels, rng, 0.01), b = normals(lc.channels, rng, 0.01);
    a[0] = b[0] = 0.f;  // background outside the dice mean, as nnU-Net's do_bg=False
    const float grad_out = 1.75f;  // the incoming gradient, folded into the coefficients by the kernels
    for (bool squared : {false, true}) {
      std::vector<float> cpu(static_cast<size_t>(lc.voxels() * lc.channels));
      kernels::cpu::softmax_dice_ce_backward(d.logits.data(), d.labels(lc.label_dtype), lc.label_dtype, lc.voxels(),
                                             lc.voxels(), lc.channels, squared, a.data(), b.data(), &grad_out,
                                             cpu.data());
      // Same per-voxel operations in the same order; the emulator matches the CPU exactly unless the host compiler
      // contracts differently, and a GPU's expf may differ by 2 ulp: 1e-5 relative to the gradient's scale.
      float scale = 0.f;
      for (float v : cpu) scale = std::max(scale, std::abs(v));
      test::check_close(gpu_backward(lc, d, a, b, grad_out, squared), cpu, 1e-5, 1e-5 * scale,
                        describe(lc) + (squared ? " squared" : ""));
    }
  }
}

TEST_CASE("cuda softmax_dice_ce_backward gives bitwise identical gradients under every schedule") {
  ResetSchedule reset;
  Rng rng(5);
  LossCase lc{2, {3, 9, 13}, 4, DType::i32};
  LossData d = make_loss_data(lc, rng);
  std::vector<float> a = normals(4, rng), b = normals(4, rng);
  std::vector<std::vector<float>> runs;
  for (const char* s : kSchedules) {
    emu::set_schedule(emu::Schedule::parse(s));
    runs.push_back(gpu_backward(lc, d, a, b, 0.5f));
  }
  for (size_t r = 1; r < runs.size(); ++r)
    CHECK_MESSAGE(std::memcmp(runs[0].data(), runs[r].data(), runs[0].size() * sizeof(float)) == 0, kSchedules[r]);
}

// ---- optimizer ----

namespace {

// Parameters of odd sizes, several spanning more than one 4096-element chunk, with random state.
struct OptimState {
  std::vector<int64_t> sizes{1, 333, 4097, 9001, 7, 12289};
  std::vector<std::vector<float>> param, grad, m, v;
  explicit OptimState(Rng& rng, float grad_scale = 1.f) {
    for (int64_t n : sizes) {
      param.push_back(normals(n, rng));
      grad.push_back(normals(n, rng, grad_scale));
      m.push_back(normals(n, rng, 0.1));
      std::vector<float> sq = normals(n, rng, 0.1);
      for (float& x : sq) x = x * x;
      v.push_back(sq);
    }
  }
  std::vector<kernels::cpu::AdamSlice> adam_slices() {
    std::vector<kernels::cpu::AdamSlice> s;
    for (size_t i = 0; i < sizes.size(); ++i)
      s.push_back({param[i].data(), grad[i].data(), m[i].data(), v[i].data(), sizes[i], int64_t(1 + 3 * i)});
    return s;
  }
  std::vector<kernels::cpu::SgdSlice> sgd_slices(bool with_buffer) {
    std::vector<kernels::cpu::SgdSlice> s;
    for (size_t i = 0; i < sizes.size(); ++i)
      s.push_back({param[i].data(), grad[i].data(), with_buffer ? m[i].data() : nullptr, sizes[i], i % 2 == 0});
    return s;
  }
  std::vector<float> flat() const {
    std::vector<float> out;
    for (const auto* group : {&param, &m, &v})
      for (const auto& t : *group) out.insert(out.end(), t.begin(), t.end());
    return out;
  }
};

int cuda_adam(OptimState& st, const kernels::cpu::AdamArgs& args) {
  auto slices = st.adam_slices();
  std::vector<unsigned char> ws(kernels::cuda::optim_workspace_bytes(st.sizes.data(), st.sizes.size()), 0xff);
  int nonfinite = -1;
  kernels::cuda::adam_step(slices.data(), slices.size(), args, ws.data(), &nonfinite, nullptr);
  return nonfinite;
}
int cuda_sgd(OptimState& st, const kernels::cpu::SgdArgs& args) {
  auto slices = st.sgd_slices(args.momentum != 0.0);
  std::vector<unsigned char> ws(kernels::cuda::optim_workspace_bytes(st.sizes.data(), st.sizes.size()), 0xff);
  int nonfinite = -1;
  kernels::cuda::sgd_step(slices.data(), slices.size(), args, ws.data(), &nonfinite, nullptr);
  return nonfinite;
}

}  // namespace

// The update is the CPU's operation sequence with the same f32 constants; every product and sum rounds once on a GPU
// (__fmul_rn / __fadd_rn), and division and sqrt are IEEE. The CPU build (GNU C++, -march with FMA) may contract a
// product and sum into one FMA where the CUDA source does not: the two differ by an ulp of the operands, which is many
// ulps of a result that cancels (m = b1 m + (1 - b1) g near 0), so the bound is 2e-6 relative plus 1e-7 absolute
// (an ulp of the ~0.1..1 operands). Where neither side contracts, the results are bitwise equal.
TEST_CASE("cuda adam_step matches the CPU AdamW and Adam steps over all parameters in one launch") {
  for (bool decoupled : {true, false}) {
    Rng r1(6), r2(6);
    OptimState cpu(r1, 1024.f), gpu(r2, 1024.f);
    kernels::cpu::AdamArgs args{1e-3, 0.9, 0.999, 1e-8, 3e-2, decoupled, 1.f / 1024.f};
    auto slices = cpu.adam_slices();
    REQUIRE(kernels::cpu::adam_step(slices.data(), slices.size(), args));
    CHECK(cuda_adam(gpu, args) == 0);
    test::check_close(gpu.flat(), cpu.flat(), 2e-6, 1e-7, decoupled ? "AdamW" : "Adam");
  }
}

TEST_CASE("cuda sgd_step matches the CPU SGD step, plain, with momentum and Nesterov") {
  for (int mode = 0; mode < 3; ++mode) {
    Rng r1(7), r2(7);
    OptimState cpu(r1, 8.f), gpu(r2, 8.f);
    kernels::cpu::SgdArgs args{1e-2, mode == 0 ? 0.0 : 0.99, 3e-5, mode == 2, 0.125f};
    auto slices = cpu.sgd_slices(mode != 0);
    REQUIRE(kernels::cpu::sgd_step(slices.data(), slices.size(), args));
    CHECK(cuda_sgd(gpu, args) == 0);
    test::check_close(gpu.flat(), cpu.flat(), 2e-6, 1e-7, mode == 0 ? "plain" : (mode == 1 ? "momentum" : "nesterov"));
  }
}

TEST_CASE("cuda optimizer steps write nothing and flag the step when one gradient is inf or nan after unscaling") {
  for (int which = 0; which < 3; ++which) {
    Rng rng(8);
    OptimState st(rng);
    // an inf, a nan, and a finite 1e30 that unscaling by 1e10 overflows; all in the last chunk of one parameter
    st.grad[3][9000] = which == 0 ? std::numeric_limits<float>::infinity() : (which == 1 ? std::nanf("") : 1e30f);
    const float inv_scale = which == 2 ? 1e10f : 1.f;
    const std::vector<float> before = st.flat();
    CHECK(cuda_adam(st, kernels::cpu::AdamArgs{1e-3, 0.9, 0.999, 1e-8, 0.0, true, inv_scale}) == 1);
    CHECK(std::memcmp(st.flat().data(), before.data(), before.size() * sizeof(float)) == 0);
    CHECK(cuda_sgd(st, kernels::cpu::SgdArgs{1e-2, 0.9, 0.0, true, inv_scale}) == 1);
    CHECK(std::memcmp(st.flat().data(), before.data(), before.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("cuda optimizer steps give bitwise identical results under every schedule") {
  ResetSchedule reset;
  std::vector<std::vector<float>> adam, sgd;
  for (const char* s : kSchedules) {
    emu::set_schedule(emu::Schedule::parse(s));
    Rng r1(9), r2(9);
    OptimState a(r1), b(r2);
    CHECK(cuda_adam(a, kernels::cpu::AdamArgs{1e-3, 0.9, 0.999, 1e-8, 1e-2, true, 0.5f}) == 0);
    CHECK(cuda_sgd(b, kernels::cpu::SgdArgs{1e-2, 0.9, 1e-4, true, 0.5f}) == 0);
    adam.push_back(a.flat());
    sgd.push_back(b.flat());
  }
  for (size_t r = 1; r < adam.size(); ++r) {
    CHECK_MESSAGE(std::memcmp(adam[0].data(), adam[r].data(), adam[0].size() * 4) == 0, kSchedules[r]);
    CHECK_MESSAGE(std::memcmp(sgd[0].data(), sgd[r].data(), sgd[0].size() * 4) == 0, kSchedules[r]);
  }
}

// ---- sliding-window blend ----

TEST_CASE("cuda importance_map equals the CPU map bit for bit for 2D and 3D patches, Gaussian and constant") {
  // Same double expressions, rounded to f32 once; a GPU's double exp may differ in the last double bit, which
  // survives the rounding to f32 only in rare ties, so the emulated comparison is exact.
  for (const kernels::cpu::Dims3& p :
       {kernels::cpu::Dims3{1, 37, 20}, kernels::cpu::Dims3{9, 16, 11}, kernels::cpu::Dims3{4, 1, 7}})
    for (bool gaussian : {true, false}) {
      const size_t n = static_cast<size_t>(p[0] * p[1] * p[2]);
      std::vector<float> cpu(n), gpu(n, std::nanf(""));
      kernels::cpu::importance_map(p, gaussian, 0.125f, 1e-3f, cpu.data());
      kernels::cuda::importance_map(p, gaussian, 0.125f, 1e-3f, gpu.data(), nullptr);
      CHECK_MESSAGE(std::memcmp(cpu.data(), gpu.data(), n * 4) == 0, p[0] << "x" << p[1] << "x" << p[2]);
    }
}

namespace {
struct BlendCase {
  kernels::cpu::Dims3 size, patch;
  int64_t c;
};
// Overlapping windows with every flip pattern, accumulated in order into out / norm; windows extracted first.
void run_blend(bool cuda, const BlendCase& bc, const std::vector<float>& volume, std::vector<float>& out,
               std::vector<float>& norm, std::vector<float>& windows) {
  const auto& [size, patch, c] = bc;
  const int64_t pn = patch[0] * patch[1] * patch[2];
  std::vector<float> weight(static_cast<size_t>(pn));
  kernels::cpu::importance_map(patch, true, 0.125f, 1e-3f, weight.data());
  Rng rng(10);
  int k = 0;
  for (int64_t z = 0; z + patch[0] <= size[0]; z += std::max<int64_t>(1, patch[0] / 2))
    for (int64_t y = 0; y + patch[1] <= size[1]; y += patch[1] / 2)
      for (int64_t x = 0; x + patch[2] <= size[2]; x += patch[2] / 2, ++k) {
        const kernels::cpu::Dims3 start{z, y, x};
        const std::array<bool, 3> flip{bool(k & 1), bool(k & 2), bool(k & 4)};
        std::vector<float> win(static_cast<size_t>(pn * c));
        std::vector<float> pred = normals(pn * c, rng);
        if (cuda) {
          kernels::cuda::extract_window(volume.data(), size, c, start, patch, flip, win.data(), nullptr);
          kernels::cuda::accumulate_window(pred.data(), weight.data(), patch, c, start, size, flip, 0.5f, out.data(),
                                           norm.data(), nullptr);
        } else {
          kernels::cpu::extract_window(volume.data(), size, c, start, patch, flip, win.data());
          kernels::cpu::accumulate_window(pred.data(), weight.data(), patch, c, start, size, flip, 0.5f, out.data(),
                                          norm.data());
        }
        windows.insert(windows.end(), win.begin(), win.end());
      }
}
const BlendCase kBlendCases[] = {{{1, 45, 39}, {1, 16, 14}, 3}, {{13, 21, 19}, {6, 10, 8}, 2}, {{7, 9, 11}, {4, 5, 6}, 5}};
}  // namespace

TEST_CASE("cuda extract_window and accumulate_window match the CPU over overlapping flipped 2D and 3D windows") {
  for (const BlendCase& bc : kBlendCases) {
    const int64_t vn = bc.size[0] * bc.size[1] * bc.size[2];
    Rng rng(11);
    const std::vector<float> volume = normals(vn * bc.c, rng);
    std::vector<float> out_cpu(static_cast<size_t>(vn * bc.c), 0.f), norm_cpu(static_cast<size_t>(vn), 0.f),
        win_cpu, out_gpu = out_cpu, norm_gpu = norm_cpu, win_gpu;
    run_blend(false, bc, volume, out_cpu, norm_cpu, win_cpu);
    run_blend(true, bc, volume, out_gpu, norm_gpu, win_gpu);
    CHECK(win_cpu == win_gpu);    // copies: exact
    CHECK(norm_cpu == norm_gpu);  // the same f32 additions in the same (window) order: exact
    // out += (w * scale) * pred in window order on both sides; a compiler may fuse the multiply-add into one FMA
    // (nvcc does, the CPU build may): each window's term may differ by half an ulp, so 1e-6 of the output's scale.
    float scale = 0.f;
    for (float v : out_cpu) scale = std::max(scale, std::abs(v));
    test::check_close(out_gpu, out_cpu, 1e-6, 1e-6 * scale, "out");
  }
}

TEST_CASE("cuda blend kernels give bitwise identical results under every schedule") {
  ResetSchedule reset;
  const BlendCase& bc = kBlendCases[1];
  const int64_t vn = bc.size[0] * bc.size[1] * bc.size[2];
  Rng rng(12);
  const std::vector<float> volume = normals(vn * bc.c, rng);
  std::vector<std::vector<float>> outs;
  for (const char* s : kSchedules) {
    emu::set_schedule(emu::Schedule::parse(s));
    std::vector<float> out(static_cast<size_t>(vn * bc.c), 0.f), norm(static_cast<size_t>(vn), 0.f), win;
    run_blend(true, bc, volume, out, norm, win);
    std::vector<float> map(static_cast<size_t>(6 * 10 * 8));
    kernels::cuda::importance_map(bc.patch, true, 0.125f, 1e-3f, map.data(), nullptr);
    for (const auto* part : {&norm, &win, &map}) out.insert(out.end(), part->begin(), part->end());
    outs.push_back(out);
  }
  for (size_t r = 1; r < outs.size(); ++r)
    CHECK_MESSAGE(std::memcmp(outs[0].data(), outs[r].data(), outs[0].size() * 4) == 0, kSchedules[r]);
}
