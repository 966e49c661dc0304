// Data-parallel training: weak scaling measured on this machine, and a model of it on GPU clusters.
// usage: mpirun -np N dp_bench [--patch 64,64,64] [--batch 2] [--filters 32] [--max-filters 320] [--depth 4]
//                              [--steps 5] [--warmup 1] [--bucket-mb 25] [--no-overlap] [--device cpu|cuda|cuda-emu]
//                              [--json FILE]
// Measured (one row for this run's N ranks, each training --batch samples a step, the same per-rank work whatever N,
// so that rows for different N compare as weak scaling): time per step, split into compute (everything but the wait
// in the gradient reduction's finish) and exposed communication (that wait), the reduction's own time on the
// communication thread (with NCCL: the time to queue them), and the gradient bytes reduced per rank. On --device cuda
// each rank takes the GPU of its local rank, and a step ends with the device synchronised.
// Modelled (the nnU-Net 3D reference network, docs/reference.md "Benchmarks": 31.2M parameters, 125 MB of f32
// gradients a step): ring all-reduce time 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency, hidden behind
// backward except for the last bucket, for 8 GPUs of one node (NVLink) and 4 nodes of 8 (InfiniBand, the slowest
// link of the ring). The assumed bandwidths, latencies and step time are printed with the rows.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "engine/comm.h"
#include "engine/data_parallel.h"
#include "engine/device.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "io/atomic_file.h"
#include "kernels/common/parallel.h"
#include "models/nnunet.h"
#include "models/nnunet_plan.h"
#include "models/trainer.h"

using namespace unet;

