// UNet 3+'s hybrid loss on the CPU (kernels/cpu/hybrid_loss.h). One sample at a time (the samples in parallel, each
// writing its own partial sums, added in sample order): its softmax in double, the focal and IoU terms per pixel, then
// per class the SSIM's five Gaussian-blurred maps (separable: a horizontal then a vertical pass over the valid
// positions). The backward recomputes them, forms dSSIM/d(mu_p, G(p p), G(t p)) at each valid position and blurs
// those back with the transposed window (a "full" correlation) onto the pixels.
#include "kernels/cpu/hybrid_loss.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

namespace unet::kernels::cpu {
namespace {

constexpr int kWin = kSsimWindow;

const std::array<double, kWin>& window() {  // kernels/hybrid_loss.h's, made once
  static const std::array<double, kWin> g = ssim_window();
  return g;
}

int64_t label_at(const void* labels, DType dt, int64_t i) {
  return dt == DType::u8 ? static_cast<const uint8_t*>(labels)[i] : static_cast<const int32_t*>(labels)[i];
}

// Softmax of every pixel of one sample into p [pixels][c] (double, max-subtracted).
void softmax(const float* z, int64_t pixels, int c, std::vector<double>& p) {
  p.resize(size_t(pixels * c));
  for (int64_t v = 0; v < pixels; ++v) {
    const float* zv = z + v * c;
    double* pv = p.data() + v * c;
    double m = zv[0];
    for (int k = 1; k < c; ++k) m = std::max(m, double(zv[k]));
    double sum = 0;
    for (int k = 0; k < c; ++k) sum += pv[k] = std::exp(double(zv[k]) - m);
    for (int k = 0; k < c; ++k) pv[k] /= sum;
  }
}

// The "valid" Gaussian blur of an h x w plane: (h - 10) x (w - 10) values.
void blur(const double* x, int64_t h, int64_t w, std::vector<double>& tmp, std::vector<double>& out) {
  const auto& g = window();
  const int64_t w2 = w - (kWin - 1), h2 = h - (kWin - 1);
  tmp.assign(size_t(h * w2), 0.0);
  for (int64_t r = 0; r < h; ++r)
    for (int64_t j = 0; j < w2; ++j) {
      double s = 0;
      for (int k = 0; k < kWin; ++k) s += g[size_t(k)] * x[r * w + j + k];
      tmp[size_t(r * w2 + j)] = s;
    }
  out.assign(size_t(h2 * w2), 0.0);
  for (int64_t i = 0; i < h2; ++i)
    for (int64_t j = 0; j < w2; ++j) {
      double s = 0;
      for (int k = 0; k < kWin; ++k) s += g[size_t(k)] * tmp[size_t((i + k) * w2 + j)];
      out[size_t(i * w2 + j)] = s;
    }
}

// The transpose of blur(): spreads the (h - 10) x (w - 10) values d back onto the h x w plane.
void blur_transposed(const std::vector<double>& d, int64_t h, int64_t w, std::vector<double>& tmp,
                     std::vector<double>& out) {
  const auto& g = window();
  const int64_t w2 = w - (kWin - 1), h2 = h - (kWin - 1);
  tmp.assign(size_t(h * w2), 0.0);
  for (int64_t i = 0; i < h2; ++i)
    for (int k = 0; k < kWin; ++k)
      for (int64_t j = 0; j < w2; ++j) tmp[size_t((i + k) * w2 + j)] += g[size_t(k)] * d[size_t(i * w2 + j)];
  out.assign(size_t(h * w), 0.0);
  for (int64_t r = 0; r < h; ++r)
    for (int64_t j = 0; j < w2; ++j)
      for (int k = 0; k < kWin; ++k) out[size_t(r * w + j + k)] += g[size_t(k)] * tmp[size_t(r * w2 + j)];
}

// SSIM's statistics of one plane pair (t one-hot, p probabilities) at the valid positions.
struct PlaneStats {
  std::vector<double> mt, mp, tt, pp, tp, tmp, buf_t, buf_p;
  void compute(int64_t h, int64_t w) {
    const size_t n = size_t(h * w);
    std::vector<double> prod(n);
    blur(buf_t.data(), h, w, tmp, mt);
    blur(buf_p.data(), h, w, tmp, mp);
    for (size_t i = 0; i < n; ++i) prod[i] = buf_t[i] * buf_t[i];
    blur(prod.data(), h, w, tmp, tt);
    for (size_t i = 0; i < n; ++i) prod[i] = buf_p[i] * buf_p[i];
    blur(prod.data(), h, w, tmp, pp);
    for (size_t i = 0; i < n; ++i) prod[i] = buf_t[i] * buf_p[i];
    blur(prod.data(), h, w, tmp, tp);
  }
};

// One plane's (t_nc, p_nc) into the stats' buffers.
void load_plane(const std::vector<double>& p, const void* labels, DType dt, int64_t base, int64_t pixels, int c, int k,
                PlaneStats& st) {
  st.buf_t.resize(size_t(pixels));
  st.buf_p.resize(size_t(pixels));
  for (int64_t v = 0; v < pixels; ++v) {
    st.buf_t[size_t(v)] = label_at(labels, dt, base + v) == k ? 1.0 : 0.0;
    st.buf_p[size_t(v)] = p[size_t(v * c + k)];
  }
}

// kernels/hybrid_loss.h's SSIM terms at valid position i of a plane's statistics.
SsimTerms terms_at(const PlaneStats& s, size_t i) {
  return SsimTerms(s.mt[i], s.mp[i], s.tt[i], s.pp[i], s.tp[i]);
}

// MS-SSIM's downscaling: x (h x w) padded to even sizes by repeating its last row / column, averaged over 2 x 2.
void pool2(const std::vector<double>& x, int64_t h, int64_t w, std::vector<double>& out) {
  const int64_t h2 = (h + 1) / 2, w2 = (w + 1) / 2;
  out.assign(size_t(h2 * w2), 0.0);
  for (int64_t i = 0; i < h2; ++i)
    for (int64_t j = 0; j < w2; ++j) {
      double sum = 0;
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) sum += x[size_t(std::min(2 * i + a, h - 1) * w + std::min(2 * j + b, w - 1))];
      out[size_t(i * w2 + j)] = sum / 4;
    }
}

// The transpose of pool2: adds each of g's ((h + 1) / 2 x (w + 1) / 2) values / 4 to the pixels it averaged.
void pool2_transposed_add(const std::vector<double>& g, int64_t h, int64_t w, std::vector<double>& out) {
  const int64_t h2 = (h + 1) / 2, w2 = (w + 1) / 2;
  for (int64_t i = 0; i < h2; ++i)
    for (int64_t j = 0; j < w2; ++j)
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b)
          out[size_t(std::min(2 * i + a, h - 1) * w + std::min(2 * j + b, w - 1))] += g[size_t(i * w2 + j)] / 4;
}

