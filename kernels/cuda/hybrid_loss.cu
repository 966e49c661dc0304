// CUDA twin of kernels/cpu/hybrid_loss.cpp (maths in kernels/cpu/hybrid_loss.h). One thread per item, double
// arithmetic throughout (the loss is a small part of a step; double keeps the SSIM's variances, differences of
// nearly equal numbers, as exact as the CPU's). The SSIM works on planes [n c][h][w] of t and p, at one level (SSIM)
// or five (MS-SSIM, each pooled 2 x 2 from the last):
//   forward: hl_softmax (each pixel's softmax into P), hl_planes (level 0's t and p planes), per level hl_pool (from
//   the finer level), hl_hblur (the five horizontal window sums of each row), hl_terms (the vertical sums, and the SSIM
//   or cs at each valid position), hl_plane_means (each plane's mean, a fixed tree per plane); hl_combine (each plane's
//   SSIM or MS-SSIM and its derivatives by the means); hl_pixel_terms (focal / I / U per pixel); fixed-tree reductions
//   into sums[0..2] and sums[3]. backward: the same up to hl_combine, then from the coarsest level: hl_hblur again,
//   hl_dterms (d term/d(mu_p, G(pp), G(tp)) at each valid position, scaled), hl_vblur_t (the vertical transposed
//   window), hl_level_grad (the horizontal transposed window, plus the coarser level's gradient through the pooling);
//   hl_grad (the focal and IoU terms, level 0's gradient, the softmax Jacobian) per pixel.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/hybrid_loss.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

#include <cmath>
#include <stdexcept>
#include <string>

namespace unet::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;
constexpr int kWin = kSsimWindow;
struct Window {
  double g[kWin];  // tf.image.ssim's normalised 1D Gaussian, sigma 1.5 (computed on the host as the CPU does)
};

Window make_window() {
  const auto g = ssim_window();
  Window w{};
  for (int i = 0; i < kWin; ++i) w.g[i] = g[size_t(i)];
  return w;
}

// The planes of one level (scale) of the SSIM: level 0 is the image (h x w), MS-SSIM's levels 1..4 each the last one
// pooled 2 x 2 (kernels/hybrid_loss.h); SSIM has level 0 only.
struct Level {
  int64_t h, w;
  UNET_HOST_DEVICE int64_t w2() const { return w - (kWin - 1); }
  UNET_HOST_DEVICE int64_t valid() const { return (h - (kWin - 1)) * w2(); }
};

int level_count(HybridLossShape s) {
  return s.multiscale ? kMsSsimScales : 1;
}
Level level_of(HybridLossShape s, int i) {
  return {ms_ssim_side(s.h, i), ms_ssim_side(s.w, i)};
}

struct Layout {
  double *p, *rows, *hbuf, *pos, *partial, *t_planes[kMsSsimScales], *p_planes[kMsSsimScales], *g[kMsSsimScales];
  double *means, *dmeans, *plane_ssim;  // [planes][levels], [planes][levels], [planes]
};

// Doubles: P [pixels][c], rows [pixels][3], hbuf [planes][h][w - 10][5] (its first 3/5 reused for the transposed
// vertical sums), pos [planes][valid][3], partial [kMaxBlocks][3], then per level t, p and the gradient planes
// [planes][h_i][w_i], and the per-plane means, their derivatives and the plane's SSIM (or MS-SSIM).
Layout layout(void* workspace, HybridLossShape s, int64_t* doubles = nullptr) {
  const int64_t pixels = s.n * s.h * s.w, planes = s.n * s.c, levels = level_count(s);
  const Level l0 = level_of(s, 0);
  Layout l;
  double* const base = static_cast<double*>(workspace);  // null: only the size is wanted
  int64_t used = 0;
  const auto take = [&](int64_t n) {
    double* r = base ? base + used : nullptr;
    used += n;
    return r;
  };
  l.p = take(pixels * s.c);
  l.rows = take(pixels * 3);
  l.hbuf = take(planes * l0.h * l0.w2() * 5);
  l.pos = take(planes * l0.valid() * 3);
  l.partial = take(kMaxBlocks * 3);
  for (int i = 0; i < kMsSsimScales; ++i) {
    const Level li = level_of(s, i);
    const int64_t n = i < levels ? planes * li.h * li.w : 0;
    l.t_planes[i] = take(n);
    l.p_planes[i] = take(n);
    l.g[i] = take(n);
  }
  l.means = take(planes * levels);
  l.dmeans = take(planes * levels);
  l.plane_ssim = take(planes);
  if (doubles) *doubles = used;
  return l;
}

