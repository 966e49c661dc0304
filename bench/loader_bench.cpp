// The data loader's cost inside training: time per training step of a DynUNet on synthetic cases (made in memory)
// when every step reuses one batch (compute only), when the batch is prepared inline (data.workers = 0), and when
// worker threads prepare it ahead (data.workers = N), with DLE's augmentation (or --augment none|dle|all).
// usage: loader_bench [--patch 64,64,64] [--batch 2] [--filters 16] [--max-filters 128] [--depth 4] [--cases 8]
//                     [--size 96,96,96] [--steps 10] [--warmup 2] [--workers 2] [--augment dle] [--json FILE]
// Also times sample preparation alone (ms per sample, one thread). The rows report the mean step time and its ratio to
// the compute-only step.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/optim.h"
#include "io/atomic_file.h"
#include "io/loader.h"
#include "io/synthetic.h"
#include "kernels/common/parallel.h"
#include "models/nnunet.h"
#include "models/nnunet_plan.h"
#include "models/trainer.h"

using namespace unet;

int main(int argc, char** argv) {
  std::vector<int> patch{64, 64, 64};
  std::vector<int64_t> size{96, 96, 96};
  int batch = 2, filters = 16, max_filters = 128, depth = 4, cases = 8, steps = 10, warmup = 2, workers = 2;
  std::string augment = "dle", json_path;
  CLI::App app{"Training step time with the batch loader inline, ahead on workers, and without data (compute only)."};
  app.add_option("--patch", patch, "patch size (3 values)")->delimiter(',')->capture_default_str();
  app.add_option("--size", size, "volume size of the synthetic cases (3 values)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--batch", batch, "samples per step")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--filters", filters, "filters of the first level")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--max-filters", max_filters, "filter cap")->check(CLI::Range(1, 4096))->capture_default_str();
  app.add_option("--depth", depth, "maximum downsamplings")->check(CLI::Range(1, 10))->capture_default_str();
  app.add_option("--cases", cases, "synthetic cases")->check(CLI::Range(1, 1000))->capture_default_str();
  app.add_option("--steps", steps, "timed steps per row")->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::Range(0, 1000))->capture_default_str();
  app.add_option("--workers", workers, "loader threads of the prefetch row")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--augment", augment, "none, dle (the defaults) or all (DLE's plus rotation, gamma, low resolution)")
      ->check(CLI::IsMember({"none", "dle", "all"}))
      ->capture_default_str();
  app.add_option("--json", json_path, "also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  if (patch.size() != 3 || size.size() != 3) {
    std::fprintf(stderr, "loader_bench: --patch and --size need 3 values\n");
    return 2;
  }
  try {
    io::SynthOptions so;
    so.output = "unused";
    so.size = {size[0], size[1], size[2]};
    std::vector<io::Case> data;
    for (int i = 0; i < cases; ++i) {
      io::SynthCase sc = io::make_synthetic_case(so, i);
      io::Case c{"case" + std::to_string(i), sc.image, sc.label, {1, 1, 1}};
      float* x = c.image.data<float>();
      for (int64_t v = 0; v < c.image.numel(); ++v) x[v] = (x[v] - 200) / 150;  // roughly normalised
      data.push_back(c);
    }
    io::PatchSamplerOptions po;
    po.patch = {patch[0], patch[1], patch[2]};
    po.batch = batch;
    if (augment == "none") po.augment = io::AugmentOptions::none();
    if (augment == "all")
      po.augment.rotation_prob = 0.2, po.augment.gamma_prob = 0.3, po.augment.low_resolution_prob = 0.25;
    const io::PatchSampler sampler(data, {}, po);

    const models::UNetPlan plan = models::plan_unet(patch, {1, 1, 1}, depth);
    models::DynUNetConfig cfg{1, 3, plan.kernels, plan.strides, {}};
    for (size_t i = 0; i < plan.kernels.size(); ++i) cfg.filters.push_back(std::min(filters << i, max_filters));
    cfg.deep_supervision = plan.kernels.size() >= 4;

    using clock = std::chrono::steady_clock;
    const auto ms_since = [](clock::time_point t) {
      return std::chrono::duration<double, std::milli>(clock::now() - t).count();
    };
    // One sample's preparation on one thread (what a worker does per task), averaged over 4 * batch samples.
    const auto t_sample = clock::now();
    for (int i = 0; i < 4 * batch; ++i) sampler.sample(1000 + i / batch, i % batch);
    const double sample_ms = ms_since(t_sample) / (4 * batch);

    // A row: fresh weights and optimizer, `warmup` + `steps` steps, batches from `source`.
    const auto row = [&](const std::function<io::PatchBatch(int64_t)>& source) {
      models::DynUNet net(cfg);
      net.initialize(0);
      AdamW opt(net.parameters());
      double total = 0;
      for (int s = 0; s < warmup + steps; ++s) {
        const auto t0 = clock::now();
        const io::PatchBatch b = source(s);
        models::train_step(net, opt, b.image, b.label);
        if (s >= warmup) total += ms_since(t0);
      }
      return total / steps;
    };
    const io::PatchBatch fixed = sampler.batch(0);
    const double compute = row([&](int64_t) { return fixed; });
    io::BatchLoader inline_loader(sampler, 0, 0);
    const double inline_ms = row([&](int64_t) { return inline_loader.next(); });
    io::BatchLoader ahead(sampler, 0, workers, 2);
    const double ahead_ms = row([&](int64_t) { return ahead.next(); });

    std::printf(
        "loader_bench: patch %dx%dx%d, batch %d, %d cases of %lldx%lldx%lld, augmentation %s, %d OpenMP "
        "threads; one sample prepared in %.1f ms on one thread\n",
        patch[0], patch[1], patch[2], batch, cases, static_cast<long long>(size[0]), static_cast<long long>(size[1]),
        static_cast<long long>(size[2]), augment.c_str(), num_threads(), sample_ms);
    std::printf("| batches | step ms | vs compute only |\n| --- | --- | --- |\n");
    std::printf("| one batch reused (compute only) | %.1f | 1.000 |\n", compute);
    std::printf("| prepared inline (data.workers = 0) | %.1f | %.3f |\n", inline_ms, inline_ms / compute);
    std::printf("| prefetched by %d worker(s) | %.1f | %.3f |  (waited %.1f ms a step)\n", workers, ahead_ms,
                ahead_ms / compute, ahead.waited_seconds() * 1e3 / (warmup + steps));
    if (!json_path.empty()) {
      const nlohmann::json j = {{"patch", patch},           {"batch", batch},         {"augment", augment},
                                {"threads", num_threads()}, {"sample_ms", sample_ms}, {"compute_ms", compute},
                                {"inline_ms", inline_ms},   {"workers", workers},     {"prefetch_ms", ahead_ms}};
      io::write_file_atomically(json_path, j.dump(2) + "\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loader_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
