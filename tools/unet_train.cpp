// unet_train: trains an nnU-Net DynUNet on a Medical Segmentation Decathlon dataset from an INI configuration: the
// command line and the configuration schema; the training itself is models::Trainer (models/trainer.h).
// usage: unet_train CONFIG.ini [--set section.key=value ...]   (unet_train --help-config lists every key)
// Writes to [output] dir what models::Trainer writes: config.ini, log.jsonl, model.safetensors (weights loadable by
// PyTorch, with the model card), model.state.safetensors (optimizer state, step, seed) and validation.json.
// Exit status: 0 success, 2 usage or configuration error, 1 runtime failure (docs/reference.md, "Exit statuses").
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "engine/device.h"
#include "engine/ops.h"
#include "io/config.h"
#include "kernels/common/parallel.h"
#include "models/trainer.h"
#include "tools/tool_main.h"

using namespace unet;
using io::ConfigKey;
using io::KeyType;

using unet::tools::UsageError;

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

// The configuration's values, checked, as the Trainer's options.
models::TrainerOptions trainer_options(const io::Config& c) {
  models::TrainerOptions o;
  const std::string device = c.get_string("runtime", "device");
  try {
    o.device = device::resolve_device(device, &std::cout);  // auto without a GPU: one line, then the CPU
  } catch (const std::exception& e) {
    throw UsageError(std::string("runtime.device = ") + device + ": " + e.what());
  }
  std::cout << std::flush;
  o.dataset = c.get_string("data", "dataset");
  if (o.dataset.empty()) throw UsageError("data.dataset: required (the directory holding dataset.json)");
  const auto patch = c.get_int_list("data", "patch_size");
  if (patch.size() != 3) throw UsageError("data.patch_size: expected three sizes z, y, x");
  for (long p : patch)
    if (p < 4 || p > 1024) throw UsageError("data.patch_size: sizes must be in [4, 1024]");
  o.sampling.patch = {patch[0], patch[1], patch[2]};
  o.folds = static_cast<int>(c.get_int("data", "folds"));
  o.fold = static_cast<int>(c.get_int("data", "fold"));
  if (o.folds < 1 || o.fold < 0 || o.fold >= std::max(o.folds, 1))
    throw UsageError("data.fold: expected 0.." + std::to_string(o.folds - 1));
  o.steps = c.get_int("train", "steps");
  if (o.steps < 1) throw UsageError("train.steps: expected at least 1");
  o.sampling.batch = static_cast<int>(c.get_int("data", "batch_size"));
  if (o.sampling.batch < 1) throw UsageError("data.batch_size: expected at least 1");
  o.filters = static_cast<int>(c.get_int("model", "filters"));
  if (o.filters < 1) throw UsageError("model.filters: expected at least 1");
  o.max_filters = static_cast<int>(c.get_int("model", "max_filters"));
  o.depth = static_cast<int>(c.get_int("model", "depth"));
  o.sampling.foreground_prob = c.get_real("data", "foreground_oversampling");
  o.sampling.flip_prob = c.get_real("data", "flip_probability");
  o.deep_supervision = c.get_bool("model", "deep_supervision");
  o.res_block = c.get_bool("model", "res_block");
  o.optimizer = c.get_string("train", "optimizer");
  o.lr = c.get_real("train", "lr");
  o.weight_decay = c.get_real("train", "weight_decay");
  o.momentum = c.get_real("train", "momentum");
  o.nesterov = c.get_bool("train", "nesterov");
  o.scheduler = c.get_string("train", "scheduler");
  o.warmup_steps = c.get_int("train", "warmup_steps");
  o.seed = static_cast<uint64_t>(c.get_int("train", "seed"));
  o.log_every = c.get_int("train", "log_every");
  o.val_every = c.get_int("train", "val_every");
  o.overlap = c.get_real("validation", "overlap");
  o.blend = c.get_string("validation", "blend") == "constant" ? Blend::constant : Blend::gaussian;
  o.output_dir = c.get_string("output", "dir");
  o.config_text = c.to_ini();
  return o;
}

int run(const io::Config& c) {
  models::TrainerOptions options = trainer_options(c);
  ops::set_conv_allow_tf32(c.get_bool("runtime", "tf32"));
  if (c.get_int("runtime", "threads") > 0) omp_set_num_threads(static_cast<int>(c.get_int("runtime", "threads")));
  models::Trainer trainer(std::move(options), stdout);
  trainer.run();
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
  if (auto status = unet::tools::parse_command_line(app, argc, argv, "unet_train")) return *status;
  if (help_config) {
    std::printf("%s", config.help_text().c_str());
    return 0;
  }
  return unet::tools::run_tool("unet_train", [&] {
    if (path.empty()) throw UsageError("missing CONFIG.ini (run with --help)");
    config.load_file(path);
    for (auto& o : overrides) config.apply_override(o);
    return run(config);
  });
}
