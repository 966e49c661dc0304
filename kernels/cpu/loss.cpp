// CPU fused softmax + Dice + cross-entropy kernels (see kernels/cpu/loss.h for the maths).
// Each voxel's channel vector is contiguous (channels-last), so a voxel is processed whole: max, exp, sum, then the
// per-class accumulations. The channel count is a template parameter for the common small cases (2..8 classes), so
// the per-voxel loops are fully unrolled and the exponentials stay in registers; other counts use a runtime loop.
#include "kernels/cpu/loss.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/common/parallel.h"

namespace unet::kernels::cpu {
namespace {

// Voxels per partial sum. Fixed (not derived from the thread count) so the summation order, and so the result bits,
// never change between machines.
constexpr int64_t kChunk = 4096;

// Softmax numerator of one voxel: e[c] = exp(z[c] - max z); returns sum e and writes max z to *zmax.
template <int CC>
inline float softmax_exp(const float* z, int C, float* e, float* zmax) {
  const int n = CC > 0 ? CC : C;
  float m = z[0];
  for (int c = 1; c < n; ++c) m = std::max(m, z[c]);
  float s = 0.f;
  for (int c = 0; c < n; ++c) {
    e[c] = std::exp(z[c] - m);
    s += e[c];
  }
  *zmax = m;
  return s;
}

template <int CC, class L>
int64_t forward_impl(const float* logits, const L* labels, int64_t voxels, int C, bool squared, double* intersect,
                     double* prob_sum, double* label_sum, double* ce_sum, int64_t* bad_label) {
  const int n = CC > 0 ? CC : C;
  const int64_t chunks = (voxels + kChunk - 1) / kChunk;
  const size_t stride = 3 * static_cast<size_t>(n) + 1;  // per chunk: intersect[n], prob[n], count[n], ce
  std::vector<double> partial(static_cast<size_t>(chunks) * stride, 0.0);
  std::vector<int64_t> bad_at(static_cast<size_t>(chunks), -1);

  parallel_for(chunks, 1, [&](int64_t clo, int64_t chi) {
    std::vector<float> e_buf(CC > 0 ? 0 : static_cast<size_t>(n));
    float e_fixed[CC > 0 ? CC : 1];
    float* e = CC > 0 ? e_fixed : e_buf.data();
    for (int64_t ch = clo; ch < chi; ++ch) {
      double* acc = partial.data() + static_cast<size_t>(ch) * stride;
      double* I = acc;
      double* P = acc + n;
      double* Y = acc + 2 * n;
      double ce = 0.0;
      int64_t bad = -1;
      const int64_t vend = std::min(voxels, (ch + 1) * kChunk);
      for (int64_t v = ch * kChunk; v < vend; ++v) {
        const int64_t y = static_cast<int64_t>(labels[v]);
        if (y < 0 || y >= n) {
          if (bad < 0) bad = v;
          continue;
        }
        const float* z = logits + v * n;
        float zmax;
        const float s = softmax_exp<CC>(z, n, e, &zmax);
        const float inv = 1.f / s;
        for (int c = 0; c < n; ++c) {
          const double p = static_cast<double>(e[c] * inv);
          P[c] += squared ? p * p : p;
        }
        I[y] += static_cast<double>(e[y] * inv);
        Y[y] += 1.0;
        // -log p_y = logsumexp(z) - z_y = log(s) + (max - z_y): never log of a rounded-to-zero probability.
        ce += static_cast<double>(std::log(s)) + static_cast<double>(zmax - z[y]);
      }
      acc[3 * n] = ce;
      bad_at[static_cast<size_t>(ch)] = bad;
    }
  });

  for (int c = 0; c < n; ++c) intersect[c] = prob_sum[c] = label_sum[c] = 0.0;
  *ce_sum = 0.0;
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const double* acc = partial.data() + static_cast<size_t>(ch) * stride;
    for (int c = 0; c < n; ++c) {
      intersect[c] += acc[c];
      prob_sum[c] += acc[n + c];
      label_sum[c] += acc[2 * n + c];
    }
    *ce_sum += acc[3 * n];
  }
  for (int64_t ch = 0; ch < chunks; ++ch) {
    int64_t v = bad_at[static_cast<size_t>(ch)];
    if (v >= 0) {
      *bad_label = static_cast<int64_t>(labels[v]);
      return v;
    }
  }
  return -1;
}

// SQ (DLE's squared Dice) is a template parameter so that nnU-Net's form compiles to the very code it had before.
template <int CC, bool SQ, class L>
void backward_impl(const float* logits, const L* labels, int64_t voxels, int C, const float* a, const float* b,
                   float ce_scale, float* grad) {
  const int n = CC > 0 ? CC : C;
  parallel_for(voxels, 1024, [&](int64_t lo, int64_t hi) {
    std::vector<float> e_buf(CC > 0 ? 0 : static_cast<size_t>(n));
    float e_fixed[CC > 0 ? CC : 1];
    float* e = CC > 0 ? e_fixed : e_buf.data();
    for (int64_t v = lo; v < hi; ++v) {
      const float* z = logits + v * n;
      float* g = grad + v * n;
      const int y = static_cast<int>(labels[v]);
      float zmax;
      const float inv = 1.f / softmax_exp<CC>(z, n, e, &zmax);
      // sum_c p_c g_c with g_c = a_c w_c - b_c [c == y], w_c = p_c when squared (d p^2 / dp = 2 p, the 2 is in a),
      // else 1
      float pg = 0.f;
      for (int c = 0; c < n; ++c) {
        e[c] *= inv;  // now p_c
        pg += e[c] * (SQ ? a[c] * e[c] : a[c]);
      }
      pg -= e[y] * b[y];
      for (int c = 0; c < n; ++c) g[c] = e[c] * ((SQ ? a[c] * e[c] : a[c]) - pg) + ce_scale * e[c];
      g[y] -= e[y] * b[y] + ce_scale;
    }
  });
}

// Calls f(std::integral_constant<int, CC>) with CC = C for 2 <= C <= 8 (unrolled kernels), CC = 0 otherwise.
template <int CC = 2, class F>
auto with_channel_count(int C, F&& f) {
  if constexpr (CC > 8) {
    return f(std::integral_constant<int, 0>{});
  } else {
    if (C == CC) return f(std::integral_constant<int, CC>{});
    return with_channel_count<CC + 1>(C, std::forward<F>(f));
  }
}

template <class L>
int64_t forward_dispatch(const float* logits, const L* labels, int64_t voxels, int C, bool squared, double* I,
                         double* P, double* Y, double* ce, int64_t* bad) {
  return with_channel_count(C, [&](auto cc) {
    return forward_impl<decltype(cc)::value>(logits, labels, voxels, C, squared, I, P, Y, ce, bad);
  });
}

template <class L>
void backward_dispatch(const float* logits, const L* labels, int64_t voxels, int C, bool squared, const float* a,
                       const float* b, float ce_scale, float* grad) {
  with_channel_count(C, [&](auto cc) {
    if (squared)
      backward_impl<decltype(cc)::value, true>(logits, labels, voxels, C, a, b, ce_scale, grad);
    else
      backward_impl<decltype(cc)::value, false>(logits, labels, voxels, C, a, b, ce_scale, grad);
  });
}

void check_label_dtype(DType t, const char* what) {
  if (t != DType::i32 && t != DType::u8)
    throw std::invalid_argument(std::string(what) + ": labels must be i32 or u8, got " + dtype_name(t));
}

}  // namespace

