// The measured half of the convolution benchmark: our kernels (kernels/cuda/conv.cuh) and cuDNN 9 on the same
// channels-last shapes, timed with CUDA events (warm-up, then the median of up to `reps` runs within a GPU-time budget
// per configuration), printed as TFLOP/s and the ratio ours / cuDNN, and optionally written as JSON. Only a build that
// links the CUDA runtime (UNET_WITH_CUDA_RUNTIME) and cuDNN has it; any other build prints why the table is missing.
// cuDNN runs through its convolution API (cudnnConvolutionForward / BackwardData / BackwardFilter with NHWC / NDHWC
// descriptors, the fastest algorithm found by cudnnFind*), with tensor-op math for f16, bf16 and tf32 (f32 data on the
// TF32 tensor cores, as PyTorch's allow_tf32) and FMA math for f32 (our f32 path is SIMT).
// The roofline column is this device's own: SM count, clocks and bus width read from the device
// (cudaDeviceGetAttribute) and the per-clock rates of its architecture (conv_roofline.h).
// Timing hygiene: the default memory pool keeps freed memory (release threshold UINT64_MAX, as engine/device.cpp sets
// it for the engine), so the kernels' stream-ordered scratch (wgrad split-K partials, statistics) is not unmapped and
// mapped again inside the timed region; every configuration is warmed up first (the first launch of a kernel also
// loads its module); inputs are filled once per layer and dtype on the device, outputs go to separate buffers.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/lib/conv_roofline.h"

#ifdef UNET_WITH_CUDA_RUNTIME
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>

#include "kernels/common/dtype.h"
#include "engine/random.h"
#include "kernels/cuda/conv.cuh"
#endif

