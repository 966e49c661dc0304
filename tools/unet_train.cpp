// unet_train: trains an nnU-Net DynUNet on a Medical Segmentation Decathlon dataset from an INI configuration: the
// command line and the configuration schema; the training itself is models::Trainer (models/trainer.h).
// usage: unet_train CONFIG.ini [--set section.key=value ...] [--resume DIR | --overwrite]   (--help-config: every key)
// Writes to [output] dir what models::Trainer writes: config.ini, log.jsonl, model.safetensors (weights loadable by
// PyTorch, with the model card), checkpoint.safetensors (what --resume continues from) and validation.json.
// Exit status: 0 success, 2 usage or configuration error, 1 runtime failure (docs/reference.md, "Exit statuses").
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <thread>

#include "engine/comm.h"
#include "engine/device.h"
#include "engine/precision.h"
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
      {"data", "dataset", KeyType::string, "",
       "Medical Segmentation Decathlon directory (with dataset.json); required"},
      {"data", "fold", KeyType::integer, "0", "cross-validation fold to hold out for validation (0..folds-1)"},
      {"data", "folds", KeyType::integer, "5", "number of cross-validation folds; 1 trains on every case"},
      {"data", "patch_size", KeyType::int_list, "64, 64, 64", "training patch and inference window, z, y, x"},
      {"data", "batch_size", KeyType::integer, "2", "patches per step"},
      {"data", "foreground_oversampling", KeyType::real, "0.4", "probability that a patch contains foreground"},
      {"data", "flip_probability", KeyType::real, "0.5", "probability of mirroring each axis"},
      {"data",
       "pipeline",
       KeyType::string,
       "nnunet",
       "nnunet (crop, resample, normalisation plan, patches) or dle_isbi (unet2d: DLE UNet_Medical's ISBI 2012 "
       "pipeline: x / 127.5 - 1, slices resized to the output size and zero-padded to the input; its augmentation: "
       "flips, crop-and-resize with augment.zoom, brightness delta with augment.brightness; DLE --augment: both 1)",
       {"nnunet", "dle_isbi"}},
      {"data", "cache", KeyType::string, "auto",
       "directory keeping the preprocessed (cropped, resampled) cases for the next run: auto "
       "(DATASET/unet_preprocessed "
       "when the dataset directory is writable), none, or a path"},
      {"data", "workers", KeyType::integer, "2", "threads preparing batches ahead of training (0: none, inline)"},
      {"data", "prefetch", KeyType::integer, "2", "steps the workers may prepare ahead"},
      {"augment", "zoom", KeyType::real, "0.15",
       "probability of DLE's zoom (centre crop of 0.7..1 of the patch, resized)"},
      {"augment", "noise", KeyType::real, "0.15", "probability of Gaussian noise (standard deviation 0..0.33)"},
      {"augment", "blur", KeyType::real, "0.15", "probability of Gaussian blur (sigma 0.5..1.5)"},
      {"augment", "brightness", KeyType::real, "0.15", "probability of a brightness factor 0.7..1.3"},
      {"augment", "contrast", KeyType::real, "0.15",
       "probability of a contrast factor 0.65..1.5 (clamped to the range)"},
      {"augment", "rotation", KeyType::real, "0",
       "probability of nnU-Net's rotation, -30..30 degrees per axis (nnU-Net: 0.2)"},
      {"augment", "gamma", KeyType::real, "0",
       "probability of nnU-Net's gamma 0.7..1.5, statistics kept (nnU-Net: 0.3)"},
      {"augment", "low_resolution", KeyType::real, "0",
       "probability of nnU-Net's low-resolution simulation, 0.5..1 (nnU-Net: 0.25)"},
      {"model", "name", KeyType::string, "dynunet",
       "dynunet (nnU-Net), unet2d (Ronneberger / DLE UNet_Medical, on slices: patch_size H, W such as 572, 572) or "
       "unet3plus (UNet 3+ / DLE UNet3P, on slices: H and W multiples of 16 such as 320, 320; Z, H, W with Z odd: Z "
       "adjacent slices in as channels, the centre one segmented, DLE: 3, 320, 320)"},
      {"model", "filters", KeyType::integer, "32",
       "filters of the first level; doubled per level up to max_filters (unet2d, unet3plus: x2 per level, no cap; "
       "DLE: 64)"},
      {"model", "dropout", KeyType::real, "0.5", "unet2d: dropout probability after the bottleneck in training"},
      {"model", "max_filters", KeyType::integer, "320", "dynunet: filter cap, at least filters (nnU-Net: 320 in 3D)"},
      {"model", "depth", KeyType::integer, "5", "maximum number of downsamplings"},
      {"model", "deep_supervision", KeyType::boolean, "true",
       "training heads: dynunet 1x1 at 1/2 and 1/4 resolution; unet3plus 3x3 on decoder levels 2..4 and the bottom"},
      {"model", "cgm", KeyType::boolean, "false",
       "unet3plus: the classification-guided module (the paper's; DLE's unet3plus_deepsup_cgm): an organ-present head "
       "on the bottom encoder map, trained with BCE, whose 'absent' makes the image background"},
      {"model", "res_block", KeyType::boolean, "false", "residual blocks"},
      {"model", "sync_batchnorm", KeyType::boolean, "true",
       "unet3plus with several ranks: batch norm statistics over every rank's samples (SyncBatchNorm), so N ranks "
       "train as one process with the global batch; false: each rank its own (DLE's and PyTorch DDP's default)"},
      {"train", "steps", KeyType::integer, "1000", "optimizer steps"},
      {"train",
       "loss",
       KeyType::string,
       "auto",
       "auto (dle for unet2d, hybrid for unet3plus, else dice_ce), dice_ce (nnU-Net: batch Dice over foreground "
       "classes + CE), dle (DLE UNet_Medical: CE + 1 - per-sample soft Dice with squares, background included) or "
       "hybrid (UNet 3+ / DLE UNet3P: focal + 1 - SSIM + IoU loss; 2D only, outputs of at least 11 x 11) or "
       "hybrid_ms (UNet 3+'s paper: MS-SSIM in place of SSIM, outputs of at least 161 x 161)",
       {"auto", "dice_ce", "dle", "hybrid", "hybrid_ms"}},
      {"train", "optimizer", KeyType::string, "adamw", "optimizer (DLE UNet_Medical: adam)", {"adamw", "adam", "sgd"}},
      {"train", "lr", KeyType::real, "8e-4", "learning rate"},
      {"train", "weight_decay", KeyType::real, "1e-4",
       "weight decay (decoupled for adamw, L2 otherwise; DLE UNet_Medical: adam, 5e-4, its 5e-4 sum(v^2) / 2 in the "
       "loss)"},
      {"train", "momentum", KeyType::real, "0.99", "SGD momentum"},
      {"train", "nesterov", KeyType::boolean, "true", "SGD Nesterov momentum"},
      {"train", "scheduler", KeyType::string, "none", "learning-rate schedule", {"none", "poly", "cosine"}},
      {"train", "warmup_steps", KeyType::integer, "0", "linear warm-up steps"},
      {"train", "seed", KeyType::integer, "0", "seed for weights, sampling and augmentation"},
      {"train", "log_every", KeyType::integer, "10", "steps between log lines"},
      {"train", "val_every", KeyType::integer, "0", "steps between validations (0: only at the end)"},
      {"train", "save_every", KeyType::integer, "1000",
       "steps between checkpoints for --resume (also at each validation and the end; 0: only there)"},
      {"train",
       "precision",
       KeyType::string,
       "auto",
       "arithmetic: auto (bf16 on a GPU, fp32 elsewhere), fp32, tf32 (TF32 tensor cores), fp16 or bf16 (mixed)",
       {"auto", "fp32", "tf32", "fp16", "bf16"}},
      {"train",
       "loss_scaling",
       KeyType::string,
       "auto",
       "dynamic loss scaling: auto (on for fp16 only), dynamic, none",
       {"auto", "dynamic", "none"}},
      {"train", "loss_scale_init", KeyType::real, "65536", "initial loss scale of dynamic loss scaling"},
      {"train", "loss_scale_growth_interval", KeyType::integer, "2000",
       "steps without inf/nan gradients before the loss scale doubles"},
      {"validation", "overlap", KeyType::real, "0.5", "sliding-window overlap"},
      {"validation", "blend", KeyType::string, "gaussian", "window blending", {"gaussian", "constant"}},
      {"output", "dir", KeyType::string, "runs/unet", "output directory"},
      {"runtime", "threads", KeyType::integer, "0",
       "CPU threads per process (0: the cores shared among the ranks on this machine)"},
      {"runtime", "device", KeyType::string, "auto", "compute device", {"auto", "cpu", "cuda", "cuda-emu"}},
  });
}

