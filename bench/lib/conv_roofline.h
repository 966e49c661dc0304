// Convolution micro-benchmark at the nnU-Net level shapes (issue 5, item 4): the layers of the 3D plan (128^3 patch,
// batch 2, filters 32-64-128-256-320-320) and the 2D plan (DLE's 2D nnU-Net: 192x160 patch, batch 64, filters
// 32-64-128-256-512-512), each pass's FLOPs and minimum bytes moved, and the roofline prediction on A100 and H100.
// On a build with the CUDA runtime (UNET_WITH_CUDA_RUNTIME) run_conv_benchmark also times our kernels and cuDNN on
// the same shapes (bench/lib/conv_timing.cpp). Used by bench/gpu_conv_bench.cpp and tools/unet_selftest.cpp.
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/conv.h"

namespace unet::bench {

// One convolution of a network and how many times its shape occurs in one forward pass of that network.
struct ConvLayer {
  std::string plan;  // "3D" or "2D"
  int level = 0;
  std::string role;  // "first", "down" (strided), "conv" (C->C), "up" (2C->C after the skip concatenation)
  kernels::ConvProblem p;
  int count = 1;
  std::string label() const;  // "3D L1 down 32->64 128x128x128 k3 s2"
};

// The convolutions of the nnU-Net encoder and decoder blocks, one row per distinct shape (kernel 3, padding 1; the
// 1x1 head and the transposed convolutions are a few percent of the FLOPs and are left out). in_channels 4 (BraTS).
std::vector<ConvLayer> nnunet_3d_layers();
std::vector<ConvLayer> nnunet_2d_layers();

enum class ConvPass { fprop, dgrad, wgrad };
const char* pass_name(ConvPass pass);

// Peak rates of one GPU, dense (no structured sparsity), from NVIDIA's data sheets:
//   A100 SXM4 80GB (NVIDIA A100 Tensor Core GPU data sheet): FP16/BF16 tensor 312 TFLOP/s, TF32 tensor 156,
//     FP32 19.5, HBM2e 2039 GB/s;
//   H100 SXM5 80GB (NVIDIA H100 Tensor Core GPU data sheet): FP16/BF16 tensor 989.4 TFLOP/s, TF32 tensor 494.7,
//     FP32 66.9, HBM3 3350 GB/s (the sheet's 1979 / 989 TFLOP/s are with sparsity).
struct GpuPeak {
  const char* gpu;
  double f16_tensor_tflops, tf32_tensor_tflops, fp32_tflops;
  double dram_gbs;
};
const std::vector<GpuPeak>& gpu_peaks();

// Arithmetic precisions of the table: f16/bf16 (2-byte activations and weights on tensor cores), tf32 (4-byte data on
// tensor cores) and fp32 (4-byte data on the FMA units). Weight gradients are always f32.
enum class Precision { f16, tf32, fp32 };
const char* precision_name(Precision p);
double peak_tflops(const GpuPeak& g, Precision p);

// The least bytes a pass must move between DRAM and the chip: every operand read once and the result written once
// (fprop x, w -> y; dgrad dy, w -> dx; wgrad x, dy -> dw in f32).
double min_bytes(const kernels::ConvProblem& p, ConvPass pass, Precision precision);

struct RooflinePoint {
  double seconds = 0;  // max(FLOPs / peak, bytes / bandwidth)
  double tflops = 0;   // FLOPs / seconds
  bool memory_bound = false;
};
RooflinePoint roofline(double flops, double bytes, double peak_tflops, double dram_gbs);

struct ConvBenchOptions {
  bool quick = false;    // fewer repetitions (timed part) and only the f16 roofline table
  bool time_gpu = true;  // time on the GPU when this build can (UNET_WITH_CUDA_RUNTIME)
  int warmup = 3, reps = 20;
};

// Prints the roofline tables (per plan and precision; totals per training step) and, when the build has the CUDA
// runtime and time_gpu is set, the measured table (ours, cuDNN, ratio). Returns 0, or 1 when the timed part failed.
int run_conv_benchmark(FILE* out, const ConvBenchOptions& options);

// The measured part alone (bench/lib/conv_timing.cpp). Without UNET_WITH_CUDA_RUNTIME it prints why it cannot run
// and returns 0.
int run_conv_timing(FILE* out, const std::vector<ConvLayer>& layers, const ConvBenchOptions& options);

}  // namespace unet::bench
