// Optimizer bookkeeping (parameter validation, lazy state, named state for checkpoints) around the fused kernels.
#include "engine/optim.h"

#include <cmath>
#include <cstring>
#include <set>

#include "engine/backend.h"
#include "engine/device.h"
#include "kernels/optim.h"

namespace unet {

namespace {
std::string param_label(const Tensor& p, size_t i) {
  return "parameter " + std::to_string(i) + (p.name().empty() ? "" : " '" + p.name() + "'") + " " + p.describe();
}

// Runs a fused step (OptimKernels::adam_step or sgd_step of device d, passed as `step`) over `slices`: allocates the
// step's workspace and nonfinite flag on d, and returns true when it stepped.
template <class Slice, class Args>
bool fused_step(Device d, void (*step)(const Slice*, size_t, const Args&, void*, int*, cudaStream_t),
                const std::vector<Slice>& slices, const Args& args) {
  std::vector<int64_t> sizes;
  for (const Slice& s : slices) sizes.push_back(s.n);
  const size_t work_bytes = backend::kernels_for(d).optim.optim_workspace_bytes(sizes.data(), sizes.size());
  Tensor work = Tensor::empty({static_cast<int64_t>(work_bytes)}, DType::u8, d);
  Tensor flag = Tensor::zeros({1}, DType::i32, d);
  step(slices.data(), slices.size(), args, work.raw(), flag.data<int32_t>(), device::default_stream(d));
  int nonfinite = 0;
  device::copy(&nonfinite, Device::cpu, flag.raw(), d, sizeof nonfinite);
  return nonfinite == 0;
}
}  // namespace

Optimizer::Optimizer(std::vector<Tensor> params, double lr, std::vector<std::string> kinds, bool with_param_steps)
    : params_(std::move(params)),
      kinds_(std::move(kinds)),
      state_(kinds_.size(), std::vector<Tensor>(params_.size())),
      param_steps_(params_.size(), 0),
      with_param_steps_(with_param_steps),
      lr_(lr) {
  std::set<const TensorImpl*> seen;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    check_arg(p.defined(), "optimizer: parameter " + std::to_string(i) + " is undefined");
    check_arg(p.dtype() == DType::f32, "optimizer: " + param_label(p, i) + " must be f32");
    check_arg(p.device() == params_[0].device(),
              "optimizer: " + param_label(p, i) + " is not on the device of parameter 0 (" +
                  device_name(params_[0].device()) + ")");
    check_arg(p.is_leaf() && p.requires_grad(), "optimizer: " + param_label(p, i) + " is not a leaf requiring grad");
    check_arg(seen.insert(p.impl_ptr().get()).second, "optimizer: " + param_label(p, i) + " is listed twice");
  }
  set_lr(lr);
}

void Optimizer::set_lr(double lr) {
  check_arg(std::isfinite(lr) && lr >= 0.0, "optimizer: learning rate " + std::to_string(lr) + " is invalid");
  lr_ = lr;
}

bool Optimizer::step(float inv_scale) {
  std::vector<size_t> with_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor g = params_[i].grad();
    if (!g.defined()) continue;
    check_arg(g.shape() == params_[i].shape() && g.dtype() == DType::f32 && g.device() == params_[i].device(),
              "optimizer step: gradient " + g.describe() + " does not match " + param_label(params_[i], i));
    with_grad.push_back(i);
  }
  if (!apply(with_grad, inv_scale)) return false;
  for (size_t i : with_grad) ++param_steps_[i];
  ++step_count_;
  return true;
}

void Optimizer::zero_grad() {
  for (Tensor& p : params_) p.impl().grad.reset();
}

Tensor& Optimizer::state_tensor(size_t kind, size_t i, bool* created) {
  Tensor& t = state_[kind][i];
  *created = !t.defined();
  if (*created) t = Tensor::zeros(params_[i].shape(), DType::f32, params_[i].device());
  return t;
}

std::vector<std::pair<std::string, Tensor>> Optimizer::state() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (size_t k = 0; k < kinds_.size(); ++k)
      if (state_[k][i].defined()) out.emplace_back(kinds_[k] + "." + std::to_string(i), state_[k][i]);
    if (with_param_steps_ && param_steps_[i] > 0)
      out.emplace_back("step." + std::to_string(i), Tensor::full({1}, static_cast<float>(param_steps_[i])));
  }
  return out;
}

