// CPU optimizer kernels (CUDA twin: kernels/cuda/optim.cuh; shared slices and constants: kernels/optim.h): fused
// Adam / AdamW and SGD (momentum, Nesterov) steps over many parameters in one call, with gradient unscaling and an
// inf/nan check (one launch for all parameters rather than one per tensor).
// Each call first checks every (gradient * inv_scale) for inf/nan; if one is found nothing is written and the call
// returns false, so a mixed-precision step with an overflowed loss scale is skipped for all parameters alike.
// Otherwise one pass over each parameter reads the gradient and state and writes parameter and state.
// The arithmetic follows torch.optim (1.13, single-tensor path) operation by operation, in f32.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/optim.h"

namespace unet::kernels::cpu {

using kernels::AdamSlice;
using kernels::AdamArgs;
using kernels::AdamConsts;
using kernels::SgdSlice;
using kernels::SgdArgs;
using kernels::adam_consts;

// Returns false (and writes nothing) when any gradient * inv_scale is inf or nan.
bool adam_step(const AdamSlice* slices, size_t count, const AdamArgs& args);

// d = g + wd p; buf = first ? d : m buf + d; d = nesterov ? d + m buf : buf; p -= lr d  (momentum 0: p -= lr d).
// Returns false (and writes nothing) when any gradient * inv_scale is inf or nan.
bool sgd_step(const SgdSlice* slices, size_t count, const SgdArgs& args);

// True when every grads[i][0 .. sizes[i]) * inv_scale is finite. For callers that must agree on skipping across
// ranks before stepping (the distributed trainer all-reduces this flag).
bool all_finite(const float* const* grads, const int64_t* sizes, size_t count, float inv_scale);

// The table that the engine dispatches through (kernels/optim.h): these entry points adapted to its form (results in
// the caller's buffers), the stream ignored.
extern const OptimKernels optim_kernels;

}  // namespace unet::kernels::cpu
