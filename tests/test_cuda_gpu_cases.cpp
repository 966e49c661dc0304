// The device-generic checks of tests/test_gpu.cpp (tests/gpu_conv_cases.h, gpu_train_cases.h) on the emulated device
// at tiny sizes, so the default build's CI exercises the GPU test's own logic (its references, tolerances, NaN
// poisoning, the tile-choice evidence and the checkpoint comparison) without a GPU. The production-size runs are in
// test_gpu.cpp, on a GPU.
#include <cmath>
#include <string>
#include <vector>

#include "engine/device.h"
#include "tests/gpu_conv_cases.h"
#include "tests/test_util.h"
#ifndef UNET_CHECKED  // the checked build has no models/ or io/
#include "tests/gpu_train_cases.h"
#endif

using namespace unet;
namespace gc = unet::test::gpu_cases;
using gc::ConvPrecision;
using gc::Tile;

namespace {
constexpr Device kEmu = Device::cuda_emu;
const ConvPrecision kAll[] = {ConvPrecision::f16, ConvPrecision::bf16, ConvPrecision::tf32, ConvPrecision::f32};
}  // namespace

TEST_CASE("gpu cases on cuda-emu: every conv pass in every precision equals the cpu within the GPU test's tolerances") {
  // 2 x 3x4x5, 16 -> 8 channels (vector loads) and 1 x 3x5x7, 5 -> 3 (element loads), stride 1 and 2.
  const kernels::ConvProblem vec = gc::problem(2, 3, 4, 5, 16, 8, 3, 3, 1, 1);
  const kernels::ConvProblem elem = gc::problem(1, 3, 5, 7, 5, 3, 3, 3, 2, 1);
  uint64_t seed = 3000;
  for (ConvPrecision pr : kAll) {
    gc::run_conv(kEmu, "vec", vec, pr, gc::kAllPasses, seed += 10);
    gc::run_conv(kEmu, "elem", elem, pr, gc::kAllPasses, seed += 10);
  }
}

TEST_CASE("gpu cases on cuda-emu: every forced tile equals the cpu") {
  const kernels::ConvProblem p = gc::problem(1, 1, 6, 9, 16, 24, 1, 3, 1, 1);  // 2D, K = 144
  uint64_t seed = 3100;
  for (Tile t : {Tile{128, 64}, Tile{128, 32}, Tile{64, 64}}) {
    CAPTURE(t.bm);
    CAPTURE(t.bn);
    gc::run_conv(kEmu, "forced", p, ConvPrecision::bf16, gc::kAllPasses, seed += 10, true, t);
  }
  gc::run_conv(kEmu, "forced", p, ConvPrecision::f16, gc::kWgrad, seed += 10, true, {128, 128});
}

TEST_CASE("gpu cases on cuda-emu: the fused statistics' bits tell the tile the kernels chose") {
  // The evidence test_gpu.cpp uses at production sizes, here where the kernels choose 128x32 (32 output channels)
  // and 64x64 (64 channels, fewer than 8192 rows); 128 pixels per sample, so both tile heights fuse the statistics.
  const kernels::ConvProblem k32 = gc::problem(1, 4, 4, 8, 16, 32, 3, 3, 1, 1);
  const kernels::ConvProblem k64 = gc::problem(1, 4, 4, 8, 16, 64, 3, 3, 1, 1);
  REQUIRE(gc::fprop_tile(k32) == Tile{128, 32});
  REQUIRE(gc::fprop_tile(k64) == Tile{64, 64});
  struct {
    const kernels::ConvProblem& p;
    Tile chosen, other;
  } cases[] = {{k32, {128, 32}, {64, 64}}, {k64, {64, 64}, {128, 64}}};
  uint64_t seed = 3200;
  for (const auto& c : cases)
    for (ConvPrecision pr : {ConvPrecision::f16, ConvPrecision::tf32}) {
      CAPTURE(c.chosen.bn);
      CAPTURE(kernels::conv_precision_name(pr));
      const gc::ConvOutputs chosen = gc::run_conv(kEmu, "tile", c.p, pr, gc::kFprop, seed, true);
      const gc::ConvOutputs forced = gc::run_conv(kEmu, "tile", c.p, pr, gc::kFprop, seed, false, c.chosen);
      const gc::ConvOutputs other = gc::run_conv(kEmu, "tile", c.p, pr, gc::kFprop, seed, false, c.other);
      CHECK(gc::same_bits(chosen.y, forced.y));
      CHECK(gc::same_bits(chosen.stats, forced.stats));
      CHECK_FALSE(gc::same_bits(chosen.stats, other.stats));
      seed += 10;
    }
}

TEST_CASE("gpu cases on cuda-emu: the comparison fails a 1% error, a NaN and a large L2 error") {
  const std::vector<float> ref = {1.f, -2.f, 3.f}, bound = {1.f, 2.f, 3.f};
  CHECK(gc::measure_result(ref, ref, bound, 0x1p-10, 1e-5, ref).worst == 0.0);
  std::vector<float> got = ref;
  got[1] += 0.02f;  // 1% of B there: far beyond 2^-10 |ref| + 1e-5 B
  const gc::ResultError off = gc::measure_result(got, ref, bound, 0x1p-10, 1e-5, ref);
  CHECK(off.worst > 1.0);
  CHECK(off.at == 1);
  CHECK(off.l2 == doctest::Approx(0.02 / std::sqrt(14.0)).epsilon(1e-3));
  got = ref;
  got[2] = NAN;
  const gc::ResultError nan = gc::measure_result(got, ref, bound, 0x1p-10, 1e-5, ref);
  CHECK(nan.worst > 1.0);
  CHECK(nan.at == 2);
  CHECK(nan.nonfinite == 1);
  CHECK(gc::tf32_round(1.f + 0x1p-11f) == 1.f + 0x1p-10f);  // a tie: away from zero
  CHECK(gc::tf32_round(1.f + 0x1p-12f) == 1.f);
}

TEST_CASE("gpu cases on cuda-emu: test_gpu's statistics and norm + act case as it runs on a GPU") {
  gc::conv_statistics_case(kEmu);  // the production-tile cases take minutes here: run on the emulator by hand
}

#ifndef UNET_CHECKED
TEST_CASE(
    "gpu cases on cuda-emu: two AdamW steps equal the cpu's, and the device model's checkpoint holds its weights") {
  // filters 4 / 8 / 16, 8^3, batch 2 (test_gpu.cpp: filters 8, 32^3 on a GPU).
  gc::check_training_and_checkpoint(kEmu, 4, 8, 2, 2);
}
#endif
