// Optimizer kernels: fused Adam / AdamW and SGD (momentum, Nesterov) steps over many parameters in one call, with
// gradient unscaling and an inf/nan check (one launch for all parameters rather than one per tensor).
// Each call first checks every (gradient * inv_scale) for inf/nan; if one is found nothing is written and the call
// returns false, so a mixed-precision step with an overflowed loss scale is skipped for all parameters alike.
// Otherwise one pass over each parameter reads the gradient and state and writes parameter and state.
// The arithmetic follows torch.optim (1.13, single-tensor path) operation by operation, in f32.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace unet::kernels::cpu {

// One parameter of an Adam/AdamW step. exp_avg / exp_avg_sq are updated in place; step is this parameter's step
// number after the increment (1 on its first step), which sets its bias corrections.
struct AdamSlice {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t n;
  int64_t step;
};

// Hyperparameters are double, as torch keeps them in Python floats: the bias corrections and step size are derived
// in double and rounded to f32 once, as torch does.
struct AdamArgs {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled;   // true: AdamW (p *= 1 - lr wd before the update); false: Adam (g += wd p)
  float inv_scale;  // gradients are multiplied by this before use (loss-scale unscaling); 1 for none
};

// The per-parameter constants of one Adam/AdamW update, derived in double once per step exactly as torch.optim does
// and rounded to float. The CPU and CUDA kernels both take them from here, so they cannot drift apart.
struct AdamConsts {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, inv_scale;
  float decay;          // AdamW: 1 - lr wd
  float wd;             // Adam: L2 coefficient
  float neg_step_size;  // -lr / (1 - beta1^step)
  float bc2_sqrt;       // sqrt(1 - beta2^step)
  bool decoupled;
};

inline AdamConsts adam_consts(const AdamArgs& a, int64_t step_count) {
  const double step = static_cast<double>(step_count);
  return AdamConsts{static_cast<float>(a.beta1),
                    static_cast<float>(1.0 - a.beta1),
                    static_cast<float>(a.beta2),
                    static_cast<float>(1.0 - a.beta2),
                    static_cast<float>(a.eps),
                    a.inv_scale,
                    static_cast<float>(1.0 - a.lr * a.weight_decay),
                    static_cast<float>(a.weight_decay),
                    static_cast<float>(-(a.lr / (1.0 - std::pow(a.beta1, step)))),
                    static_cast<float>(std::sqrt(1.0 - std::pow(a.beta2, step))),
                    a.decoupled};
}

// Returns false (and writes nothing) when any gradient * inv_scale is inf or nan.
bool adam_step(const AdamSlice* slices, size_t count, const AdamArgs& args);

// One parameter of an SGD step. momentum_buffer may be null when momentum is 0. first: the buffer holds nothing yet
// and is set to the (decayed) gradient, as torch.optim.SGD does on a parameter's first step.
struct SgdSlice {
  float* param;
  const float* grad;
  float* momentum_buffer;
  int64_t n;
  bool first;
};

struct SgdArgs {
  double lr, momentum, weight_decay;
  bool nesterov;
  float inv_scale;
};

// d = g + wd p; buf = first ? d : m buf + d; d = nesterov ? d + m buf : buf; p -= lr d  (momentum 0: p -= lr d).
// Returns false (and writes nothing) when any gradient * inv_scale is inf or nan.
bool sgd_step(const SgdSlice* slices, size_t count, const SgdArgs& args);

// True when every grads[i][0 .. sizes[i]) * inv_scale is finite. For callers that must agree on skipping across
// ranks before stepping (the distributed trainer all-reduces this flag).
bool all_finite(const float* const* grads, const int64_t* sizes, size_t count, float inv_scale);

}  // namespace unet::kernels::cpu
