// Module parameter and buffer registry.
#include "engine/module.h"

namespace unet {

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  for (auto& [n, p] : params_) check_arg(n != name, "parameter '" + name + "' registered twice");
  t.set_requires_grad(true);
  t.set_name(name);
  params_.emplace_back(name, t);
  return t;
}

Tensor Module::register_buffer(const std::string& name, Tensor t) {
  for (auto& [n, b] : buffers_) check_arg(n != name, "buffer '" + name + "' registered twice");
  t.set_name(name);
  buffers_.emplace_back(name, t);
  return t;
}

void Module::collect(const std::string& prefix, bool buffers, std::vector<std::pair<std::string, Tensor>>& out) const {
  for (auto& [n, p] : buffers ? buffers_ : params_) out.emplace_back(prefix + n, p);
  for (auto& [n, m] : children_) m->collect(prefix + n + ".", buffers, out);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", false, out);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", true, out);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_state() const {
  std::vector<std::pair<std::string, Tensor>> out = named_parameters();
  collect("", true, out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, p] : named_parameters()) out.push_back(p);
  return out;
}

int64_t Module::parameter_count() const {
  int64_t n = 0;
  for (auto& [name, p] : named_parameters()) n += p.numel();
  return n;
}

void Module::to(Device d) {
  for (auto& [n, p] : named_state()) {
    if (p.device() == d) continue;
    Tensor moved = p.to(d);
    p.impl().storage = moved.impl().storage;
    p.impl().device = d;
    p.impl().grad.reset();
  }
}

void Module::zero_grad() {
  for (auto& [n, p] : named_parameters()) p.impl().grad.reset();
}

}  // namespace unet