void Optimizer::set_state(const std::string& name, const Tensor& value) {
  size_t dot = name.rfind('.');
  check_arg(dot != std::string::npos && dot + 1 < name.size(),
            std::string(this->name()) + " set_state: bad state name '" + name + "'");
  std::string kind = name.substr(0, dot), index = name.substr(dot + 1);
  size_t i = 0;
  bool numeric = index.find_first_not_of("0123456789") == std::string::npos && index.size() < 10;
  if (numeric) i = std::stoul(index);
  check_arg(numeric && i < params_.size(), std::string(this->name()) + " set_state: '" + name +
                                               "' names no parameter (there are " + std::to_string(params_.size()) +
                                               ")");
  check_arg(value.defined() && value.dtype() == DType::f32,
            std::string(this->name()) + " set_state: '" + name + "' must be an f32 tensor");
  if (with_param_steps_ && kind == "step") {
    check_arg(value.numel() == 1,
              std::string(this->name()) + " set_state: '" + name + "' must have one element, got " + value.describe());
    float s = value.item();
    check_arg(s >= 0 && s == std::floor(s),
              std::string(this->name()) + " set_state: '" + name + "' = " + std::to_string(s) + " is not a step count");
    param_steps_[i] = static_cast<int64_t>(s);
    return;
  }
  for (size_t k = 0; k < kinds_.size(); ++k) {
    if (kinds_[k] != kind) continue;
    check_arg(value.shape() == params_[i].shape(), std::string(this->name()) + " set_state: '" + name + "' is " +
                                                       value.describe() + ", expected the shape of " +
                                                       param_label(params_[i], i));
    bool created;
    Tensor& t = state_tensor(k, i, &created);
    device::copy(t.raw(), t.device(), value.raw(), value.device(), value.nbytes());
    return;
  }
  check_arg(false, std::string(this->name()) + " set_state: unknown state kind '" + kind + "'");
}

// ---- Adam / AdamW ----

AdamBase::AdamBase(std::vector<Tensor> params, AdamOptions options, bool decoupled)
    : Optimizer(std::move(params), options.lr, {"exp_avg", "exp_avg_sq"}, true),
      options_(options),
      decoupled_(decoupled) {
  check_arg(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1,
            std::string(decoupled ? "AdamW" : "Adam") + ": betas must lie in [0, 1)");
  check_arg(options.eps >= 0 && options.weight_decay >= 0,
            std::string(decoupled ? "AdamW" : "Adam") + ": eps and weight decay must be >= 0");
}

bool AdamBase::apply(const std::vector<size_t>& with_grad, float inv_scale) {
  std::vector<kernels::AdamSlice> slices;
  std::vector<std::pair<size_t, size_t>> created;  // (kind, param) made for this step, dropped again if it is skipped
  for (size_t i : with_grad) {
    bool c0, c1;
    Tensor& m = state_tensor(0, i, &c0);
    Tensor& v = state_tensor(1, i, &c1);
    if (c0) created.emplace_back(0, i);
    if (c1) created.emplace_back(1, i);
    slices.push_back({params_[i].data<float>(), params_[i].grad().data<float>(), m.data<float>(), v.data<float>(),
                      params_[i].numel(), param_steps_[i] + 1});
  }
  kernels::AdamArgs args{lr_,        options_.beta1, options_.beta2, options_.eps, options_.weight_decay,
                         decoupled_, inv_scale};
  const Device dev = params_.empty() ? Device::cpu : params_[0].device();
  bool ok = fused_step(dev, backend::kernels_for(dev).optim.adam_step, slices, args);
  if (!ok)
    for (auto [k, i] : created) state_[k][i] = Tensor();
  return ok;
}

// ---- SGD ----

SGD::SGD(std::vector<Tensor> params, SgdOptions options)
    : Optimizer(std::move(params), options.lr, {"momentum_buffer"}, false), options_(options) {
  check_arg(options.momentum >= 0 && options.weight_decay >= 0, "SGD: momentum and weight decay must be >= 0");
  check_arg(!options.nesterov || options.momentum > 0, "SGD: Nesterov momentum requires momentum > 0");
}

bool SGD::apply(const std::vector<size_t>& with_grad, float inv_scale) {
  const bool momentum = options_.momentum != 0.0;
  std::vector<kernels::SgdSlice> slices;
  std::vector<size_t> created;
  for (size_t i : with_grad) {
    float* buf = nullptr;
    bool first = false;
    if (momentum) {
      Tensor& b = state_tensor(0, i, &first);
      if (first) created.push_back(i);
      buf = b.data<float>();
    }
    slices.push_back({params_[i].data<float>(), params_[i].grad().data<float>(), buf, params_[i].numel(), first});
  }
  kernels::SgdArgs args{lr_, options_.momentum, options_.weight_decay, options_.nesterov, inv_scale};
  const Device dev = params_.empty() ? Device::cpu : params_[0].device();
  bool ok = fused_step(dev, backend::kernels_for(dev).optim.sgd_step, slices, args);
  if (!ok)
    for (size_t i : created) state_[0][i] = Tensor();
  return ok;
}

}  // namespace unet
