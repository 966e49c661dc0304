// UNet 3+'s hybrid loss (focal + 1 - SSIM + IoU, kernels/cpu/hybrid_loss.h has the formulas): the table of entry
// points the engine dispatches through, one per backend (kernels::cpu::hybrid_loss_kernels in kernels/cpu/
// hybrid_loss.h, kernels::cuda::hybrid_loss_kernels in kernels/cuda/hybrid_loss.cuh). It takes the CUDA entry points'
// form (results in caller-provided buffers of the backend's memory, so nothing comes back to the host); the CPU's
// adapts its entry points to it and ignores the stream and the workspace.
#pragma once
#include <cstddef>
#include <cstdint>

#include <array>
#include <cmath>

#include "kernels/common/dtype.h"
#include "kernels/common/host_device.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

struct HybridLossShape {
  int64_t n, h, w;          // channels-last logits [n, h, w, c]; h, w >= kSsimWindow (multiscale: at every scale)
  int c;                    // classes, >= 2
  bool multiscale = false;  // MS-SSIM (tf.image.ssim_multiscale) instead of SSIM
};

inline constexpr int kSsimWindow = 11;  // tf.image.ssim's filter_size

// MS-SSIM (tf.image.ssim_multiscale with its defaults): five scales, each after the first the previous one padded to
// even sizes by repeating its last row / column (TF's SYMMETRIC pad) and averaged over 2 x 2 blocks; per plane
// MS-SSIM = prod_{i<4} relu(cs_i)^w_i * relu(ssim_4)^w_4, cs_i and ssim_4 the means over the valid positions.
inline constexpr int kMsSsimScales = 5;
// The power of scale i (TF's _MSSSIM_WEIGHTS); a function, as device code cannot read a host constant array.
UNET_HOST_DEVICE inline double ms_ssim_weight(int i) {
  return i == 0 ? 0.0448 : i == 1 ? 0.2856 : i == 2 ? 0.3001 : i == 3 ? 0.2363 : 0.1333;
}
// A side at scale `scale` (0: the image's).
UNET_HOST_DEVICE inline int64_t ms_ssim_side(int64_t side, int scale) {
  for (int i = 0; i < scale; ++i) side = (side + 1) / 2;
  return side;
}
// The smallest side whose coarsest scale still holds the 11 x 11 window (161).
inline constexpr int64_t kMsSsimMinSide = 161;
inline constexpr double kFocalEps = 1e-9;
inline constexpr double kSsimC1 = 0.01 * 0.01, kSsimC2 = 0.03 * 0.03;  // (k1 max_val)^2, (k2 max_val)^2, max_val 1

// tf.image.ssim's window: exp(-x^2 / (2 sigma^2)) at x = -5..5, sigma 1.5, normalised (its 2D window is the outer
// product of this one with itself). Both backends take it from here (the CUDA launchers pass it by value).
inline std::array<double, kSsimWindow> ssim_window() {
  std::array<double, kSsimWindow> w{};
  double sum = 0;
  for (int i = 0; i < kSsimWindow; ++i) {
    const double x = i - (kSsimWindow - 1) / 2.0;
    w[size_t(i)] = std::exp(-x * x / (2 * 1.5 * 1.5));
    sum += w[size_t(i)];
  }
  for (double& v : w) v /= sum;
  return w;
}

// base^gamma: repeated products for the integer gammas (DLE's 2), which also take a base just below 0 (q = p + 1e-9
// may pass 1); otherwise exp(gamma log base). Not pow(): its out-of-line slow path made the CUDA kernels spill.
UNET_HOST_DEVICE inline double focal_power(double base, double gamma) {
  if (gamma == floor(gamma) && gamma >= 0 && gamma <= 16) {
    double r = 1;
    for (int i = 0; i < static_cast<int>(gamma); ++i) r *= base;
    return r;
  }
  return base > 0 ? exp(gamma * log(base)) : 0.0;
}