// A plane pair at MS-SSIM's five scales: level 0 holds the plane (load_plane), build() pools it down and computes
// every level's statistics and its mean m[i] (cs at levels 0..3, SSIM at level 4).
struct Pyramid {
  std::array<PlaneStats, kMsSsimScales> level;
  std::array<int64_t, kMsSsimScales> h{}, w{};
  double m[kMsSsimScales] = {};
  void build(int64_t h0, int64_t w0) {
    for (int i = 0; i < kMsSsimScales; ++i) {
      h[size_t(i)] = ms_ssim_side(h0, i);
      w[size_t(i)] = ms_ssim_side(w0, i);
      PlaneStats& st = level[size_t(i)];
      if (i > 0) {
        const PlaneStats& up = level[size_t(i - 1)];
        pool2(up.buf_t, h[size_t(i - 1)], w[size_t(i - 1)], st.buf_t);
        pool2(up.buf_p, h[size_t(i - 1)], w[size_t(i - 1)], st.buf_p);
      }
      st.compute(h[size_t(i)], w[size_t(i)]);
      const size_t valid = st.mt.size();
      double sum = 0;
      for (size_t v = 0; v < valid; ++v) sum += i + 1 < kMsSsimScales ? terms_at(st, v).cs() : terms_at(st, v).value();
      m[i] = sum / double(valid);
    }
  }
};

}  // namespace

