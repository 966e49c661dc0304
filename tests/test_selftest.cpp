// The GPU self-test: the comparison that decides PASS/FAIL, and the unet_selftest command on the emulated device
// (how CI runs it): a clean run passes every check of every op family with exit status 0, a planted mismatch fails
// exactly the perturbed checks with exit status 1 (every direct f16/bf16 convolution kernel row included), and a
// missing GPU or a bad argument is a clear error.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/selftest.h"
#include "engine/device.h"
#include "tests/test_util.h"

using namespace unet;
using selftest::compare_results;

namespace {
// The cases that run the tool on cuda-emu need the emulated build; the GPU build has no emulator (they then say so and
// pass, as tests/test_gpu.cpp does without a GPU).
bool have_emulator() {
  if (device::emulator_built()) return true;
  MESSAGE("this build has no device emulator (GPU build): the cuda-emu runs of this case did not run");
  return false;
}
}  // namespace

TEST_CASE("compare_results: equal values pass an exact check, any difference fails it") {
  CHECK(compare_results({1, 2, 3}, {1, 2, 3}, 0, 0).pass);
  const selftest::Comparison c = compare_results({1, 2, 3.0001f}, {1, 2, 3}, 0, 0);
  CHECK_FALSE(c.pass);
  CHECK(c.worst == 2);
  CHECK(c.max_abs == doctest::Approx(1e-4).epsilon(1e-2));
  CHECK(c.max_rel == doctest::Approx(1e-4 / 3).epsilon(1e-2));
}

TEST_CASE("compare_results: within atol + rtol |expected| passes, just outside fails") {
  CHECK(compare_results({100.01f, 0.0005f}, {100, 0}, 1e-4, 1e-3).pass);  // 0.01 <= 1e-3 + 1e-2
  CHECK_FALSE(compare_results({100.02f, 0}, {100, 0}, 1e-4, 1e-3).pass);
  CHECK_FALSE(compare_results({0, 0.002f}, {0, 0}, 1e-4, 1e-3).pass);
  // The relative error leaves out expected values within atol of zero.
  CHECK(compare_results({0.0005f}, {0}, 1e-4, 1e-3).max_rel == 0);
}

TEST_CASE("compare_results: a per-element bound adds btol * bound[i] to element i's tolerance") {
  const std::vector<float> bound = {1000, 10};
  // Element 0 may be off by 1e-5 * 1000 = 0.01 (+ 1e-3 * 2), element 1 by 1e-4 (+ 1e-3 * 2).
  CHECK(compare_results({2.011f, 2.002f}, {2, 2}, 1e-3, 0, &bound, 1e-5).pass);
  CHECK_FALSE(compare_results({2.013f, 2}, {2, 2}, 1e-3, 0, &bound, 1e-5).pass);
  const selftest::Comparison c = compare_results({2, 2.0023f}, {2, 2}, 1e-3, 0, &bound, 1e-5);
  CHECK_FALSE(c.pass);
  CHECK(c.worst == 1);
  const std::vector<float> short_bound = {1};
  CHECK_FALSE(compare_results({2, 2}, {2, 2}, 1e-3, 0, &short_bound, 1e-5).pass);
}

TEST_CASE("compare_results: NaN, unequal infinities and size mismatches fail; equal infinities pass") {
  CHECK_FALSE(compare_results({NAN}, {1}, 1, 1).pass);
  CHECK_FALSE(compare_results({1}, {NAN}, 1, 1).pass);
  CHECK_FALSE(compare_results({INFINITY}, {-INFINITY}, 1, 1).pass);
  CHECK(compare_results({INFINITY}, {INFINITY}, 0, 0).pass);
  const selftest::Comparison c = compare_results({1, 2}, {1, 2, 3}, 1, 1);
  CHECK_FALSE(c.pass);
  CHECK(c.note.find("size 2, expected 3") != std::string::npos);
}

