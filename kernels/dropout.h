// Inverted dropout whose mask is a function of (seed, element index) alone, so the forward pass and the backward pass
// recompute it instead of storing it, and every backend drops the same elements: element i is kept when
// dropout_keeps(seed, i, p) and then scaled by 1 / (1 - p), otherwise 0. The table of entry points the engine
// dispatches through, one per backend (kernels::cpu::dropout_kernels in kernels/cpu/dropout.h,
// kernels::cuda::dropout_kernels in kernels/cuda/dropout.cuh).
#pragma once
#include <cstdint>

#include "kernels/common/counter_random.h"
#include "kernels/common/dtype.h"
#include "kernels/common/host_device.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

// kernels::counter_hash(seed, i) (kernels/common/counter_random.h); its top 24 bits as a uniform u in [0, 1); kept
// when u >= p.
UNET_HOST_DEVICE inline bool dropout_keeps(uint64_t seed, uint64_t i, float p) {
  return static_cast<float>(counter_hash(seed, i) >> 40) * (1.0f / 16777216.0f) >= p;
}

struct DropoutKernels {
  // y[i] = dropout_keeps(seed, first + i, p) ? x[i] * scale : 0, computed in f32 and rounded to dt (f32, f16 or bf16)
  // once. `first` numbers x within a larger tensor (a rank's slice of the global batch). The forward pass (x -> y) and
  // the backward pass (dy -> dx) are the same call with scale = 1 / (1 - p).
  void (*apply)(DType dt, uint64_t seed, uint64_t first, float p, float scale, const void* x, void* y, int64_t n,
                cudaStream_t stream);
};

}  // namespace unet::kernels