// Softmax of each pixel into P (a kernel of its own: with the loss terms below in the same one, sm_90 spilled).
__global__ void __launch_bounds__(kThreads) hl_softmax(const float* logits, int64_t pixels, int c, double* P) {
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < pixels; v += int64_t(gridDim.x) * blockDim.x) {
    const float* z = logits + v * c;
    double* p = P + v * c;
    double m = z[0];
    for (int k = 1; k < c; ++k) m = fmax(m, double(z[k]));
    double sum = 0;
    for (int k = 0; k < c; ++k) sum += p[k] = exp(double(z[k]) - m);
    // Not p[k] / sum: a double division's out-of-line slow path beside exp() made this kernel spill on sm_90. The
    // float reciprocal refined by two Newton steps is within an ulp of 1 / sum (sum in [1, c]).
    double inv = static_cast<double>(1.0f / static_cast<float>(sum));
    inv = inv * (2.0 - sum * inv);
    inv = inv * (2.0 - sum * inv);
    for (int k = 0; k < c; ++k) p[k] *= inv;
  }
}

// rows[v] = (focal term, sum t p, sum (t + p - t p)) of each pixel. A label outside [0, c) makes the focal term NaN
// (the loss then is NaN: the device does not report it).
template <class L>
__global__ void __launch_bounds__(kThreads)
    hl_pixel_terms(const double* P, const L* labels, int64_t pixels, int c, double alpha, double gamma, double* rows) {
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < pixels; v += int64_t(gridDim.x) * blockDim.x) {
    const double* p = P + v * c;
    const int64_t y = static_cast<int64_t>(labels[v]);
    double inter = 0, uni = 0;
    for (int k = 0; k < c; ++k) {
      const double t = k == y ? 1.0 : 0.0;
      inter += t * p[k];
      uni += t + p[k] - t * p[k];
    }
    double focal = __builtin_nan("");
    if (y >= 0 && y < c) {
      const double q = p[y] + kFocalEps;
      focal = alpha * focal_power(1 - q, gamma) * -log(q);
    }
    rows[v * 3] = focal;
    rows[v * 3 + 1] = inter;
    rows[v * 3 + 2] = uni;
  }
}

// Level 0's planes: T[(n c + k) h w + v] = (label == k), Pl[...] = p_k, from the channels-last labels and P.
template <class L>
__global__ void __launch_bounds__(kThreads)
    hl_planes(const L* labels, const double* P, HybridLossShape s, double* T, double* Pl) {
  const int64_t hw = s.h * s.w, items = s.n * s.c * hw;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < items; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = i % hw, plane = i / hw, n = plane / s.c;
    const int k = static_cast<int>(plane % s.c);
    T[i] = static_cast<int64_t>(labels[n * hw + v]) == k ? 1.0 : 0.0;
    Pl[i] = P[(n * hw + v) * s.c + k];
  }
}

