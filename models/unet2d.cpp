// UNet2D: the module tree mirrors the PyTorch names of models/unet2d.h; the sizes follow from valid 3x3 convolutions
// (-2 each), 2x2 pooling (/2) and the up-convolution (x2).
#include "models/unet2d.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/ops.h"

namespace unet::models {
namespace {

// Two valid convolutions with ReLU, "conv1" and "conv2"; with `up`, the up-convolution "upconv" before them.
struct Level : Module {
  Level(int in, int out, bool with_up) {
    if (with_up) {
      upconv = register_module("upconv", std::make_shared<ValidConv>(in, out, 3, true, true));
      in = 2 * out;  // the upsampled map and the skip, concatenated
    }
    conv1 = register_module("conv1", std::make_shared<ValidConv>(in, out, 3, false, true));
    conv2 = register_module("conv2", std::make_shared<ValidConv>(out, out, 3, false, true));
  }
  Tensor convs(const Tensor& x) const { return conv2->forward(conv1->forward(x)); }
  std::shared_ptr<ValidConv> upconv, conv1, conv2;
};

constexpr int kLevels = 4;  // encoder levels (and decoder levels) around the bottleneck

}  // namespace

struct UNet2D::Levels {
  std::vector<std::shared_ptr<Level>> down, up;
  std::shared_ptr<Level> bottleneck;
};

ValidConv::ValidConv(int in, int out, int k, bool is_up, bool with_relu)
    : in_channels(in), out_channels(out), kernel(k), up(is_up), relu(with_relu) {
  weight = register_parameter("weight", up ? Tensor::zeros({in, k, k, out}) : Tensor::zeros({out, k, k, in}));
  bias = register_parameter("bias", Tensor::zeros({out}));
}

Tensor ValidConv::forward(const Tensor& x) const {
  Tensor y;
  if (up) {  // TF's "same" for a 3x3 stride-2 transposed convolution: padding 0, the first 2n outputs
    y = ops::conv_transpose_general(x, weight, bias, {2, 2}, {0, 0});
    y = ops::crop(y, {0, 0}, {2 * x.dim(1), 2 * x.dim(2)});
  } else {
    y = ops::conv(x, weight, bias, {1, 1}, {0, 0});
  }
  return relu ? ops::relu(y) : y;
}

void ValidConv::init_glorot(Rng& rng) {
  const double taps = double(kernel) * kernel;
  const double limit = std::sqrt(6.0 / (taps * in_channels + taps * out_channels));
  float* w = weight.data<float>();
  for (int64_t i = 0; i < weight.numel(); ++i) w[i] = static_cast<float>((2.0 * rng.uniform() - 1.0) * limit);
  std::fill_n(bias.data<float>(), bias.numel(), 0.f);
}

UNet2D::UNet2D(const UNet2DConfig& config) : config_(config), levels_(std::make_shared<Levels>()) {
  if (config.filters.size() != kLevels + 1)
    throw std::invalid_argument("UNet2D: expected 5 filter counts (4 levels and the bottleneck), got " +
                                std::to_string(config.filters.size()));
  if (!(config.dropout >= 0.f && config.dropout < 1.f))
    throw std::invalid_argument("UNet2D: dropout " + std::to_string(config.dropout) + " (expected 0 <= p < 1)");
  const std::vector<int>& f = config.filters;
  int in = config.in_channels;
  for (int i = 0; i < kLevels; ++i) {
    levels_->down.push_back(
        register_module("down." + std::to_string(i), std::make_shared<Level>(in, f[size_t(i)], false)));
    in = f[size_t(i)];
  }
  levels_->bottleneck = register_module("bottleneck", std::make_shared<Level>(in, f[kLevels], false));
  for (int i = 0; i < kLevels; ++i)
    levels_->up.push_back(register_module(
        "up." + std::to_string(i), std::make_shared<Level>(f[size_t(kLevels - i)], f[size_t(kLevels - 1 - i)], true)));
  head_ = register_module("head", std::make_shared<ValidConv>(f[0], config.out_channels, 1, false, false));
}

std::vector<Tensor> UNet2D::forward(const Tensor& x, bool training, uint64_t dropout_seed) const {
  if (x.rank() != 4 || x.dim(-1) != config_.in_channels || output_size(x.dim(1)) < 1 || output_size(x.dim(2)) < 1)
    throw std::invalid_argument("UNet2D: input " + x.describe() + " must be [N, H, W, " +
                                std::to_string(config_.in_channels) + "] with H and W sizes the network fits (" +
                                std::to_string(valid_input_size(x.dim(1))) + " is the next for H; 572 gives 388)");
  std::vector<Tensor> skips;
  Tensor h = x;
  for (const auto& level : levels_->down) {
    h = level->convs(h);
    skips.push_back(h);
    h = ops::max_pool(h, {2, 2});
  }
  h = levels_->bottleneck->convs(h);
  if (training && config_.dropout > 0.f) h = ops::dropout(h, config_.dropout, dropout_seed);
  for (int i = 0; i < kLevels; ++i) {
    const Level& level = *levels_->up[size_t(i)];
    Tensor upsampled = level.upconv->forward(h);
    const Tensor& skip = skips[size_t(kLevels - 1 - i)];
    const int64_t oh = upsampled.dim(1), ow = upsampled.dim(2);
    Tensor centre = ops::crop(skip, {(skip.dim(1) - oh) / 2, (skip.dim(2) - ow) / 2}, {oh, ow});
    h = level.convs(ops::concat_channels({upsampled, centre}));
  }
  return {head_->forward(h)};
}

std::vector<int> UNet2D::context(const std::vector<int>& patch) const {
  std::vector<int> c(patch.size(), 0);  // a leading slice axis (1, H, W) has none
  for (size_t a = patch.size() < 2 ? 0 : patch.size() - 2; a < patch.size(); ++a)
    c[a] = static_cast<int>((patch[a] - output_size(patch[a])) / 2);
  return c;
}

void UNet2D::initialize(uint64_t seed) {
  Rng rng(seed);
  for (const auto& level : levels_->down)
    for (ValidConv* c : {level->conv1.get(), level->conv2.get()}) c->init_glorot(rng);
  for (ValidConv* c : {levels_->bottleneck->conv1.get(), levels_->bottleneck->conv2.get()}) c->init_glorot(rng);
  for (const auto& level : levels_->up)
    for (ValidConv* c : {level->upconv.get(), level->conv1.get(), level->conv2.get()}) c->init_glorot(rng);
  head_->init_glorot(rng);
}

int64_t UNet2D::output_size(int64_t s) {
  for (int i = 0; i < kLevels; ++i) {
    s -= 4;
    if (s < 2 || s % 2 != 0) return 0;
    s /= 2;
  }
  s -= 4;  // the bottleneck
  if (s < 1) return 0;
  for (int i = 0; i < kLevels; ++i) s = 2 * s - 4;
  return s >= 1 ? s : 0;
}

int64_t UNet2D::valid_input_size(int64_t at_least) {
  int64_t s = std::max<int64_t>(at_least, 1);
  while (output_size(s) < 1) ++s;
  return s;
}

}  // namespace unet::models
