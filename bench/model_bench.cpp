// Model throughput: training steps per second (forward, DiceCE, backward, AdamW) and inference forward passes per
// second of a DynUNet, after one warm-up step, with latency percentiles, on the CPU backend or a device.
// usage: model_bench [--patch 64,64,64] [--batch 2] [--filters 32] [--classes 3] [--channels 1] [--steps 5]
//                    [--device cpu|cuda|cuda-emu] [--tf32 0|1] [--depth 5]
// The nnU-Net 3D reference configuration (docs/reference.md, "Benchmarks"): --patch 128,128,128 --batch 2
// --filters 32 --classes 3 --channels 4.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "kernels/common/allocator.h"
#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "kernels/common/parallel.h"
#include "engine/random.h"
#include "models/nnunet.h"
#include "models/nnunet_plan.h"
#include "models/trainer.h"

using namespace unet;

static std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  for (const char* p = s; *p;) {
    v.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return v;
}

static double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))];
}

int main(int argc, char** argv) {
  std::vector<int> patch{64, 64, 64};
  int batch = 2, base = 32, classes = 3, channels = 1, steps = 5, tf32 = 0, depth = 5;
  std::string device_name = "cpu";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--patch") patch = parse_list(argv[i + 1]);
    else if (k == "--batch") batch = std::atoi(argv[i + 1]);
    else if (k == "--filters") base = std::atoi(argv[i + 1]);
    else if (k == "--classes") classes = std::atoi(argv[i + 1]);
    else if (k == "--channels") channels = std::atoi(argv[i + 1]);
    else if (k == "--steps") steps = std::atoi(argv[i + 1]);
    else if (k == "--device") device_name = argv[i + 1];
    else if (k == "--tf32") tf32 = std::atoi(argv[i + 1]);
    else if (k == "--depth") depth = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  Device dev = Device::cpu;
  try {
    dev = device::resolve_device(device_name, &std::cout);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "model_bench: --device %s: %s\n", device_name.c_str(), e.what());
    return 2;
  }
  ops::set_conv_allow_tf32(tf32 != 0);
  models::UNetPlan plan = models::plan_unet(patch, std::vector<double>(patch.size(), 1.0), depth);
  models::DynUNetConfig cfg{channels, classes, plan.kernels, plan.strides, plan.filters};
  for (size_t i = 0; i < cfg.filters.size(); ++i) cfg.filters[i] = std::min(base << i, patch.size() == 3 ? 320 : 512);
  models::DynUNet net(cfg);
  net.initialize(0);
  net.to(dev);  // before the optimizer, which creates its state on the parameters' device
  AdamW opt(net.parameters());
  Rng rng(1);
  Shape xs{batch}, ys{batch};
  for (int p : patch) xs.push_back(p), ys.push_back(p);
  xs.push_back(channels);
  Tensor x = randn(xs, rng);
  Tensor y = Tensor::zeros(ys, DType::i32);
  for (int64_t i = 0; i < y.numel(); ++i) y.data<int32_t>()[i] = static_cast<int32_t>(rng.below(classes));
  x = x.to(dev);
  y = y.to(dev);

  using clock = std::chrono::steady_clock;
  HostAllocator::instance().reset_peak();
  device::reset_peak(dev);
  std::vector<double> train_ms, infer_ms;
  for (int s = 0; s < steps + 1; ++s) {
    auto t0 = clock::now();
    models::train_step(net, opt, x, y);
    device::synchronize(dev);  // the optimizer step is queued after the loss was read
    double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    if (s > 0) train_ms.push_back(ms);  // step 0 is warm-up
  }
  size_t train_peak = HostAllocator::instance().stats().peak_bytes;
  size_t device_peak = device::memory_stats(dev).peak_bytes;
  for (int s = 0; s < steps + 1; ++s) {
    autograd::NoGradGuard ng;
    auto t0 = clock::now();
    net.forward(x, false);
    device::synchronize(dev);
    double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    if (s > 0) infer_ms.push_back(ms);
  }
  double tm = 0, im = 0;
  for (double v : train_ms) tm += v / train_ms.size();
  for (double v : infer_ms) im += v / infer_ms.size();
  std::printf("DynUNet %zuD patch", patch.size());
  for (int p : patch) std::printf(" %d", p);
  std::printf(", batch %d, filters %d.., %zu levels, %lld parameters, on %s%s, %d host threads\n", batch, base,
              plan.kernels.size(), static_cast<long long>(net.parameter_count()), device_name.c_str(),
              tf32 ? " (TF32 convolutions)" : "", num_threads());
  std::printf("train: %.1f ms/step, %.2f samples/s, peak host memory %.0f MiB", tm, batch * 1000.0 / tm, train_peak / 1048576.0);
  if (dev != Device::cpu) std::printf(", peak device tensor memory %.0f MiB", device_peak / 1048576.0);
  std::printf("\n");
  std::printf("infer: %.1f ms/batch (p90 %.1f, p95 %.1f, p99 %.1f), %.2f samples/s\n", im, percentile(infer_ms, 0.9),
              percentile(infer_ms, 0.95), percentile(infer_ms, 0.99), batch * 1000.0 / im);
}