// MS-SSIM's downscaling of t and p planes (a x b) to (a + 1) / 2 x (b + 1) / 2: the last row / column repeated to
// even sizes, the mean of each 2 x 2 block (the CPU's order: rows then columns of the block).
__global__ void __launch_bounds__(kThreads)
    hl_pool(const double* T, const double* Pl, int64_t planes, Level fine, Level coarse, double* Tc, double* Pc) {
  const int64_t items = planes * coarse.h * coarse.w;
  for (int64_t it = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; it < items; it += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = it % coarse.w, i = (it / coarse.w) % coarse.h, plane = it / (coarse.w * coarse.h);
    double st = 0, sp = 0;
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) {
        const int64_t r = 2 * i + a < fine.h ? 2 * i + a : fine.h - 1, c = 2 * j + b < fine.w ? 2 * j + b : fine.w - 1;
        st += T[(plane * fine.h + r) * fine.w + c];
        sp += Pl[(plane * fine.h + r) * fine.w + c];
      }
    Tc[it] = st / 4;
    Pc[it] = sp / 4;
  }
}

// hbuf[(plane h + r) w2 + j][0..4] = horizontal window sums of t, p, t t, p p, t p at row r, columns j..j+10.
__global__ void __launch_bounds__(kThreads)
    hl_hblur(const double* T, const double* Pl, int64_t planes, Level lv, Window win, double* hbuf) {
  const int64_t w2 = lv.w2(), items = planes * lv.h * w2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < items; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % w2, row = i / w2;  // row = plane h + r
    double a[5] = {0, 0, 0, 0, 0};
    for (int q = 0; q < kWin; ++q) {
      const int64_t v = row * lv.w + j + q;
      const double t = T[v], p = Pl[v], g = win.g[q];
      a[0] += g * t;
      a[1] += g * p;
      a[2] += g * (t * t);
      a[3] += g * (p * p);
      a[4] += g * (t * p);
    }
    for (int q = 0; q < 5; ++q) hbuf[i * 5 + q] = a[q];
  }
}

// The SSIM terms at valid position (i, j) of a plane: the vertical window over hbuf.
__device__ SsimTerms terms_at(const double* hbuf, int64_t plane, int64_t i, int64_t j, const Level& lv,
                              const Window& win) {
  double st[5] = {0, 0, 0, 0, 0};
  const int64_t w2 = lv.w2();
  for (int q = 0; q < kWin; ++q) {
    const double* row = hbuf + ((plane * lv.h + i + q) * w2 + j) * 5;
    for (int m = 0; m < 5; ++m) st[m] += win.g[q] * row[m];
  }
  return SsimTerms(st[0], st[1], st[2], st[3], st[4]);
}

// pos[item] = the SSIM (last level) or MS-SSIM's cs (levels before it) at each valid position.
__global__ void __launch_bounds__(kThreads)
    hl_terms(const double* hbuf, int64_t planes, Level lv, Window win, bool last, double* pos) {
  const int64_t w2 = lv.w2(), valid = lv.valid(), items = planes * valid;
  for (int64_t it = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; it < items; it += int64_t(gridDim.x) * blockDim.x) {
    const SsimTerms t = terms_at(hbuf, it / valid, (it % valid) / w2, it % w2, lv, win);
    pos[it] = last ? t.value() : t.cs();
  }
}

// means[plane levels + level] = the mean of a plane's `valid` values in pos: one block per plane, each thread its
// strided share in order, then a fixed shared-memory tree.
__global__ void __launch_bounds__(kThreads)
    hl_plane_means(const double* pos, int64_t valid, int levels, int level, double* means) {
  __shared__ double red[kThreads];
  const int64_t plane = blockIdx.x;
  double acc = 0;
  for (int64_t v = threadIdx.x; v < valid; v += blockDim.x) acc += pos[plane * valid + v];
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) red[threadIdx.x] += red[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) means[plane * levels + level] = red[0] / double(valid);
}

