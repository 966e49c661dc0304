// One nnU-Net training step and whole-volume validation, independent of where batches come from; and the Trainer,
// which runs a whole training from options.
#pragma once
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/metrics.h"
#include "engine/optim.h"
#include "engine/sliding_window.h"
#include "io/dataset.h"
#include "models/checkpoint.h"
#include "models/nnunet.h"

namespace unet::models {

struct StepStats {
  double loss = 0;  // the deep-supervision weighted DiceCE that was minimised
  double dice_loss = 0, ce = 0;  // parts of the full-resolution loss
  bool stepped = true;  // false when the optimizer skipped the step (inf/nan gradients)
};

// Deep supervision: sum_i 0.5^i L_i / sum_i 0.5^i over the network's outputs (full resolution first).
Tensor deep_supervision_loss(const std::vector<Tensor>& outputs, const Tensor& labels, StepStats* stats = nullptr);

// Forward, loss, backward and optimizer step on one batch: x [B, spatial..., C_in] f32, labels [B, spatial...].
StepStats train_step(DynUNet& net, Optimizer& optimizer, const Tensor& x, const Tensor& labels);

// Blended logits of a whole image [spatial..., C_in] by sliding window (no autograd).
Tensor predict_volume(const DynUNet& net, const Tensor& image, const SlidingWindowOptions& options);

// Label map (i32 [spatial...]) = argmax of the blended logits.
Tensor segment_volume(const DynUNet& net, const Tensor& image, const SlidingWindowOptions& options);

}  // namespace unet::models

// ---- The training run: data, model, optimizer, steps, validation, logging and checkpoints in one place ----
// tools/unet_train.cpp turns its configuration into TrainerOptions; mixed precision, ranks and resume plug in here.

namespace unet::models {

// An option that contradicts the data (for example more folds than cases): the front end reports it as a usage error.
struct TrainerOptionError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

struct TrainerOptions {
  std::string dataset;      // Medical Segmentation Decathlon directory (with dataset.json)
  int fold = 0, folds = 5;  // folds = 1: train on every case, no validation
  io::PatchSamplerOptions sampling;  // patch, batch, foreground oversampling, flips (its seed is `seed`)
  int filters = 32, max_filters = 320, depth = 5;
  bool deep_supervision = true, res_block = false;
  int64_t steps = 1000;
  std::string optimizer = "adamw";  // adamw | adam | sgd
  double lr = 8e-4, weight_decay = 1e-4, momentum = 0.99;
  bool nesterov = true;
  std::string scheduler = "none";  // none | poly | cosine (engine/schedule.h)
  int64_t warmup_steps = 0;
  uint64_t seed = 0;               // weights, sampling and augmentation
  int64_t log_every = 10, val_every = 0;  // val_every 0: validate at the end only
  double overlap = 0.5;
  Blend blend = Blend::gaussian;
  std::string output_dir = "runs/unet";
  Device device = Device::cpu;
  std::string config_text;  // the effective configuration, written to config.ini and into the training state
};

// Writes to options.output_dir: config.ini, log.jsonl (one JSON object per logged step: loss, its Dice and CE parts,
// lr, samples/s, peak host memory and, off the cpu, the device's; one per validation: Dice per class),
// model.safetensors (PyTorch-loadable weights with the model card), model.state.safetensors (optimizer state, step,
// seed, configuration) and validation.json. Progress lines go to `out`.
class Trainer {
 public:
  // Loads and normalises every case, plans and initialises the network on options.device.
  Trainer(TrainerOptions options, std::FILE* out);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;
  void run();  // every step, with logs, validations and checkpoints; throws std::runtime_error if the loss diverges
  const ModelCard& card() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace unet::models
