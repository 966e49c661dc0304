// bench/lib/conv_roofline: the nnU-Net level shapes (the plans of models/nnunet_plan.h), the minimum bytes of each
// pass, the roofline arithmetic, and the printed table; the FLOPs are checked against the reference 965.6 GFLOP per
// 3D forward pass (docs/reference.md, "Benchmarks").
#include <doctest/doctest.h>

#include <cstdio>
#include <stdexcept>
#include <string>

#include "bench/lib/conv_roofline.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::bench;

TEST_CASE("the 3D plan has six levels of 128^3 down to 4^3 with filters 32 to 320 at batch 2") {
  const std::vector<ConvLayer> layers = nnunet_3d_layers();
  REQUIRE(layers.size() == 17);  // 6 entry convs, 6 C->C convs, 5 decoder convs on the concatenation
  CHECK(layers.front().label() == "3D L0 first 4->32 128x128x128 s1");
  for (const ConvLayer& l : layers) {
    CHECK(l.p.N == 2);
    CHECK(l.p.T == 3);
    CHECK(l.p.Z * (l.role == "down" ? 2 : 1) == l.p.D);
  }
  const ConvLayer& bottom = layers.back();
  CHECK(bottom.label() == "3D L5 conv 320->320 4x4x4 s1");
  CHECK(bottom.count == 1);
  CHECK(layers[1].count == 2);  // encoder and decoder C->C conv at level 0
}

TEST_CASE("the 3D plan's forward FLOPs per sample are the reference 965.6 GFLOP less the head and transposed convs") {
  double forward = 0;
  for (const ConvLayer& l : nnunet_3d_layers()) forward += l.count * l.p.flops() / double(l.p.N);
  // The left-out transposed convolutions and 1x1 head add about 1.7% on top.
  CHECK(forward / 1e9 == doctest::Approx(949.5).epsilon(0.002));
  CHECK(forward / 1e9 < 965.6);
  CHECK(forward / 1e9 > 0.97 * 965.6);
}

TEST_CASE("the 2D plan has six levels of 192x160 down to 6x5 with filters up to 512 at batch 64") {
  const std::vector<ConvLayer> layers = nnunet_2d_layers();
  REQUIRE(layers.size() == 17);
  CHECK(layers.front().label() == "2D L0 first 4->32 192x160 s1");
  CHECK(layers.back().label() == "2D L5 conv 512->512 6x5 s1");
  for (const ConvLayer& l : layers) {
    CHECK(l.p.N == 64);
    CHECK(l.p.D == 1);
    CHECK(l.p.T == 1);
  }
}

TEST_CASE("minimum bytes count every operand once, weight gradients in f32") {
  kernels::ConvProblem p;
  p.N = 1, p.D = 1, p.H = 4, p.W = 4, p.C = 2, p.K = 3, p.R = p.S = 3, p.pad_h = p.pad_w = 1;
  p.compute_output_size();  // x 32 values, y 48, w 54
  CHECK(min_bytes(p, ConvPass::fprop, Precision::f16) == 2 * (32 + 54 + 48));
  CHECK(min_bytes(p, ConvPass::dgrad, Precision::fp32) == 4 * (48 + 54 + 32));
  CHECK(min_bytes(p, ConvPass::wgrad, Precision::f16) == 2 * (32 + 48) + 4 * 54);
  CHECK(min_bytes(p, ConvPass::wgrad, Precision::tf32) == 4 * (32 + 48 + 54));
}

TEST_CASE("the roofline is the slower of compute and memory time") {
  // 1 TFLOP at 100 TFLOP/s = 10 ms; 1 GB at 1000 GB/s = 1 ms: compute bound.
  RooflinePoint r = roofline(1e12, 1e9, 100, 1000);
  CHECK(r.seconds == doctest::Approx(0.01));
  CHECK_FALSE(r.memory_bound);
  CHECK(r.tflops == doctest::Approx(100));
  // 1 GFLOP and 1 GB: 10 us of compute, 1 ms of memory: memory bound at 1 TFLOP/s.
  r = roofline(1e9, 1e9, 100, 1000);
  CHECK(r.memory_bound);
  CHECK(r.seconds == doctest::Approx(1e-3));
  CHECK(r.tflops == doctest::Approx(1));
  CHECK_THROWS_AS(roofline(1, 1, 0, 1), std::invalid_argument);
  CHECK(peak_tflops(gpu_peaks()[0], Precision::f16) == 312.0);
  CHECK(peak_tflops(gpu_peaks()[1], Precision::tf32) == 494.7);
}

TEST_CASE("the benchmark prints the roofline tables of both plans and their training-step totals") {
  FILE* f = std::tmpfile();
  REQUIRE(f);
  ConvBenchOptions o;
  o.quick = true;
  o.time_gpu = false;  // a GPU build would time on the device (and fail on a machine without one)
  CHECK(run_conv_benchmark(f, o) == 0);
  std::rewind(f);
  std::string text;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  std::fclose(f);
  CHECK(text.find("3D nnU-Net (batch 2), f16/bf16 tensor cores") != std::string::npos);
  CHECK(text.find("2D nnU-Net (batch 64), f16/bf16 tensor cores") != std::string::npos);
  CHECK(text.find("3D L3 up 512->256 16x16x16 s1") != std::string::npos);
  CHECK(text.find("training step") != std::string::npos);
  CHECK(text.find("A100 us") != std::string::npos);
  CHECK(text.find("H100 us") != std::string::npos);
  CHECK(text.find("measured") == std::string::npos);
}

TEST_CASE("gpu_conv_bench prints the roofline, then the measured table or why there is none") {
  std::string out;
  const int rc = test::run_tool("gpu_conv_bench", "--quick", &out);
  CHECK(out.find("3D nnU-Net (batch 2), f16/bf16 tensor cores") != std::string::npos);
  const bool no_runtime = out.find("not in this build") != std::string::npos;  // CPU-only build
  const bool no_gpu = out.find("measured table failed") != std::string::npos;  // GPU build, no usable GPU
  const bool measured = out.find("measured on") != std::string::npos;          // a GPU
  CHECK_MESSAGE(no_runtime + no_gpu + measured == 1, out);
  if (no_gpu) CHECK(rc == 1);
  if (no_runtime) CHECK(rc == 0);
  CHECK(test::run_tool("gpu_conv_bench", "--reps 0", &out) == 2);
  CHECK(out.find("--reps must be a positive integer") != std::string::npos);
}