// Per plane: its SSIM (one level: the mean, derivative 1) or MS-SSIM with d/d(mean_i) (kernels/hybrid_loss.h).
__global__ void __launch_bounds__(kThreads)
    hl_combine(const double* means, int64_t planes, int levels, double* plane_ssim, double* dmeans) {
  for (int64_t pl = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; pl < planes;
       pl += int64_t(gridDim.x) * blockDim.x) {
    if (levels == 1) {
      plane_ssim[pl] = means[pl];
      dmeans[pl] = 1;
    } else {
      plane_ssim[pl] = ms_ssim_combine(means + pl * kMsSsimScales, dmeans + pl * kMsSsimScales);
    }
  }
}

// pos[item][0..2] = w d(term)/d(mp, G(pp), G(tp)) at each valid position, w = grad_out coef[3] dmeans / valid, the
// term the SSIM (last level) or cs.
__global__ void __launch_bounds__(kThreads)
    hl_dterms(const double* hbuf, int64_t planes, Level lv, Window win, bool last, const double* dmeans, int levels,
              int level, const double* coef, const float* grad_out, double* pos) {
  const int64_t w2 = lv.w2(), valid = lv.valid(), items = planes * valid;
  const double w = double(grad_out[0]) * coef[3] / double(valid);
  for (int64_t it = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; it < items; it += int64_t(gridDim.x) * blockDim.x) {
    const int64_t plane = it / valid;
    const SsimTerms t = terms_at(hbuf, plane, (it % valid) / w2, it % w2, lv, win);
    const double wp = w * dmeans[plane * levels + level];
    if (last)
      t.gradient(wp, &pos[it * 3], &pos[it * 3 + 1], &pos[it * 3 + 2]);
    else
      t.cs_gradient(wp, &pos[it * 3], &pos[it * 3 + 1], &pos[it * 3 + 2]);
  }
}

// ubuf[(plane h + r) w2 + j][0..2] = sum over the valid rows i with 0 <= r - i < 11 of g[r - i] pos[(plane, i, j)].
__global__ void __launch_bounds__(kThreads)
    hl_vblur_t(const double* pos, int64_t planes, Level lv, Window win, double* ubuf) {
  const int64_t w2 = lv.w2(), h2 = lv.h - (kWin - 1), items = planes * lv.h * w2;
  for (int64_t it = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; it < items; it += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = it % w2, r = (it / w2) % lv.h, plane = it / (w2 * lv.h);
    double a[3] = {0, 0, 0};
    for (int q = 0; q < kWin; ++q) {
      const int64_t i = r - q;
      if (i < 0 || i >= h2) continue;
      const double* d = pos + ((plane * h2 + i) * w2 + j) * 3;
      for (int m = 0; m < 3; ++m) a[m] += win.g[q] * d[m];
    }
    for (int m = 0; m < 3; ++m) ubuf[it * 3 + m] = a[m];
  }
}

// G[plane][r][col] = dL/dp of the level's pixel: the transposed horizontal window over ubuf (um + 2 p upp + t utp),
// plus the coarser level's gradient spread back through the pooling (gcoarse, null at the last level: each fine pixel
// takes its block's value / 4, twice along an axis where it also stood in for the padding).
__global__ void __launch_bounds__(kThreads)
    hl_level_grad(const double* ubuf, const double* T, const double* Pl, int64_t planes, Level lv, Window win,
                  const double* gcoarse, Level coarse, double* G) {
  const int64_t w2 = lv.w2(), items = planes * lv.h * lv.w;
  for (int64_t it = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; it < items; it += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = it % lv.w, row = it / lv.w, r = row % lv.h, plane = row / lv.h;
    double um = 0, upp = 0, utp = 0;
    for (int q = 0; q < kWin; ++q) {
      const int64_t j = col - q;
      if (j < 0 || j >= w2) continue;
      const double* u = ubuf + (row * w2 + j) * 3;
      um += win.g[q] * u[0];
      upp += win.g[q] * u[1];
      utp += win.g[q] * u[2];
    }
    double g = um + 2 * Pl[it] * upp + T[it] * utp;
    if (gcoarse) {
      const double times = (r == lv.h - 1 && lv.h % 2 ? 2.0 : 1.0) * (col == lv.w - 1 && lv.w % 2 ? 2.0 : 1.0);
      g += times * gcoarse[(plane * coarse.h + r / 2) * coarse.w + col / 2] / 4;
    }
    G[it] = g;
  }
}

