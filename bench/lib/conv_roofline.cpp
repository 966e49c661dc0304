// nnU-Net level shapes, minimum traffic per convolution pass and the roofline prediction tables (see the header).
#include "bench/lib/conv_roofline.h"

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <stdexcept>

namespace unet::bench {

std::string ConvLayer::label() const {
  std::string size = p.D > 1 || plan == "3D"
                         ? std::to_string(p.D) + "x" + std::to_string(p.H) + "x" + std::to_string(p.W)
                         : std::to_string(p.H) + "x" + std::to_string(p.W);
  return plan + " L" + std::to_string(level) + " " + role + " " + std::to_string(p.C) + "->" + std::to_string(p.K) +
         " " + size + " s" + std::to_string(p.stride_h);
}

namespace {

// The distinct convolution shapes of an nnU-Net with `sizes[i]` the spatial size at level i (level 0 = the patch),
// kernel 3 everywhere, stride 2 into every level but the first. Per level: the entry convolution (the first layer at
// level 0, else the strided downsampling one), the C->C convolution (second conv of the encoder block and of the
// decoder block, so it occurs twice, once at the bottleneck) and the decoder's first conv on the concatenation (2C->C).
std::vector<ConvLayer> plan_layers(const std::string& plan, int dims, int64_t batch, int64_t in_channels,
                                   const std::vector<std::vector<int64_t>>& sizes,
                                   const std::vector<int64_t>& filters) {
  auto make = [&](int64_t c, int64_t k, const std::vector<int64_t>& in, int stride) {
    kernels::ConvProblem p;
    p.N = batch;
    p.C = c;
    p.K = k;
    p.R = p.S = 3;
    p.stride_h = p.stride_w = stride;
    p.pad_h = p.pad_w = 1;  // (kernel - stride + 1) / 2 = 1 for both strides
    p.H = in[dims - 2];
    p.W = in[dims - 1];
    if (dims == 3) p.D = in[0], p.T = 3, p.stride_d = stride, p.pad_d = 1;
    p.compute_output_size();
    return p;
  };
  std::vector<ConvLayer> out;
  const int levels = static_cast<int>(filters.size());
  for (int i = 0; i < levels; ++i) {
    const bool bottom = i == levels - 1;
    if (i == 0) {
      out.push_back({plan, i, "first", make(in_channels, filters[0], sizes[0], 1), 1});
    } else {
      out.push_back({plan, i, "down", make(filters[i - 1], filters[i], sizes[i - 1], 2), 1});
    }
    out.push_back({plan, i, "conv", make(filters[i], filters[i], sizes[i], 1), bottom ? 1 : 2});
    if (!bottom) out.push_back({plan, i, "up", make(2 * filters[i], filters[i], sizes[i], 1), 1});
  }
  return out;
}

}  // namespace

std::vector<ConvLayer> nnunet_3d_layers() {
  std::vector<std::vector<int64_t>> sizes;
  for (int64_t s = 128; s >= 4; s /= 2) sizes.push_back({s, s, s});
  return plan_layers("3D", 3, 2, 4, sizes, {32, 64, 128, 256, 320, 320});
}

std::vector<ConvLayer> nnunet_2d_layers() {
  std::vector<std::vector<int64_t>> sizes;
  for (int64_t h = 192, w = 160; w >= 5; h /= 2, w /= 2) sizes.push_back({h, w});
  return plan_layers("2D", 2, 64, 4, sizes, {32, 64, 128, 256, 512, 512});
}

const char* pass_name(ConvPass pass) {
  switch (pass) {
    case ConvPass::fprop:
      return "fprop";
    case ConvPass::dgrad:
      return "dgrad";
    case ConvPass::wgrad:
      return "wgrad";
  }
  return "?";
}

const std::vector<GpuPeak>& gpu_peaks() {
  static const std::vector<GpuPeak> peaks = {
      {"A100", 312.0, 156.0, 19.5, 2039.0},
      {"H100", 989.4, 494.7, 66.9, 3350.0},
  };
  return peaks;
}

bool per_clock_rates(int cc_major, int cc_minor, PerClockRates* out) {
  if (cc_major == 8 && cc_minor == 0) {
    *out = {2048, 1024, 128};
    return true;
  }
  if (cc_major == 9 && cc_minor == 0) {
    *out = {4096, 2048, 256};
    return true;
  }
  return false;
}

double dram_gbs_from(double mem_clock_mhz, int bus_width_bits) {
  return 2.0 * mem_clock_mhz * 1e6 * (bus_width_bits / 8.0) / 1e9;
}

bool peak_from_device(const DeviceFigures& f, GpuPeak* out) {
  PerClockRates r;
  if (!per_clock_rates(f.cc_major, f.cc_minor, &r) || f.sms <= 0 || f.sm_clock_mhz <= 0 || f.mem_clock_mhz <= 0 ||
      f.bus_width_bits <= 0)
    return false;
  const double per_rate = f.sms * f.sm_clock_mhz * 1e6 / 1e12;  // TFLOP/s per FLOP/clk/SM
  *out = GpuPeak{f.name, r.f16_tensor * per_rate, r.tf32_tensor * per_rate, r.fp32 * per_rate,
                 dram_gbs_from(f.mem_clock_mhz, f.bus_width_bits)};
  return true;
}

std::vector<kernels::ConvPrecision> parse_timed_dtypes(const std::string& list) {
  const kernels::ConvPrecision all[] = {kernels::ConvPrecision::f16, kernels::ConvPrecision::bf16, kernels::ConvPrecision::tf32, kernels::ConvPrecision::f32};
  if (list == "all") return std::vector<kernels::ConvPrecision>(std::begin(all), std::end(all));
  std::vector<kernels::ConvPrecision> out;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) {
    bool found = false;
    for (kernels::ConvPrecision t : all)
      if (item == kernels::conv_precision_name(t)) {
        if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
        found = true;
      }
    if (!found)
      throw std::invalid_argument("unknown dtype '" + item + "' in '" + list +
                                  "' (expected a comma-separated list of f16, bf16, tf32, f32, or all)");
  }
  if (out.empty()) throw std::invalid_argument("empty dtype list (expected e.g. f16,bf16,tf32, or all)");
  return out;
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::f16:
      return "f16/bf16 tensor cores";
    case Precision::tf32:
      return "tf32 tensor cores";
    case Precision::fp32:
      return "fp32 FMA (SIMT)";
  }
  return "?";
}