// A key set away from its default that the chosen network, optimizer, pipeline or precision does not read would be
// ignored without a word (model.depth = 3 trains UNet 3+'s five levels all the same): refused, naming it. A value
// saying what happens anyway (model.dropout = 0 for dynunet) is accepted.
void check_keys_take_effect(const io::Config& c, const models::TrainerOptions& o) {
  const bool dynunet = o.model == "dynunet", unet2d = o.model == "unet2d";
  const bool sgd = o.optimizer == "sgd", dle = o.pipeline == "dle_isbi";
  struct Scope {
    const char* section;
    const char* name;
    bool read;             // whether this run reads the key
    const char* harmless;  // a value stating what the run does anyway (nullptr: none)
    std::string why;
  };
  const std::string net = "model.name = " + o.model, opt = "train.optimizer = " + o.optimizer;
  const std::string no_scaling = "loss scaling is off (train.loss_scaling = " + c.get_string("train", "loss_scaling") +
                                 " with train.precision " + precision_name(o.precision) + ")";
  const std::string no_validation = "data.folds = 1 trains on every case and holds none out for validation";
  std::vector<Scope> scopes = {
      {"model", "depth", dynunet, nullptr, net + " has five levels (only dynunet plans its depth)"},
      {"model", "max_filters", dynunet, nullptr,
       net + " doubles its filters per level without a cap (only dynunet caps them)"},
      {"model", "res_block", dynunet, "false", net + " has no residual blocks (dynunet's)"},
      {"model", "dropout", unet2d, "0", net + " has no dropout (unet2d's, after the bottleneck)"},
      {"train", "momentum", sgd, nullptr, opt + " has no momentum (sgd's; adam and adamw have their betas)"},
      {"train", "loss_scale_init", o.loss_scaling.enabled, nullptr, no_scaling},
      {"train", "loss_scale_growth_interval", o.loss_scaling.enabled, nullptr, no_scaling},
      {"train", "val_every", o.folds > 1, "0", no_validation},
      {"validation", "overlap", o.folds > 1, nullptr, no_validation},
      {"validation", "blend", o.folds > 1, nullptr, no_validation},
      {"data", "prefetch", o.loader_workers > 0, nullptr, "data.workers = 0 prepares each batch when it is needed"},
  };
  for (const char* name : {"noise", "blur", "contrast", "rotation", "gamma", "low_resolution"})
    scopes.push_back({"augment", name, !dle, "0",
                      "data.pipeline = dle_isbi augments with flips, augment.zoom and augment.brightness only"});
  for (const Scope& k : scopes) {
    if (k.read || c.is_default(k.section, k.name)) continue;
    const std::string value = c.value_text(k.section, k.name);
    if (k.harmless && value == k.harmless) continue;
    throw UsageError(std::string(k.section) + "." + k.name + " = " + value + ": no effect in this run: " + k.why +
                     "; expected the key left out" + (k.harmless ? std::string(" or ") + k.harmless : std::string()));
  }
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
  // Every number within its range (exit 2 naming the key): a value cast to int must not wrap (4294967296 would be 0).
  const auto int_in = [&](const char* section, const char* key, long lo, long hi) {
    const long v = c.get_int(section, key);
    if (v < lo || v > hi)
      throw UsageError(std::string(section) + "." + key + " = " + std::to_string(v) + ": expected " +
                       std::to_string(lo) + ".." + std::to_string(hi));
    return v;
  };
  const auto real_in = [&](const char* section, const char* key, double lo, double hi, bool hi_open = false,
                           bool lo_open = false) {
    const double v = c.get_real(section, key);
    if (!((lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi)))  // NaN fails too
      throw UsageError(std::string(section) + "." + key + " = " + io::real_text(v) + ": expected a value in " +
                       (lo_open ? "(" : "[") + io::real_text(lo) + ", " + io::real_text(hi) + (hi_open ? ")" : "]"));
    return v;
  };
  o.dataset = c.get_string("data", "dataset");
  if (o.dataset.empty()) throw UsageError("data.dataset: required (the directory holding dataset.json)");
  o.model = c.get_string("model", "name");
  if (o.model != "dynunet" && o.model != "unet2d" && o.model != "unet3plus")
    throw UsageError("model.name = " + o.model + ": expected dynunet, unet2d or unet3plus");
  const bool slices = o.model != "dynunet";  // a 2D network trains on patches (1, H, W)
  auto patch = c.get_int_list("data", "patch_size");
  if (slices && patch.size() == 2) patch.insert(patch.begin(), 1);
  if (patch.size() != 3)
    throw UsageError(slices ? "data.patch_size: expected H, W (or 1, H, W) for model.name = " + o.model
                            : "data.patch_size: expected three sizes z, y, x");
  if (slices && patch[0] != 1 && !(o.model == "unet3plus" && patch[0] % 2 == 1 && patch[0] <= 15))
    throw UsageError("data.patch_size: " + o.model + " trains on slices, so the z size must be 1" +
                     (o.model == "unet3plus" ? " or an odd count of adjacent slices up to 15 (DLE: 3)" : "") +
                     ", got " + std::to_string(patch[0]));
  for (size_t a = slices ? 1 : 0; a < 3; ++a)
    if (patch[a] < 4 || patch[a] > 1024) throw UsageError("data.patch_size: sizes must be in [4, 1024]");
  o.sampling.patch = {patch[0], patch[1], patch[2]};
  o.folds = static_cast<int>(int_in("data", "folds", 1, 100));
  o.fold = static_cast<int>(int_in("data", "fold", 0, o.folds - 1));
  o.steps = int_in("train", "steps", 1, 1000000000);
  o.sampling.batch = static_cast<int>(int_in("data", "batch_size", 1, 1024));
  // UNet 3+'s bottom level is the patch / 16, and batch norm in training needs two values per channel there: per rank,
  // or over every rank's share with SyncBatchNorm (2 ranks x batch 1 train as 1 process x batch 2). A 16 x 16 patch
  // with one sample would fail at step 1 inside the op. (Sizes that are not multiples of 16 are refused with the
  // network.)
  const bool sync_norm = c.get_bool("model", "sync_batchnorm");
  const int64_t launched = launcher_size();
  if (o.model == "unet3plus" && patch[1] % 16 == 0 && patch[2] % 16 == 0 &&
      int64_t(o.sampling.batch) * (sync_norm ? launched : 1) * (patch[1] / 16) * (patch[2] / 16) < 2)
    throw UsageError("data.patch_size = " + std::to_string(patch[1]) + ", " + std::to_string(patch[2]) +
                     " with data.batch_size = " + std::to_string(o.sampling.batch) +
                     ": UNet 3+'s bottom level (the patch / 16) is then 1 x 1 with one sample, one value per "
                     "channel, which batch norm cannot normalise in training; expected data.batch_size >= 2 or a "
                     "patch of at least 32 in H or W" +
                     (launched > 1 ? " (or model.sync_batchnorm = true: batch norm over every rank's samples)" : ""));
  o.filters = static_cast<int>(int_in("model", "filters", 1, 1024));
  o.max_filters = static_cast<int>(int_in("model", "max_filters", 1, 4096));
  if (o.model == "dynunet" && o.max_filters < o.filters)  // the cap would silently replace every level's filters
    throw UsageError("model.max_filters = " + std::to_string(o.max_filters) + ": below model.filters = " +
                     std::to_string(o.filters) + "; expected at least the first level's filters");
  o.depth = static_cast<int>(int_in("model", "depth", 1, 10));
  o.sampling.foreground_prob = real_in("data", "foreground_oversampling", 0, 1);
  o.sampling.augment.flip_prob = real_in("data", "flip_probability", 0, 1);
  o.pipeline = c.get_string("data", "pipeline");
  if (o.pipeline == "dle_isbi" && o.model != "unet2d")
    throw UsageError("data.pipeline = dle_isbi: DLE UNet_Medical's pipeline is for model.name = unet2d, not " +
                     o.model);
  o.sampling.augment.zoom_prob = real_in("augment", "zoom", 0, 1);
  o.sampling.augment.noise_prob = real_in("augment", "noise", 0, 1);
  o.sampling.augment.blur_prob = real_in("augment", "blur", 0, 1);
  o.sampling.augment.brightness_prob = real_in("augment", "brightness", 0, 1);
  o.sampling.augment.contrast_prob = real_in("augment", "contrast", 0, 1);
  o.sampling.augment.rotation_prob = real_in("augment", "rotation", 0, 1);
  o.sampling.augment.gamma_prob = real_in("augment", "gamma", 0, 1);
  o.sampling.augment.low_resolution_prob = real_in("augment", "low_resolution", 0, 1);
  o.loader_workers = static_cast<int>(int_in("data", "workers", 0, 256));
  const std::string cache = c.get_string("data", "cache");
  if (cache.empty())  // it used to mean none without a word
    throw UsageError("data.cache: got ''; expected auto, none or a directory");
  if (cache == "auto") {
    // Beside the data when we may write there (access(): the dataset of a shared, read-only store gets none).
    if (std::error_code ec; std::filesystem::is_directory(o.dataset, ec) && access(o.dataset.c_str(), W_OK) == 0)
      o.cache_dir = (std::filesystem::path(o.dataset) / "unet_preprocessed").string();
  } else if (cache != "none") {
    o.cache_dir = cache;
  }
  o.prefetch = static_cast<int>(int_in("data", "prefetch", 1, 64));
  o.deep_supervision = c.get_bool("model", "deep_supervision");
  o.res_block = c.get_bool("model", "res_block");
  o.sync_batch_norm = c.get_bool("model", "sync_batchnorm");
  o.cgm = c.get_bool("model", "cgm");
  if (o.cgm && o.model != "unet3plus")
    throw UsageError("model.cgm = true: the classification-guided module is UNet 3+'s (model.name = unet3plus), not " +
                     o.model);
  o.dropout = static_cast<float>(real_in("model", "dropout", 0, 1, true));
  const std::string loss = c.get_string("train", "loss");
  if (loss == "dle" || (loss == "auto" && o.model == "unet2d")) o.loss = ops::kDleDiceCe;
  if (loss == "hybrid" || loss == "hybrid_ms" || (loss == "auto" && o.model == "unet3plus")) {
    if (!slices)
      throw UsageError("train.loss = " + loss +
                       ": the SSIM is 2D, so it takes a 2D network (model.name = unet2d or "
                       "unet3plus), not " +
                       o.model);
    o.loss = models::LossSpec::hybrid_loss(loss == "hybrid_ms");
  }
  o.optimizer = c.get_string("train", "optimizer");
  o.lr = real_in("train", "lr", 0, 10, false, true);
  // The optimizer computes in f32: a rate of 1e-50 is 0 there, and below 1e-10 (the spacing of f32 numbers near a
  // weight of 1e-3) a step moves no weight. Such a run would write its initial weights as a model.
  if (o.lr < 1e-10)
    throw UsageError("train.lr = " + io::real_text(o.lr) +
                     ": expected a value in [1e-10, 10] (a smaller rate moves no f32 weight)");
  o.weight_decay = real_in("train", "weight_decay", 0, 1);
  o.momentum = real_in("train", "momentum", 0, 1, /*hi_open=*/true);
  if (static_cast<float>(o.momentum) >= 1.0f)  // 0.99999999999 is 1 in the f32 the optimizer computes in
    throw UsageError("train.momentum = " + io::real_text(o.momentum) +
                     ": expected a value in [0, 1) that stays below 1 in f32 (at most 0.99999994)");
  o.nesterov = c.get_bool("train", "nesterov");
  o.scheduler = c.get_string("train", "scheduler");
  o.warmup_steps = int_in("train", "warmup_steps", 0, o.steps);
  o.seed = static_cast<uint64_t>(int_in("train", "seed", 0, std::numeric_limits<long>::max()));
  o.log_every = int_in("train", "log_every", 1, 1000000000);
  o.val_every = int_in("train", "val_every", 0, 1000000000);
  o.save_every = int_in("train", "save_every", 0, 1000000000);
  o.overlap = real_in("validation", "overlap", 0, 1, /*hi_open=*/true);
  o.blend = c.get_string("validation", "blend") == "constant" ? Blend::constant : Blend::gaussian;
  o.precision = resolve_precision(c.get_string("train", "precision"), o.device);  // the schema checked the name
  const std::string scaling = c.get_string("train", "loss_scaling");
  o.loss_scaling.enabled = scaling == "dynamic" || (scaling == "auto" && o.precision == Precision::fp16);
  o.loss_scaling.init_scale = real_in("train", "loss_scale_init", 1, 1e30);
  o.loss_scaling.growth_interval = int_in("train", "loss_scale_growth_interval", 1, 1000000000);
  if (o.optimizer == "sgd" && o.nesterov && o.momentum == 0)  // PyTorch's SGD refuses it too
    throw UsageError(
        "train.nesterov = true with train.momentum = 0: Nesterov momentum needs a momentum; expected "
        "train.momentum in (0, 1) or train.nesterov = false");
  o.output_dir = c.get_string("output", "dir");
  o.config_text = c.to_ini();
  check_keys_take_effect(c, o);
  return o;
}