int64_t hybrid_loss_forward(const float* logits, const void* labels, DType label_dtype, HybridLossShape s, double alpha,
                            double gamma, double* sums, int64_t* bad_label) {
  const int64_t pixels = s.h * s.w;
  const int c = s.c;
  const int64_t valid = (s.h - (kWin - 1)) * (s.w - (kWin - 1));
  for (int64_t i = 0; i < s.n * pixels; ++i) {
    const int64_t y = label_at(labels, label_dtype, i);
    if (y < 0 || y >= c) {
      *bad_label = y;
      return i;
    }
  }
  std::vector<std::array<double, 4>> partial(size_t(s.n));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.n; ++n) {
    std::vector<double> p;
    softmax(logits + n * pixels * c, pixels, c, p);
    double focal = 0, inter = 0, uni = 0;
    for (int64_t v = 0; v < pixels; ++v) {
      const int64_t y = label_at(labels, label_dtype, n * pixels + v);
      for (int k = 0; k < c; ++k) {
        const double pk = p[size_t(v * c + k)], t = k == y ? 1.0 : 0.0;
        inter += t * pk;
        uni += t + pk - t * pk;
      }
      const double q = p[size_t(v * c + y)] + kFocalEps;
      focal += alpha * focal_power(1 - q, gamma) * -std::log(q);
    }
    double ssim = 0;
    PlaneStats st;
    Pyramid pyramid;
    for (int k = 0; k < c; ++k) {
      if (s.multiscale) {
        load_plane(p, labels, label_dtype, n * pixels, pixels, c, k, pyramid.level[0]);
        pyramid.build(s.h, s.w);
        double dm[kMsSsimScales];
        ssim += ms_ssim_combine(pyramid.m, dm);
        continue;
      }
      load_plane(p, labels, label_dtype, n * pixels, pixels, c, k, st);
      st.compute(s.h, s.w);
      double plane = 0;
      for (size_t i = 0; i < size_t(valid); ++i) plane += terms_at(st, i).value();
      ssim += plane / double(valid);
    }
    partial[size_t(n)] = {focal, inter, uni, ssim};
  }
  for (int i = 0; i < 4; ++i) sums[i] = 0;
  for (const auto& q : partial)
    for (int i = 0; i < 4; ++i) sums[i] += q[size_t(i)];
  return -1;
}