double peak_tflops(const GpuPeak& g, Precision p) {
  switch (p) {
    case Precision::f16:
      return g.f16_tensor_tflops;
    case Precision::tf32:
      return g.tf32_tensor_tflops;
    case Precision::fp32:
      return g.fp32_tflops;
  }
  return 0;
}

double min_bytes(const kernels::ConvProblem& p, ConvPass pass, Precision precision) {
  const double b = precision == Precision::f16 ? 2 : 4;
  const double x = double(p.N) * p.D * p.H * p.W * p.C;
  const double y = double(p.N) * p.Z * p.P * p.Q * p.K;
  const double w = double(p.K) * p.taps() * p.C;
  switch (pass) {
    case ConvPass::fprop:
      return b * (x + w + y);
    case ConvPass::dgrad:
      return b * (y + w + x);
    case ConvPass::wgrad:
      return b * (x + y) + 4 * w;
  }
  return 0;
}

RooflinePoint roofline(double flops, double bytes, double peak, double dram_gbs) {
  if (peak <= 0 || dram_gbs <= 0) throw std::invalid_argument("roofline: peak and bandwidth must be positive");
  RooflinePoint r;
  const double compute = flops / (peak * 1e12), memory = bytes / (dram_gbs * 1e9);
  r.seconds = std::max(compute, memory);
  r.memory_bound = memory > compute;
  r.tflops = r.seconds > 0 ? flops / r.seconds / 1e12 : 0;
  return r;
}

