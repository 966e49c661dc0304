// UNet 3+'s hybrid loss (focal + 1 - SSIM + IoU, kernels/cpu/hybrid_loss.h has the formulas): the table of entry
// points the engine dispatches through, one per backend (kernels::cpu::hybrid_loss_kernels in kernels/cpu/
// hybrid_loss.h, kernels::cuda::hybrid_loss_kernels in kernels/cuda/hybrid_loss.cuh). It takes the CUDA entry points'
// form (results in caller-provided buffers of the backend's memory, so nothing comes back to the host); the CPU's
// adapts its entry points to it and ignores the stream and the workspace.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

struct HybridLossShape {
  int64_t n, h, w;  // channels-last logits [n, h, w, c]; h, w >= kSsimWindow
  int c;            // classes, >= 2
};

inline constexpr int kSsimWindow = 11;  // tf.image.ssim's filter_size

struct HybridLossKernels {
  int max_channels;  // the most classes the kernels take
  // Scratch (bytes) that forward and backward need (0 on the CPU).
  size_t (*workspace_bytes)(HybridLossShape s);
  // sums[4] = focal sum, I, U, SSIM sum (doubles in the backend's memory). bad[0] = the first pixel whose label is
  // outside [0, c) or -1, bad[1] = that label: the CPU reports it; on a device (where knowing would mean waiting) such
  // a pixel makes the focal sum, so the loss, NaN and bad[0] stays -1.
  void (*forward)(const float* logits, const void* labels, DType label_dtype, HybridLossShape s, double alpha,
                  double gamma, void* workspace, double* sums, int64_t* bad, cudaStream_t stream);
  // From the sums over every rank (`pixels` and `planes` = n h w and n c over every rank): loss[1], parts[3] (focal,
  // 1 - SSIM, IoU loss) and the backward's coefficients coef[4] = dL/d(focal sum, I, U, SSIM sum).
  void (*finish)(const double* sums, double pixels, double planes, float* loss, float* parts, double* coef,
                 cudaStream_t stream);
  // d logits for the incoming gradient grad_out[0] (both in the backend's memory).
  void (*backward)(const float* logits, const void* labels, DType label_dtype, HybridLossShape s, double alpha,
                   double gamma, const double* coef, const float* grad_out, void* workspace, float* grad_logits,
                   cudaStream_t stream);
};

}  // namespace unet::kernels