void hybrid_loss_backward(const float* logits, const void* labels, DType label_dtype, HybridLossShape s, double alpha,
                          double gamma, const double* coef, float* grad_logits) {
  const int64_t pixels = s.h * s.w;
  const int c = s.c;
  const int64_t valid = (s.h - (kWin - 1)) * (s.w - (kWin - 1));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.n; ++n) {
    std::vector<double> p, gp(size_t(pixels * c));
    softmax(logits + n * pixels * c, pixels, c, p);
    // Focal and IoU: dI/dp = t, dU/dp = 1 - t; d focal/dq = alpha gamma (1 - q)^(gamma - 1) log q - alpha (1 - q)^gamma
    // / q.
    for (int64_t v = 0; v < pixels; ++v) {
      const int64_t y = label_at(labels, label_dtype, n * pixels + v);
      for (int k = 0; k < c; ++k) {
        const double t = k == y ? 1.0 : 0.0;
        gp[size_t(v * c + k)] = coef[1] * t + coef[2] * (1 - t);
      }
      const double q = p[size_t(v * c + y)] + kFocalEps;
      const double dq =
          alpha * gamma * focal_power(1 - q, gamma - 1) * std::log(q) - alpha * focal_power(1 - q, gamma) / q;
      gp[size_t(v * c + y)] += coef[0] * dq;
    }
    // SSIM: at each valid position, dS/dmp = (2 mt (A2 - A1) - S 2 mp (B2 - B1)) / (B1 B2), dS/dG(tp) = 2 A1 / (B1 B2),
    // dS/dG(pp) = -S / B2; then d/dp = G' dmp + 2 p G' dpp + t G' dtp with G' the transposed blur.
    PlaneStats st;
    std::vector<double> d_mp(static_cast<size_t>(valid)), d_pp(static_cast<size_t>(valid)),
        d_tp(static_cast<size_t>(valid)), g_mp, g_pp, g_tp, tmp;
    const double w = coef[3] / double(valid);
    Pyramid pyramid;
    std::vector<double> g_level, g_finer;
    for (int k = 0; k < c; ++k) {
      if (s.multiscale) {
        // dL/dm_i = coef[3] dMS/dm_i; each level's gradient at its pixels, then pooled back up through the finer
        // levels (transposed), onto the plane's pixels.
        load_plane(p, labels, label_dtype, n * pixels, pixels, c, k, pyramid.level[0]);
        pyramid.build(s.h, s.w);
        double dm[kMsSsimScales];
        ms_ssim_combine(pyramid.m, dm);
        for (int i = kMsSsimScales - 1; i >= 0; --i) {
          const PlaneStats& ls = pyramid.level[size_t(i)];
          const int64_t h = pyramid.h[size_t(i)], wd = pyramid.w[size_t(i)], lv = int64_t(ls.mt.size());
          const double wi = coef[3] * dm[i] / double(lv);
          d_mp.resize(size_t(lv));
          d_pp.resize(size_t(lv));
          d_tp.resize(size_t(lv));
          for (size_t v = 0; v < size_t(lv); ++v) {
            if (i + 1 < kMsSsimScales)
              terms_at(ls, v).cs_gradient(wi, &d_mp[v], &d_pp[v], &d_tp[v]);
            else
              terms_at(ls, v).gradient(wi, &d_mp[v], &d_pp[v], &d_tp[v]);
          }
          blur_transposed(d_mp, h, wd, tmp, g_mp);
          blur_transposed(d_pp, h, wd, tmp, g_pp);
          blur_transposed(d_tp, h, wd, tmp, g_tp);
          g_finer.resize(size_t(h * wd));
          for (size_t v = 0; v < size_t(h * wd); ++v)
            g_finer[v] = g_mp[v] + 2 * ls.buf_p[v] * g_pp[v] + ls.buf_t[v] * g_tp[v];
          if (i + 1 < kMsSsimScales) pool2_transposed_add(g_level, h, wd, g_finer);
          g_level.swap(g_finer);
        }
        for (int64_t v = 0; v < pixels; ++v) gp[size_t(v * c + k)] += g_level[size_t(v)];
        continue;
      }
      d_mp.resize(size_t(valid));
      d_pp.resize(size_t(valid));
      d_tp.resize(size_t(valid));
      load_plane(p, labels, label_dtype, n * pixels, pixels, c, k, st);
      st.compute(s.h, s.w);
      for (size_t i = 0; i < size_t(valid); ++i) {
        terms_at(st, i).gradient(w, &d_mp[i], &d_pp[i], &d_tp[i]);
      }
      blur_transposed(d_mp, s.h, s.w, tmp, g_mp);
      blur_transposed(d_pp, s.h, s.w, tmp, g_pp);
      blur_transposed(d_tp, s.h, s.w, tmp, g_tp);
      for (int64_t v = 0; v < pixels; ++v)
        gp[size_t(v * c + k)] +=
            g_mp[size_t(v)] + 2 * st.buf_p[size_t(v)] * g_pp[size_t(v)] + st.buf_t[size_t(v)] * g_tp[size_t(v)];
    }
    // Through the softmax.
    for (int64_t v = 0; v < pixels; ++v) {
      const double* pv = p.data() + v * c;
      const double* gv = gp.data() + v * c;
      double dot = 0;
      for (int k = 0; k < c; ++k) dot += pv[k] * gv[k];
      float* out = grad_logits + (n * pixels + v) * c;
      for (int k = 0; k < c; ++k) out[k] = static_cast<float>(pv[k] * (gv[k] - dot));
    }
  }
}

namespace {

size_t workspace_bytes(HybridLossShape) {
  return 0;
}

void forward_entry(const float* logits, const void* labels, DType label_dtype, HybridLossShape s, double alpha,
                   double gamma, void*, double* sums, int64_t* bad, cudaStream_t) {
  bad[0] = hybrid_loss_forward(logits, labels, label_dtype, s, alpha, gamma, sums, &bad[1]);
}

void finish(const double* sums, double pixels, double planes, float* loss, float* parts, double* coef, cudaStream_t) {
  hybrid_loss_values(sums, pixels, planes, loss, parts, coef);
}

void backward_entry(const float* logits, const void* labels, DType label_dtype, HybridLossShape s, double alpha,
                    double gamma, const double* coef, const float* grad_out, void*, float* grad_logits, cudaStream_t) {
  const double g = grad_out[0];
  const double scaled[4] = {g * coef[0], g * coef[1], g * coef[2], g * coef[3]};
  hybrid_loss_backward(logits, labels, label_dtype, s, alpha, gamma, scaled, grad_logits);
}

}  // namespace

const HybridLossKernels hybrid_loss_kernels{1 << 20, workspace_bytes, forward_entry, finish, backward_entry};

}  // namespace unet::kernels::cpu