namespace {

void print_table(FILE* out, const std::vector<ConvLayer>& layers, Precision precision) {
  const std::vector<GpuPeak>& gpus = gpu_peaks();
  std::fprintf(out, "\n%s nnU-Net (batch %lld), %s: roofline prediction (M = memory bound)\n",
               layers.front().plan.c_str(), static_cast<long long>(layers.front().p.N), precision_name(precision));
  std::fprintf(out, "%-38s %5s %3s %8s %8s %7s", "layer", "pass", "n", "GFLOP", "min MB", "FLOP/B");
  for (const GpuPeak& g : gpus) std::fprintf(out, " %9s %8s", (g.gpu + " us").c_str(), "TFLOP/s");
  std::fprintf(out, "\n");
  std::vector<double> step_seconds(gpus.size(), 0.0);
  double step_flops = 0;
  for (const ConvLayer& l : layers) {
    for (ConvPass pass : {ConvPass::fprop, ConvPass::dgrad, ConvPass::wgrad}) {
      const double flops = l.p.flops(), bytes = min_bytes(l.p, pass, precision);
      std::fprintf(out, "%-38s %5s %3d %8.2f %8.1f %7.0f", l.label().c_str(), pass_name(pass), l.count, flops / 1e9,
                   bytes / 1e6, flops / bytes);
      // A training step needs no gradient with respect to the input image.
      const bool in_step = !(l.role == "first" && pass == ConvPass::dgrad);
      if (in_step) step_flops += l.count * flops;
      for (size_t g = 0; g < gpus.size(); ++g) {
        const RooflinePoint r = roofline(flops, bytes, peak_tflops(gpus[g], precision), gpus[g].dram_gbs);
        if (in_step) step_seconds[g] += l.count * r.seconds;
        std::fprintf(out, " %8.1f%s %8.1f", r.seconds * 1e6, r.memory_bound ? "M" : " ", r.tflops);
      }
      std::fprintf(out, "\n");
    }
  }
  std::fprintf(out, "%-38s %5s %3s %8.1f %8s %7s", "training step (every layer x n)", "all", "", step_flops / 1e9, "",
               "");
  for (size_t g = 0; g < gpus.size(); ++g)
    std::fprintf(out, " %8.0f  %8.1f", step_seconds[g] * 1e6, step_flops / step_seconds[g] / 1e12);
  std::fprintf(out, "\n");
}

}  // namespace

int run_conv_benchmark(FILE* out, const ConvBenchOptions& options) {
  std::fprintf(out,
               "Convolution roofline at the nnU-Net level shapes: time = max(FLOPs / peak, min bytes / DRAM "
               "bandwidth), dense peaks:\n");
  for (const GpuPeak& g : gpu_peaks())
    std::fprintf(out, "  %s SXM: f16/bf16 tensor %.1f, tf32 tensor %.1f, fp32 %.1f TFLOP/s, DRAM %.0f GB/s\n",
                 g.gpu.c_str(), g.f16_tensor_tflops, g.tf32_tensor_tflops, g.fp32_tflops, g.dram_gbs);
  std::fprintf(out,
               "min bytes: each operand read once, the result written once (weight gradients in f32); kernel 3, "
               "padding 1; n = occurrences per forward pass\n");
  std::vector<ConvLayer> all;
  for (const auto& layers : {nnunet_3d_layers(), nnunet_2d_layers()}) {
    for (Precision p : {Precision::f16, Precision::tf32, Precision::fp32}) {
      if (options.quick && p != Precision::f16) continue;
      print_table(out, layers, p);
    }
    all.insert(all.end(), layers.begin(), layers.end());
  }
  if (!options.time_gpu) return 0;
  std::fprintf(out, "\n");
  return run_conv_timing(out, all, options);
}

}  // namespace unet::bench
