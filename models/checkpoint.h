// Model checkpoints as safetensors, loadable by PyTorch: parameter names of the module tree, convolution weights
// converted from the engine layout [K, kernel..., C] to PyTorch's [K, C, kernel...] (transposed convolutions, named
// "*transp_conv*", to [C, K, kernel...]). The model config, preprocessing plan and class labels go in the metadata.
// The training state (optimizer moments, step, loss scale, RNG) is a second safetensors file beside the weights.
#pragma once
#include <string>

#include "engine/module.h"
#include "io/safetensors.h"

namespace unet::models {

// Engine layout <-> PyTorch layout for one named parameter (identity for non-convolution tensors).
Tensor to_pytorch_layout(const std::string& name, const Tensor& t);
Tensor from_pytorch_layout(const std::string& name, const Tensor& t);

void save_weights(const std::string& path, const Module& model, const io::Metadata& metadata);
// Reads only the metadata and tensors of a weights file (to build the model before loading).
io::SafetensorsContent read_weights(const std::string& path);
// Copies the tensors of `weights` into the model's parameters; every parameter must be present with its shape.
// Extra tensors (e.g. deep supervision heads when they are not used) are ignored, like strict=False in PyTorch.
void load_weights(const io::SafetensorsContent& weights, Module& model, const std::string& path);

}  // namespace unet::models