// The SSIM at one position from its window means mt = G t, mp = G p and G(t t), G(p p), G(t p):
// A1 = 2 mt mp + c1, B1 = mt^2 + mp^2 + c1, A2 = 2 (G(tp) - mt mp) + c2, B2 = G(tt) - mt^2 + G(pp) - mp^2 + c2,
// SSIM = A1 A2 / (B1 B2); and w times its derivatives with respect to mp, G(pp) and G(tp) (t is constant):
// dS/dmp = (2 mt (A2 - A1) - S 2 mp (B2 - B1)) / (B1 B2), dS/dG(pp) = -S / B2, dS/dG(tp) = 2 A1 / (B1 B2).
struct SsimTerms {
  double mt, mp, a1, b1, a2, b2;
  UNET_HOST_DEVICE SsimTerms(double mt_, double mp_, double tt, double pp, double tp)
      : mt(mt_),
        mp(mp_),
        a1(2 * mt_ * mp_ + kSsimC1),
        b1(mt_ * mt_ + mp_ * mp_ + kSsimC1),
        a2(2 * (tp - mt_ * mp_) + kSsimC2),
        b2(tt - mt_ * mt_ + pp - mp_ * mp_ + kSsimC2) {}
  UNET_HOST_DEVICE double value() const { return a1 * a2 / (b1 * b2); }
  // MS-SSIM's contrast-structure term cs = A2 / B2 and w times its derivatives (A2 and B2 alone depend on them):
  // dcs/dmp = (2 mp cs - 2 mt) / B2, dcs/dG(pp) = -cs / B2, dcs/dG(tp) = 2 / B2.
  UNET_HOST_DEVICE double cs() const { return a2 / b2; }
  UNET_HOST_DEVICE void cs_gradient(double w, double* d_mp, double* d_pp, double* d_tp) const {
    const double c = a2 / b2;
    *d_mp = w * (2 * mp * c - 2 * mt) / b2;
    *d_pp = w * -c / b2;
    *d_tp = w * 2 / b2;
  }
  UNET_HOST_DEVICE void gradient(double w, double* d_mp, double* d_pp, double* d_tp) const {
    const double den = b1 * b2, ssim = a1 * a2 / den;
    *d_mp = w * (2 * mt * (a2 - a1) - ssim * 2 * mp * (b2 - b1)) / den;
    *d_pp = w * -ssim / b2;
    *d_tp = w * 2 * a1 / den;
  }
};

// A plane's MS-SSIM from its per-scale means m[0..3] = cs_i, m[4] = ssim_4; and in dm[i] the derivative
// d MS-SSIM / d m_i = MS-SSIM w_i / m_i (0 where relu cut m_i, or MS-SSIM is 0).
UNET_HOST_DEVICE inline double ms_ssim_combine(const double* m, double* dm) {
  double ms = 1;
  for (int i = 0; i < kMsSsimScales; ++i) ms *= m[i] > 0 ? focal_power(m[i], ms_ssim_weight(i)) : 0.0;
  for (int i = 0; i < kMsSsimScales; ++i) dm[i] = m[i] > 0 && ms > 0 ? ms * ms_ssim_weight(i) / m[i] : 0.0;
  return ms;
}

// The loss, its parts and the backward's coefficients from the sums over every rank (HybridLossKernels::finish).
UNET_HOST_DEVICE inline void hybrid_loss_values(const double* sums, double pixels, double planes, float* loss,
                                                float* parts, double* coef) {
  const double focal = sums[0] / pixels, iou = 1 - sums[1] / sums[2], ssim = 1 - sums[3] / planes;
  loss[0] = static_cast<float>(focal + ssim + iou);
  parts[0] = static_cast<float>(focal);
  parts[1] = static_cast<float>(ssim);
  parts[2] = static_cast<float>(iou);
  coef[0] = 1 / pixels;
  coef[1] = -1 / sums[2];
  coef[2] = sums[1] / (sums[2] * sums[2]);
  coef[3] = -1 / planes;
}

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
