// Fused softmax + Dice + cross-entropy: the table of entry points the engine dispatches through, one per backend
// (kernels::cpu::loss_kernels in kernels/cpu/loss.h, kernels::cuda::loss_kernels in kernels/cuda/loss.cuh). The
// table takes the CUDA entry points' form (results in caller-provided buffers of the backend's memory, so nothing
// has to come back to the host); the CPU's adapts its entry points to it and ignores the stream.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

struct LossKernels {
  int max_channels;  // the most classes the kernels take
  // Scratch (bytes) that the forward needs (0 on the CPU).
  size_t (*softmax_dice_ce_workspace_bytes)(int64_t voxels, int channels);
  // sums[0 .. 3C]: intersect[C], prob_sum[C], label_sum[C], ce_sum; bad[0] = the first voxel whose label is outside
  // [0, C) or -1, bad[1] = that label.
  void (*softmax_dice_ce_forward)(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                                  int channels, void* workspace, double* sums, int64_t* bad, cudaStream_t stream);
  // The loss [1], its parts [2] (dice, ce) and the gradient's coefficients a, b [channels]; NaN loss on a bad label.
  void (*softmax_dice_ce_finish)(const double* sums, const int64_t* bad, int channels, int64_t voxels, double smooth,
                                 float* loss, float* parts, float* coef_a, float* coef_b, cudaStream_t stream);
  void (*softmax_dice_ce_backward)(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                                   int64_t ce_voxels, int channels, const float* a, const float* b,
                                   const float* grad_out, float* grad_logits, cudaStream_t stream);
};

}  // namespace unet::kernels
