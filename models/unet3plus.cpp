// UNet 3+: the module tree mirrors the PyTorch names of models/unet3plus.h. Level l has H / 2^l rows; the decoder map
// of level 4 is the bottom encoder map.
#include "models/unet3plus.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"

namespace unet::models {
namespace {

constexpr int kLevels = 5;

// A 3x3 (or 1x1) convolution with bias and "same" padding; weight [out, k, k, in] (PyTorch's Conv2d with the
// channels moved last).
struct Conv : Module {
  Conv(int in, int out, int kernel) : kernel(kernel) {
    weight = register_parameter("weight", Tensor::zeros({out, kernel, kernel, in}));
    bias = register_parameter("bias", Tensor::zeros({out}));
  }
  Tensor forward(const Tensor& x) const { return ops::conv(x, weight, bias, {1, 1}, {kernel / 2, kernel / 2}); }
  // Keras' he_normal: N(0, s) truncated at 2 s (redrawn beyond), s = sqrt(2 / fan_in) / 0.87962566103423978.
  void init_he_normal(Rng& rng) {
    const double fan_in = double(kernel) * kernel * double(weight.dim(-1));
    const double s = std::sqrt(2.0 / fan_in) / 0.87962566103423978;
    float* w = weight.data<float>();
    for (int64_t i = 0; i < weight.numel(); ++i) {
      double v = rng.normal();
      while (std::abs(v) > 2.0) v = rng.normal();
      w[i] = static_cast<float>(v * s);
    }
    std::fill_n(bias.data<float>(), bias.numel(), 0.f);
  }
  // Keras' default glorot_uniform: U(-l, l), l = sqrt(6 / (fan_in + fan_out)); zero biases.
  void init_glorot_uniform(Rng& rng) {
    const double taps = double(kernel) * kernel;
    const double l = std::sqrt(6.0 / (taps * double(weight.dim(-1)) + taps * double(weight.dim(0))));
    float* w = weight.data<float>();
    for (int64_t i = 0; i < weight.numel(); ++i) w[i] = static_cast<float>(rng.uniform(-l, l));
    std::fill_n(bias.data<float>(), bias.numel(), 0.f);
  }
  Tensor weight, bias;
  int kernel;
};

// torch.nn.BatchNorm2d's state: weight (gamma), bias (beta), running_mean, running_var; followed by ReLU in one op.
struct BatchNorm : Module {
  explicit BatchNorm(int channels) {
    weight = register_parameter("weight", Tensor::full({channels}, 1.f));
    bias = register_parameter("bias", Tensor::zeros({channels}));
    running_mean = register_buffer("running_mean", Tensor::zeros({channels}));
    running_var = register_buffer("running_var", Tensor::full({channels}, 1.f));
  }
  // o: training or not, Keras' eps and momentum, ReLU, the SyncBatchNorm comm (UNet3Plus::forward makes it).
  Tensor forward_relu(const Tensor& x, const ops::BatchNormOptions& o) const {
    return ops::batch_norm(x, weight, bias, running_mean, running_var, o);
  }
  void reset() {  // on the host, as every initialize (Module::to moves the model afterwards)
    for (Tensor* t : {&weight, &bias, &running_mean, &running_var})
      std::fill_n(t->data<float>(), t->numel(), t == &weight || t == &running_var ? 1.f : 0.f);
  }
  Tensor weight, bias, running_mean, running_var;
};

// conv -> bn -> ReLU, named "conv" and "bn" (the decoder's branches and fusions).
struct ConvBlock : Module {
  ConvBlock(int in, int out)
      : conv(register_module("conv", std::make_shared<Conv>(in, out, 3))),
        bn(register_module("bn", std::make_shared<BatchNorm>(out))) {}
  Tensor forward(const Tensor& x, const ops::BatchNormOptions& o) const {
    return bn->forward_relu(conv->forward(x), o);
  }
  std::shared_ptr<Conv> conv;
  std::shared_ptr<BatchNorm> bn;
};

// An encoder level: conv1 -> bn1 -> ReLU -> conv2 -> bn2 -> ReLU.
struct EncoderLevel : Module {
  EncoderLevel(int in, int out)
      : conv1(register_module("conv1", std::make_shared<Conv>(in, out, 3))),
        bn1(register_module("bn1", std::make_shared<BatchNorm>(out))),
        conv2(register_module("conv2", std::make_shared<Conv>(out, out, 3))),
        bn2(register_module("bn2", std::make_shared<BatchNorm>(out))) {}
  Tensor forward(const Tensor& x, const ops::BatchNormOptions& o) const {
    return bn2->forward_relu(conv2->forward(bn1->forward_relu(conv1->forward(x), o)), o);
  }
  std::shared_ptr<Conv> conv1;
  std::shared_ptr<BatchNorm> bn1;
  std::shared_ptr<Conv> conv2;
  std::shared_ptr<BatchNorm> bn2;
};

// A decoder level: branch.{0..4} (one per source level) and fuse.
struct DecoderLevel : Module {
  DecoderLevel(const std::vector<int>& filters) {
    const int cat = filters[0];
    for (int j = 0; j < kLevels; ++j) {
      // A branch reads the encoder map of level j (j <= this level) or the decoder map of level j (deeper; level 4's
      // is the encoder's).
      branch.push_back(
          register_module("branch." + std::to_string(j), std::make_shared<ConvBlock>(filters[size_t(j)], cat)));
    }
    fuse = register_module("fuse", std::make_shared<ConvBlock>(kLevels * cat, kLevels * cat));
  }
  std::vector<std::shared_ptr<ConvBlock>> branch;
  std::shared_ptr<ConvBlock> fuse;
};

}  // namespace

struct UNet3Plus::Parts {
  std::vector<std::shared_ptr<EncoderLevel>> encoder;
  std::vector<std::shared_ptr<DecoderLevel>> decoder;  // decoder[d] for d = 0..3 (registered as decoder.3 first)
  std::shared_ptr<Conv> head;
  std::vector<std::shared_ptr<Conv>> ds_heads;  // levels 1..4
  std::shared_ptr<Conv> cgm;                    // the classification-guided module's 1x1 convolution
};

UNet3Plus::UNet3Plus(const UNet3PlusConfig& config) : config_(config), parts_(std::make_shared<Parts>()) {
  if (config.filters.size() != kLevels)
    throw std::invalid_argument("UNet3Plus: expected 5 filter counts (the encoder levels), got " +
                                std::to_string(config.filters.size()));
  for (int f : config.filters)
    if (f < 1) throw std::invalid_argument("UNet3Plus: filter counts must be >= 1, got " + std::to_string(f));
  if (config.in_channels < 1 || config.out_channels < 1)
    throw std::invalid_argument("UNet3Plus: in_channels and out_channels must be >= 1");
  const std::vector<int>& f = config.filters;
  int in = config.in_channels;
  for (int i = 0; i < kLevels; ++i) {
    parts_->encoder.push_back(
        register_module("encoder." + std::to_string(i), std::make_shared<EncoderLevel>(in, f[size_t(i)])));
    in = f[size_t(i)];
  }
  // Every decoder level outputs 5 * filters[0] channels, which is what the deeper decoder maps feed the branches.
  std::vector<int> sources = f;
  for (int j = 1; j < kLevels - 1; ++j) sources[size_t(j)] = kLevels * f[0];
  parts_->decoder.resize(kLevels - 1);
  for (int d = kLevels - 2; d >= 0; --d) {
    std::vector<int> branch_in(f.begin(), f.begin() + d + 1);  // encoder maps up to this level
    for (int j = d + 1; j < kLevels; ++j) branch_in.push_back(sources[size_t(j)]);
    parts_->decoder[size_t(d)] =
        register_module("decoder." + std::to_string(d), std::make_shared<DecoderLevel>(branch_in));
  }
  parts_->head = register_module("head", std::make_shared<Conv>(kLevels * f[0], config.out_channels, 3));
  if (config.deep_supervision)
    for (int k = 1; k < kLevels; ++k)
      parts_->ds_heads.push_back(register_module("ds_heads." + std::to_string(k - 1),
                                                 std::make_shared<Conv>(sources[size_t(k)], config.out_channels, 3)));
  if (config.cgm) parts_->cgm = register_module("cgm", std::make_shared<Conv>(f[kLevels - 1], 2, 1));
}

std::vector<Tensor> UNet3Plus::forward(const Tensor& x, bool training, uint64_t seed) const {
  if (x.rank() != 4 || x.dim(-1) != config_.in_channels || x.dim(1) < kDivisor || x.dim(2) < kDivisor ||
      x.dim(1) % kDivisor != 0 || x.dim(2) % kDivisor != 0)
    throw std::invalid_argument("UNet3Plus: input " + x.describe() + " must be [N, H, W, " +
                                std::to_string(config_.in_channels) + "] with H and W multiples of 16 (320 in DLE)");
  ops::BatchNormOptions c;
  c.training = training;
  c.momentum = config_.bn_momentum;
  c.eps = config_.bn_eps;
  c.relu = true;
  c.comm = comm_;
  std::vector<Tensor> level(kLevels);  // encoder maps, then replaced by the decoder maps from level 3 down
  Tensor h = x;
  for (int i = 0; i < kLevels; ++i) {
    if (i > 0) h = ops::max_pool(h, {2, 2});
    h = parts_->encoder[size_t(i)]->forward(h, c);
    level[size_t(i)] = h;
  }
  std::vector<Tensor> encoder = level;
  for (int d = kLevels - 2; d >= 0; --d) {
    const DecoderLevel& dec = *parts_->decoder[size_t(d)];
    const std::vector<int64_t> size = {encoder[size_t(d)].dim(1), encoder[size_t(d)].dim(2)};
    std::vector<Tensor> parts;
    for (int j = 0; j < kLevels; ++j) {
      Tensor src;
      if (j < d) {
        const int window = 1 << (d - j);
        src = ops::max_pool(encoder[size_t(j)], {window, window});
      } else if (j == d) {
        src = encoder[size_t(j)];
      } else {
        src = ops::upsample_bilinear(level[size_t(j)], size, false);
      }
      parts.push_back(dec.branch[size_t(j)]->forward(src, c));
    }
    level[size_t(d)] = dec.fuse->forward(ops::concat_channels(parts), c);
  }
  std::vector<Tensor> out = {parts_->head->forward(level[0])};
  if (training)
    for (size_t k = 0; k < parts_->ds_heads.size(); ++k)
      out.push_back(ops::upsample_bilinear(parts_->ds_heads[k]->forward(level[k + 1]), {x.dim(1), x.dim(2)}, false));
  if (parts_->cgm) {
    // The classification-guided module: dropout 0.5 on the bottom encoder map, a 1x1 convolution to two logits
    // (absent, present) per position, the global maximum; the argmax gates every segmentation output.
    const Tensor& bottom = encoder[kLevels - 1];
    const Tensor z = parts_->cgm->forward(training ? ops::dropout(bottom, 0.5f, seed) : bottom);
    const Tensor cls = ops::cast(ops::max_pool(z, {int(z.dim(1)), int(z.dim(2))}).reshape({z.dim(0), 2}), DType::f32);
    Tensor mask;
    {
      autograd::NoGradGuard no_grad;
      mask = ops::presence_mask(cls.detach());
    }
    for (Tensor& o : out) o = ops::scale_samples(o, mask);
    if (training) out.push_back(cls);
  }
  return out;
}

void UNet3Plus::initialize(uint64_t seed) {
  Rng rng(seed);
  auto conv = [&](Conv& c) { c.init_he_normal(rng); };
  for (const auto& e : parts_->encoder) {
    conv(*e->conv1);
    conv(*e->conv2);
    e->bn1->reset();
    e->bn2->reset();
  }
  for (int d = kLevels - 2; d >= 0; --d) {
    const DecoderLevel& dec = *parts_->decoder[size_t(d)];
    for (const auto& b : dec.branch) {
      conv(*b->conv);
      b->bn->reset();
    }
    conv(*dec.fuse->conv);
    dec.fuse->bn->reset();
  }
  conv(*parts_->head);
  for (const auto& h : parts_->ds_heads) conv(*h);
  if (parts_->cgm) parts_->cgm->init_glorot_uniform(rng);
}

}  // namespace unet::models
