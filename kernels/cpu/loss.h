// Loss kernels: fused softmax + Dice + cross-entropy (nnU-Net's DiceCE, docs/reference.md, "DiceCE loss"), forward
// and backward.
// Entry points take raw channels-last pointers: `voxels` rows of `channels` logits each, one label per row.
// Fusing softmax into the loss means the probabilities are never stored: the forward reads the logits once and
// leaves only per-class sums; the backward recomputes the softmax from the logits in the same pass that writes the
// gradient. No autograd here (engine/ops/loss.cpp builds the op).
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/loss.h"

namespace unet::kernels::cpu {

// Sums over all voxels (batch and space) for one DiceCE evaluation.
// intersect[c] = sum p_c * [y == c], prob_sum[c] = sum p_c (sum p_c^2 when squared), label_sum[c] = count(y == c)
// (arrays of `channels`),
// ce_sum = sum (logsumexp(z) - z_y). p = softmax over channels (max-subtracted).
// Labels are i32 or u8 (label_dtype). Voxels are split into fixed chunks whose partial sums (double) are added in
// chunk order, so the result is bitwise identical for any thread count.
// Returns -1 when every label lies in [0, channels); otherwise the index of the first voxel whose label does not,
// with that label in *bad_label (such voxels are left out of the sums).
int64_t softmax_dice_ce_forward(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                                int channels, bool squared, double* intersect, double* prob_sum, double* label_sum,
                                double* ce_sum, int64_t* bad_label);

// The loss from the forward sums of `groups` groups (the whole batch for nnU-Net; one per sample for DLE's UNet2D),
// as the CUDA twin computes it on the device (so that no value has to come back to the host): sums = per group
// [intersect (C), prob_sum (C), label_sum (C), ce_sum], bad = per group [first bad voxel or -1, its label].
// With c0 = 0 when form.background, else 1, F = (C - c0) * dice_groups terms in the Dice mean, num_gc = 2 I_gc +
// smooth, den_gc = P_gc + Y_gc + smooth (in double) and da = 2 when form.squared (P holds sum p^2), else 1:
//   parts[0] = dice = (1/F) sum_g sum_{c>=c0} (1 - num_gc / den_gc), parts[1] = ce = sum_g ce_sum_g / voxels,
//   loss[0] = dice + ce; coef_a[g][c] = da num_gc / (F den_gc^2), coef_b[g][c] = 2 / (F den_gc) for c >= c0, 0 for
//   c < c0 (the gradient's coefficients before the incoming gradient is folded in). A bad label in any group makes
//   loss and parts NaN. dice_groups > groups when other ranks hold the other groups: the loss is then this rank's
//   share of the global mean, summed over the ranks by the caller.
void softmax_dice_ce_finish(const double* sums, const int64_t* bad, int groups, int64_t dice_groups, int channels,
                            int64_t voxels, DiceForm form, float* loss, float* parts, float* coef_a, float* coef_b);

// Gradient of the loss with respect to the logits of one group, in one pass:
//   grad[v,k] = p_vk * (g_vk - sum_c p_vc g_vc) + ce_scale * (p_vk - [y_v == k]),
//   g_vc = coef_a[c] w_vc - coef_b[c] [y_v == c],  w_vc = p_vc when squared, else 1
// where g is d(dice part)/dp (through the softmax Jacobian) and the second term is the CE gradient; with go =
// *grad_out, the incoming gradient of the loss: coef_a = go * a[c], coef_b = go * b[c] (a, b from
// softmax_dice_ce_finish, `channels` entries), ce_scale = go / ce_voxels: the voxel count CE is the mean over (voxels
// here; the global batch's under data parallelism, where this batch is one rank's share). Labels must be valid
// (checked by the forward).
void softmax_dice_ce_backward(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                              int64_t ce_voxels, int channels, bool squared, const float* a, const float* b,
                              const float* grad_out, float* grad_logits);

// The table that the engine dispatches through (kernels/loss.h): these entry points adapted to its form (results in
// the caller's buffers), the stream ignored.
extern const LossKernels loss_kernels;

}  // namespace unet::kernels::cpu
