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

// Which soft Dice the loss takes, with num = 2 sum p y + smooth per class:
// nnU-Net (the default): den = sum p + sum y + smooth, the sums over the whole batch, the mean over foreground classes;
// DLE UNet2D (squared, background, per sample in the op): den = sum p^2 + sum y^2 + smooth, the mean over every
// class and sample.
struct DiceForm {
  bool squared = false;     // sum p^2 in the denominator instead of sum p (y is one-hot, so y^2 = y either way)
  bool background = false;  // class 0 in the Dice mean
  double smooth = 1e-5;
};

struct LossKernels {
  int max_channels;  // the most classes the kernels take
  // Scratch (bytes) that the forward needs (0 on the CPU).
  size_t (*softmax_dice_ce_workspace_bytes)(int64_t voxels, int channels);
  // sums[0 .. 3C]: intersect[C], prob_sum[C] (of p^2 when squared), label_sum[C], ce_sum; bad[0] = the first voxel
  // whose label is outside [0, C) or -1, bad[1] = that label.
  void (*softmax_dice_ce_forward)(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                                  int channels, bool squared, void* workspace, double* sums, int64_t* bad,
                                  cudaStream_t stream);
  // The loss [1], its parts [2] (dice, ce) and the gradient's coefficients a, b [groups][channels] from `groups`
  // forward results (sums [groups][3C + 1], bad [groups][2]), the Dice mean taken over dice_groups groups (more than
  // `groups` when other ranks hold the rest); NaN loss on a bad label.
  void (*softmax_dice_ce_finish)(const double* sums, const int64_t* bad, int groups, int64_t dice_groups, int channels,
                                 int64_t voxels, DiceForm form, float* loss, float* parts, float* coef_a, float* coef_b,
                                 cudaStream_t stream);
  void (*softmax_dice_ce_backward)(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                                   int64_t ce_voxels, int channels, bool squared, const float* a, const float* b,
                                   const float* grad_out, float* grad_logits, cudaStream_t stream);
};

}  // namespace unet::kernels
