// nnU-Net's dynamic UNet (MONAI DynUNet as used by NVIDIA's DLE nnU-Net; docs/reference.md, "DynUNet"), 2D and 3D.
// Parameter names follow the PyTorch module names ("input_block.conv1.conv.weight", "upsamples.0.transp_conv.conv.bias",
// ...) so checkpoints map one to one onto a PyTorch DynUNet's state_dict.
#pragma once
#include <memory>
#include <vector>

#include "engine/module.h"
#include "engine/random.h"
#include "models/network.h"

namespace unet::models {

struct DynUNetConfig {
  int in_channels = 1;
  int out_channels = 2;
  std::vector<std::vector<int>> kernels;  // per level, per spatial axis (from plan_unet)
  std::vector<std::vector<int>> strides;  // per level; strides[0] all ones
  std::vector<int> filters;               // per level
  bool deep_supervision = false;          // adds 1x1 heads on the decoder outputs at levels 1..deep_supr_num
  int deep_supr_num = 2;
  bool res_block = false;                 // MONAI UnetResBlock instead of UnetBasicBlock
  float negative_slope = 0.01f;
  int spatial_dims() const { return kernels.empty() ? 0 : static_cast<int>(kernels[0].size()); }
};

// Convolution with its weight in the engine layout [K, kernel..., C] (checkpoints convert to PyTorch's).
class Conv : public Module {
 public:
  Conv(int in, int out, std::vector<int> kernel, std::vector<int> stride, bool bias, bool transposed);
  Tensor forward(const Tensor& x) const;
  void init_kaiming(Rng& rng, float a);  // PyTorch's kaiming_normal_ fan-in rule, biases zero
  Tensor weight, bias;
  std::vector<int> kernel, stride, pad;
  bool transposed;
  int in_channels, out_channels;
};

class InstanceNorm : public Module {
 public:
  explicit InstanceNorm(int channels);
  Tensor forward(const Tensor& x) const;
  Tensor forward_leaky_relu(const Tensor& x, float slope) const;  // leaky_relu(forward(x)), fused (ops.h)
  static constexpr float kEps = 1e-5f;                            // MONAI's InstanceNorm3d default
  Tensor weight, bias;
};

// conv(k, stride) -> IN -> LReLU -> conv(k, 1) -> IN -> LReLU; residual variant adds a (1x1 conv + IN) projection.
class ConvBlock : public Module {
 public:
  ConvBlock(int in, int out, const std::vector<int>& kernel, const std::vector<int>& stride, bool residual, float slope);
  Tensor forward(const Tensor& x) const;
  std::shared_ptr<Conv> conv1, conv2, conv3;
  std::shared_ptr<InstanceNorm> norm1, norm2, norm3;
  float slope;

 private:
  bool residual_ = false;
};

// Transposed conv (kernel = stride) -> concat(up, skip) -> ConvBlock(2 * out -> out).
class UpBlock : public Module {
 public:
  UpBlock(int in, int out, const std::vector<int>& kernel, const std::vector<int>& up_stride, bool residual, float slope);
  Tensor forward(const Tensor& x, const Tensor& skip) const;
  std::shared_ptr<Conv> transp_conv;
  std::shared_ptr<ConvBlock> conv_block;
};

class DynUNet : public Network {
 public:
  explicit DynUNet(const DynUNetConfig& config);
  // Logits at full resolution first; with deep supervision and training = true, then the heads' logits upsampled
  // (nearest) to full resolution, levels 1..deep_supr_num. Nothing is random: the seed is not used.
  std::vector<Tensor> forward(const Tensor& x, bool training, uint64_t seed = 0) const override;
  void initialize(uint64_t seed) override;  // kaiming normal (a = 0.01) for convolutions, zero biases; norms 1 / 0
  int spatial_dims() const override { return config_.spatial_dims(); }
  int out_channels() const override { return config_.out_channels; }
  const DynUNetConfig& config() const { return config_; }

 private:
  DynUNetConfig config_;
  std::shared_ptr<ConvBlock> input_block_, bottleneck_;
  std::vector<std::shared_ptr<ConvBlock>> downsamples_;
  std::vector<std::shared_ptr<UpBlock>> upsamples_;  // [0] is the deepest
  std::shared_ptr<Conv> output_block_;
  std::vector<std::shared_ptr<Conv>> heads_;
};

}  // namespace unet::models