// The files a run writes into output.dir: a directory holding any of them holds a run.
const char* const kRunFiles[] = {"config.ini",
                                 "log.jsonl",
                                 "training.html",
                                 "model.safetensors",
                                 "model_best.safetensors",
                                 "checkpoint.safetensors",
                                 "validation.json"};

// A new run does not mix its files with an old run's: a directory holding a run is refused unless --overwrite or
// --resume. Returns whether it holds one.
bool check_output_dir(const std::string& dir, bool overwrite) {
  namespace fs = std::filesystem;
  std::string found;
  for (const char* name : kRunFiles)
    if (fs::exists(fs::path(dir) / name)) found += (found.empty() ? "" : ", ") + std::string(name);
  if (found.empty()) return false;
  // --resume only where there is a checkpoint to resume from (a run killed before its first one has none).
  if (!overwrite)
    throw UsageError("output.dir = " + dir + " holds a run (" + found + "): " +
                     (fs::exists(fs::path(dir) / "checkpoint.safetensors") ? "--resume " + dir + " continues it, "
                                                                           : std::string("it has no checkpoint to "
                                                                                         "resume from; ")) +
                     "--overwrite replaces it, or choose another output.dir");
  return true;
}

// The run directory's lock (tools::lock_directory): a second unet_train into the same output.dir, fresh, --overwrite
// or --resume, is refused instead of mixing its files with the running one's.
void take_run_directory(const std::string& dir) {
  if (!tools::lock_directory(dir))
    throw UsageError("output.dir = " + dir +
                     ": another unet_train is writing a run there now; expected it to end first (or another "
                     "output.dir)");
}

