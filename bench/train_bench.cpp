// Training and inference throughput of a DynUNet, a UNet2D or a UNet 3+ per precision: samples/s, latency mean / p50 /
// p90 / p95 / p99 of training steps (forward, deep-supervision DiceCE, backward, AdamW; loss scaling for fp16) and of
// inference forward passes, peak host and device memory, after warm-up steps; a table on stdout and, with --json, the
// same as JSON (as the seeds' benchmark scripts report: DLE's nnU-Net `--benchmark` prints throughput and latency
// percentiles). usage: train_bench [--patch 64,64,64] [--batch 2] [--filters 32] [--max-filters 320] [--depth 5]
// [--classes 3]
//                    [--channels 1] [--steps 5] [--warmup 1] [--device cpu|cuda|cuda-emu|auto]
//                    [--precision fp32,bf16,...] [--deep-supervision 1] [--model dynunet|unet2d|unet3plus]
//                    [--json FILE]
// The nnU-Net 3D reference network (docs/reference.md, "Benchmarks"): --patch 128,128,128 --batch 2 --filters 32
// --classes 3 --channels 4 --depth 5 (6 levels, 31.2M parameters). DLE's UNet2D: --model unet2d --patch 572,572
// --filters 64 --classes 2 (34.5M parameters with its 3x3 up-convolutions; logits 388 x 388). DLE's UNet 3+:
// --model unet3plus --patch 320,320 --filters 64 --channels 3 --classes 2 --batch 16 (--deep-supervision 0 for DLE's
// plain variant).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/loss_scaler.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/precision.h"
#include "engine/random.h"
#include "io/atomic_file.h"
#include "kernels/common/allocator.h"
#include "kernels/common/parallel.h"
#include "models/checkpoint.h"
#include "models/network.h"
#include "models/nnunet.h"
#include "models/nnunet_plan.h"
#include "models/trainer.h"

using namespace unet;

