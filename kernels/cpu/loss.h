// Loss kernels: fused softmax + Dice + cross-entropy (nnU-Net's DiceCE, docs/reference.md, "DiceCE loss"), forward
// and backward.
// Entry points take raw channels-last pointers: `voxels` rows of `channels` logits each, one label per row.
// Fusing softmax into the loss means the probabilities are never stored: the forward reads the logits once and
// leaves only per-class sums; the backward recomputes the softmax from the logits in the same pass that writes the
// gradient. No autograd here (engine/ops/loss.cpp builds the op).
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"

namespace unet::kernels::cpu {

// Sums over all voxels (batch and space) for one DiceCE evaluation.
// intersect[c] = sum p_c * [y == c], prob_sum[c] = sum p_c, label_sum[c] = count(y == c) (arrays of `channels`),
// ce_sum = sum (logsumexp(z) - z_y). p = softmax over channels (max-subtracted).
// Labels are i32 or u8 (label_dtype). Voxels are split into fixed chunks whose partial sums (double) are added in
// chunk order, so the result is bitwise identical for any thread count.
// Returns -1 when every label lies in [0, channels); otherwise the index of the first voxel whose label does not,
// with that label in *bad_label (such voxels are left out of the sums).
int64_t softmax_dice_ce_forward(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                                int channels, double* intersect, double* prob_sum, double* label_sum, double* ce_sum,
                                int64_t* bad_label);

// Gradient of the loss with respect to the logits, in one pass:
//   grad[v,k] = p_vk * (g_vk - sum_c p_vc g_vc) + ce_scale * (p_vk - [y_v == k]),   g_vc = coef_a[c] - coef_b[c] [y_v
//   == c]
// where g is d(dice part)/dp (through the softmax Jacobian) and the second term is the CE gradient.
// coef_a, coef_b have `channels` entries (0 for classes outside the dice mean); the caller folds the incoming
// gradient into coef_a, coef_b and ce_scale. Labels must be valid (checked by the forward).
void softmax_dice_ce_backward(const float* logits, const void* labels, DType label_dtype, int64_t voxels, int channels,
                              const float* coef_a, const float* coef_b, float ce_scale, float* grad_logits);

}  // namespace unet::kernels::cpu
