// One nnU-Net training step and whole-volume validation, independent of where batches come from; and the Trainer,
// which runs a whole training from options.
#pragma once
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/data_parallel.h"
#include "engine/loss_scaler.h"
#include "engine/metrics.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/precision.h"
#include "engine/sliding_window.h"
#include "io/dataset.h"
#include "models/checkpoint.h"
#include "models/network.h"
#include "models/nnunet.h"

namespace unet::models {

// The training loss: nnU-Net's DiceCE (the default form), DLE UNet_Medical's (ops::kDleDiceCe), or UNet 3+'s
// hybrid focal + SSIM (or MS-SSIM) + IoU loss (ops::hybrid_loss).
struct LossSpec {
  LossSpec(const ops::DiceCeForm& form = {}) : dice_ce(form) {}  // NOLINT: a DiceCE form is a loss
  // multiscale: MS-SSIM (the paper's) instead of SSIM (DLE's).
  static LossSpec hybrid_loss(bool multiscale = false) {
    LossSpec s;
    s.hybrid = true;
    s.hybrid_options.multiscale = multiscale;
    return s;
  }
  bool hybrid = false;
  ops::DiceCeForm dice_ce;                         // when !hybrid
  ops::HybridLossOptions hybrid_options;           // when hybrid
  size_t parts() const { return hybrid ? 3 : 2; }  // [focal, 1 - SSIM, IoU loss] or [Dice, CE]
};

struct StepStats {
  // f32 [1 + parts] on the step's device: the deep-supervision weighted loss that was minimised, then the parts of
  // the full-resolution loss (LossSpec::parts). Left there so that a step waits for the device only once (for
  // `stepped`); reading it (loss(), values()) waits again.
  Tensor losses;
  bool stepped = true;    // false when the optimizer skipped the step (inf/nan gradients)
  double loss_scale = 1;  // the scale the loss was multiplied by before backward
  double loss() const { return losses.to_vector()[0]; }
};

// Deep supervision: sum_i weights[i] L_i over the network's outputs (full resolution first; the weights from
// Network::output_weights, nnU-Net's 0.5^i / sum 0.5^i or UNet 3+'s 1). *parts (when given) receives the
// full-resolution loss's parts on the outputs' device. With a comm of several ranks, each L_i is the global
// batch's (ops::dice_ce_loss, ops::hybrid_loss).
Tensor deep_supervision_loss(const std::vector<Tensor>& outputs, const Tensor& labels,
                             const std::vector<double>& weights, Tensor* parts = nullptr, Comm* comm = nullptr,
                             const LossSpec& loss = {});

// The network's outputs (f32 logits) for x [B, spatial..., C_in] f32, computed in `precision` (engine/precision.h):
// fp16 / bf16 cast x to that type and the logits back to f32, as autocast does. tf32 is the process-wide
// ops::set_conv_allow_tf32, which the caller sets.
// x may be slices [B, 1, H, W, C] for a 2D network (network_input). `seed` draws the step's dropout.
std::vector<Tensor> forward_in(const Network& net, const Tensor& x, bool training, Precision precision,
                               uint64_t seed = 0);

// Forward in `precision`, loss (f32), backward of loss * scale, optimizer step with the gradients unscaled, on one
// batch: x [B, spatial..., C_in] f32, labels [B, spatial...]. scaler (may be null: scale 1) gives the scale and is
// updated with whether the step was taken (engine/loss_scaler.h).
// Data parallel (a reducer over the net's parameters): x and labels are this rank's share of the global batch; the
// loss is the global batch's (over reducer->comm()) and the gradients are summed over the ranks before the step, so
// every rank takes the same step, or skips it (a non-finite gradient anywhere is one in every rank's sum).
// A network of valid convolutions (UNet2D) returns logits smaller than x: the loss takes the labels' centre. `seed`
// draws the step's dropout; `loss` picks the loss (deep_supervision_loss).
StepStats train_step(Network& net, Optimizer& optimizer, const Tensor& x, const Tensor& labels,
                     Precision precision = Precision::fp32, LossScaler* scaler = nullptr,
                     GradientReducer* reducer = nullptr, uint64_t seed = 0, const LossSpec& loss = {});

// The sliding window of a network trained on `patch` (its input size): windows of the network's output size, each
// with the context its valid convolutions need (none for DynUNet).
SlidingWindowOptions window_options(const Network& net, const std::vector<int>& patch);

// Blended logits (f32) of a whole image [spatial..., C_in] by sliding window (no autograd), the network run in
// `precision`. options: from window_options (then overlap, blending, TTA).
Tensor predict_volume(const Network& net, const Tensor& image, const SlidingWindowOptions& options,
                      Precision precision = Precision::fp32);

// Label map (i32 [spatial...]) = argmax of the blended logits.
Tensor segment_volume(const Network& net, const Tensor& image, const SlidingWindowOptions& options,
                      Precision precision = Precision::fp32);

}  // namespace unet::models

