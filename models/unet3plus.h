// UNet 3+ (Huang et al. 2020, arXiv 2004.08790) as NVIDIA's DLE UNet3P trains it (SPEC 1.3): an encoder of five
// levels, each two (3x3 convolution with bias, batch norm, ReLU), 2x2 max pooling between them; four decoder levels
// d = 3..0, each fed by five branches (one conv block to filters[0] channels each) from every scale: the encoder maps
// of higher resolution max-pooled by 2^(d - j), the encoder map of its own level, and the deeper decoder maps (the
// bottom encoder map for j = 4) upsampled bilinearly (align_corners false, Keras' UpSampling2D) by 2^(j - d); the
// five are concatenated (5 x filters[0] channels) and fused by one conv block of as many channels. A 3x3 head with
// bias gives the logits. With deep supervision, training adds 3x3 heads on decoder levels 1..3 and the bottom encoder
// level, upsampled bilinearly to full resolution (each trained with the same loss, weight 1).
// Batch norm as Keras' defaults (DLE's network is Keras): eps 1e-3, moving average 0.99 (PyTorch momentum 0.01);
// synchronised over the ranks once set_batch_norm_comm gives it a comm (the trainer does, model.sync_batchnorm).
// Parameter names are those of this PyTorch module tree: encoder.{0..4}.conv{1,2}, encoder.{i}.bn{1,2},
// decoder.{3..0}.branch.{0..4}.{conv,bn}, decoder.{d}.fuse.{conv,bn}, head, ds_heads.{0..3} (levels 1..4), so that
// load_state_dict takes our checkpoints (the bn buffers running_mean / running_var included).
// With cgm, the classification-guided module (the paper's; DLE's third variant, which DLE cannot train): dropout 0.5
// on the bottom encoder map, a 1x1 convolution to two logits (absent, present), the global maximum over the positions;
// where "absent" wins the argmax every segmentation output of the sample is multiplied by 0 (background), else by 1.
// Training then returns the two logits [N, 2] as a last output, for the presence loss (ops::presence_bce_loss). Named
// cgm.{weight,bias} (PyTorch Conv2d(filters[4], 2, 1)), Keras' glorot_uniform initialisation.
#pragma once
#include <memory>
#include <vector>

#include "engine/module.h"
#include "models/network.h"

namespace unet::models {

struct UNet3PlusConfig {
  int in_channels = 3;  // DLE: three adjacent slices
  int out_channels = 2;
  std::vector<int> filters = {64, 128, 256, 512, 1024};  // the five encoder levels; decoder branches get filters[0]
  bool deep_supervision = false;
  float bn_eps = 1e-3f;
  float bn_momentum = 0.01f;  // PyTorch's convention (Keras momentum 0.99)
  bool cgm = false;           // the classification-guided module
};

class UNet3Plus : public Network {
 public:
  explicit UNet3Plus(const UNet3PlusConfig& config);
  // x [N, H, W, C] with H and W multiples of 16 -> {logits [N, H, W, classes]}, then in training with deep supervision
  // the four supervision heads' logits (levels 1..4), upsampled to [N, H, W, classes], and with cgm the classification
  // logits [N, 2] (f32). `seed` draws the module's dropout. training = true normalises by
  // the batch's statistics and updates the running ones; false uses the running ones.
  std::vector<Tensor> forward(const Tensor& x, bool training, uint64_t seed = 0) const override;
  // Keras' he_normal for the convolutions (normal truncated at 2 sigma, sigma = sqrt(2 / fan_in) / 0.8796), zero
  // biases; batch norm gamma 1, beta 0, running mean 0, variance 1.
  void initialize(uint64_t seed) override;
  int spatial_dims() const override { return 2; }
  int out_channels() const override { return config_.out_channels; }
  // A patch [Z, H, W] of Z adjacent slices (Z odd; in_channels counts every slice's channels) predicts its centre
  // slice: (Z - 1) / 2 slices of context on each side in z.
  std::vector<int> context(const std::vector<int>& patch) const override {
    std::vector<int> c(patch.size(), 0);
    if (patch.size() == 3) c[0] = (patch[0] - 1) / 2;
    return c;
  }
  // Every output counts fully (DLE's Keras model compiles one loss per output, weights 1).
  std::vector<double> output_weights(size_t outputs) const override { return std::vector<double>(outputs, 1.0); }
  bool classifies() const override { return config_.cgm; }
  // SyncBatchNorm over comm in training (ops::BatchNormOptions::comm); null: each rank normalises its own share.
  bool set_batch_norm_comm(Comm* comm) override {
    comm_ = comm;
    return true;
  }
  const UNet3PlusConfig& config() const { return config_; }
  static constexpr int kDivisor = 16;  // four 2x2 poolings: H and W must be multiples of this

 private:
  UNet3PlusConfig config_;
  Comm* comm_ = nullptr;
  struct Parts;  // the registered modules
  std::shared_ptr<Parts> parts_;
};

}  // namespace unet::models
