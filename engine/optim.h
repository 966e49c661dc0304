// Optimizers: AdamW (decoupled decay, the DLE nnU-Net default), Adam (L2 decay), SGD with
// (Nesterov) momentum (the MIC-DKFZ nnU-Net default). Each follows torch.optim (1.13) so that training curves and
// checkpoints carry over; the update itself is one fused kernel call over all parameters (kernels/cpu/optim.h, kernels/cuda/optim.cuh).
// step(inv_scale) unscales gradients on the fly and skips the whole step when any gradient is inf/nan, which is what
// dynamic loss scaling needs. State is created lazily on a parameter's first step, as in torch, and is exposed by
// name ("exp_avg.<i>", "exp_avg_sq.<i>", "step.<i>", "momentum_buffer.<i>", i = parameter index) for checkpoints.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace unet {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Updates every parameter that has a gradient, using gradient * inv_scale; parameters without a gradient are
  // skipped (their state is untouched). Returns false, changing nothing at all (parameters, state, step count),
  // when any gradient * inv_scale is inf or nan. Throws std::invalid_argument for a gradient of the wrong shape/dtype.
  bool step(float inv_scale = 1.0f);
  void zero_grad();  // drops every parameter's gradient (torch's set_to_none)

  double lr() const { return lr_; }
  void set_lr(double lr);
  int64_t step_count() const { return step_count_; }  // step() calls that were not skipped
  void set_step_count(int64_t n) { step_count_ = n; }
  const std::vector<Tensor>& params() const { return params_; }
  virtual const char* name() const = 0;

  // Named state for checkpoints, in parameter order: the live state tensors (per-parameter step counts as f32 [1]
  // copies, as torch stores them). Only parameters that have taken a step have state.
  std::vector<std::pair<std::string, Tensor>> state() const;
  // Restores one entry by name (values copied; creates the entry if the parameter has none yet).
  // Throws std::invalid_argument for an unknown name or a shape that does not match.
  void set_state(const std::string& name, const Tensor& value);
  // The names of the per-parameter state tensors ("exp_avg", ...): state() names them KIND.INDEX.
  const std::vector<std::string>& state_kinds() const { return kinds_; }

 protected:
  // kinds: names of the per-parameter state tensors shaped like the parameter; with_param_steps: whether the
  // per-parameter step count is part of the state ("step.<i>").
  Optimizer(std::vector<Tensor> params, double lr, std::vector<std::string> kinds, bool with_param_steps);

  // Runs the fused update for the parameters listed (all have a valid gradient). Must change nothing and return false
  // when the kernel reports a non-finite gradient.
  virtual bool apply(const std::vector<size_t>& with_grad, float inv_scale) = 0;

  // State tensor `kind` of parameter i, created as zeros if missing; *created tells whether it was.
  Tensor& state_tensor(size_t kind, size_t i, bool* created);

  std::vector<Tensor> params_;
  std::vector<std::string> kinds_;
  std::vector<std::vector<Tensor>> state_;  // [kind][param]; undefined until the parameter's first step
  std::vector<int64_t> param_steps_;        // steps taken by each parameter
  bool with_param_steps_;
  double lr_;
  int64_t step_count_ = 0;
};

// Defaults: DLE nnU-Net (lr 8e-4, betas 0.9 / 0.999, eps 1e-8, weight decay 1e-4), which DLE uses for Adam too.
struct AdamOptions {
  double lr = 8e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-4;
};

// The Adam update with bias corrections, shared by AdamW and Adam, which differ only in how weight decay enters.
class AdamBase : public Optimizer {
 public:
  const AdamOptions& options() const { return options_; }

 protected:
  AdamBase(std::vector<Tensor> params, AdamOptions options, bool decoupled);
  bool apply(const std::vector<size_t>& with_grad, float inv_scale) override;

 private:
  AdamOptions options_;
  bool decoupled_;
};

// torch.optim.AdamW: p *= 1 - lr wd, then the Adam update.
class AdamW final : public AdamBase {
 public:
  explicit AdamW(std::vector<Tensor> params, AdamOptions options = {}) : AdamBase(std::move(params), options, true) {}
  const char* name() const override { return "AdamW"; }
};

// torch.optim.Adam: weight decay as L2 (g += wd p), then the Adam update.
class Adam final : public AdamBase {
 public:
  explicit Adam(std::vector<Tensor> params, AdamOptions options = {}) : AdamBase(std::move(params), options, false) {}
  const char* name() const override { return "Adam"; }
};

// Defaults: MIC-DKFZ nnU-Net (lr 1e-2, momentum 0.99, Nesterov, weight decay 3e-5).
struct SgdOptions {
  double lr = 1e-2;
  double momentum = 0.99;
  double weight_decay = 3e-5;
  bool nesterov = true;
};

// torch.optim.SGD (dampening 0): d = g + wd p; buf = m buf + d (buf = d on the first step);
// d = nesterov ? d + m buf : buf; p -= lr d.
class SGD final : public Optimizer {
 public:
  explicit SGD(std::vector<Tensor> params, SgdOptions options = {});
  const char* name() const override { return "SGD"; }
  const SgdOptions& options() const { return options_; }

 protected:
  bool apply(const std::vector<size_t>& with_grad, float inv_scale) override;

 private:
  SgdOptions options_;
};

}  // namespace unet
