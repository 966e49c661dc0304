// Optimizer steps: the parameter slices, hyperparameters and per-step constants shared by the CPU
// (kernels/cpu/optim.h) and CUDA (kernels/cuda/optim.cuh) kernels, so the two cannot drift apart, and the table of
// entry points the engine dispatches through (one per backend, optim_kernels).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/stream.h"

namespace unet::kernels {

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

// The table takes the CUDA entry points' form: a step writes *nonfinite = 1 (and nothing else) when a gradient *
// inv_scale is inf or nan, else 0, in the backend's memory; workspace: optim_workspace_bytes(the slices' sizes) bytes
// of the backend's memory (0 on the CPU, which ignores it and the stream).
struct OptimKernels {
  size_t (*optim_workspace_bytes)(const int64_t* sizes, size_t count);
  void (*adam_step)(const AdamSlice* slices, size_t count, const AdamArgs& args, void* workspace, int* nonfinite,
                    cudaStream_t stream);
  void (*sgd_step)(const SgdSlice* slices, size_t count, const SgdArgs& args, void* workspace, int* nonfinite,
                   cudaStream_t stream);
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

}  // namespace unet::kernels
