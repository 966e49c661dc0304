// CUDA twin of kernels/cpu/hybrid_loss.h (UNet 3+'s focal + SSIM + IoU loss): the entry points of
// kernels/hybrid_loss.h with device pointers, a workspace and a stream. The arithmetic is the CPU's, in double; sums go
// through a fixed reduction tree (no atomics), so the results are the same bits on every run and every GPU, and equal
// the CPU's up to the order of the additions.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/hybrid_loss.h"

namespace unet::kernels::cuda {

inline constexpr int kMaxHybridLossChannels = 16;

size_t hybrid_loss_workspace_bytes(HybridLossShape s);
void hybrid_loss_forward(const float* logits, const void* labels, DType label_dtype, HybridLossShape s, double alpha,
                         double gamma, void* workspace, double* sums, int64_t* bad, cudaStream_t stream);
void hybrid_loss_finish(const double* sums, double pixels, double planes, float* loss, float* parts, double* coef,
                        cudaStream_t stream);
void hybrid_loss_backward(const float* logits, const void* labels, DType label_dtype, HybridLossShape s, double alpha,
                          double gamma, const double* coef, const float* grad_out, void* workspace, float* grad_logits,
                          cudaStream_t stream);

extern const HybridLossKernels hybrid_loss_kernels;

}  // namespace unet::kernels::cuda
