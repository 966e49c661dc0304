// UNet 3+'s hybrid loss (Huang et al. 2020, as DLE UNet3P computes it; SPEC 1.3), forward sums and backward, on 2D
// channels-last logits [N, H, W, C] with one label per pixel. p = softmax(logits), t = one-hot(label), M = N H W:
//   focal = (1/M) sum_pixels alpha (1 - q)^gamma (-log q),  q = p_label + 1e-9   (DLE: alpha 4, gamma 2)
//   iou   = 1 - I / U,  I = sum t p,  U = sum (t + p - t p)                     (sums over every pixel and class)
//   ssim  = 1 - (1/(N C)) sum_{n,c} SSIM(t_nc, p_nc)
// SSIM as tf.image.ssim(max_val = 1): an 11 x 11 Gaussian window (sigma 1.5, normalised), "valid" positions only,
// mu = G * x, sigma_xy = G * (x y) - mu_x mu_y, c1 = 0.01^2, c2 = 0.03^2, the mean over the (H - 10)(W - 10)
// positions of (2 mu_t mu_p + c1)(2 sigma_tp + c2) / ((mu_t^2 + mu_p^2 + c1)(sigma_t^2 + sigma_p^2 + c2)).
// With s.multiscale, MS-SSIM (tf.image.ssim_multiscale, kernels/hybrid_loss.h) takes SSIM's place: the planes pooled
// 2 x 2 four times, cs = (2 sigma_tp + c2) / (sigma_t^2 + sigma_p^2 + c2) averaged at scales 0..3, SSIM at scale 4.
// Every sum is in double, in a fixed order (bitwise the same for any thread count). No autograd here
// (engine/ops/hybrid_loss.cpp builds the op and reduces the sums over ranks; the table's finish forms the loss).
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/hybrid_loss.h"

namespace unet::kernels::cpu {

// sums[0] = sum of the focal terms, [1] = I, [2] = U, [3] = sum over (n, c) of SSIM(t_nc, p_nc) (or MS-SSIM).
// Returns -1 when every label lies in [0, c); otherwise the index of the first pixel whose label does not, with that
// label in *bad_label (nothing else is then defined).
int64_t hybrid_loss_forward(const float* logits, const void* labels, DType label_dtype, HybridLossShape s, double alpha,
                            double gamma, double* sums, int64_t* bad_label);

// d logits for an incoming gradient g of L = w_focal * focal_sum + L_iou(I, U) + w_ssim * ssim_sum + const, given
// coef[0] = g dL/d(focal_sum), coef[1] = g dL/dI, coef[2] = g dL/dU, coef[3] = g dL/d(ssim_sum) (the op works them
// out from the global sums): first dL/dp per pixel and class, then through the softmax Jacobian,
//   dL/dz_k = p_k (dL/dp_k - sum_c p_c dL/dp_c).
void hybrid_loss_backward(const float* logits, const void* labels, DType label_dtype, HybridLossShape s, double alpha,
                          double gamma, const double* coef, float* grad_logits);

// The table (kernels/hybrid_loss.h): these entry points, and finish in double on the host.
extern const HybridLossKernels hybrid_loss_kernels;

}  // namespace unet::kernels::cpu