namespace {

struct Latency {
  double mean = 0, p50 = 0, p90 = 0, p95 = 0, p99 = 0;
};

// Nearest-rank percentiles of the measured times (ms).
Latency latency(std::vector<double> ms) {
  Latency l;
  if (ms.empty()) return l;
  std::sort(ms.begin(), ms.end());
  auto at = [&](double q) { return ms[std::min(ms.size() - 1, static_cast<size_t>(q * (ms.size() - 1) + 0.5))]; };
  for (double v : ms) l.mean += v / static_cast<double>(ms.size());
  l.p50 = at(0.5), l.p90 = at(0.9), l.p95 = at(0.95), l.p99 = at(0.99);
  return l;
}

nlohmann::json to_json(const Latency& l, int batch) {
  return {{"samples_per_s", l.mean > 0 ? batch * 1000.0 / l.mean : 0.0},
          {"mean_ms", l.mean},
          {"p50_ms", l.p50},
          {"p90_ms", l.p90},
          {"p95_ms", l.p95},
          {"p99_ms", l.p99}};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> patch{64, 64, 64};
  int batch = 2, filters = 32, max_filters = 320, depth = 5, classes = 3, channels = 1, steps = 5, warmup = 1;
  bool deep_supervision = true;
  std::string device_arg = "cpu", precisions = "fp32", json_path;
  std::string model = "dynunet";
  CLI::App app{"DynUNet, UNet2D or UNet 3+ training and inference throughput, latency and peak memory per precision."};
  app.add_option("--model", model,
                 "dynunet, or unet2d / unet3plus (--patch H,W such as 572,572 / 320,320; filters x1, 2, 4, 8, 16)")
      ->capture_default_str();
  app.add_option("--patch", patch, "patch size per spatial axis (2 or 3 values)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--batch", batch, "samples per step")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--filters", filters, "filters of the first level")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--max-filters", max_filters, "filter cap")->check(CLI::Range(1, 4096))->capture_default_str();
  app.add_option("--depth", depth, "maximum downsamplings")->check(CLI::Range(1, 10))->capture_default_str();
  app.add_option("--classes", classes, "output classes")->check(CLI::Range(2, 1000))->capture_default_str();
  app.add_option("--channels", channels, "input channels")->check(CLI::Range(1, 64))->capture_default_str();
  app.add_option("--steps", steps, "timed steps (and forward passes)")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::Range(0, 1000))->capture_default_str();
  app.add_option("--device", device_arg, "cpu, cuda, cuda-emu or auto")->capture_default_str();
  app.add_option("--precision", precisions, "comma-separated list of fp32, tf32, fp16, bf16")->capture_default_str();
  app.add_option("--deep-supervision", deep_supervision, "deep-supervision heads (as nnU-Net trains)")
      ->capture_default_str();
  app.add_option("--json", json_path, "also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  if (patch.size() != 2 && patch.size() != 3) {
    std::fprintf(stderr, "train_bench: --patch needs 2 or 3 sizes\n");
    return 2;
  }
  Device dev = Device::cpu;
  std::vector<Precision> list;
  try {
    dev = device::resolve_device(device_arg, &std::cout);
    std::stringstream ss(precisions);
    for (std::string p; std::getline(ss, p, ',');) list.push_back(parse_precision(p));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_bench: %s\n", e.what());
    return 2;
  }

  const models::UNetPlan plan = models::plan_unet(patch, std::vector<double>(patch.size(), 1.0), depth);
  models::DynUNetConfig cfg{channels, classes, plan.kernels, plan.strides, {}};
  for (size_t i = 0; i < plan.kernels.size(); ++i) cfg.filters.push_back(std::min(filters << i, max_filters));
  cfg.deep_supervision = deep_supervision && plan.kernels.size() >= 4;
  models::ModelCard card;
  card.model = model;
  card.patch = patch;
  card.net = cfg;
  card.unet2d = {channels, classes, {}, 0.5f};
  for (int i = 0; i < 5; ++i) card.unet2d.filters.push_back(filters << i);
  card.unet3plus.in_channels = channels;
  card.unet3plus.out_channels = classes;
  card.unet3plus.filters = card.unet2d.filters;
  card.unet3plus.deep_supervision = deep_supervision;
  const bool slices = model == "unet2d" || model == "unet3plus";
  if (model != "dynunet" && !(slices && patch.size() == 2)) {
    std::fprintf(stderr, "train_bench: --model %s: expected dynunet, or unet2d / unet3plus with a 2D --patch\n",
                 model.c_str());
    return 2;
  }
  try {
    models::make_network(card);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "train_bench: %s\n", e.what());
    return 2;
  }
  Rng rng(1);
  Shape xs{batch}, ys{batch};
  for (int p : patch) xs.push_back(p), ys.push_back(p);
  xs.push_back(channels);
  Tensor x = randn(xs, rng);
  Tensor y = Tensor::zeros(ys, DType::i32);
  for (int64_t i = 0; i < y.numel(); ++i) y.data<int32_t>()[i] = static_cast<int32_t>(rng.below(classes));
  x = x.to(dev);
  y = y.to(dev);

  std::string shape;
  for (size_t i = 0; i < patch.size(); ++i) shape += (i ? "x" : "") + std::to_string(patch[i]);
  nlohmann::json results = nlohmann::json::array();
  int64_t parameters = 0;
  for (Precision prec : list) {
    // A fresh network and optimizer per precision, so each run starts from the same weights and memory state.
    const std::unique_ptr<models::Network> net = models::make_network(card);
    net->initialize(0);
    net->to(dev);
    parameters = net->parameter_count();
    AdamW opt(net->parameters());
    LossScalerOptions so;
    so.enabled = prec == Precision::fp16;
    LossScaler scaler(so);
    ops::set_conv_allow_tf32(prec == Precision::tf32);
    using clock = std::chrono::steady_clock;
    HostAllocator::instance().reset_peak();
    device::reset_peak(dev);
    std::vector<double> train_ms, infer_ms;
    int64_t skipped = 0;
    // The loss each network trains with: nnU-Net's DiceCE, DLE's CE + soft Dice for UNet2D, the hybrid for UNet 3+.
    const models::LossSpec loss_form = model == "unet2d"      ? models::LossSpec(ops::kDleDiceCe)
                                       : model == "unet3plus" ? models::LossSpec::hybrid_loss()
                                                              : models::LossSpec();
    for (int s = 0; s < warmup + steps; ++s) {
      const auto t0 = clock::now();
      const models::StepStats st =
          models::train_step(*net, opt, x, y, prec, &scaler, nullptr, static_cast<uint64_t>(s) + 1, loss_form);
      device::synchronize(dev);  // the optimizer step is queued after the loss was read
      const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      if (s >= warmup) train_ms.push_back(ms);
      skipped += st.stepped ? 0 : 1;
    }
    const double train_host = HostAllocator::instance().stats().peak_bytes / 1048576.0;
    const double train_device = device::memory_stats(dev).peak_bytes / 1048576.0;
    HostAllocator::instance().reset_peak();
    device::reset_peak(dev);
    for (int s = 0; s < warmup + steps; ++s) {
      autograd::NoGradGuard no_grad;
      const auto t0 = clock::now();
      models::forward_in(*net, x, /*training=*/false, prec);
      device::synchronize(dev);
      const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      if (s >= warmup) infer_ms.push_back(ms);
    }
    const double infer_host = HostAllocator::instance().stats().peak_bytes / 1048576.0;
    const double infer_device = device::memory_stats(dev).peak_bytes / 1048576.0;
    nlohmann::json r = {{"device", device_name(dev)},
                        {"precision", precision_name(prec)},
                        {"batch", batch},
                        {"patch", patch},
                        {"train", to_json(latency(train_ms), batch)},
                        {"infer", to_json(latency(infer_ms), batch)},
                        {"train_peak_host_mib", train_host},
                        {"infer_peak_host_mib", infer_host},
                        {"skipped_steps", skipped}};
    if (dev != Device::cpu) {
      r["train_peak_device_mib"] = train_device;
      r["infer_peak_device_mib"] = infer_device;
    }
    results.push_back(r);
  }
  ops::set_conv_allow_tf32(false);

  std::printf(
      "%s %zuD, patch %s, batch %d, filters %d..%d, %zu levels%s, %lld parameters, on %s, %d host threads; "
      "%d warm-up + %d timed steps\n",
      model == "unet2d"      ? "UNet2D"
      : model == "unet3plus" ? "UNet 3+"
                             : "DynUNet",
      patch.size(), shape.c_str(), batch, filters, slices ? filters * 16 : max_filters,
      slices ? size_t(5) : plan.kernels.size(),
      (model == "dynunet" && cfg.deep_supervision) || (model == "unet3plus" && deep_supervision) ? ", deep supervision"
                                                                                                 : "",
      static_cast<long long>(parameters), device_name(dev), num_threads(), warmup, steps);
  std::printf(
      "| precision | train samples/s | train ms mean / p50 / p90 / p95 / p99 | infer samples/s | "
      "infer ms mean / p50 / p90 / p95 / p99 | peak host MiB train / infer | peak device MiB train / infer |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
  for (const auto& r : results) {
    const auto &t = r["train"], &i = r["infer"];
    std::string device_mem = "-";
    if (r.contains("train_peak_device_mib")) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.0f / %.0f", r["train_peak_device_mib"].get<double>(),
                    r["infer_peak_device_mib"].get<double>());
      device_mem = buf;
    }
    std::printf(
        "| %s | %.2f | %.1f / %.1f / %.1f / %.1f / %.1f | %.2f | %.1f / %.1f / %.1f / %.1f / %.1f | %.0f / %.0f | "
        "%s |\n",
        r["precision"].get<std::string>().c_str(), t["samples_per_s"].get<double>(), t["mean_ms"].get<double>(),
        t["p50_ms"].get<double>(), t["p90_ms"].get<double>(), t["p95_ms"].get<double>(), t["p99_ms"].get<double>(),
        i["samples_per_s"].get<double>(), i["mean_ms"].get<double>(), i["p50_ms"].get<double>(),
        i["p90_ms"].get<double>(), i["p95_ms"].get<double>(), i["p99_ms"].get<double>(),
        r["train_peak_host_mib"].get<double>(), r["infer_peak_host_mib"].get<double>(), device_mem.c_str());
  }
  if (!json_path.empty()) {
    nlohmann::json doc = {{"network",
                           {{"model", model},
                            {"spatial_dims", patch.size()},
                            {"patch", patch},
                            {"batch", batch},
                            {"filters", filters},
                            {"max_filters", max_filters},
                            {"levels", slices ? size_t(5) : plan.kernels.size()},
                            {"deep_supervision", model == "unet3plus" ? deep_supervision
                                                 : model == "dynunet" ? cfg.deep_supervision
                                                                      : false},
                            {"classes", classes},
                            {"channels", channels},
                            {"parameters", parameters}}},
                          {"host_threads", num_threads()},
                          {"warmup_steps", warmup},
                          {"timed_steps", steps},
                          {"results", results}};
    try {
      io::write_file_atomically(json_path, doc.dump(2) + "\n");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "train_bench: %s\n", e.what());
      return 1;
    }
  }
  return 0;
}
