// The UNet of Ronneberger et al. (2015) as NVIDIA's DLE UNet_Medical trains it (docs/reference.md, "UNet2D"): 3x3
// valid convolutions with bias and ReLU, 2x2 max pooling, dropout 0.5 after the bottleneck's convolutions in training,
// 3x3 stride-2 transposed convolutions with TF's "same" output (2n: padding 0, the first 2n outputs kept) and ReLU,
// concatenation of the upsampled map with the centre crop of the skip, a 1x1 head (no activation on the logits; DLE
// applies a ReLU there, which keeps logits from going negative). 572 x 572 in, 388 x 388 out.
// Parameter names are those of the PyTorch module tree down.{0..3}.conv{1,2}, bottleneck.conv{1,2},
// up.{0..3}.upconv (ConvTranspose2d), up.{0..3}.conv{1,2}, head, so checkpoints load with load_state_dict.
#pragma once
#include <memory>
#include <vector>

#include "engine/module.h"
#include "engine/random.h"
#include "models/network.h"

namespace unet::models {

struct UNet2DConfig {
  int in_channels = 1;
  int out_channels = 2;
  std::vector<int> filters = {64, 128, 256, 512, 1024};  // the four encoder levels, then the bottleneck
  float dropout = 0.5f;
};

// A convolution with bias and no padding (valid), or the up-convolution (3x3, stride 2, TF "same"), each followed by
// ReLU when `relu`. Weights [out, k, k, in] for a convolution, [in, k, k, out] for the up-convolution (PyTorch's
// Conv2d / ConvTranspose2d layouts with the channels moved last).
class ValidConv : public Module {
 public:
  ValidConv(int in, int out, int kernel, bool up, bool relu);
  Tensor forward(const Tensor& x) const;
  void init_glorot(Rng& rng);  // Keras' glorot_uniform: U(-l, l), l = sqrt(6 / (fan_in + fan_out)); bias 0
  Tensor weight, bias;
  int in_channels, out_channels, kernel;
  bool up, relu;
};

class UNet2D : public Network {
 public:
  explicit UNet2D(const UNet2DConfig& config);
  // x [N, H, W, C] -> {logits [N, H', W', classes]} with H' = output_size(H). training = true applies the dropout,
  // with a mask drawn from dropout_seed (a new one each step).
  std::vector<Tensor> forward(const Tensor& x, bool training, uint64_t dropout_seed = 0) const override;
  void initialize(uint64_t seed) override;
  // (patch - output_size(patch)) / 2 along H and W; 0 along a leading slice axis (1, H, W)
  std::vector<int> context(const std::vector<int>& patch) const override;
  int spatial_dims() const override { return 2; }
  int out_channels() const override { return config_.out_channels; }
  const UNet2DConfig& config() const { return config_; }
  // The output size for an input size (572 -> 388), or 0 when the input does not fit the network (a size whose
  // poolings leave a remainder or whose convolutions leave nothing).
  static int64_t output_size(int64_t input);
  // The smallest input size >= `at_least` that fits the network.
  static int64_t valid_input_size(int64_t at_least);

 private:
  UNet2DConfig config_;
  struct Levels;  // the encoder, bottleneck and decoder modules (registered under down, bottleneck, up)
  std::shared_ptr<Levels> levels_;
  std::shared_ptr<ValidConv> head_;
};

}  // namespace unet::models
