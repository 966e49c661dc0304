// Model checkpoints as safetensors, loadable by PyTorch: parameter names of the module tree, convolution weights
// converted from the engine layout [K, kernel..., C] to PyTorch's [K, C, kernel...] (transposed convolutions, named
// "*transp_conv*", to [C, K, kernel...]). The model config, preprocessing plan and class labels go in the metadata.
// The training state (optimizer moments, step, loss scale, RNG) is a second safetensors file beside the weights.
#pragma once
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/module.h"
#include "io/dataset.h"
#include "io/safetensors.h"
#include "models/nnunet.h"
#include "models/unet2d.h"
#include "models/unet3plus.h"

namespace unet::models {

// Everything needed to rebuild a trained model and preprocess its inputs, stored in the weights' metadata.
struct ModelCard {
  std::string model = "dynunet";  // dynunet (net), unet2d (unet2d) or unet3plus (unet3plus)
  DynUNetConfig net;
  UNet2DConfig unet2d;
  UNet3PlusConfig unet3plus;
  std::vector<int> patch;               // training patch = inference window, per spatial axis
  std::vector<double> spacing;          // target spacing the model was trained at (z, y, x)
  io::NormalizationPlan normalization;  // per channel: z-score per case, or CT clip + global z-score
  std::map<int, std::string> labels;    // class index -> name
  int label_scale = 1;  // class c is written as the value c * label_scale (ISBI 2012: 255, its labels are 0 / 255)
  // How images are prepared: nnunet (crop, resample to `spacing`, the normalisation plan, sliding window) or dle_isbi
  // (DLE UNet_Medical's: x / 127.5 - 1, each slice resized to the network's output size and back; io/dle.h).
  std::string pipeline = "nnunet";
  // Every training case was one slice (ISBI 2012's pages, a dataset of 2D images): a volume of several slices is a
  // stack of such cases, each cropped, resampled and normalised by itself (Predictor::segment). False in cards
  // written before it.
  bool slice_cases = false;
  int in_channels() const {
    return model == "unet2d" ? unet2d.in_channels : model == "unet3plus" ? unet3plus.in_channels : net.in_channels;
  }
  // Adjacent slices a 2D network takes in as channels: Z of a patch [Z, H, W] (UNet 3+ on DLE's three CT slices),
  // else 1.
  int slices() const { return model == "unet3plus" && patch.size() == 3 ? patch[0] : 1; }
  // Channels of the images the model segments: in_channels() counts each of slices() once.
  int image_channels() const { return in_channels() / slices(); }
  int out_channels() const {
    return model == "unet2d" ? unet2d.out_channels : model == "unet3plus" ? unet3plus.out_channels : net.out_channels;
  }
};

io::Metadata card_to_metadata(const ModelCard& card);
// A training checkpoint (checkpoint.safetensors) where a model was expected: the caller's argument is at fault.
struct NotAModelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Throws std::runtime_error naming `path` and the key when the metadata is missing or malformed, NotAModelError for
// a training checkpoint.
ModelCard card_from_metadata(const io::Metadata& metadata, const std::string& path);

// Engine layout <-> PyTorch layout for one named parameter (identity for non-convolution tensors).
Tensor to_pytorch_layout(const std::string& name, const Tensor& t);
Tensor from_pytorch_layout(const std::string& name, const Tensor& t);

// A NaN or infinite weight makes every output it reaches NaN: the predictions would be garbage with no error, so a
// checkpoint holding one (a diverged run, a damaged file) is refused: std::runtime_error naming `path` and the tensor
// `name`. `t` is a tensor read from the file (on the cpu); tensors of other than float types pass.
void check_finite(const std::string& path, const std::string& name, const Tensor& t);
// How many values of a float tensor (any device) are NaN or infinite, and where the first is (-1: none); 0 for
// other types.
int64_t count_non_finite(const Tensor& t, int64_t* first = nullptr);

void save_weights(const std::string& path, const Module& model, const io::Metadata& metadata);
// Reads only the metadata and tensors of a weights file (to build the model before loading).
io::SafetensorsContent read_weights(const std::string& path);
// Copies the tensors of `weights` into the model's parameters and buffers; each must be present with its shape and
// finite values (a NaN or infinite weight is an error naming the tensor).
// Extra tensors (e.g. deep supervision heads when they are not used) are ignored, like strict=False in PyTorch.
void load_weights(const io::SafetensorsContent& weights, Module& model, const std::string& path);

}  // namespace unet::models
