// The networks that training and inference build from a model card (models/checkpoint.h, "model.name"): nnU-Net's
// DynUNet (models/nnunet.h), the UNet2D of Ronneberger (models/unet2d.h) and UNet 3+ (models/unet3plus.h). The Trainer
// and the Predictor see only this interface.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/module.h"

namespace unet {
class Comm;
}

namespace unet::models {

struct ModelCard;

class Network : public Module {
 public:
  // Logits for x [B, spatial..., C_in]: full resolution first, then, in training, the deep-supervision heads'
  // (upsampled to full resolution). `seed` draws what is random in training (dropout): a new one each step.
  virtual std::vector<Tensor> forward(const Tensor& x, bool training, uint64_t seed) const = 0;
  virtual void initialize(uint64_t seed) = 0;
  virtual int spatial_dims() const = 0;  // 2 or 3
  virtual int out_channels() const = 0;  // classes
  // Voxels per side, for each spatial axis of `patch`, that the logits lack against the input (valid convolutions:
  // UNet2D's 92 at 572); zeros for networks whose output has the input's size.
  virtual std::vector<int> context(const std::vector<int>& patch) const { return std::vector<int>(patch.size(), 0); }
  // The loss weight of each of `outputs` training outputs (forward's order). nnU-Net's: 1, 1/2, 1/4, ... normalised to
  // sum 1 (the deep-supervision heads count less the coarser they are).
  virtual std::vector<double> output_weights(size_t outputs) const;
  // Networks with batch norm (UNet 3+) synchronise its statistics over `comm` in training from now on
  // (SyncBatchNorm, ops::BatchNormOptions::comm; null: each rank its own), and say true; the others ignore it.
  virtual bool set_batch_norm_comm(Comm* /*comm*/) { return false; }
  // Whether forward in training returns, last, image-level classification logits [B, 2] (absent, present) that the
  // loss trains with ops::presence_bce_loss (UNet 3+'s classification-guided module) after the segmentation outputs.
  virtual bool classifies() const { return false; }
};

// x as the network takes it: slices [B, 1, H, W, C] of a volume become [B, H, W, C] for a 2D network, and Z adjacent
// slices [B, Z, H, W, C] become [B, H, W, Z C] (slice z's channels at z C..); anything else is x itself.
Tensor network_input(const Network& net, const Tensor& x);

// The network a card describes, with zero weights (initialize, or load a checkpoint). Throws std::invalid_argument
// when the card's patch does not fit it (UNet2D: naming the next size that does).
std::unique_ptr<Network> make_network(const ModelCard& card);
// std::invalid_argument, with the next size that fits, when UNet2D's valid convolutions and poolings cannot take a
// patch of `size` along an axis (make_network checks each).
void check_unet2d_patch_size(int64_t size);

}  // namespace unet::models
