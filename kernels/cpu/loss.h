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
// intersect[c] = sum p_c * [y == c], prob_sum[c] = sum p_c, label_sum[c] = count(y == c) (arrays of `channels`),
// ce_sum = sum (logsumexp(z) - z_y). p = softmax over channels (max-subtracted).
// Labels are i32 or u8 (label_dtype). Voxels are split into fixed chunks whose partial sums (double) are added in
// chunk order, so the result is bitwise identical for any thread count.
// Returns -1 when every label lies in [0, channels); otherwise the index of the first voxel whose label does not,
// with that label in *bad_label (such voxels are left out of the sums).
int64_t softmax_dice_ce_forward(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                                int channels, double* intersect, double* prob_sum, double* label_sum, double* ce_sum,
                                int64_t* bad_label);

// The loss from the forward sums, as the CUDA twin computes it on the device (so that no value has to come back to the
// host): sums = [intersect (C), prob_sum (C), label_sum (C), ce_sum], bad = whether a label was out of range.
// With F = C - 1 foreground classes, num_c = 2 I_c + smooth, den_c = P_c + Y_c + smooth (in double):
//   parts[0] = dice = (1/F) sum_{c>=1} (1 - num_c / den_c), parts[1] = ce = ce_sum / voxels, loss[0] = dice + ce;
//   coef_a[c] = num_c / (F den_c^2), coef_b[c] = 2 / (F den_c) for c >= 1, 0 for c = 0 (the gradient's coefficients
//   before the incoming gradient is folded in). With bad, loss and parts are NaN.
void softmax_dice_ce_finish(const double* sums, bool bad, int channels, int64_t voxels, double smooth, float* loss,
                            float* parts, float* coef_a, float* coef_b);

// Gradient of the loss with respect to the logits, in one pass:
//   grad[v,k] = p_vk * (g_vk - sum_c p_vc g_vc) + ce_scale * (p_vk - [y_v == k]),   g_vc = coef_a[c] - coef_b[c] [y_v
//   == c]
// where g is d(dice part)/dp (through the softmax Jacobian) and the second term is the CE gradient; with go =
// *grad_out, the incoming gradient of the loss: coef_a = go * a[c], coef_b = go * b[c] (a, b from
// softmax_dice_ce_finish, `channels` entries), ce_scale = go / ce_voxels: the voxel count CE is the mean over (voxels
// here; the global batch's under data parallelism, where this batch is one rank's share). Labels must be valid
// (checked by the forward).
void softmax_dice_ce_backward(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                              int64_t ce_voxels, int channels, const float* a, const float* b, const float* grad_out,
                              float* grad_logits);

// The table that the engine dispatches through (kernels/loss.h): these entry points adapted to its form (results in
// the caller's buffers), the stream ignored.
extern const LossKernels loss_kernels;

}  // namespace unet::kernels::cpu
