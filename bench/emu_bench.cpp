// Device emulator overhead: what a CUDA kernel costs when kernels/emu runs it on the CPU, against a plain C++ loop
// doing the same arithmetic. Shows the two regimes: kernels without barriers (one fiber per block, threads in a plain
// loop) and kernels with __syncthreads or warp shuffles (a fiber per thread and two switches per wait). Memory access
// patterns matter too: a grid-stride loop, coalesced on a GPU, runs one thread after another here, each striding
// through memory with a page-sized step.
// Usage: emu_bench [--workers N] [--reps R]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda/launch.cuh"

namespace {

using unet::kernels::cuda::launch;

__global__ void axpy(int n, float a, const float* x, float* y) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] += a * x[i];
}

// Tree reduction in shared memory: log2(blockDim.x) + 1 barriers per block.
__global__ void block_sum(const float* in, float* out, int n) {
  __shared__ float partial[1024];
  float s = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) s += in[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

// Warp shuffles, then one barrier to combine the warps.
__global__ void shuffle_sum(const float* in, float* out, int n) {
  __shared__ float warp_sums[32];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  float s = i < n ? in[i] : 0.0f;
  for (int offset = 16; offset > 0; offset /= 2) s += __shfl_down_sync(0xffffffffu, s, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) t += warp_sums[w];
    out[blockIdx.x] = t;
  }
}

double median_ms(int reps, const std::function<void()>& f) {
  f();  // warm: fiber stacks, pool threads
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--workers") && i + 1 < argc)
      unet::emu::set_workers(std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc)
      reps = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: emu_bench [--workers N] [--reps R]\n");
      return 2;
    }
  }
  const int n = 1 << 20;
  std::vector<float> x(n, 1.0f), y(n, 0.0f), out(n / 32);
  volatile float sink = 0;
  std::printf("device emulator, %d workers, schedule %s, %d elements (median of %d)\n", unet::emu::workers(),
              unet::emu::schedule().str().c_str(), n, reps);
  std::printf("%-52s %10s %12s\n", "kernel", "ms", "ns/thread");
  auto row = [&](const char* name, double ms, double threads) {
    std::printf("%-52s %10.3f %12.2f\n", name, ms, ms * 1e6 / threads);
  };

  row("plain C++ loop: y += a * x",
      median_ms(reps,
                [&] {
                  for (int i = 0; i < n; ++i) y[i] += 0.5f * x[i];
                }),
      n);
  row("axpy, 4096 blocks x 256 (no barrier)",
      median_ms(reps, [&] { launch(axpy, dim3(n / 256), dim3(256), 0, nullptr, n, 0.5f, x.data(), y.data()); }), n);
  row("plain C++ loop: sum",
      median_ms(reps,
                [&] {
                  float s = 0;
                  for (int i = 0; i < n; ++i) s += x[i];
                  sink = s;
                }),
      n);
  row("block_sum, 1 block x 1024, grid-stride (11 barriers)",
      median_ms(reps, [&] { launch(block_sum, dim3(1), dim3(1024), 0, nullptr, x.data(), out.data(), n); }), 1024);
  row("block_sum, 4096 blocks x 256 (9 barriers each)",
      median_ms(reps, [&] { launch(block_sum, dim3(n / 256), dim3(256), 0, nullptr, x.data(), out.data(), n); }), n);
  row("shuffle_sum, 4096 blocks x 256 (5 shuffles, 1 barrier)",
      median_ms(reps, [&] { launch(shuffle_sum, dim3(n / 256), dim3(256), 0, nullptr, x.data(), out.data(), n); }), n);
  (void)sink;
  return 0;
}
