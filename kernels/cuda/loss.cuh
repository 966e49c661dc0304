// CUDA fused softmax + Dice + cross-entropy kernels, the CUDA twin of kernels/cpu/loss.h (CPU): same argument meaning
// (channels-last logits, one i32 or u8 label per voxel), pointers in device memory (host memory under the emulator),
// plus a stream. Where the CPU entry point returns values, the CUDA one writes them into caller-provided device
// buffers, which softmax_dice_ce_finish turns into the loss on the device.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"
#include "kernels/loss.h"

namespace unet::kernels::cuda {

// Device scratch (bytes) that softmax_dice_ce_forward needs for `voxels` and `channels`: one row of partial sums per
// block. The block count depends only on `voxels`, never on the device, so the result bits are the same everywhere.
size_t softmax_dice_ce_workspace_bytes(int64_t voxels, int channels);

// Forward sums for one DiceCE evaluation, deterministic: each block reduces its voxels in a fixed tree order into a
// row of `workspace`, then a single-block kernel adds the rows in block order (no float atomics).
// Writes sums[0 .. 3C]: intersect[C], prob_sum[C], label_sum[C], ce_sum (doubles, as kernels::cpu::
// softmax_dice_ce_forward returns them), and bad[0] = index of the first voxel whose label is outside [0, C) or -1,
// bad[1] = that label (unchanged when bad[0] is -1). Invalid voxels are left out of the sums, as on the CPU.
// channels: 1..kMaxLossChannels.
inline constexpr int kMaxLossChannels = 16;
void softmax_dice_ce_forward(const float* logits, const void* labels, DType label_dtype, int64_t voxels, int channels,
                             bool squared, void* workspace, double* sums, int64_t* bad, cudaStream_t stream);

// The loss [1], its parts [2] (dice, ce) and the gradient's coefficients a, b [groups][channels] from `groups`
// forwards' sums and bad records, on the device (kernels::cpu::softmax_dice_ce_finish, the meaning of every
// argument): nothing has to come back to the host. A bad label makes the loss and its parts NaN.
void softmax_dice_ce_finish(const double* sums, const int64_t* bad, int groups, int64_t dice_groups, int channels,
                            int64_t voxels, DiceForm form, float* loss, float* parts, float* coef_a, float* coef_b,
                            cudaStream_t stream);

// d loss / d logits in one pass (kernels::cpu::softmax_dice_ce_backward); a, b: `channels` floats and grad_out (the
// incoming gradient of the loss, one float) in device memory; ce_voxels as there. Labels must be valid (checked by
// the forward).
void softmax_dice_ce_backward(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                              int64_t ce_voxels, int channels, bool squared, const float* a, const float* b,
                              const float* grad_out, float* grad_logits, cudaStream_t stream);

// The table of these entry points that the engine dispatches through (kernels/loss.h).
extern const LossKernels loss_kernels;

}  // namespace unet::kernels::cuda