int64_t softmax_dice_ce_forward(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                                int channels, bool squared, double* intersect, double* prob_sum, double* label_sum,
                                double* ce_sum, int64_t* bad_label) {
  check_label_dtype(label_dtype, "softmax_dice_ce_forward");
  if (label_dtype == DType::i32)
    return forward_dispatch(logits, static_cast<const int32_t*>(labels), voxels, channels, squared, intersect, prob_sum,
                            label_sum, ce_sum, bad_label);
  return forward_dispatch(logits, static_cast<const uint8_t*>(labels), voxels, channels, squared, intersect, prob_sum,
                          label_sum, ce_sum, bad_label);
}

void softmax_dice_ce_finish(const double* sums, const int64_t* bad, int groups, int64_t dice_groups, int channels,
                            int64_t voxels, DiceForm form, float* loss, float* parts, float* coef_a, float* coef_b) {
  const int C = channels, c0 = form.background ? 0 : 1;
  const double F = static_cast<double>(C - c0) * static_cast<double>(dice_groups);  // terms in the Dice mean
  const double da = form.squared ? 2.0 : 1.0;                                       // d den / d p = 2 p or 1
  double dice = 0.0, ce_sum = 0.0;
  bool invalid = false;
  for (int g = 0; g < groups; ++g) {
    const double* s = sums + static_cast<size_t>(g) * (3 * C + 1);
    float* a = coef_a + static_cast<size_t>(g) * C;
    float* b = coef_b + static_cast<size_t>(g) * C;
    a[0] = b[0] = 0.f;
    for (int c = c0; c < C; ++c) {
      const double num = 2.0 * s[c] + form.smooth, den = s[C + c] + s[2 * C + c] + form.smooth;
      dice += 1.0 - num / den;
      a[c] = static_cast<float>(da * num / (F * den * den));
      b[c] = static_cast<float>(2.0 / (F * den));
    }
    ce_sum += s[3 * C];
    invalid = invalid || bad[2 * g] >= 0;
  }
  dice /= F;
  const double ce = ce_sum / static_cast<double>(voxels);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  parts[0] = invalid ? nan : static_cast<float>(dice);
  parts[1] = invalid ? nan : static_cast<float>(ce);
  loss[0] = invalid ? nan : static_cast<float>(dice + ce);
}