// Per pixel: dL/dp for every class (focal and IoU terms, then the SSIM's from level 0's gradient planes G), then
// through the softmax Jacobian into grad.
template <class L>
__global__ void __launch_bounds__(kThreads)
    hl_grad(const double* P, const L* labels, HybridLossShape s, double alpha, double gamma, const double* coef,
            const float* grad_out, const double* G, float* grad) {
  const int64_t hw = s.h * s.w, pixels = s.n * hw;
  const double go = grad_out[0];
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < pixels; v += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = v / hw, y = static_cast<int64_t>(labels[v]);
    const double* p = P + v * s.c;
    double gp[kMaxHybridLossChannels];
    double dot = 0;
    for (int k = 0; k < s.c; ++k) {
      const double t = k == y ? 1.0 : 0.0;
      double g = go * (coef[1] * t + coef[2] * (1 - t));
      if (k == y) {
        const double q = p[k] + kFocalEps;
        g += go * coef[0] *
             (alpha * gamma * focal_power(1 - q, gamma - 1) * log(q) - alpha * focal_power(1 - q, gamma) / q);
      }
      g += G[(n * s.c + k) * hw + v % hw];
      gp[k] = g;
      dot += p[k] * g;
    }
    for (int k = 0; k < s.c; ++k) grad[v * s.c + k] = static_cast<float>(p[k] * (gp[k] - dot));
  }
}

// Fixed-tree sums of `cols` columns over `rows` rows: block b adds rows b, b + blocks, ... in order per thread, then a
// shared-memory tree; partial[b][col].
__global__ void __launch_bounds__(kThreads) hl_reduce(const double* x, int64_t rows, int cols, double* partial) {
  __shared__ double red[kThreads];
  for (int c = 0; c < cols; ++c) {
    double acc = 0;
    for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x)
      acc += x[r * cols + c];
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
      if (static_cast<int>(threadIdx.x) < half) red[threadIdx.x] += red[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x * int64_t(cols) + c] = red[0];
    __syncthreads();
  }
}

__global__ void __launch_bounds__(32) hl_reduce_final(const double* partial, int blocks, int cols, double* out) {
  const int c = threadIdx.x;
  if (c >= cols) return;
  double acc = 0;
  for (int b = 0; b < blocks; ++b) acc += partial[b * int64_t(cols) + c];
  out[c] = acc;
}

__global__ void __launch_bounds__(1)
    hl_finish(const double* sums, double pixels, double planes, float* loss, float* parts, double* coef) {
  hybrid_loss_values(sums, pixels, planes, loss, parts, coef);
}