namespace {

models::DynUNetConfig network(const std::vector<int>& patch, int channels, int classes, int filters, int max_filters,
                              int depth) {
  const models::UNetPlan plan = models::plan_unet(patch, std::vector<double>(patch.size(), 1.0), depth);
  models::DynUNetConfig cfg{channels, classes, plan.kernels, plan.strides, {}};
  for (size_t i = 0; i < plan.kernels.size(); ++i) cfg.filters.push_back(std::min(filters << i, max_filters));
  cfg.deep_supervision = plan.kernels.size() >= 4;
  return cfg;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

struct Link {
  const char* name;
  int gpus;
  double bandwidth;  // bytes/s per GPU and direction that a ring all-reduce achieves
  double latency;    // s per ring hop
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> patch{64, 64, 64};
  int batch = 2, filters = 32, max_filters = 320, depth = 4, steps = 5, warmup = 1;
  double bucket_mb = 25;
  bool no_overlap = false;
  std::string json_path, device_arg = "cpu";
  CLI::App app{"Data-parallel weak scaling (run under mpirun) and a model of it on GPU clusters."};
  app.add_option("--patch", patch, "patch size (3 values)")->delimiter(',')->capture_default_str();
  app.add_option("--batch", batch, "samples per step and rank")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--filters", filters, "filters of the first level")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--max-filters", max_filters, "filter cap")->check(CLI::Range(1, 4096))->capture_default_str();
  app.add_option("--depth", depth, "maximum downsamplings")->check(CLI::Range(1, 10))->capture_default_str();
  app.add_option("--steps", steps, "timed steps")->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::Range(0, 1000))->capture_default_str();
  app.add_option("--bucket-mb", bucket_mb, "gradient bucket size")
      ->check(CLI::Range(0.001, 4096.0))
      ->capture_default_str();
  app.add_flag("--no-overlap", no_overlap, "reduce every bucket after backward instead of during it");
  app.add_option("--device", device_arg, "cpu, cuda, cuda-emu or auto")->capture_default_str();
  app.add_option("--json", json_path, "also write the results as JSON to this file (rank 0)");
  CLI11_PARSE(app, argc, argv);
  if (patch.size() != 3) {
    std::fprintf(stderr, "dp_bench: --patch needs 3 sizes\n");
    return 2;
  }
  try {
    Comm& comm = world();
    const bool lead = comm.rank() == 0;
    // As unet_train: the machine's cores shared among the ranks on it.
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (comm.local_size() > 1) omp_set_num_threads(std::max(1, cores / comm.local_size()));
    const Device dev = device::resolve_device(device_arg, lead ? &std::cout : nullptr);
    const models::DynUNetConfig cfg = network(patch, 1, 3, filters, max_filters, depth);
    models::DynUNet net(cfg);
    net.initialize(0);
    net.to(dev);
    AdamW opt(net.parameters());
    std::unique_ptr<GradientReducer> reducer;
    if (comm.size() > 1)
      reducer = std::make_unique<GradientReducer>(net.parameters(), comm, static_cast<int64_t>(bucket_mb * 1048576),
                                                  !no_overlap);
    Rng rng(1 + static_cast<uint64_t>(comm.rank()));
    Shape xs{batch, patch[0], patch[1], patch[2], 1}, ys{batch, patch[0], patch[1], patch[2]};
    Tensor x = randn(xs, rng), y = Tensor::zeros(ys, DType::i32);
    for (int64_t i = 0; i < y.numel(); ++i) y.data<int32_t>()[i] = static_cast<int32_t>(rng.below(3));
    x = x.to(dev);
    y = y.to(dev);

    std::vector<double> step_ms, exposed_ms, comm_ms;
    for (int s = 0; s < warmup + steps; ++s) {
      comm.barrier();  // every rank starts the step together: the exposed wait is then the reduction's, not skew
      const auto t0 = std::chrono::steady_clock::now();
      models::train_step(net, opt, x, y, Precision::fp32, nullptr, reducer.get());
      device::synchronize(dev);
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (s < warmup) continue;
      step_ms.push_back(ms);
      const ReducerTimes t = reducer ? reducer->last_times() : ReducerTimes{};
      exposed_ms.push_back(t.exposed_s * 1e3);
      comm_ms.push_back(t.communication_s * 1e3);
    }
    const double step = mean(step_ms), exposed = mean(exposed_ms), communication = mean(comm_ms);
    const double bytes = static_cast<double>(net.parameter_count()) * 4;

    // The model: the nnU-Net 3D reference network on H200s.
    const models::DynUNetConfig ref = network({128, 128, 128}, 4, 3, 32, 320, 5);
    const double ref_bytes = static_cast<double>(models::DynUNet(ref).parameter_count()) * 4;
    const double compute_s = 2 / 33.4;      // PyTorch AMP's step on one H200 (batch 2), the speed to reach
    const double backward_share = 2.0 / 3;  // of a step's compute: the window the reduction can hide behind
    const double buckets = std::max(1.0, ref_bytes / (bucket_mb * 1048576));
    const Link links[] = {{"8 GPUs, one node (NVLink 4: 450 GB/s, 80% reached)", 8, 0.8 * 450e9, 5e-6},
                          {"32 GPUs, 4 nodes (InfiniBand NDR 400 Gb/s per GPU, 80% reached)", 32, 0.8 * 50e9, 10e-6}};

    if (lead) {
      std::printf(
          "dp_bench: %d rank(s) (%s%s) on %s, %d thread(s) per rank, batch %d per rank, patch %dx%dx%d, "
          "%.1f MB of gradients in %d bucket(s), overlap %s\n",
          comm.size(), comm.backend(), comm.reduces_on_device(dev) ? ", NCCL" : "", device_name(dev), num_threads(),
          batch, patch[0], patch[1], patch[2], bytes / 1e6, reducer ? reducer->buckets() : 0,
          no_overlap ? "off" : "on");
      std::printf("| ranks | step ms | compute ms | exposed communication ms | reduction ms (thread) | samples/s |\n");
      std::printf("| --- | --- | --- | --- | --- | --- |\n");
      std::printf("| %d (measured) | %.1f | %.1f | %.1f | %.1f | %.2f |\n", comm.size(), step, step - exposed, exposed,
                  communication, batch * comm.size() / (step / 1e3));
      std::printf(
          "\nModel: nnU-Net 3D reference network, %.1f MB of f32 gradients a step, %.1f ms compute a step "
          "(PyTorch AMP on one H200), %.0f%% of it backward\n",
          ref_bytes / 1e6, compute_s * 1e3, backward_share * 100);
      std::printf("| cluster | all-reduce ms | exposed ms | efficiency |\n| --- | --- | --- | --- |\n");
    }
    nlohmann::json modelled = nlohmann::json::array();
    for (const Link& l : links) {
      const double n = l.gpus;
      const double t = 2 * (n - 1) / n * ref_bytes / l.bandwidth + 2 * (n - 1) * l.latency;
      // Buckets reduce while backward runs; the last one (and whatever does not fit in backward) is exposed.
      const double hidden = std::min(t * (1 - 1 / buckets), backward_share * compute_s);
      const double exposed_model = t - hidden;
      const double efficiency = compute_s / (compute_s + exposed_model);
      if (lead) std::printf("| %s | %.1f | %.1f | %.0f%% |\n", l.name, t * 1e3, exposed_model * 1e3, efficiency * 100);
      modelled.push_back({{"cluster", l.name},
                          {"allreduce_ms", t * 1e3},
                          {"exposed_ms", exposed_model * 1e3},
                          {"efficiency", efficiency}});
    }
    if (lead && !json_path.empty()) {
      nlohmann::json j = {{"ranks", comm.size()},
                          {"device", device_name(dev)},
                          {"threads_per_rank", num_threads()},
                          {"batch_per_rank", batch},
                          {"patch", patch},
                          {"gradient_bytes", bytes},
                          {"overlap", !no_overlap},
                          {"step_ms", step},
                          {"compute_ms", step - exposed},
                          {"exposed_ms", exposed},
                          {"reduction_ms", communication},
                          {"step_ms_samples", step_ms},
                          {"model", modelled}};
      io::write_file_atomically(json_path, j.dump(2) + "\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dp_bench: error: %s\n", e.what());
    if (world_is_distributed()) world().abort(1);
    return 1;
  }
  return 0;
}
