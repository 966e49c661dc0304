// The measured convolution table's own roofline (bench/lib/conv_roofline.h): peaks derived from what a GPU reports
// (SM count, clocks, bus width) and the per-clock rates of its architecture, which must give back the data sheets'
// figures at the data sheets' clocks; and the benchmark's dtype list and JSON quoting. No GPU needed.
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>

#include "bench/lib/conv_roofline.h"

using namespace unet::bench;

namespace {
DeviceFigures figures(const char* name, int major, int minor, int sms, double sm_mhz, double mem_mhz, int bus) {
  DeviceFigures f;
  f.name = name;
  f.cc_major = major;
  f.cc_minor = minor;
  f.sms = sms;
  f.sm_clock_mhz = sm_mhz;
  f.mem_clock_mhz = mem_mhz;
  f.bus_width_bits = bus;
  return f;
}
}  // namespace

TEST_CASE("device peaks from SMs x clock x per-clock rates reproduce the A100 and H100 data sheets") {
  GpuPeak a100, h100;
  // A100 SXM4: 108 SMs at 1410 MHz, HBM2e 1593 MHz x 5120 bits: 312 / 156 / 19.5 TFLOP/s, 2039 GB/s.
  REQUIRE(peak_from_device(figures("A100", 8, 0, 108, 1410, 1593, 5120), &a100));
  CHECK(a100.f16_tensor_tflops == doctest::Approx(312.0).epsilon(1e-3));
  CHECK(a100.tf32_tensor_tflops == doctest::Approx(156.0).epsilon(1e-3));
  CHECK(a100.fp32_tflops == doctest::Approx(19.5).epsilon(1e-3));
  CHECK(a100.dram_gbs == doctest::Approx(2039.0).epsilon(1e-3));
  // H100 SXM5: 132 SMs; tensor peaks quoted at 1830 MHz (989.4 / 494.7), fp32 at 1980 MHz (66.9); HBM3 2619 MHz x 5120.
  REQUIRE(peak_from_device(figures("H100", 9, 0, 132, 1830, 2619, 5120), &h100));
  CHECK(h100.f16_tensor_tflops == doctest::Approx(989.4).epsilon(1e-3));
  CHECK(h100.tf32_tensor_tflops == doctest::Approx(494.7).epsilon(1e-3));
  CHECK(h100.dram_gbs == doctest::Approx(3352.3).epsilon(1e-3));
  REQUIRE(peak_from_device(figures("H100", 9, 0, 132, 1980, 2619, 5120), &h100));
  CHECK(h100.fp32_tflops == doctest::Approx(66.9).epsilon(1e-3));
}

TEST_CASE("an H200's reported figures give its 4.8 TB/s, and unknown architectures give no peak") {
  // What the H200 of 2026-12-04 reported: 132 SMs, 1980 MHz, memory 3201 MHz on 6016 bits.
  GpuPeak h200;
  REQUIRE(peak_from_device(figures("NVIDIA H200", 9, 0, 132, 1980, 3201, 6016), &h200));
  CHECK(h200.gpu == "NVIDIA H200");
  CHECK(h200.dram_gbs == doctest::Approx(4814.3).epsilon(1e-3));
  CHECK(h200.f16_tensor_tflops == doctest::Approx(1070.5).epsilon(1e-3));
  GpuPeak unchanged{"x", 1, 2, 3, 4};
  CHECK_FALSE(peak_from_device(figures("RTX 4090", 8, 9, 128, 2520, 10501, 384), &unchanged));
  CHECK_FALSE(peak_from_device(figures("H100 without clock", 9, 0, 132, 0, 2619, 5120), &unchanged));
  CHECK(unchanged.gpu == "x");
  PerClockRates r;
  CHECK_FALSE(per_clock_rates(10, 0, &r));
  REQUIRE(per_clock_rates(9, 0, &r));
  CHECK(r.f16_tensor == 4096);
  CHECK(dram_gbs_from(1000, 1024) == doctest::Approx(256.0));
}

TEST_CASE("gpu_conv_bench's dtype list: names, all, duplicates once, and a bad name is an error") {
  CHECK(parse_timed_dtypes("all").size() == 4);
  const std::vector<unet::kernels::ConvPrecision> two = parse_timed_dtypes("tf32,f16,tf32");
  REQUIRE(two.size() == 2);
  CHECK(two[0] == unet::kernels::ConvPrecision::tf32);
  CHECK(two[1] == unet::kernels::ConvPrecision::f16);
  CHECK_THROWS_WITH_AS(parse_timed_dtypes("f16,fp8"), doctest::Contains("unknown dtype 'fp8'"), std::invalid_argument);
  CHECK_THROWS_AS(parse_timed_dtypes(""), std::invalid_argument);
  CHECK(ConvBenchOptions{}.dtypes.size() == 4);  // every table by default
}

TEST_CASE("json_quote escapes quotes, backslashes and control characters") {
  CHECK(json_quote("3D L0 up 64->32") == "\"3D L0 up 64->32\"");
  CHECK(json_quote("a\"b\\c\n") == "\"a\\\"b\\\\c\\u000a\"");
}