// The block count of a reduction depends only on the row count (never on the device): the same bits everywhere.
int reduce_blocks(int64_t rows) {
  const int64_t b = (rows + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

void sum_columns(const double* x, int64_t rows, int cols, double* partial, double* out, cudaStream_t stream) {
  const int blocks = reduce_blocks(rows);
  launch(hl_reduce, dim3(blocks), dim3(kThreads), 0, stream, x, rows, cols, partial);
  launch(hl_reduce_final, dim3(1), dim3(32), 0, stream, partial, blocks, cols, out);
}

void check_args(DType label_dtype, HybridLossShape s, const char* what) {
  if (label_dtype != DType::i32 && label_dtype != DType::u8)
    throw std::invalid_argument(std::string(what) + ": labels must be i32 or u8, got " + dtype_name(label_dtype));
  if (s.c < 2 || s.c > kMaxHybridLossChannels)
    throw std::invalid_argument(std::string(what) + ": classes must be 2.." + std::to_string(kMaxHybridLossChannels) +
                                ", got " + std::to_string(s.c));
  if (ms_ssim_side(s.h, level_count(s) - 1) < kWin || ms_ssim_side(s.w, level_count(s) - 1) < kWin)
    throw std::invalid_argument(std::string(what) + ": images must be at least 11 x 11 (161 x 161 for MS-SSIM)");
}

// Softmax, level 0's planes and the coarser levels' (pooled), every level's per-plane means, and per plane its SSIM
// or MS-SSIM (with the derivatives by the means): what forward and backward share.
template <class L>
void planes_and_means(const float* logits, const L* labels, HybridLossShape s, const Layout& l, const Window& win,
                      cudaStream_t stream) {
  const int64_t pixels = s.n * s.h * s.w, planes = s.n * s.c;
  const int levels = level_count(s);
  launch(hl_softmax, grid_stride_blocks(pixels, kThreads), dim3(kThreads), 0, stream, logits, pixels, s.c, l.p);
  launch(hl_planes<L>, grid_stride_blocks(planes * s.h * s.w, kThreads), dim3(kThreads), 0, stream, labels,
         static_cast<const double*>(l.p), s, l.t_planes[0], l.p_planes[0]);
  for (int i = 0; i < levels; ++i) {
    const Level lv = level_of(s, i);
    if (i > 0)
      launch(hl_pool, grid_stride_blocks(planes * lv.h * lv.w, kThreads), dim3(kThreads), 0, stream,
             static_cast<const double*>(l.t_planes[i - 1]), static_cast<const double*>(l.p_planes[i - 1]), planes,
             level_of(s, i - 1), lv, l.t_planes[i], l.p_planes[i]);
    launch(hl_hblur, grid_stride_blocks(planes * lv.h * lv.w2(), kThreads), dim3(kThreads), 0, stream,
           static_cast<const double*>(l.t_planes[i]), static_cast<const double*>(l.p_planes[i]), planes, lv, win,
           l.hbuf);
    launch(hl_terms, grid_stride_blocks(planes * lv.valid(), kThreads), dim3(kThreads), 0, stream,
           static_cast<const double*>(l.hbuf), planes, lv, win, i + 1 == levels, l.pos);
    launch(hl_plane_means, dim3(static_cast<unsigned>(planes)), dim3(kThreads), 0, stream,
           static_cast<const double*>(l.pos), lv.valid(), levels, i, l.means);
  }
  launch(hl_combine, grid_stride_blocks(planes, kThreads), dim3(kThreads), 0, stream,
         static_cast<const double*>(l.means), planes, levels, l.plane_ssim, l.dmeans);
}

template <class L>
void forward_typed(const float* logits, const L* labels, HybridLossShape s, double alpha, double gamma, void* workspace,
                   double* sums, cudaStream_t stream) {
  const Layout l = layout(workspace, s);
  const Window win = make_window();
  const int64_t pixels = s.n * s.h * s.w;
  planes_and_means(logits, labels, s, l, win, stream);
  launch(hl_pixel_terms<L>, grid_stride_blocks(pixels, kThreads), dim3(kThreads), 0, stream,
         static_cast<const double*>(l.p), labels, pixels, s.c, alpha, gamma, l.rows);
  sum_columns(l.rows, pixels, 3, l.partial, sums, stream);
  sum_columns(l.plane_ssim, s.n * s.c, 1, l.partial, sums + 3, stream);
}

template <class L>
void backward_typed(const float* logits, const L* labels, HybridLossShape s, double alpha, double gamma,
                    const double* coef, const float* grad_out, void* workspace, float* grad, cudaStream_t stream) {
  const Layout l = layout(workspace, s);
  const Window win = make_window();
  const int64_t pixels = s.n * s.h * s.w, planes = s.n * s.c;
  const int levels = level_count(s);
  planes_and_means(logits, labels, s, l, win, stream);
  // Coarsest level first: each level's gradient planes take the coarser one's through the pooling.
  for (int i = levels - 1; i >= 0; --i) {
    const Level lv = level_of(s, i), coarse = level_of(s, i + 1);
    launch(hl_hblur, grid_stride_blocks(planes * lv.h * lv.w2(), kThreads), dim3(kThreads), 0, stream,
           static_cast<const double*>(l.t_planes[i]), static_cast<const double*>(l.p_planes[i]), planes, lv, win,
           l.hbuf);
    launch(hl_dterms, grid_stride_blocks(planes * lv.valid(), kThreads), dim3(kThreads), 0, stream,
           static_cast<const double*>(l.hbuf), planes, lv, win, i + 1 == levels, static_cast<const double*>(l.dmeans),
           levels, i, coef, grad_out, l.pos);
    double* ubuf = l.hbuf;  // hbuf is no longer needed: the transposed sums take its first 3/5
    launch(hl_vblur_t, grid_stride_blocks(planes * lv.h * lv.w2(), kThreads), dim3(kThreads), 0, stream,
           static_cast<const double*>(l.pos), planes, lv, win, ubuf);
    launch(hl_level_grad, grid_stride_blocks(planes * lv.h * lv.w, kThreads), dim3(kThreads), 0, stream,
           static_cast<const double*>(ubuf), static_cast<const double*>(l.t_planes[i]),
           static_cast<const double*>(l.p_planes[i]), planes, lv, win,
           static_cast<const double*>(i + 1 < levels ? l.g[i + 1] : nullptr), coarse, l.g[i]);
  }
  launch(hl_grad<L>, grid_stride_blocks(pixels, kThreads), dim3(kThreads), 0, stream, static_cast<const double*>(l.p),
         labels, s, alpha, gamma, coef, grad_out, static_cast<const double*>(l.g[0]), grad);
}

}  // namespace

size_t hybrid_loss_workspace_bytes(HybridLossShape s) {
  int64_t doubles = 0;
  layout(nullptr, s, &doubles);
  return static_cast<size_t>(doubles) * sizeof(double);
}

void hybrid_loss_forward(const float* logits, const void* labels, DType label_dtype, HybridLossShape s, double alpha,
                         double gamma, void* workspace, double* sums, int64_t* bad, cudaStream_t stream) {
  check_args(label_dtype, s, "cuda hybrid_loss_forward");
  (void)bad;  // stays -1 (the caller's): a bad label makes the loss NaN instead
  if (label_dtype == DType::i32)
    forward_typed(logits, static_cast<const int32_t*>(labels), s, alpha, gamma, workspace, sums, stream);
  else
    forward_typed(logits, static_cast<const uint8_t*>(labels), s, alpha, gamma, workspace, sums, stream);
}

void hybrid_loss_finish(const double* sums, double pixels, double planes, float* loss, float* parts, double* coef,
                        cudaStream_t stream) {
  launch(hl_finish, dim3(1), dim3(1), 0, stream, sums, pixels, planes, loss, parts, coef);
}

void hybrid_loss_backward(const float* logits, const void* labels, DType label_dtype, HybridLossShape s, double alpha,
                          double gamma, const double* coef, const float* grad_out, void* workspace, float* grad_logits,
                          cudaStream_t stream) {
  check_args(label_dtype, s, "cuda hybrid_loss_backward");
  if (label_dtype == DType::i32)
    backward_typed(logits, static_cast<const int32_t*>(labels), s, alpha, gamma, coef, grad_out, workspace, grad_logits,
                   stream);
  else
    backward_typed(logits, static_cast<const uint8_t*>(labels), s, alpha, gamma, coef, grad_out, workspace, grad_logits,
                   stream);
}

const HybridLossKernels hybrid_loss_kernels{kMaxHybridLossChannels, hybrid_loss_workspace_bytes, hybrid_loss_forward,
                                            hybrid_loss_finish, hybrid_loss_backward};

}  // namespace unet::kernels::cuda
