// Convolution micro-benchmark at the nnU-Net level shapes (docs/reference.md, "Benchmarks"): the layers of the 3D plan
// (128^3 patch, batch 2, filters 32-64-128-256-320-320) and the 2D plan (DLE's 2D nnU-Net: 192x160 patch, batch 64,
// filters 32-64-128-256-512-512), each pass's FLOPs and minimum bytes moved, and the roofline prediction on A100 and
// H100. On a build with the CUDA runtime (UNET_WITH_CUDA_RUNTIME) run_conv_benchmark also times our kernels and cuDNN
// on the same shapes (bench/lib/conv_timing.cpp). Used by bench/gpu_conv_bench.cpp.
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/cpu/conv.h"

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
  std::string gpu;
  double f16_tensor_tflops, tf32_tensor_tflops, fp32_tflops;
  double dram_gbs;
};
const std::vector<GpuPeak>& gpu_peaks();

// What a GPU reports about itself (cudaDeviceGetAttribute: cudaDevAttrMultiProcessorCount, cudaDevAttrClockRate,
// cudaDevAttrMemoryClockRate, cudaDevAttrGlobalMemoryBusWidth; CUDA 13 removed the clock fields of cudaDeviceProp).
struct DeviceFigures {
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sms = 0;
  double sm_clock_mhz = 0, mem_clock_mhz = 0;  // the maximum (boost) clocks
  int bus_width_bits = 0;
};

// Dense FLOP per clock per SM of an architecture (an FMA counts 2), from the data sheets' peaks divided by SMs x clock:
//   sm_80 (A100: 108 SMs, 1410 MHz): f16/bf16 tensor 2048 (311.9 TFLOP/s), tf32 tensor 1024 (155.9), fp32 128 (19.5);
//   sm_90 (H100 SXM: 132 SMs): f16/bf16 tensor 4096, tf32 2048 (at the 1830 MHz of the sheet's 989.4 / 494.7), fp32 256
//         (66.9 at 1980 MHz; H200: the same SM).
// False for other architectures (consumer sm_86 / sm_89 differ by product; not guessed).
struct PerClockRates {
  double f16_tensor, tf32_tensor, fp32;
};
bool per_clock_rates(int cc_major, int cc_minor, PerClockRates* out);

// DRAM bandwidth in GB/s of a memory clock and bus: 2 transfers per clock (HBM and GDDR double data rate, as the
// reported clock counts them) x bus width / 8 (H100 SXM: 2619 MHz, 5120 bits: 3352 GB/s).
double dram_gbs_from(double mem_clock_mhz, int bus_width_bits);

// The peaks of a device from its SM count and reported SM clock (the maximum boost clock, so tensor peaks come out up
// to ~8% above a data sheet that quotes them at a lower clock) and its memory clock and bus. False, *out unchanged,
// when per_clock_rates knows no figures for its architecture or a figure is missing.
bool peak_from_device(const DeviceFigures& f, GpuPeak* out);

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

// Precisions of the measured table (kernels::ConvPrecision): f16, bf16 (tensor cores), tf32 (f32 data on the TF32
// tensor cores: ours with set_conv_allow_tf32, cuDNN with tensor-op math) and f32 (our SIMT path against cuDNN's FMA
// math). "f16,bf16,tf32" -> the list; "all" -> every one. Throws std::invalid_argument naming a bad entry.
std::vector<kernels::ConvPrecision> parse_timed_dtypes(const std::string& list);

struct ConvBenchOptions {
  bool quick = false;    // fewer repetitions (timed part) and only the f16 roofline and measured tables
  bool time_gpu = true;  // time on the GPU when this build can (UNET_WITH_CUDA_RUNTIME)
  int warmup = 2, reps = 10;
  // Per configuration (one layer, pass and dtype, each side): repetitions stop at `reps` or once this much GPU time
  // is spent, whichever is first, but never below 3.
  double budget_ms_per_config = 150;
  // The whole measured table: rows not started by then are printed and written as skipped.
  double budget_s = 270;
  std::vector<kernels::ConvPrecision> dtypes = {kernels::ConvPrecision::f16, kernels::ConvPrecision::bf16, kernels::ConvPrecision::tf32, kernels::ConvPrecision::f32};
  std::string json_path;  // when set, every measured row is also written there as JSON (see run_conv_timing)
};

// Prints the roofline tables (per plan and precision; totals per training step) and, when the build has the CUDA
// runtime and time_gpu is set, the measured table (ours, cuDNN, ratio). Returns 0, or 1 when the timed part failed.
int run_conv_benchmark(FILE* out, const ConvBenchOptions& options);

// The measured part alone (bench/lib/conv_timing.cpp). Without UNET_WITH_CUDA_RUNTIME it prints why it cannot run
// and returns 0. With options.json_path it writes
//   {"device": {...figures, peaks, "per_clock_known"} or null, "error": null or "why no table",
//    "rows": [{"layer", "plan", "level", "role", "pass", "dtype", "gflop", "ours_ms", "cudnn_ms", "ratio",
//              "ours_tflops", "cudnn_tflops", "roof_tflops", "skipped", "note"}, ...]}
// with times in ms (null when that side failed or was skipped), ratio = cudnn_ms / ours_ms (above 1: ours faster),
// roof_tflops the roofline of this device from its own figures (null when unknown).
int run_conv_timing(FILE* out, const std::vector<ConvLayer>& layers, const ConvBenchOptions& options);

// JSON string literal of s (quotes, backslashes and control characters escaped).
std::string json_quote(const std::string& s);

}  // namespace unet::bench
