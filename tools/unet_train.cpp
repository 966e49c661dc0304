// unet_train: trains an nnU-Net DynUNet on a Medical Segmentation Decathlon dataset from an INI configuration.
// usage: unet_train CONFIG.ini [--set section.key=value ...]   (unet_train --help-config lists every key)
// Writes to [output] dir: config.ini (the effective configuration), log.jsonl (one JSON object per logged step and
// per validation; peak host memory, and the device's on cuda), model.safetensors (weights loadable by PyTorch, with the model card in the metadata),
// model.state.safetensors (optimizer moments, step, seeds) and validation.json (the final validation Dice).
// Exit status: 0 success, 2 usage or configuration error, 1 runtime failure (SPEC 6).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "kernels/common/allocator.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "kernels/common/parallel.h"
#include "engine/schedule.h"
#include "io/config.h"
#include "io/dataset.h"
#include "io/safetensors.h"
#include "models/checkpoint.h"
#include "models/nnunet_plan.h"
#include "models/trainer.h"

using namespace unet;
using io::ConfigKey;
using io::KeyType;

namespace {

io::Config make_config() {
  return io::Config({
      {"data", "dataset", KeyType::string, "", "Medical Segmentation Decathlon directory (with dataset.json); required"},
      {"data", "fold", KeyType::integer, "0", "cross-validation fold to hold out for validation (0..folds-1)"},
      {"data", "folds", KeyType::integer, "5", "number of cross-validation folds; 1 trains on every case"},
      {"data", "patch_size", KeyType::int_list, "64, 64, 64", "training patch and inference window, z, y, x"},
      {"data", "batch_size", KeyType::integer, "2", "patches per step"},
      {"data", "foreground_oversampling", KeyType::real, "0.4", "probability that a patch contains foreground"},
      {"data", "flip_probability", KeyType::real, "0.5", "probability of mirroring each axis"},
      {"model", "filters", KeyType::integer, "32", "filters of the first level; doubled per level up to max_filters"},
      {"model", "max_filters", KeyType::integer, "320", "filter cap (nnU-Net: 320 in 3D)"},
      {"model", "depth", KeyType::integer, "5", "maximum number of downsamplings"},
      {"model", "deep_supervision", KeyType::boolean, "true", "1x1 heads at 1/2 and 1/4 resolution during training"},
      {"model", "res_block", KeyType::boolean, "false", "residual blocks"},
      {"train", "steps", KeyType::integer, "1000", "optimizer steps"},
      {"train", "optimizer", KeyType::string, "adamw", "optimizer", {"adamw", "adam", "sgd"}},
      {"train", "lr", KeyType::real, "8e-4", "learning rate"},
      {"train", "weight_decay", KeyType::real, "1e-4", "weight decay (decoupled for adamw, L2 otherwise)"},
      {"train", "momentum", KeyType::real, "0.99", "SGD momentum"},
      {"train", "nesterov", KeyType::boolean, "true", "SGD Nesterov momentum"},
      {"train", "scheduler", KeyType::string, "none", "learning-rate schedule", {"none", "poly", "cosine"}},
      {"train", "warmup_steps", KeyType::integer, "0", "linear warm-up steps"},
      {"train", "seed", KeyType::integer, "0", "seed for weights, sampling and augmentation"},
      {"train", "log_every", KeyType::integer, "10", "steps between log lines"},
      {"train", "val_every", KeyType::integer, "0", "steps between validations (0: only at the end)"},
      {"validation", "overlap", KeyType::real, "0.5", "sliding-window overlap"},
      {"validation", "blend", KeyType::string, "gaussian", "window blending", {"gaussian", "constant"}},
      {"output", "dir", KeyType::string, "runs/unet", "output directory"},
      {"runtime", "threads", KeyType::integer, "0", "CPU threads (0: all cores)"},
      {"runtime", "device", KeyType::string, "auto", "compute device", {"auto", "cpu", "cuda", "cuda-emu"}},
      {"runtime", "tf32", KeyType::boolean, "false", "f32 convolutions on TF32 tensor cores (CUDA devices only)"},
  });
}

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::unique_ptr<Optimizer> make_optimizer(const io::Config& c, const std::vector<Tensor>& params) {
  std::string kind = c.get_string("train", "optimizer");
  double lr = c.get_real("train", "lr"), wd = c.get_real("train", "weight_decay");
  if (kind == "sgd") {
    SgdOptions o;
    o.lr = lr;
    o.weight_decay = wd;
    o.momentum = c.get_real("train", "momentum");
    o.nesterov = c.get_bool("train", "nesterov");
    return std::make_unique<SGD>(params, o);
  }
  AdamOptions o;
  o.lr = lr;
  o.weight_decay = wd;
  if (kind == "adam") return std::make_unique<Adam>(params, o);
  return std::make_unique<AdamW>(params, o);
}

// Whole-volume Dice of the model on the given cases (already normalised).
std::vector<double> validate(const models::DynUNet& net, const std::vector<io::Case>& cases, const std::vector<size_t>& which,
                             const SlidingWindowOptions& sw, int classes) {
  DiceCounts counts;
  for (size_t i : which) counts.add(models::segment_volume(net, cases[i].image, sw), cases[i].label, classes);
  return counts.dice();
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / v.size();
}

int run(const io::Config& c) {
  std::string device = c.get_string("runtime", "device");
  Device dev = Device::cpu;
  try {
    dev = device::resolve_device(device, &std::cout);  // auto without a GPU: one line, then the CPU
  } catch (const std::exception& e) {
    throw UsageError(std::string("runtime.device = ") + device + ": " + e.what());
  }
  ops::set_conv_allow_tf32(c.get_bool("runtime", "tf32"));
  if (c.get_int("runtime", "threads") > 0) omp_set_num_threads(static_cast<int>(c.get_int("runtime", "threads")));
  std::string dataset_dir = c.get_string("data", "dataset");
  if (dataset_dir.empty()) throw UsageError("data.dataset: required (the directory holding dataset.json)");
  auto patch_l = c.get_int_list("data", "patch_size");
  if (patch_l.size() != 3) throw UsageError("data.patch_size: expected three sizes z, y, x");
  for (long p : patch_l)
    if (p < 4 || p > 1024) throw UsageError("data.patch_size: sizes must be in [4, 1024]");
  int folds = static_cast<int>(c.get_int("data", "folds")), fold = static_cast<int>(c.get_int("data", "fold"));
  if (folds < 1 || fold < 0 || fold >= std::max(folds, 1)) throw UsageError("data.fold: expected 0.." + std::to_string(folds - 1));
  long steps = c.get_int("train", "steps");
  if (steps < 1) throw UsageError("train.steps: expected at least 1");
  if (c.get_int("data", "batch_size") < 1) throw UsageError("data.batch_size: expected at least 1");
  if (c.get_int("model", "filters") < 1) throw UsageError("model.filters: expected at least 1");
  uint64_t seed = static_cast<uint64_t>(c.get_int("train", "seed"));
  std::printf("unet_train: %s on the %s backend (%d host threads)\n", dataset_dir.c_str(), device_name(dev), num_threads());

  // Data: every case loaded once; normalisation planned on the training cases of the fold.
  io::DatasetInfo info = io::read_msd_dataset(dataset_dir);
  size_t n = info.training.size();
  if (n < 2 && folds > 1) throw UsageError("data.folds: " + info.json_path + " lists " + std::to_string(n) + " case(s); set data.folds = 1");
  io::FoldSplit split;
  if (folds == 1) {
    for (size_t i = 0; i < n; ++i) split.train.push_back(i);
  } else {
    split = io::kfold_split(n, fold, folds);
  }
  std::vector<io::Case> cases;
  for (size_t i = 0; i < n; ++i) cases.push_back(io::load_case(info, i));
  std::vector<io::Case> train_cases;
  for (size_t i : split.train) train_cases.push_back(cases[i]);
  io::NormalizationPlan norm = io::plan_normalization(info, train_cases);
  train_cases.clear();
  std::array<int64_t, 3> patch{patch_l[0], patch_l[1], patch_l[2]};
  for (auto& k : cases) {
    io::normalize_image(k.image, norm);
    io::pad_case_to(k, patch);
  }

  // Model from the nnU-Net plan rule (median spacing of the training cases).
  std::vector<double> spacing(3, 0.0);
  {
    std::vector<std::vector<double>> per_axis(3);
    for (size_t i : split.train)
      for (int a = 0; a < 3; ++a) per_axis[a].push_back(cases[i].spacing[a]);
    for (int a = 0; a < 3; ++a) {
      std::sort(per_axis[a].begin(), per_axis[a].end());
      spacing[a] = per_axis[a][per_axis[a].size() / 2];
    }
  }
  std::vector<int> patch_i(patch_l.begin(), patch_l.end());
  models::UNetPlan plan = models::plan_unet(patch_i, spacing, static_cast<int>(c.get_int("model", "depth")));
  models::ModelCard card;
  card.net = {info.num_channels(), info.num_classes(), plan.kernels, plan.strides, {}};
  for (size_t i = 0; i < plan.kernels.size(); ++i)
    card.net.filters.push_back(static_cast<int>(std::min<long>(c.get_int("model", "filters") << i, c.get_int("model", "max_filters"))));
  card.net.deep_supervision = c.get_bool("model", "deep_supervision") && plan.kernels.size() >= 4;
  card.net.res_block = c.get_bool("model", "res_block");
  card.patch = patch_i;
  card.spacing = spacing;
  card.normalization = norm;
  for (size_t k = 0; k < info.labels.size(); ++k) card.labels[static_cast<int>(k)] = info.labels[k];
  models::DynUNet net(card.net);
  net.initialize(seed);
  net.to(dev);  // before the optimizer, which creates its state on the parameters' device
  std::unique_ptr<Optimizer> opt = make_optimizer(c, net.parameters());
  LrSchedule schedule{c.get_string("train", "scheduler"), c.get_real("train", "lr"), steps, c.get_int("train", "warmup_steps")};

  io::PatchSamplerOptions so;
  so.patch = patch;
  so.batch = static_cast<int>(c.get_int("data", "batch_size"));
  so.foreground_prob = c.get_real("data", "foreground_oversampling");
  so.flip_prob = c.get_real("data", "flip_probability");
  so.seed = seed;
  io::PatchSampler sampler(cases, split.train, so);

  SlidingWindowOptions sw;
  sw.patch = patch_i;
  sw.overlap = c.get_real("validation", "overlap");
  sw.blend = c.get_string("validation", "blend") == "constant" ? Blend::constant : Blend::gaussian;

  namespace fs = std::filesystem;
  fs::path out(c.get_string("output", "dir"));
  fs::create_directories(out);
  io::write_file_atomically((out / "config.ini").string(), c.to_ini());
  std::ofstream log(out / "log.jsonl", std::ios::trunc);
  if (!log) throw std::runtime_error((out / "log.jsonl").string() + ": cannot write the training log");
  std::printf("unet_train: %zu training / %zu validation cases (fold %d of %d), patch %ldx%ldx%ld, %lld parameters, %zu levels\n",
              split.train.size(), split.val.size(), fold, folds, patch_l[0], patch_l[1], patch_l[2],
              static_cast<long long>(net.parameter_count()), plan.kernels.size());

  auto save = [&](long step) {
    models::save_weights((out / "model.safetensors").string(), net, card_to_metadata(card));
    io::NamedTensors state = opt->state();
    io::write_safetensors((out / "model.state.safetensors").string(), state,
                          {{"step", std::to_string(step)}, {"seed", std::to_string(seed)}, {"optimizer", opt->name()},
                           {"config", c.to_ini()}});
  };

  using clock = std::chrono::steady_clock;
  auto start = clock::now(), last = start;
  long log_every = std::max<long>(1, c.get_int("train", "log_every")), val_every = c.get_int("train", "val_every");
  double loss_acc = 0;
  int loss_n = 0;
  HostAllocator::instance().reset_peak();
  device::reset_peak(dev);
  for (long step = 0; step < steps; ++step) {
    opt->set_lr(schedule.at(step));
    io::PatchBatch batch = sampler.next();
    models::StepStats st = models::train_step(net, *opt, batch.image.to(dev), batch.label.to(dev));
    if (!std::isfinite(st.loss)) throw std::runtime_error("training diverged at step " + std::to_string(step + 1) + " (loss is not finite)");
    loss_acc += st.loss;
    ++loss_n;
    if ((step + 1) % log_every == 0 || step + 1 == steps) {
      double dt = std::chrono::duration<double>(clock::now() - last).count();
      last = clock::now();
      double sps = loss_n * so.batch / dt;
      nlohmann::json line = {{"step", step + 1}, {"loss", loss_acc / loss_n}, {"dice_loss", st.dice_loss}, {"ce", st.ce},
                             {"lr", opt->lr()}, {"samples_per_s", sps},
                             {"peak_memory_mb", HostAllocator::instance().stats().peak_bytes / 1048576.0}};
      // Tensors on a GPU (or the emulated one) are not in the host's figure: the device's peak beside it.
      if (dev != Device::cpu) line["device_peak_memory_mb"] = device::memory_stats(dev).peak_bytes / 1048576.0;
      log << line.dump() << "\n" << std::flush;
      std::printf("step %6ld/%ld  loss %.4f  %.2f samples/s  %.0f s\n", step + 1, steps, loss_acc / loss_n, sps,
                  std::chrono::duration<double>(clock::now() - start).count());
      std::fflush(stdout);
      loss_acc = 0;
      loss_n = 0;
    }
    if (val_every > 0 && (step + 1) % val_every == 0 && step + 1 < steps && !split.val.empty()) {
      auto d = validate(net, cases, split.val, sw, info.num_classes());
      log << nlohmann::json{{"step", step + 1}, {"val_dice", d}, {"val_mean_dice", mean(d)}}.dump() << "\n" << std::flush;
      std::printf("validation at step %ld: mean Dice %.4f\n", step + 1, mean(d));
      save(step + 1);
    }
  }
  save(steps);
  nlohmann::json result = {{"steps", steps}, {"train_seconds", std::chrono::duration<double>(clock::now() - start).count()}};
  if (!split.val.empty()) {
    auto d = validate(net, cases, split.val, sw, info.num_classes());
    result["val_dice"] = d;
    result["val_mean_dice"] = mean(d);
    log << nlohmann::json{{"step", steps}, {"val_dice", d}, {"val_mean_dice", mean(d)}}.dump() << "\n";
    std::printf("validation (fold %d, %zu cases): mean Dice %.4f\n", fold, split.val.size(), mean(d));
  }
  io::write_file_atomically((out / "validation.json").string(), result.dump(2) + "\n");
  std::printf("unet_train: wrote %s\n", (out / "model.safetensors").string().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  io::Config config = make_config();
  std::string path;
  std::vector<std::string> overrides;
  bool help_config = false;
  CLI::App app{"Trains an nnU-Net DynUNet on a Medical Segmentation Decathlon dataset (see --help-config for the keys)."};
  app.add_option("config", path, "INI configuration file");
  app.add_option("--set", overrides, "override a key: section.key=value (repeatable)");
  app.add_flag("--help-config", help_config, "list every configuration key with its default");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "unet_train: %s\nRun with --help for usage.\n", e.what());
    return 2;
  }
  if (help_config) {
    std::printf("%s", config.help_text().c_str());
    return 0;
  }
  try {
    if (path.empty()) throw UsageError("missing CONFIG.ini (run with --help)");
    config.load_file(path);
    for (auto& o : overrides) config.apply_override(o);
    return run(config);
  } catch (const io::ConfigError& e) {
    std::fprintf(stderr, "unet_train: %s\n", e.what());
    return 2;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "unet_train: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unet_train: error: %s\n", e.what());
    return 1;
  }
}