TEST_CASE("unet_selftest --device cuda-emu --quick passes every check of every op family") {
  if (!have_emulator()) return;
  std::string out;
  const int rc = test::run_tool("unet_selftest", "--device cuda-emu --quick", &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK(out.find("max abs err") != std::string::npos);
  CHECK(out.find("tolerance") != std::string::npos);
  for (const char* op : {"conv3d k3 s1 fprop",
                         "conv3d k3 s1 dgrad",
                         "conv3d k3 s1 wgrad",
                         "conv2d k3 s2 fprop",
                         "conv3d thin C=1",
                         "conv_transpose3d k2 fprop",
                         "conv_transpose3d k2 wgrad",
                         "conv.cu f16 3d k3 C8 K16 fprop",
                         "conv.cu f16 3d k3 C8 K16 fprop stats",
                         "conv.cu f16 3d k3 C8 K16 dgrad",
                         "conv.cu f16 3d k3 C8 K16 wgrad splits 2 dw",
                         "conv.cu f16 3d k3 C8 K16 wgrad splits 2 dbias",
                         "conv.cu bf16 3d k3 s2 C5 K8 fprop",
                         "conv.cu bf16 3d k3 s2 C5 K8 dgrad",
                         "conv.cu bf16 3d k3 s2 C5 K8 wgrad dw",
                         "conv.cu f16 2d k3 C16 K8 norm+act fprop stats",
                         "conv_thin.cu bf16 3d k3 C1 K8 fprop",
                         "conv_thin.cu bf16 3d k3 C1 K8 wgrad dw",
                         "conv_thin.cu f16 2d k3 C4 K16 fprop stats",
                         "conv_thin.cu f16 2d k3 C4 K16 wgrad dbias",
                         "conv_transpose.cu f16 k2 C8 K16 fprop",
                         "conv_transpose.cu f16 k2 C8 K16 dgrad",
                         "conv_transpose.cu bf16 k1x2x2 C5 K3 wgrad dw",
                         "conv_transpose.cu bf16 k1x2x2 C5 K3 wgrad dbias",
                         "instance_norm forward",
                         "instance_norm+leaky_relu (fused) dx",
                         "relu backward",
                         "leaky_relu forward",
                         "concat_channels",
                         "upsample_nearest",
                         "cast f32->f16",
                         "cast f32->bf16",
                         "argmax_channels",
                         "dice_ce_loss gradient",
                         "AdamW step",
                         "SGD nesterov step",
                         "blend importance_map",
                         "blend extract_window",
                         "blend accumulate_window"})
    CHECK_MESSAGE(out.find(op) != std::string::npos, "no row for " << op);
  CHECK(out.find("FAIL") == std::string::npos);
  CHECK(out.find(" 0 failed: PASS") != std::string::npos);
}

TEST_CASE("a planted mismatch fails exactly the perturbed check and the exit status") {
  if (!have_emulator()) return;
  std::string out;
  int rc = test::run_tool("unet_selftest", "--device cuda-emu --quick --perturb 'conv3d k3 s1 dgrad'", &out);
  CHECK(rc == 1);
  CHECK(out.find("1 failed: FAIL") != std::string::npos);
  const size_t row = out.find("conv3d k3 s1 dgrad");
  REQUIRE(row != std::string::npos);
  const std::string line = out.substr(row, out.find('\n', row) - row);
  CHECK(line.find("FAIL") != std::string::npos);
  // An exact check fails on a change far below any float tolerance as well.
  rc = test::run_tool("unet_selftest", "--device cuda-emu --quick --perturb 'cast f32->bf16 forward'", &out);
  CHECK(rc == 1);
  CHECK(out.find("1 failed: FAIL") != std::string::npos);
}

TEST_CASE("a 1% change fails every direct f16/bf16 convolution kernel check, and nothing else") {
  if (!have_emulator()) return;
  // Every row named after a kernel file (conv.cu, conv_thin.cu, conv_transpose.cu: the tensor-core and thin paths
  // called directly) is perturbed; their tolerances (one f16/bf16 rounding plus 1e-5 of sum |a * b|) must all be
  // tighter than the change, statistics rows included.
  std::string out;
  const int rc = test::run_tool("unet_selftest", "--device cuda-emu --quick --perturb '.cu '", &out);
  CHECK(rc == 1);
  int rows = 0, failed = 0;
  for (size_t at = 0, end; (end = out.find('\n', at)) != std::string::npos; at = end + 1) {
    const std::string line = out.substr(at, end - at);
    if (line.find(".cu ") == std::string::npos) continue;
    ++rows;
    if (line.find("FAIL") != std::string::npos) ++failed;
    CHECK_MESSAGE(line.find("FAIL") != std::string::npos, line);
  }
  CHECK(rows >= 28);
  CHECK(failed == rows);
  std::string summary = ", ";
  summary.append(std::to_string(rows)).append(" failed: FAIL");
  CHECK(out.find(summary) != std::string::npos);
}

TEST_CASE("unet_selftest without a GPU, or with a bad argument, says why") {
  std::string out;
  int rc = test::run_tool("unet_selftest", "--device cuda", &out);
  if (out.find("no usable CUDA device") != std::string::npos || out.find("CUDA runtime") != std::string::npos) {
    CHECK(rc == 1);  // this machine has no GPU (or the build cannot use one)
  }
  rc = test::run_tool("unet_selftest", "--device gpu", &out);
  CHECK(rc == 2);
  CHECK(out.find("gpu") != std::string::npos);
  if (!have_emulator()) return;
  rc = test::run_tool("unet_selftest", "--device cuda-emu --quick --perturb no-such-op", &out);
  CHECK(rc == 2);
  CHECK(out.find("matches no check") != std::string::npos);
  CHECK(out.find("PASS") == std::string::npos);  // no table that says the self-test passed
}

TEST_CASE("unet_selftest on cuda-emu gives the same table under the forward, reverse and random thread schedules") {
  if (!have_emulator()) return;
  auto table = [](const char* schedule) {
    setenv("UNET_EMU_SCHEDULE", schedule, 1);
    std::string out;
    const int rc = test::run_tool("unet_selftest", "--device cuda-emu --quick", &out);
    unsetenv("UNET_EMU_SCHEDULE");
    CHECK_MESSAGE(rc == 0, schedule << ": " << out);
    return out.substr(0, out.rfind("\n("));  // without the elapsed-time line
  };
  const std::string forward = table("forward");
  CHECK(table("reverse") == forward);
  CHECK(table("random:7") == forward);
}
