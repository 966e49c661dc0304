// GPU convolution micro-benchmark at the nnU-Net 3D and 2D level shapes (issue 5, item 4): the roofline prediction on
// A100 and H100 (FLOPs, minimum bytes, arithmetic intensity, predicted time and TFLOP/s per pass and precision),
// which needs no GPU, and on a GPU build (UNET_WITH_CUDA_RUNTIME) the measured time of our kernels and of cuDNN on the
// same shapes with their ratio. The tables are bench/lib/conv_roofline.cpp and conv_timing.cpp.
// Usage: gpu_conv_bench [--quick] [--no-timing] [--reps N]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "bench/lib/conv_roofline.h"

int main(int argc, char** argv) {
  unet::bench::ConvBenchOptions o;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) {
      o.quick = true;
    } else if (!std::strcmp(argv[i], "--no-timing")) {
      o.time_gpu = false;
    } else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      o.reps = std::atoi(argv[++i]);
      if (o.reps < 1) {
        std::fprintf(stderr, "gpu_conv_bench: --reps must be a positive integer, got '%s'\n", argv[i]);
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "gpu_conv_bench: unknown argument '%s'\nusage: gpu_conv_bench [--quick] [--no-timing] "
                   "[--reps N]\n",
                   argv[i]);
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
