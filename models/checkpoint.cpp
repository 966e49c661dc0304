// Checkpoint layout conversion and parameter matching.
#include "models/checkpoint.h"

#include <cstring>
#include <stdexcept>

namespace unet::models {
namespace {

bool is_conv_weight(const std::string& name, const Tensor& t) {
  return t.rank() >= 3 && name.size() >= 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
}

bool is_transposed(const std::string& name) { return name.find("transp_conv") != std::string::npos; }

}  // namespace

Tensor to_pytorch_layout(const std::string& name, const Tensor& t) {
  if (!is_conv_weight(name, t)) return t;
  int r = t.rank();
  std::vector<int> perm;
  if (is_transposed(name)) perm.push_back(r - 1), perm.push_back(0);  // [K, k.., C] -> [C, K, k..]
  else perm.push_back(0), perm.push_back(r - 1);                      // [K, k.., C] -> [K, C, k..]
  for (int i = 1; i < r - 1; ++i) perm.push_back(i);
  return permute_copy(t, perm);
}

Tensor from_pytorch_layout(const std::string& name, const Tensor& t) {
  if (!is_conv_weight(name, t)) return t;
  int r = t.rank();
  // PyTorch [A, B, k..] -> engine [K, k.., C]: conv A = K, B = C; transposed A = C, B = K.
  std::vector<int> perm{is_transposed(name) ? 1 : 0};
  for (int i = 2; i < r; ++i) perm.push_back(i);
  perm.push_back(is_transposed(name) ? 0 : 1);
  return permute_copy(t, perm);
}

void save_weights(const std::string& path, const Module& model, const io::Metadata& metadata) {
  io::NamedTensors out;
  for (auto& [name, p] : model.named_parameters()) out.emplace_back(name, to_pytorch_layout(name, p));
  io::write_safetensors(path, out, metadata);
}

io::SafetensorsContent read_weights(const std::string& path) { return io::read_safetensors(path); }

void load_weights(const io::SafetensorsContent& weights, Module& model, const std::string& path) {
  for (auto& [name, p] : model.named_parameters()) {
    const Tensor* found = nullptr;
    for (auto& [n, t] : weights.tensors)
      if (n == name) found = &t;
    if (!found) throw std::runtime_error(path + ": checkpoint has no tensor '" + name + "' that the model needs");
    Tensor t = from_pytorch_layout(name, *found);
    if (t.shape() != p.shape() || t.dtype() != p.dtype())
      throw std::runtime_error(path + ": tensor '" + name + "' is " + found->describe() + " (PyTorch layout), the model expects " +
                               to_pytorch_layout(name, p).describe());
    std::memcpy(p.raw(), t.raw(), p.nbytes());
  }
}

}  // namespace unet::models
