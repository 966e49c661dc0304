// GPU convolution micro-benchmark at the nnU-Net 3D and 2D level shapes: the roofline prediction on
// A100 and H100 (FLOPs, minimum bytes, arithmetic intensity, predicted time and TFLOP/s per pass and precision),
// which needs no GPU, and on a GPU build (UNET_WITH_CUDA_RUNTIME) the measured time of our kernels and of cuDNN on the
// same shapes with their ratio and this device's own roofline. The tables are bench/lib/conv_roofline.cpp and
// conv_timing.cpp. The default measured table (34 layers x 3 passes x f16, bf16, tf32, f32: 408 rows) took 50 s on an
// H200 (2026-12-04: 25 s for f16 + bf16 + tf32, 24 s for f32); rows not started after --budget seconds (270 by
// default) are reported as skipped, so a slower device still finishes within 5 minutes.
// Usage: gpu_conv_bench [--quick] [--no-timing] [--reps N] [--config-ms MS] [--budget S] [--dtypes LIST]
//                       [--json FILE]
//   --quick        the f16 tables only, 5 runs per configuration (a check, not a measurement)
//   --reps N       runs per configuration at most (default 10), after 2 warm-up runs
//   --config-ms MS stop a configuration's runs once MS ms of GPU time are spent (default 150; at least 3 runs)
//   --budget S     rows not started after S seconds of the measured table are reported as skipped (default 270)
//   --dtypes LIST  comma-separated f16, bf16, tf32, f32 (our SIMT path against cuDNN's FMA math), or all (the
//                  default)
//   --json FILE    every measured row (layer, pass, dtype, ours and cuDNN ms, ratio, TFLOP/s, roof) as JSON
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "bench/lib/conv_roofline.h"

namespace {

const char* kUsage =
    "usage: gpu_conv_bench [--quick] [--no-timing] [--reps N] [--config-ms MS] [--budget S] [--dtypes LIST] "
    "[--json FILE]\n";

// A positive number from argv[i], or exit status 2 with a message naming the option.
bool positive(const char* option, const char* text, double* value) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(v > 0)) {
    std::fprintf(stderr, "gpu_conv_bench: %s must be a positive number, got '%s'\n", option, text);
    return false;
  }
  *value = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  unet::bench::ConvBenchOptions o;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--quick")) {
      o.quick = true;
    } else if (!std::strcmp(argv[i], "--no-timing")) {
      o.time_gpu = false;
    } else if (!std::strcmp(argv[i], "--reps") && has_value) {
      o.reps = std::atoi(argv[++i]);
      if (o.reps < 1) {
        std::fprintf(stderr, "gpu_conv_bench: --reps must be a positive integer, got '%s'\n", argv[i]);
        return 2;
      }
    } else if (!std::strcmp(argv[i], "--config-ms") && has_value) {
      if (!positive("--config-ms", argv[++i], &o.budget_ms_per_config)) return 2;
    } else if (!std::strcmp(argv[i], "--budget") && has_value) {
      if (!positive("--budget", argv[++i], &o.budget_s)) return 2;
    } else if (!std::strcmp(argv[i], "--dtypes") && has_value) {
      try {
        o.dtypes = unet::bench::parse_timed_dtypes(argv[++i]);
      } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "gpu_conv_bench: --dtypes: %s\n", e.what());
        return 2;
      }
    } else if (!std::strcmp(argv[i], "--json") && has_value) {
      o.json_path = argv[++i];
    } else {
      std::fprintf(stderr, "gpu_conv_bench: unknown argument '%s'\n%s", argv[i], kUsage);
      return 2;
    }
  }
  try {
    return unet::bench::run_conv_benchmark(stdout, o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_conv_bench: %s\n", e.what());
    return 1;
  }
}
