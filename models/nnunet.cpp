// DynUNet: the module tree mirrors MONAI's so that parameter names match, including its choice of giving the
// up block j the kernel of the level it comes from (kernels[L-1-j]).
#include "models/nnunet.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/ops.h"

namespace unet::models {
namespace {

Shape weight_shape(int out, const std::vector<int>& kernel, int in) {
  Shape s{out};
  for (int k : kernel) s.push_back(k);
  s.push_back(in);
  return s;
}

}  // namespace

Conv::Conv(int in, int out, std::vector<int> k, std::vector<int> s, bool with_bias, bool is_transposed)
    : kernel(std::move(k)), stride(std::move(s)), transposed(is_transposed), in_channels(in), out_channels(out) {
  for (size_t a = 0; a < kernel.size(); ++a) pad.push_back(transposed ? 0 : (kernel[a] - stride[a] + 1) / 2);
  weight = register_parameter("weight", Tensor::zeros(weight_shape(out, kernel, in)));
  if (with_bias) bias = register_parameter("bias", Tensor::zeros({out}));
}

Tensor Conv::forward(const Tensor& x) const {
  return transposed ? ops::conv_transpose(x, weight, bias) : ops::conv(x, weight, bias, stride, pad);
}

void Conv::init_kaiming(Rng& rng, float a) {
  // PyTorch takes fan_in from weight dim 1: input channels for a convolution (O, I, k...), but output channels for a
  // transposed convolution (I, O, k...).
  double taps = 1;
  for (int k : kernel) taps *= k;
  double fan_in = (transposed ? out_channels : in_channels) * taps;
  double stddev = std::sqrt(2.0 / (1.0 + double(a) * a)) / std::sqrt(fan_in);
  float* w = weight.data<float>();
  for (int64_t i = 0; i < weight.numel(); ++i) w[i] = static_cast<float>(rng.normal() * stddev);
  if (bias.defined()) std::fill_n(bias.data<float>(), bias.numel(), 0.f);
}

InstanceNorm::InstanceNorm(int channels) {
  weight = register_parameter("weight", Tensor::full({channels}, 1.f));
  bias = register_parameter("bias", Tensor::zeros({channels}));
}

Tensor InstanceNorm::forward(const Tensor& x) const { return ops::instance_norm(x, weight, bias, kEps); }

Tensor InstanceNorm::forward_leaky_relu(const Tensor& x, float slope) const {
  return ops::instance_norm_leaky_relu(x, weight, bias, kEps, slope);
}

ConvBlock::ConvBlock(int in, int out, const std::vector<int>& kernel, const std::vector<int>& stride, bool residual,
                     float negative_slope)
    : slope(negative_slope) {
  std::vector<int> ones(kernel.size(), 1);
  conv1 = register_module("conv1.conv", std::make_shared<Conv>(in, out, kernel, stride, false, false));
  conv2 = register_module("conv2.conv", std::make_shared<Conv>(out, out, kernel, ones, false, false));
  bool project = residual && (in != out || stride != ones);
  if (project) conv3 = register_module("conv3.conv", std::make_shared<Conv>(in, out, ones, stride, false, false));
  norm1 = register_module("norm1", std::make_shared<InstanceNorm>(out));
  norm2 = register_module("norm2", std::make_shared<InstanceNorm>(out));
  if (project) norm3 = register_module("norm3", std::make_shared<InstanceNorm>(out));
  residual_ = residual;
}

Tensor ConvBlock::forward(const Tensor& x) const {
  // Norm and activation as one op where nothing comes between them (it stores one activation less).
  if (!residual_) {
    // Each convolution also returns the statistics its norm needs, and the normalised activation between the two
    // convolutions is neither stored nor kept for backward (ops::norm_act_conv).
    const ops::ConvStats c1 = ops::conv_stats(x, conv1->weight, conv1->bias, conv1->stride, conv1->pad);
    const ops::ConvStats c2 = ops::norm_act_conv(c1.y, c1.stats, norm1->weight, norm1->bias, InstanceNorm::kEps, slope,
                                                 conv2->weight, conv2->bias, conv2->stride, conv2->pad);
    return ops::instance_norm_leaky_relu(c2.y, norm2->weight, norm2->bias, InstanceNorm::kEps, slope, c2.stats);
  }
  Tensor h = norm1->forward_leaky_relu(conv1->forward(x), slope);
  h = ops::add(norm2->forward(conv2->forward(h)), conv3 ? norm3->forward(conv3->forward(x)) : x);
  return ops::leaky_relu(h, slope);
}

UpBlock::UpBlock(int in, int out, const std::vector<int>& kernel, const std::vector<int>& up_stride, bool residual,
                 float slope) {
  transp_conv = register_module("transp_conv.conv", std::make_shared<Conv>(in, out, up_stride, up_stride, true, true));
  conv_block = register_module("conv_block", std::make_shared<ConvBlock>(2 * out, out, kernel,
                                                                          std::vector<int>(kernel.size(), 1), residual, slope));
}

Tensor UpBlock::forward(const Tensor& x, const Tensor& skip) const {
  return conv_block->forward(ops::concat_channels({transp_conv->forward(x), skip}));
}

DynUNet::DynUNet(const DynUNetConfig& c) : config_(c) {
  size_t levels = c.kernels.size();
  int dims = c.spatial_dims();
  if (levels < 2 || c.strides.size() != levels || c.filters.size() != levels || dims < 2 || dims > 3)
    throw std::invalid_argument("DynUNet: kernels, strides and filters need one entry per level (at least 2), got " +
                                std::to_string(c.kernels.size()) + ", " + std::to_string(c.strides.size()) + ", " +
                                std::to_string(c.filters.size()));
  for (size_t i = 0; i < levels; ++i)
    if (static_cast<int>(c.kernels[i].size()) != dims || static_cast<int>(c.strides[i].size()) != dims)
      throw std::invalid_argument("DynUNet: level " + std::to_string(i) + " kernel/stride rank differs from " +
                                  std::to_string(dims));
  if (c.deep_supervision && (c.deep_supr_num < 1 || c.deep_supr_num > static_cast<int>(levels) - 2))
    throw std::invalid_argument("DynUNet: deep_supr_num must be in [1, levels - 2]");
  const auto& f = c.filters;
  input_block_ = register_module("input_block", std::make_shared<ConvBlock>(c.in_channels, f[0], c.kernels[0], c.strides[0],
                                                                             c.res_block, c.negative_slope));
  for (size_t i = 1; i + 1 < levels; ++i)
    downsamples_.push_back(register_module("downsamples." + std::to_string(i - 1),
                                           std::make_shared<ConvBlock>(f[i - 1], f[i], c.kernels[i], c.strides[i],
                                                                       c.res_block, c.negative_slope)));
  bottleneck_ = register_module("bottleneck", std::make_shared<ConvBlock>(f[levels - 2], f[levels - 1], c.kernels[levels - 1],
                                                                           c.strides[levels - 1], c.res_block, c.negative_slope));
  for (size_t j = 0; j + 1 < levels; ++j) {
    size_t from = levels - 1 - j;
    upsamples_.push_back(register_module("upsamples." + std::to_string(j),
                                         std::make_shared<UpBlock>(f[from], f[from - 1], c.kernels[from], c.strides[from],
                                                                   c.res_block, c.negative_slope)));
  }
  std::vector<int> ones(dims, 1);
  output_block_ = register_module("output_block.conv.conv", std::make_shared<Conv>(f[0], c.out_channels, ones, ones, true, false));
  if (c.deep_supervision)
    for (int i = 0; i < c.deep_supr_num; ++i)
      heads_.push_back(register_module("deep_supervision_heads." + std::to_string(i) + ".conv.conv",
                                       std::make_shared<Conv>(f[i + 1], c.out_channels, ones, ones, true, false)));
}

void DynUNet::initialize(uint64_t seed) {
  Rng rng(seed);  // one stream, consumed in module order: a seed always gives the same weights
  auto init_block = [&](ConvBlock& b) {
    for (auto* conv : {b.conv1.get(), b.conv2.get(), b.conv3.get()})
      if (conv) conv->init_kaiming(rng, 0.01f);
  };
  init_block(*input_block_);
  for (auto& d : downsamples_) init_block(*d);
  init_block(*bottleneck_);
  for (auto& u : upsamples_) {
    u->transp_conv->init_kaiming(rng, 0.01f);
    init_block(*u->conv_block);
  }
  output_block_->init_kaiming(rng, 0.01f);
  for (auto& h : heads_) h->init_kaiming(rng, 0.01f);
}

std::vector<Tensor> DynUNet::forward(const Tensor& x, bool training, uint64_t) const {
  check_arg(x.rank() == config_.spatial_dims() + 2 && x.dim(-1) == config_.in_channels,
            "DynUNet: expected input [N, spatial..., " + std::to_string(config_.in_channels) + "] with " +
                std::to_string(config_.spatial_dims()) + " spatial axes, got " + x.describe());
  std::vector<Tensor> skips{input_block_->forward(x)};
  for (auto& d : downsamples_) skips.push_back(d->forward(skips.back()));
  Tensor h = bottleneck_->forward(skips.back());
  size_t levels = config_.kernels.size();
  std::vector<Tensor> decoder(levels);  // decoder output at each level (index = level)
  for (size_t j = 0; j < upsamples_.size(); ++j) {
    size_t level = levels - 2 - j;
    h = upsamples_[j]->forward(h, skips[level]);
    decoder[level] = h;
  }
  std::vector<Tensor> out{output_block_->forward(h)};
  if (training && config_.deep_supervision) {
    for (size_t i = 0; i < heads_.size(); ++i) {
      const Tensor& d = decoder[i + 1];
      std::vector<int> factor;
      for (int a = 1; a <= config_.spatial_dims(); ++a) factor.push_back(static_cast<int>(x.dim(a) / d.dim(a)));
      out.push_back(ops::upsample_nearest(heads_[i]->forward(d), factor));
    }
  }
  return out;
}

}  // namespace unet::models
