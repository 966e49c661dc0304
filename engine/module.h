// Modules own named parameters, buffers (state that is not trained by gradients: batch norm's running statistics) and
// child modules; names join with dots as in PyTorch ("downsamples.0.conv1.conv.weight"), which is what checkpoints use.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace unet {

class Module {
 public:
  virtual ~Module() = default;
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;  // depth-first, registration order
  std::vector<Tensor> parameters() const;
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;  // depth-first, registration order
  // Parameters, then buffers: what a PyTorch state_dict holds, and what checkpoints save and load.
  std::vector<std::pair<std::string, Tensor>> named_state() const;
  int64_t parameter_count() const;
  void zero_grad();  // drops every parameter's gradient
  // Moves every parameter and buffer to device d in place (as torch.nn.Module.to): the parameter tensors keep their
  // identity, name and requires_grad, their storage is replaced by a copy on d, and gradients are dropped. Optimizers
  // hold the same tensors, but create their state on the parameters' device: move the model before building the
  // optimizer.
  void to(Device d);

 protected:
  // Marks t as a leaf requiring grad, names it, and returns it.
  Tensor register_parameter(const std::string& name, Tensor t);
  // Names t as a buffer (no gradient; updated in place by the module's forward) and returns it.
  Tensor register_buffer(const std::string& name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }

 private:
  void collect(const std::string& prefix, bool buffers, std::vector<std::pair<std::string, Tensor>>& out) const;
  std::vector<std::pair<std::string, Tensor>> params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

}  // namespace unet
