// The measured half of the convolution benchmark: our kernels (kernels/cuda/conv.cuh) and cuDNN 9 on the same
// channels-last shapes, timed with CUDA events (warm-up, then the median of `reps` runs), printed as TFLOP/s and the
// ratio ours / cuDNN. Only a build that links the CUDA runtime (UNET_WITH_CUDA_RUNTIME) and cuDNN has it; any other
// build prints why the table is missing. cuDNN runs through its convolution API (cudnnConvolutionForward /
// BackwardData / BackwardFilter with NHWC / NDHWC descriptors, the fastest algorithm found by cudnnFind*), with
// tensor-op math for f16 and FMA math for f32 (our f32 path is SIMT, so TF32 would not be a like-for-like baseline).
#include <cstdio>

#include "bench/lib/conv_roofline.h"

#ifdef UNET_WITH_CUDA_RUNTIME
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/random.h"
#include "kernels/cuda/conv.cuh"
#endif

namespace unet::bench {

#ifndef UNET_WITH_CUDA_RUNTIME

int run_conv_timing(FILE* out, const std::vector<ConvLayer>&, const ConvBenchOptions&) {
  std::fprintf(out,
               "measured table (our kernels vs cuDNN): not in this build; it needs a GPU build "
               "(cmake -DUNET_CUDA_RUNTIME=ON, which links the CUDA runtime and cuDNN)\n");
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

// Fills a device buffer with uniform values in [-1, 1) stored as dt.
void fill_random(void* dst, int64_t n, DType dt, uint64_t seed) {
  Rng rng(seed);
  std::vector<uint32_t> host(static_cast<size_t>(n));
  std::vector<uint16_t> host16(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(rng.uniform() * 2 - 1);
    if (dt == DType::f32)
      host[i] = float_bits(v);
    else
      host16[i] = dt == DType::f16 ? float_to_f16(v) : float_to_bf16(v);
  }
  if (dt == DType::f32)
    CK(cudaMemcpy(dst, host.data(), n * 4, cudaMemcpyHostToDevice));
  else
    CK(cudaMemcpy(dst, host16.data(), n * 2, cudaMemcpyHostToDevice));
}

// Median milliseconds of fn over reps runs after warmup runs, each run between two events on the default stream.
template <class F>
double median_ms(F&& fn, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a, nullptr));
    fn();
    CK(cudaEventRecord(b, nullptr));
    CK(cudaEventSynchronize(b));
    float t = 0;
    CK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
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
  CudnnConv(const kernels::ConvProblem& p, DType dt) {
    type = dt == DType::f16 ? CUDNN_DATA_HALF : dt == DType::bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
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
    DNN(cudnnSetConvolutionMathType(conv, dt == DType::f32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
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

struct Times {
  double ours = 0, cudnn = 0;  // ms; 0 when that side failed
  std::string note;
};

Times time_pass(cudnnHandle_t h, const kernels::ConvProblem& p, DType dt, ConvPass pass, const ConvBenchOptions& o) {
  const size_t es = dtype_size(dt);
  const int64_t nx = p.N * p.D * p.H * p.W * p.C, ny = p.N * p.Z * p.P * p.Q * p.K, nw = p.K * p.taps() * p.C;
  Buffer x(nx * es), y(ny * es), w(nw * es), dw32(nw * 4), dwdt(nw * es);
  fill_random(x.p, nx, dt, 1);
  fill_random(y.p, ny, dt, 2);
  fill_random(w.p, nw, dt, 3);
  Times t;
  const int warmup = o.quick ? 1 : o.warmup, reps = o.quick ? 5 : o.reps;
  try {
    t.ours = median_ms(
        [&] {
          if (pass == ConvPass::fprop) kernels::cuda::conv_fprop(p, dt, x.p, w.p, nullptr, y.p, nullptr, nullptr);
          if (pass == ConvPass::dgrad) kernels::cuda::conv_dgrad(p, dt, y.p, w.p, x.p, nullptr);
          if (pass == ConvPass::wgrad)
            kernels::cuda::conv_wgrad(p, dt, x.p, y.p, static_cast<float*>(dw32.p), nullptr, nullptr);
        },
        warmup, reps);
  } catch (const std::exception& e) {
    t.note = std::string("ours: ") + e.what();
  }
  try {
    CudnnConv c(p, dt);
    const float one = 1, zero = 0;
    int found = 0;
    size_t ws_bytes = 0;
    if (pass == ConvPass::fprop) {
      cudnnConvolutionFwdAlgoPerf_t perf;
      DNN(cudnnFindConvolutionForwardAlgorithm(h, c.x, c.w, c.conv, c.y, 1, &found, &perf));
      if (!found || perf.status != CUDNN_STATUS_SUCCESS) throw std::runtime_error("no forward algorithm");
      ws_bytes = perf.memory;
      Buffer ws(ws_bytes);
      t.cudnn = median_ms(
          [&] {
            DNN(cudnnConvolutionForward(h, &one, c.x, x.p, c.w, w.p, c.conv, perf.algo, ws.p, ws_bytes, &zero, c.y,
                                        y.p));
          },
          warmup, reps);
    } else if (pass == ConvPass::dgrad) {
      cudnnConvolutionBwdDataAlgoPerf_t perf;
      DNN(cudnnFindConvolutionBackwardDataAlgorithm(h, c.w, c.y, c.conv, c.x, 1, &found, &perf));
      if (!found || perf.status != CUDNN_STATUS_SUCCESS) throw std::runtime_error("no backward-data algorithm");
      ws_bytes = perf.memory;
      Buffer ws(ws_bytes);
      t.cudnn = median_ms(
          [&] {
            DNN(cudnnConvolutionBackwardData(h, &one, c.w, w.p, c.y, y.p, c.conv, perf.algo, ws.p, ws_bytes, &zero, c.x,
                                             x.p));
          },
          warmup, reps);
    } else {
      // cuDNN wants dw in the data type of x and dy; ours writes f32 (master weights).
      cudnnConvolutionBwdFilterAlgoPerf_t perf;
      DNN(cudnnFindConvolutionBackwardFilterAlgorithm(h, c.x, c.y, c.conv, c.w, 1, &found, &perf));
      if (!found || perf.status != CUDNN_STATUS_SUCCESS) throw std::runtime_error("no backward-filter algorithm");
      ws_bytes = perf.memory;
      Buffer ws(ws_bytes);
      t.cudnn = median_ms(
          [&] {
            DNN(cudnnConvolutionBackwardFilter(h, &one, c.x, x.p, c.y, y.p, c.conv, perf.algo, ws.p, ws_bytes, &zero,
                                               c.w, dwdt.p));
          },
          warmup, reps);
    }
  } catch (const std::exception& e) {
    t.note += (t.note.empty() ? "" : "; ") + std::string("cuDNN: ") + e.what();
  }
  return t;
}

}  // namespace

int run_conv_timing(FILE* out, const std::vector<ConvLayer>& layers, const ConvBenchOptions& options) {
  int device = 0;
  cudaDeviceProp prop;
  int failures = 0;
  try {
    CK(cudaGetDevice(&device));
    CK(cudaGetDeviceProperties(&prop, device));
    struct Handle {  // destroyed on every exit
      cudnnHandle_t h = nullptr;
      ~Handle() {
        if (h) cudnnDestroy(h);
      }
    } handle;
    DNN(cudnnCreate(&handle.h));
    // The roofline of this GPU's family for comparison (A100 figures for sm_8x, H100 for sm_9x; none otherwise).
    const GpuPeak* peak = nullptr;
    for (const GpuPeak& g : gpu_peaks())
      if ((prop.major == 8 && std::string(g.gpu) == "A100") || (prop.major == 9 && std::string(g.gpu) == "H100"))
        peak = &g;
    std::fprintf(out, "measured on %s (sm_%d%d), cuDNN %zu: median of %d runs after %d warm-up, TFLOP/s\n", prop.name,
                 prop.major, prop.minor, cudnnGetVersion(), options.quick ? 5 : options.reps,
                 options.quick ? 1 : options.warmup);
    std::fprintf(out, "%-38s %5s %5s %9s %9s %9s %10s %6s %9s\n", "layer", "pass", "dtype", "ours ms", "ours TF/s",
                 "cuDNN ms", "cuDNN TF/s", "ratio", peak ? (std::string(peak->gpu) + " roof").c_str() : "roof");
    for (DType dt : {DType::f16, DType::bf16, DType::f32}) {
      if (options.quick && dt == DType::bf16) continue;
      const Precision precision = dt == DType::f32 ? Precision::fp32 : Precision::f16;
      for (const ConvLayer& l : layers) {
        for (ConvPass pass : {ConvPass::fprop, ConvPass::dgrad, ConvPass::wgrad}) {
          const Times t = time_pass(handle.h, l.p, dt, pass, options);
          const double gflop = l.p.flops() / 1e9;
          auto tflops = [&](double ms) { return ms > 0 ? gflop / ms : 0.0; };  // GFLOP / ms = TFLOP/s
          const double roof = peak ? roofline(l.p.flops(), min_bytes(l.p, pass, precision),
                                              peak_tflops(*peak, precision), peak->dram_gbs)
                                         .tflops
                                   : 0.0;
          std::fprintf(out, "%-38s %5s %5s %9.3f %9.1f %9.3f %10.1f %6.2f %9.1f%s%s\n", l.label().c_str(),
                       pass_name(pass), dtype_name(dt), t.ours, tflops(t.ours), t.cudnn, tflops(t.cudnn),
                       t.ours > 0 && t.cudnn > 0 ? t.cudnn / t.ours : 0.0, roof, t.note.empty() ? "" : "  ",
                       t.note.c_str());
          if (t.ours <= 0) ++failures;
        }
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(out, "measured table failed: %s\n", e.what());
    return 1;
  }
  std::fprintf(out,
               "ratio = ours / cuDNN in TFLOP/s (cuDNN time / our time; above 1: ours is faster); roof = the "
               "roofline TFLOP/s of this GPU family (f32 rows: the SIMT fp32 peak)\n");
  return failures ? 1 : 0;
}

#endif

}  // namespace unet::bench