// ---- The training run: data, model, optimizer, steps, validation, logging and checkpoints in one place ----
// tools/unet_train.cpp turns its configuration into TrainerOptions; mixed precision, ranks and resume plug in here.

namespace unet::models {

// An option that contradicts the data (for example more folds than cases): the front end reports it as a usage error.
struct TrainerOptionError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

struct TrainerOptions {
  std::string dataset;                   // Medical Segmentation Decathlon directory (with dataset.json)
  int fold = 0, folds = 5;               // folds = 1: train on every case, no validation
  io::PatchSamplerOptions sampling;      // patch, batch, foreground oversampling, augmentation (its seed is `seed`)
  int loader_workers = 2, prefetch = 2;  // io/loader.h: threads preparing batches, steps ahead (0 workers: inline)
  std::string cache_dir;                 // preprocessed cases kept here (io/preprocess.h); empty: none
  std::string model = "dynunet";         // dynunet (nnU-Net) | unet2d (Ronneberger / DLE UNet_Medical: patch (1, H, W))
  int filters = 32, max_filters = 320, depth = 5;  // unet2d: filters, 2x, 4x, 8x, 16x (DLE: 64)
  float dropout = 0.5f;                            // unet2d: after the bottleneck
  bool deep_supervision = true, res_block = false;
  bool sync_batch_norm = true;      // unet3plus with several ranks: batch statistics over every rank (SyncBatchNorm)
  bool cgm = false;                 // unet3plus: the classification-guided module (UNet3PlusConfig::cgm)
  std::string pipeline = "nnunet";  // nnunet, or dle_isbi (unet2d: DLE UNet_Medical's ISBI pipeline, io/dle.h)
  int64_t steps = 1000;
  LossSpec loss;                    // nnU-Net's DiceCE ({}), DLE UNet_Medical's (ops::kDleDiceCe), UNet 3+'s hybrid
  std::string optimizer = "adamw";  // adamw | adam | sgd
  double lr = 8e-4, weight_decay = 1e-4, momentum = 0.99;
  bool nesterov = true;
  std::string scheduler = "none";  // none | poly | cosine (engine/schedule.h)
  int64_t warmup_steps = 0;
  uint64_t seed = 0;                      // weights, sampling and augmentation
  int64_t log_every = 10, val_every = 0;  // val_every 0: validate at the end only
  int64_t save_every = 1000;  // steps between checkpoints (also written at each validation and at the end); 0: never
  // A run directory to continue (output_dir should be the same): its checkpoint.safetensors restores weights,
  // optimizer state, step, loss scale and the sampler's position, so the run ends as if never interrupted. Its
  // configuration must equal config_text except for the [runtime] section, output.dir, train.steps (more steps
  // extend the run; the schedules then follow the new count), data.workers, data.prefetch, data.cache, train.log_every,
  // train.val_every and train.save_every (TrainerOptionError naming the first difference).
  std::string resume_dir;
  double overlap = 0.5;
  Blend blend = Blend::gaussian;
  std::string output_dir = "runs/unet";
  Device device = Device::cpu;
  Precision precision = Precision::fp32;  // tf32 turns on ops::set_conv_allow_tf32 for the run
  LossScalerOptions loss_scaling;         // enabled for fp16 by unet_train's default (train.loss_scaling = auto)
  std::string config_text;  // the effective configuration, written to config.ini and into the training state
  // Data parallel (engine/comm.h): null or one rank trains alone. With several, sampling.batch is per rank, every rank
  // loads the data and trains on its share of each global batch, validation cases are split over the ranks, and rank 0
  // alone writes files and progress lines.
  Comm* comm = nullptr;
};

// Writes to options.output_dir: config.ini, log.jsonl (one JSON object per logged step: the means since the last line
// of the loss and its full-resolution Dice and CE parts, lr, samples/s, loss scale, its growth tracker and the skipped
// steps so far, peak host memory and, off the cpu, the device's; one per validation: Dice per class),
// model.safetensors (PyTorch-loadable f32 weights with the model card), checkpoint.safetensors (what resuming needs:
// the weights in the engine's layout, the optimizer state, and in the metadata the step, seed, precision, global
// batch, loss-scaler state and configuration; replaced atomically, so a kill at any moment leaves the previous one
// whole) and validation.json. Progress lines go to `out`.
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