void softmax_dice_ce_backward(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                              int64_t ce_voxels, int channels, bool squared, const float* a, const float* b,
                              const float* grad_out, float* grad_logits) {
  check_label_dtype(label_dtype, "softmax_dice_ce_backward");
  // The incoming gradient folded into the coefficients, in f32 as the CUDA kernel does.
  const float go = *grad_out;
  std::vector<float> coef_a(static_cast<size_t>(channels)), coef_b(coef_a.size());
  for (int c = 0; c < channels; ++c) coef_a[c] = go * a[c], coef_b[c] = go * b[c];
  const float ce_scale = static_cast<float>(static_cast<double>(go) / static_cast<double>(ce_voxels));
  const float* ca = coef_a.data();
  const float* cb = coef_b.data();
  if (label_dtype == DType::i32)
    backward_dispatch(logits, static_cast<const int32_t*>(labels), voxels, channels, squared, ca, cb, ce_scale,
                      grad_logits);
  else
    backward_dispatch(logits, static_cast<const uint8_t*>(labels), voxels, channels, squared, ca, cb, ce_scale,
                      grad_logits);
}

// The sums into one buffer and the bad label into bad[0..1], as on a device; no channel limit and no workspace.
const LossKernels loss_kernels{
    .max_channels = std::numeric_limits<int>::max(),
    .softmax_dice_ce_workspace_bytes = [](int64_t, int) -> size_t { return 0; },
    .softmax_dice_ce_forward =
        [](const float* logits, const void* labels, DType label_dtype, int64_t voxels, int channels, bool squared,
           void*, double* sums, int64_t* bad, cudaStream_t) {
          bad[1] = 0;
          bad[0] = softmax_dice_ce_forward(logits, labels, label_dtype, voxels, channels, squared, sums,
                                           sums + channels, sums + 2 * channels, sums + 3 * channels, &bad[1]);
        },
    .softmax_dice_ce_finish =
        [](const double* sums, const int64_t* bad, int groups, int64_t dice_groups, int channels, int64_t voxels,
           DiceForm form, float* loss, float* parts, float* coef_a, float* coef_b, cudaStream_t) {
          softmax_dice_ce_finish(sums, bad, groups, dice_groups, channels, voxels, form, loss, parts, coef_a, coef_b);
        },
    .softmax_dice_ce_backward =
        [](const float* logits, const void* labels, DType label_dtype, int64_t voxels, int64_t ce_voxels, int channels,
           bool squared, const float* a, const float* b, const float* grad_out, float* grad_logits, cudaStream_t) {
          softmax_dice_ce_backward(logits, labels, label_dtype, voxels, ce_voxels, channels, squared, a, b, grad_out,
                                   grad_logits);
        },
};

}  // namespace unet::kernels::cpu