namespace unet::bench {

namespace {

// One measured row: 0 ms where that side failed or was skipped; roof 0 when unknown.
struct TimedRow {
  const ConvLayer* layer = nullptr;
  ConvPass pass = ConvPass::fprop;
  kernels::ConvPrecision dtype = kernels::ConvPrecision::f16;
  double ours_ms = 0, cudnn_ms = 0, roof_tflops = 0;
  bool skipped = false;
  std::string note;
};

std::string json_number(double v, bool present = true) {
  if (!present) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// The JSON of run_conv_timing (see the header); false when the file cannot be written.
bool write_json(const std::string& path, const DeviceFigures* figures, const GpuPeak* peak, const std::string& error,
                const std::vector<TimedRow>& rows) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return false;
  std::fprintf(f, "{\n  \"device\": ");
  if (figures) {
    std::fprintf(f,
                 "{\"name\": %s, \"sm\": \"%d%d\", \"sms\": %d, \"sm_clock_mhz\": %s, \"mem_clock_mhz\": %s, "
                 "\"bus_width_bits\": %d, \"per_clock_known\": %s",
                 json_quote(figures->name).c_str(), figures->cc_major, figures->cc_minor, figures->sms,
                 json_number(figures->sm_clock_mhz).c_str(), json_number(figures->mem_clock_mhz).c_str(),
                 figures->bus_width_bits, peak ? "true" : "false");
    if (peak)
      std::fprintf(f, ", \"f16_tensor_tflops\": %s, \"tf32_tensor_tflops\": %s, \"fp32_tflops\": %s, \"dram_gbs\": %s",
                   json_number(peak->f16_tensor_tflops).c_str(), json_number(peak->tf32_tensor_tflops).c_str(),
                   json_number(peak->fp32_tflops).c_str(), json_number(peak->dram_gbs).c_str());
    std::fprintf(f, "}");
  } else {
    std::fprintf(f, "null");
  }
  std::fprintf(f, ",\n  \"error\": %s,\n  \"rows\": [", error.empty() ? "null" : json_quote(error).c_str());
  for (size_t i = 0; i < rows.size(); ++i) {
    const TimedRow& r = rows[i];
    const ConvLayer& l = *r.layer;
    const double gflop = l.p.flops() / 1e9;
    const bool ours = r.ours_ms > 0, cudnn = r.cudnn_ms > 0;
    std::fprintf(f,
                 "%s\n    {\"layer\": %s, \"plan\": %s, \"level\": %d, \"role\": %s, \"pass\": \"%s\", "
                 "\"dtype\": \"%s\", \"gflop\": %s, \"ours_ms\": %s, \"cudnn_ms\": %s, \"ratio\": %s, "
                 "\"ours_tflops\": %s, \"cudnn_tflops\": %s, \"roof_tflops\": %s, \"skipped\": %s, \"note\": %s}",
                 i ? "," : "", json_quote(l.label()).c_str(), json_quote(l.plan).c_str(), l.level,
                 json_quote(l.role).c_str(), pass_name(r.pass), kernels::conv_precision_name(r.dtype), json_number(gflop).c_str(),
                 json_number(r.ours_ms, ours).c_str(), json_number(r.cudnn_ms, cudnn).c_str(),
                 json_number(r.cudnn_ms / r.ours_ms, ours && cudnn).c_str(),
                 json_number(gflop / r.ours_ms, ours).c_str(), json_number(gflop / r.cudnn_ms, cudnn).c_str(),
                 json_number(r.roof_tflops, r.roof_tflops > 0).c_str(), r.skipped ? "true" : "false",
                 r.note.empty() ? "null" : json_quote(r.note).c_str());
  }
  std::fprintf(f, "%s]\n}\n", rows.empty() ? "" : "\n  ");
  return std::fclose(f) == 0;
}

}  // namespace

#ifndef UNET_WITH_CUDA_RUNTIME

int run_conv_timing(FILE* out, const std::vector<ConvLayer>&, const ConvBenchOptions& options) {
  const char* why =
      "measured table (our kernels vs cuDNN): not in this build; it needs a GPU build "
      "(cmake -DUNET_CUDA_RUNTIME=ON, which links the CUDA runtime and cuDNN)";
  std::fprintf(out, "%s\n", why);
  if (!options.json_path.empty() && !write_json(options.json_path, nullptr, nullptr, why, {})) {
    std::fprintf(out, "could not write %s\n", options.json_path.c_str());
    return 1;
  }
  return 0;
}

#else

namespace {

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
void check_cudnn(cudnnStatus_t s, const char* what) {
  if (s != CUDNN_STATUS_SUCCESS) throw std::runtime_error(std::string(what) + ": " + cudnnGetErrorString(s));
}
#define CK(expr) check_cuda((expr), #expr)
#define DNN(expr) check_cudnn((expr), #expr)

// Device buffer of `bytes`, freed on scope exit.
struct Buffer {
  void* p = nullptr;
  explicit Buffer(size_t bytes) {
    if (bytes) CK(cudaMalloc(&p, bytes));
  }
  ~Buffer() { cudaFree(p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

// Fills a device buffer with uniform values in [-1, 1) stored as dt: a block of up to 2^20 random values made on the
// host, then repeated on the device by doubling copies (host generation of every element took seconds per layer).
void fill_random(void* dst, int64_t n, DType dt, uint64_t seed) {
  if (n <= 0) return;
  const size_t es = dtype_size(dt);
  const int64_t block = std::min<int64_t>(n, int64_t(1) << 20);
  Rng rng(seed);
  std::vector<uint32_t> host(static_cast<size_t>(block));
  std::vector<uint16_t> host16(static_cast<size_t>(block));
  for (int64_t i = 0; i < block; ++i) {
    const float v = static_cast<float>(rng.uniform() * 2 - 1);
    if (dt == DType::f32)
      host[i] = float_bits(v);
    else
      host16[i] = dt == DType::f16 ? float_to_f16(v) : float_to_bf16(v);
  }
  CK(cudaMemcpy(dst, dt == DType::f32 ? static_cast<const void*>(host.data()) : host16.data(), block * es,
                cudaMemcpyHostToDevice));
  char* d = static_cast<char*>(dst);
  for (int64_t have = block; have < n; have *= 2)
    CK(cudaMemcpy(d + have * es, d, std::min(have, n - have) * es, cudaMemcpyDeviceToDevice));
}

// Median milliseconds of fn after `warmup` runs: up to `reps` runs, stopping once `budget_ms` of GPU time is spent
// (never below 3 runs), each between two events on the default stream.
template <class F>
double median_ms(F&& fn, int warmup, int reps, double budget_ms) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  auto timed = [&] {
    CK(cudaEventRecord(a, nullptr));
    fn();
    CK(cudaEventRecord(b, nullptr));
    CK(cudaEventSynchronize(b));
    float t = 0;
    CK(cudaEventElapsedTime(&t, a, b));
    return double(t);
  };
  std::vector<double> ms;
  try {
    for (int i = 0; i < warmup; ++i) timed();
    double spent = 0;
    for (int i = 0; i < reps; ++i) {
      ms.push_back(timed());
      spent += ms.back();
      if (ms.size() >= 3 && spent >= budget_ms) break;
    }
  } catch (...) {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    throw;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  CK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// cuDNN descriptors of one problem in one data type (NHWC / NDHWC activations, KRSC / KTRSC filters).
struct CudnnConv {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnDataType_t type;
  CudnnConv(const kernels::ConvProblem& p, kernels::ConvPrecision t) {
    type = t == kernels::ConvPrecision::f16 ? CUDNN_DATA_HALF : t == kernels::ConvPrecision::bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    const bool is3d = p.D > 1 || p.T > 1;
    const int nd = is3d ? 5 : 4;
    auto dims = [&](int64_t n, int64_t c, int64_t d, int64_t h, int64_t w) {
      return is3d ? std::vector<int>{int(n), int(c), int(d), int(h), int(w)}
                  : std::vector<int>{int(n), int(c), int(h), int(w)};
    };
    DNN(cudnnCreateTensorDescriptor(&x));
    DNN(cudnnCreateTensorDescriptor(&y));
    DNN(cudnnCreateFilterDescriptor(&w));
    DNN(cudnnCreateConvolutionDescriptor(&conv));
    DNN(cudnnSetTensorNdDescriptorEx(x, CUDNN_TENSOR_NHWC, type, nd, dims(p.N, p.C, p.D, p.H, p.W).data()));
    DNN(cudnnSetTensorNdDescriptorEx(y, CUDNN_TENSOR_NHWC, type, nd, dims(p.N, p.K, p.Z, p.P, p.Q).data()));
    DNN(cudnnSetFilterNdDescriptor(w, type, CUDNN_TENSOR_NHWC, nd, dims(p.K, p.C, p.T, p.R, p.S).data()));
    std::vector<int> pad = is3d ? std::vector<int>{p.pad_d, p.pad_h, p.pad_w} : std::vector<int>{p.pad_h, p.pad_w};
    std::vector<int> stride =
        is3d ? std::vector<int>{p.stride_d, p.stride_h, p.stride_w} : std::vector<int>{p.stride_h, p.stride_w};
    std::vector<int> dilation(pad.size(), 1);
    DNN(cudnnSetConvolutionNdDescriptor(conv, nd - 2, pad.data(), stride.data(), dilation.data(),
                                        CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    // f32: FMA only (like our SIMT path); tf32: tensor-op math, which lets cuDNN use TF32 for float data.
    DNN(cudnnSetConvolutionMathType(conv, t == kernels::ConvPrecision::f32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
  }
  ~CudnnConv() {
    cudnnDestroyTensorDescriptor(x);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyConvolutionDescriptor(conv);
  }
  CudnnConv(const CudnnConv&) = delete;
  CudnnConv& operator=(const CudnnConv&) = delete;
};

// One layer's operands in one dtype, filled once: x, dy (= y's shape) and w are inputs; y_out, dx_out, dw32 (ours,
// f32 master gradient) and dw_dt (cuDNN's, in the data type) are outputs, so no pass reads another's result.
struct LayerBuffers {
  Buffer x, y, w, y_out, dx_out, dw32, dw_dt;
  LayerBuffers(const kernels::ConvProblem& p, DType dt)
      : x(bytes(p.N * p.D * p.H * p.W * p.C, dt)),
        y(bytes(p.N * p.Z * p.P * p.Q * p.K, dt)),
        w(bytes(p.K * p.taps() * p.C, dt)),
        y_out(bytes(p.N * p.Z * p.P * p.Q * p.K, dt)),
        dx_out(bytes(p.N * p.D * p.H * p.W * p.C, dt)),
        dw32(bytes(p.K * p.taps() * p.C, DType::f32)),
        dw_dt(bytes(p.K * p.taps() * p.C, dt)) {
    fill_random(x.p, p.N * p.D * p.H * p.W * p.C, dt, 1);
    fill_random(y.p, p.N * p.Z * p.P * p.Q * p.K, dt, 2);
    fill_random(w.p, p.K * p.taps() * p.C, dt, 3);
  }
  static size_t bytes(int64_t n, DType dt) { return static_cast<size_t>(n) * dtype_size(dt); }
};

// TF32 for our f32 kernels while it lives (tf32 rows), fp32 afterwards.
struct Tf32For {
  explicit Tf32For(bool on) { kernels::cuda::set_conv_allow_tf32(on); }
  ~Tf32For() { kernels::cuda::set_conv_allow_tf32(false); }
};

struct Times {
  double ours = 0, cudnn = 0;  // ms; 0 when that side failed
  std::string note;
};

Times time_pass(cudnnHandle_t h, const kernels::ConvProblem& p, kernels::ConvPrecision t, ConvPass pass, LayerBuffers& b,
                const ConvBenchOptions& o) {
  const DType dt = kernels::conv_storage_dtype(t);
  Times r;
  const int warmup = std::max(1, o.quick ? 1 : o.warmup), reps = o.quick ? 5 : o.reps;
  const double budget = o.quick ? 50 : o.budget_ms_per_config;
  try {
    const Tf32For tf32(t == kernels::ConvPrecision::tf32);
    r.ours = median_ms(
        [&] {
          if (pass == ConvPass::fprop)
            kernels::cuda::conv_fprop(p, dt, b.x.p, b.w.p, nullptr, b.y_out.p, nullptr, nullptr);
          if (pass == ConvPass::dgrad) kernels::cuda::conv_dgrad(p, dt, b.y.p, b.w.p, b.dx_out.p, nullptr);
          if (pass == ConvPass::wgrad)
            kernels::cuda::conv_wgrad(p, dt, b.x.p, b.y.p, static_cast<float*>(b.dw32.p), nullptr, nullptr);
        },
        warmup, reps, budget);
  } catch (const std::exception& e) {
    r.ours = 0;
    r.note = std::string("ours: ") + e.what();
    (void)cudaGetLastError();  // a launch error is not sticky: do not let it fail cuDNN's side
  }
  try {
    CudnnConv c(p, t);
    const float one = 1, zero = 0;
    int found = 0;
    size_t ws_bytes = 0;
    if (pass == ConvPass::fprop) {
      cudnnConvolutionFwdAlgoPerf_t perf;
      DNN(cudnnFindConvolutionForwardAlgorithm(h, c.x, c.w, c.conv, c.y, 1, &found, &perf));
      if (!found || perf.status != CUDNN_STATUS_SUCCESS) throw std::runtime_error("no forward algorithm");
      ws_bytes = perf.memory;
      Buffer ws(ws_bytes);
      r.cudnn = median_ms(
          [&] {
            DNN(cudnnConvolutionForward(h, &one, c.x, b.x.p, c.w, b.w.p, c.conv, perf.algo, ws.p, ws_bytes, &zero, c.y,
                                        b.y_out.p));
          },
          warmup, reps, budget);
    } else if (pass == ConvPass::dgrad) {
      cudnnConvolutionBwdDataAlgoPerf_t perf;
      DNN(cudnnFindConvolutionBackwardDataAlgorithm(h, c.w, c.y, c.conv, c.x, 1, &found, &perf));
      if (!found || perf.status != CUDNN_STATUS_SUCCESS) throw std::runtime_error("no backward-data algorithm");
      ws_bytes = perf.memory;
      Buffer ws(ws_bytes);
      r.cudnn = median_ms(
          [&] {
            DNN(cudnnConvolutionBackwardData(h, &one, c.w, b.w.p, c.y, b.y.p, c.conv, perf.algo, ws.p, ws_bytes, &zero,
                                             c.x, b.dx_out.p));
          },
          warmup, reps, budget);
    } else {
      // cuDNN wants dw in the data type of x and dy; ours writes f32 (master weights).
      cudnnConvolutionBwdFilterAlgoPerf_t perf;
      DNN(cudnnFindConvolutionBackwardFilterAlgorithm(h, c.x, c.y, c.conv, c.w, 1, &found, &perf));
      if (!found || perf.status != CUDNN_STATUS_SUCCESS) throw std::runtime_error("no backward-filter algorithm");
      ws_bytes = perf.memory;
      Buffer ws(ws_bytes);
      r.cudnn = median_ms(
          [&] {
            DNN(cudnnConvolutionBackwardFilter(h, &one, c.x, b.x.p, c.y, b.y.p, c.conv, perf.algo, ws.p, ws_bytes,
                                               &zero, c.w, b.dw_dt.p));
          },
          warmup, reps, budget);
    }
  } catch (const std::exception& e) {
    r.cudnn = 0;
    r.note += (r.note.empty() ? "" : "; ") + std::string("cuDNN: ") + e.what();
    (void)cudaGetLastError();
  }
  return r;
}

Precision roofline_precision(kernels::ConvPrecision t) {
  return t == kernels::ConvPrecision::tf32 ? Precision::tf32 : t == kernels::ConvPrecision::f32 ? Precision::fp32 : Precision::f16;
}

// What the device says about itself (see DeviceFigures).
DeviceFigures read_device_figures(int device) {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, device));
  DeviceFigures f;
  f.name = prop.name;
  f.cc_major = prop.major;
  f.cc_minor = prop.minor;
  int v = 0;
  CK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
  f.sms = v;
  CK(cudaDeviceGetAttribute(&v, cudaDevAttrClockRate, device));  // kHz
  f.sm_clock_mhz = v / 1000.0;
  CK(cudaDeviceGetAttribute(&v, cudaDevAttrMemoryClockRate, device));  // kHz
  f.mem_clock_mhz = v / 1000.0;
  CK(cudaDeviceGetAttribute(&v, cudaDevAttrGlobalMemoryBusWidth, device));
  f.bus_width_bits = v;
  return f;
}

}  // namespace

int run_conv_timing(FILE* out, const std::vector<ConvLayer>& layers, const ConvBenchOptions& options) {
  std::vector<TimedRow> rows;
  DeviceFigures figures;
  bool have_figures = false, have_peak = false;
  GpuPeak peak;
  int failures = 0;
  auto json = [&](const std::string& error) {
    if (options.json_path.empty()) return true;
    if (write_json(options.json_path, have_figures ? &figures : nullptr, have_peak ? &peak : nullptr, error, rows))
      return true;
    std::fprintf(out, "could not write %s\n", options.json_path.c_str());
    return false;
  };
  try {
    int device = 0;
    CK(cudaGetDevice(&device));
    figures = read_device_figures(device);
    have_figures = true;
    have_peak = peak_from_device(figures, &peak);
    // Freed memory stays in the default pool, from which the kernels' scratch (cudaMallocAsync) comes.
    cudaMemPool_t pool = nullptr;
    CK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t keep_all = UINT64_MAX;
    CK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all));
    struct Handle {  // destroyed on every exit
      cudnnHandle_t h = nullptr;
      ~Handle() {
        if (h) cudnnDestroy(h);
      }
    } handle;
    DNN(cudnnCreate(&handle.h));
    const int warmup = std::max(1, options.quick ? 1 : options.warmup), reps = options.quick ? 5 : options.reps;
    const double budget = options.quick ? 50 : options.budget_ms_per_config;
    std::fprintf(out,
                 "measured on %s (sm_%d%d), cuDNN %zu: median of up to %d runs (fewer once %.0f ms of GPU time is "
                 "spent, at least 3) after %d warm-up, TFLOP/s\n",
                 figures.name.c_str(), figures.cc_major, figures.cc_minor, cudnnGetVersion(), reps, budget, warmup);
    std::fprintf(out,
                 "read from the device (cudaDeviceGetAttribute): %d SMs, SM clock %.0f MHz, memory clock %.0f MHz, "
                 "memory bus %d bits\n",
                 figures.sms, figures.sm_clock_mhz, figures.mem_clock_mhz, figures.bus_width_bits);
    if (have_peak)
      std::fprintf(out,
                   "this device's roofline from them and sm_%d%d's per-clock rates: f16/bf16 tensor %.1f, tf32 tensor "
                   "%.1f, fp32 %.1f TFLOP/s (at that SM clock), DRAM %.0f GB/s\n",
                   figures.cc_major, figures.cc_minor, peak.f16_tensor_tflops, peak.tf32_tensor_tflops,
                   peak.fp32_tflops, peak.dram_gbs);
    else
      std::fprintf(out, "no per-clock rates known for sm_%d%d: the roof column is left empty\n", figures.cc_major,
                   figures.cc_minor);
    std::fprintf(out, "%-38s %5s %5s %9s %9s %9s %10s %6s %9s\n", "layer", "pass", "dtype", "ours ms", "ours TF/s",
                 "cuDNN ms", "cuDNN TF/s", "ratio", "roof");
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<kernels::ConvPrecision> dtypes = options.dtypes;
    if (options.quick) dtypes = {kernels::ConvPrecision::f16};
    int skipped = 0;
    for (kernels::ConvPrecision t : dtypes) {
      const DType dt = kernels::conv_storage_dtype(t);
      for (const ConvLayer& l : layers) {
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const bool over = elapsed > options.budget_s;
        std::unique_ptr<LayerBuffers> buffers;
        std::string setup_error;
        if (!over) {
          try {
            buffers = std::make_unique<LayerBuffers>(l.p, dt);
          } catch (const std::exception& e) {
            setup_error = std::string("buffers: ") + e.what();
            (void)cudaGetLastError();
          }
        }
        for (ConvPass pass : {ConvPass::fprop, ConvPass::dgrad, ConvPass::wgrad}) {
          TimedRow row;
          row.layer = &l;
          row.pass = pass;
          row.dtype = t;
          if (have_peak)
            row.roof_tflops = roofline(l.p.flops(), min_bytes(l.p, pass, roofline_precision(t)),
                                       peak_tflops(peak, roofline_precision(t)), peak.dram_gbs)
                                  .tflops;
          if (over) {
            row.skipped = true;
            row.note = "skipped: the table's time budget (--budget) was spent";
            ++skipped;
          } else if (!buffers) {
            row.note = setup_error;
          } else {
            const Times m = time_pass(handle.h, l.p, t, pass, *buffers, options);
            row.ours_ms = m.ours;
            row.cudnn_ms = m.cudnn;
            row.note = m.note;
          }
          if (!row.skipped && row.ours_ms <= 0) ++failures;
          const double gflop = l.p.flops() / 1e9;
          auto tflops = [&](double ms) { return ms > 0 ? gflop / ms : 0.0; };  // GFLOP / ms = TFLOP/s
          std::fprintf(out, "%-38s %5s %5s %9.3f %9.1f %9.3f %10.1f %6.2f %9.1f%s%s\n", l.label().c_str(),
                       pass_name(pass), kernels::conv_precision_name(t), row.ours_ms, tflops(row.ours_ms), row.cudnn_ms,
                       tflops(row.cudnn_ms), row.ours_ms > 0 && row.cudnn_ms > 0 ? row.cudnn_ms / row.ours_ms : 0.0,
                       row.roof_tflops, row.note.empty() ? "" : "  ", row.note.c_str());
          std::fflush(out);
          rows.push_back(std::move(row));
        }
      }
    }
    std::fprintf(
        out,
        "ratio = ours / cuDNN in TFLOP/s (cuDNN time / our time; above 1: ours is faster); roof = the roofline "
        "TFLOP/s of this device (f32 rows: the SIMT fp32 peak); %.0f s\n",
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (skipped) std::fprintf(out, "%d rows skipped: the time budget of %.0f s was spent\n", skipped, options.budget_s);
  } catch (const std::exception& e) {
    std::fprintf(out, "measured table failed: %s\n", e.what());
    json(e.what());
    return 1;
  }
  if (!json("")) return 1;
  return failures ? 1 : 0;
}

#endif

}  // namespace unet::bench