// Every rank of a run must read the same configuration and options: ranks given different ones (mpirun -np 1
// unet_train a.ini : -np 1 unet_train b.ini, or another --set) would reduce buffers of different sizes, a corrupted
// heap, or train inconsistently without a word. Compared with rank 0's before anything is checked or read; the
// threads are each machine's own.
void check_same_configuration(const io::Config& c, const std::string& resume, bool overwrite) {
  Comm& comm = world();
  if (comm.size() == 1) return;
  std::vector<std::pair<std::string, std::string>> settings = {{"--resume", resume},
                                                               {"--overwrite", overwrite ? "given" : "not given"}};
  for (const ConfigKey& k : c.schema())
    if (k.section != "runtime" || k.name != "threads")
      settings.emplace_back(k.section + "." + k.name, c.value_text(k.section, k.name));
  if (const auto d = comm.compare_with_rank0(settings))
    throw UsageError(d->name + " = " + d->here + " on this rank, " + d->on_rank0 +
                     " on rank 0; expected every rank to read the same configuration (one CONFIG, the same --set)");
  comm.barrier();  // a rank that differs ends the run (its error aborts every rank) while the others wait here
}

int run(const io::Config& c, const std::string& resume, bool overwrite) {
  check_same_configuration(c, resume, overwrite);
  models::TrainerOptions options = trainer_options(c);
  options.resume_dir = resume;
  // More threads than cores only adds switching (1000 on 2 cores turned 0.08 s steps into minutes): at most twice the
  // hardware threads; 0 uses them all.
  const long cores = std::max(1u, std::thread::hardware_concurrency());
  const long threads = c.get_int("runtime", "threads");
  if (threads < 0 || threads > 2 * cores)
    throw UsageError("runtime.threads = " + std::to_string(threads) + ": expected 0.." + std::to_string(2 * cores) +
                     " (0: all " + std::to_string(cores) + " hardware threads)");
  // Where the run writes, checked before the data is loaded (exit 2 naming the key).
  if (options.output_dir.empty()) throw UsageError("output.dir: required (the directory the run writes to), got ''");
  if (std::string why = tools::output_directory_problem(options.output_dir); !why.empty())
    throw UsageError("output.dir = " + options.output_dir + ": " + why);
  if (!options.cache_dir.empty())
    if (std::string why = tools::output_directory_problem(options.cache_dir); !why.empty())
      throw UsageError("data.cache = " + options.cache_dir + ": " + why);
  // A run file that is a directory (or a FIFO) would fail only when written, after the training: a resumed run's
  // steps would be lost.
  for (const char* name : kRunFiles) {
    const std::string file = (std::filesystem::path(options.output_dir) / name).string();
    if (std::error_code ec; std::filesystem::exists(file, ec))
      if (std::string why = tools::regular_file_problem(file); !why.empty())
        throw UsageError("output.dir = " + options.output_dir + ": " + file + ": " + why +
                         "; expected the file the run writes there");
  }
  if (world().rank() == 0) take_run_directory(options.output_dir);
  const bool replace = resume.empty() && world().rank() == 0 && check_output_dir(options.output_dir, overwrite);
  // A patch and batch whose first level alone outgrows the machine would only end in an allocation failure or the
  // kernel's OOM killer after minutes of preparing data (1024^3 patches pad every case to 4 GiB first): refused with
  // the estimate. A lower bound: the first convolution's output and its gradient for the batch, in the activations'
  // precision; deeper levels, saved norm inputs and the cases themselves come on top. On a GPU the device's memory is
  // what counts, and the allocator reports it.
  if (options.device == Device::cpu) {
    const auto& p = options.sampling.patch;
    const double value_bytes = options.precision == Precision::fp16 || options.precision == Precision::bf16 ? 2.0 : 4.0;
    const double first_level = 2.0 * options.sampling.batch * static_cast<double>(p[0]) * static_cast<double>(p[1]) *
                               static_cast<double>(p[2]) * options.filters * value_bytes;
    const double memory = tools::physical_memory_bytes();
    if (memory > 0 && first_level > memory)
      throw UsageError("data.patch_size = " + std::to_string(p[0]) + ", " + std::to_string(p[1]) + ", " +
                       std::to_string(p[2]) + " with data.batch_size = " + std::to_string(options.sampling.batch) +
                       " and model.filters = " + std::to_string(options.filters) +
                       ": the first level's activations and their gradients alone take " +
                       tools::gib_text(first_level) + ", more than this machine's " + tools::gib_text(memory) +
                       "; expected a smaller patch, batch or filter count");
  }
  // After every setting and the output directories, so that they are checked even when the data is not there yet.
  if (std::error_code ec; !std::filesystem::is_directory(options.dataset, ec))
    throw UsageError("data.dataset = " + options.dataset + ": " +
                     (std::filesystem::exists(options.dataset, ec)       ? "not a directory"
                      : ec && ec != std::errc::no_such_file_or_directory ? ec.message()  // such as a name too long
                                                                         : "no such directory") +
                     "; expected the directory holding dataset.json");
  // Under mpirun or srun (engine/comm.h): one rank per process; 0 shares the cores among the ranks on this machine.
  Comm& comm = world();
  options.comm = &comm;
  if (threads > 0)
    omp_set_num_threads(static_cast<int>(threads));
  else if (comm.local_size() > 1)
    omp_set_num_threads(static_cast<int>(std::max(1L, cores / comm.local_size())));
  const std::string output_dir = options.output_dir;
  models::Trainer trainer(std::move(options), stdout);  // the configuration checked and the data loaded
  if (comm.rank() == 0) {  // a new directory: made and locked now, before anything is written into it
    std::filesystem::create_directories(output_dir);
    take_run_directory(output_dir);
  }
  // --overwrite: the old run's files (nothing else in the directory) go only once the new run is known to start.
  if (replace)
    for (const char* name : kRunFiles) std::filesystem::remove(std::filesystem::path(output_dir) / name);
  trainer.run();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  io::Config config = make_config();
  std::string path, resume;
  std::vector<std::string> overrides;
  bool help_config = false, overwrite = false;
  CLI::App app{
      "Trains an nnU-Net DynUNet on a Medical Segmentation Decathlon dataset (see --help-config for the keys)."};
  app.add_option("config", path, "INI configuration file");
  app.add_option("--set", overrides, "override a key: section.key=value (repeatable)");
  app.add_option(
      "--resume", resume,
      "continue the run in this directory from its checkpoint.safetensors (writing there); CONFIG must be "
      "the run's own, except [runtime], output.dir, train.steps, data.workers, data.prefetch, data.cache and the "
      "log, validation and checkpoint intervals");
  app.add_flag("--overwrite", overwrite, "replace the run in output.dir (its files only) instead of refusing it");
  app.add_flag("--help-config", help_config, "list every configuration key with its default");
  if (auto status = unet::tools::parse_command_line(app, argc, argv, "unet_train")) return *status;
  if (help_config) {
    std::printf("%s", config.help_text().c_str());
    return 0;
  }
  return unet::tools::run_tool("unet_train", [&] {
    if (path.empty()) throw UsageError("missing CONFIG.ini (run with --help)");
    if (!resume.empty() && overwrite)
      throw UsageError("--resume and --overwrite: --resume continues the run in " + resume +
                       ", --overwrite replaces it; give one of them");
    config.load_file(path);
    config.apply_overrides(overrides);
    if (!resume.empty()) {
      try {
        config.set("output", "dir", resume, "--resume");
      } catch (const io::ConfigError&) {  // its text would be about INI values, which the user did not write
        throw UsageError("--resume " + resume +
                         ": the directory's name cannot be kept in the run's config.ini as output.dir; expected UTF-8 "
                         "without control characters or a ';' after a space (rename the directory)");
      }
    }
    // A configuration kept as output.dir/config.ini is not a run: the run would replace it by the effective
    // configuration (its comments gone, a --set written into it), and --overwrite would remove it first.
    if (std::error_code ec;
        resume.empty() &&
        std::filesystem::equivalent(path, std::filesystem::path(config.get_string("output", "dir")) / "config.ini", ec))
      throw UsageError(path +
                       ": is output.dir's config.ini, which the run writes (its effective configuration); "
                       "expected the configuration outside output.dir = " +
                       config.get_string("output", "dir") + " (or another output.dir)");
    return run(config, resume, overwrite);
  });
}
