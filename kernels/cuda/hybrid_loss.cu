// CUDA twin of kernels/cpu/hybrid_loss.cpp (maths in kernels/cpu/hybrid_loss.h). One thread per item, double
// arithmetic throughout (the loss is a small part of a step; double keeps the SSIM's variances, differences of
// nearly equal numbers, as exact as the CPU's):
//   forward: hl_softmax (each pixel's softmax into P), hl_pixel_terms (its focal / I / U terms), hl_hblur (the five
//   horizontal window sums of each plane row), hl_ssim (the vertical sums and the SSIM at each valid position), two
//   fixed-tree reductions into sums[0..2] and sums[3]; backward: hl_softmax and hl_hblur again, hl_dssim (dSSIM/d(mu_p,
//   G(pp), G(tp)) at each valid position, scaled), hl_vblur_t (the vertical transposed window), hl_grad (the horizontal
//   transposed window, the focal and IoU terms, the softmax Jacobian) per pixel.
// Workspace (doubles): P [pixels][c], rows [pixels][3], hbuf [n c][h][w - 10][5] (its first 3/5 reused for the
// transposed vertical sums), pos [n c][valid][3], partial [kMaxBlocks][3].
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

struct Layout {
  double *p, *rows, *hbuf, *pos, *partial;
};

Layout layout(void* workspace, HybridLossShape s) {
  const int64_t pixels = s.n * s.h * s.w, planes = s.n * s.c, w2 = s.w - (kWin - 1), h2 = s.h - (kWin - 1);
  Layout l;
  l.p = static_cast<double*>(workspace);
  l.rows = l.p + pixels * s.c;
  l.hbuf = l.rows + pixels * 3;
  l.pos = l.hbuf + planes * s.h * w2 * 5;
  l.partial = l.pos + planes * h2 * w2 * 3;
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

// hbuf[(plane h + r) w2 + j][0..4] = horizontal window sums of t, p, t t, p p, t p at row r, columns j..j+10.
template <class L>
__global__ void __launch_bounds__(kThreads)
    hl_hblur(const L* labels, const double* P, HybridLossShape s, Window win, double* hbuf) {
  const int64_t w2 = s.w - (kWin - 1), items = s.n * s.c * s.h * w2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < items; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % w2, r = (i / w2) % s.h, plane = i / (w2 * s.h), n = plane / s.c;
    const int k = static_cast<int>(plane % s.c);
    double a[5] = {0, 0, 0, 0, 0};
    for (int q = 0; q < kWin; ++q) {
      const int64_t v = (n * s.h + r) * s.w + j + q;
      const double t = static_cast<int64_t>(labels[v]) == k ? 1.0 : 0.0, p = P[v * s.c + k], g = win.g[q];
      a[0] += g * t;
      a[1] += g * p;
      a[2] += g * (t * t);
      a[3] += g * (p * p);
      a[4] += g * (t * p);
    }
    for (int q = 0; q < 5; ++q) hbuf[i * 5 + q] = a[q];
  }
}

// The five statistics at valid position (i, j) of a plane: the vertical window over hbuf.
__device__ void stats_at(const double* hbuf, int64_t plane, int64_t i, int64_t j, int64_t h, int64_t w2,
                         const Window& win, double (&st)[5]) {
  for (double& v : st) v = 0;
  for (int q = 0; q < kWin; ++q) {
    const double* row = hbuf + ((plane * h + i + q) * w2 + j) * 5;
    for (int m = 0; m < 5; ++m) st[m] += win.g[q] * row[m];
  }
}

// pos[item] = SSIM at each valid position / valid (so the sum over a plane is its mean).
__global__ void __launch_bounds__(kThreads) hl_ssim(const double* hbuf, HybridLossShape s, Window win, double* pos) {
  const int64_t w2 = s.w - (kWin - 1), h2 = s.h - (kWin - 1), items = s.n * s.c * h2 * w2;
  for (int64_t it = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; it < items; it += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = it % w2, i = (it / w2) % h2, plane = it / (w2 * h2);
    double st[5];
    stats_at(hbuf, plane, i, j, s.h, w2, win, st);
    pos[it] = SsimTerms(st[0], st[1], st[2], st[3], st[4]).value() / double(h2 * w2);
  }
}

// pos[item][0..2] = w dS/dmp, w dS/dG(pp), w dS/dG(tp) with w = grad_out coef[3] / valid.
__global__ void __launch_bounds__(kThreads) hl_dssim(const double* hbuf, HybridLossShape s, Window win,
                                                     const double* coef, const float* grad_out, double* pos) {
  const int64_t w2 = s.w - (kWin - 1), h2 = s.h - (kWin - 1), items = s.n * s.c * h2 * w2;
  const double w = double(grad_out[0]) * coef[3] / double(h2 * w2);
  for (int64_t it = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; it < items; it += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = it % w2, i = (it / w2) % h2, plane = it / (w2 * h2);
    double st[5];
    stats_at(hbuf, plane, i, j, s.h, w2, win, st);
    SsimTerms(st[0], st[1], st[2], st[3], st[4]).gradient(w, &pos[it * 3], &pos[it * 3 + 1], &pos[it * 3 + 2]);
  }
}

// ubuf[(plane h + r) w2 + j][0..2] = sum over the valid rows i with 0 <= r - i < 11 of g[r - i] pos[(plane, i, j)].
__global__ void __launch_bounds__(kThreads) hl_vblur_t(const double* pos, HybridLossShape s, Window win, double* ubuf) {
  const int64_t w2 = s.w - (kWin - 1), h2 = s.h - (kWin - 1), items = s.n * s.c * s.h * w2;
  for (int64_t it = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; it < items; it += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = it % w2, r = (it / w2) % s.h, plane = it / (w2 * s.h);
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

// Per pixel: dL/dp for every class (focal and IoU terms, then the SSIM's through the transposed horizontal window),
// then through the softmax Jacobian into grad.
template <class L>
__global__ void __launch_bounds__(kThreads)
    hl_grad(const double* P, const L* labels, HybridLossShape s, Window win, double alpha, double gamma,
            const double* coef, const float* grad_out, const double* ubuf, float* grad) {
  const int64_t w2 = s.w - (kWin - 1), pixels = s.n * s.h * s.w;
  const double go = grad_out[0];
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < pixels; v += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = v % s.w, r = (v / s.w) % s.h, n = v / (s.w * s.h);
    const int64_t y = static_cast<int64_t>(labels[v]);
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
      double um = 0, upp = 0, utp = 0;
      for (int q = 0; q < kWin; ++q) {
        const int64_t j = col - q;
        if (j < 0 || j >= w2) continue;
        const double* u = ubuf + (((n * s.c + k) * s.h + r) * w2 + j) * 3;
        um += win.g[q] * u[0];
        upp += win.g[q] * u[1];
        utp += win.g[q] * u[2];
      }
      g += um + 2 * p[k] * upp + t * utp;
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
  if (s.h < kWin || s.w < kWin) throw std::invalid_argument(std::string(what) + ": images must be at least 11 x 11");
}

template <class L>
void forward_typed(const float* logits, const L* labels, HybridLossShape s, double alpha, double gamma, void* workspace,
                   double* sums, cudaStream_t stream) {
  const Layout l = layout(workspace, s);
  const Window win = make_window();
  const int64_t pixels = s.n * s.h * s.w, w2 = s.w - (kWin - 1), h2 = s.h - (kWin - 1);
  launch(hl_softmax, grid_stride_blocks(pixels, kThreads), dim3(kThreads), 0, stream, logits, pixels, s.c, l.p);
  launch(hl_pixel_terms<L>, grid_stride_blocks(pixels, kThreads), dim3(kThreads), 0, stream,
         static_cast<const double*>(l.p), labels, pixels, s.c, alpha, gamma, l.rows);
  launch(hl_hblur<L>, grid_stride_blocks(s.n * s.c * s.h * w2, kThreads), dim3(kThreads), 0, stream, labels,
         static_cast<const double*>(l.p), s, win, l.hbuf);
  launch(hl_ssim, grid_stride_blocks(s.n * s.c * h2 * w2, kThreads), dim3(kThreads), 0, stream,
         static_cast<const double*>(l.hbuf), s, win, l.pos);
  sum_columns(l.rows, pixels, 3, l.partial, sums, stream);
  sum_columns(l.pos, s.n * s.c * h2 * w2, 1, l.partial, sums + 3, stream);
}

template <class L>
void backward_typed(const float* logits, const L* labels, HybridLossShape s, double alpha, double gamma,
                    const double* coef, const float* grad_out, void* workspace, float* grad, cudaStream_t stream) {
  const Layout l = layout(workspace, s);
  const Window win = make_window();
  const int64_t pixels = s.n * s.h * s.w, w2 = s.w - (kWin - 1), h2 = s.h - (kWin - 1);
  launch(hl_softmax, grid_stride_blocks(pixels, kThreads), dim3(kThreads), 0, stream, logits, pixels, s.c, l.p);
  launch(hl_hblur<L>, grid_stride_blocks(s.n * s.c * s.h * w2, kThreads), dim3(kThreads), 0, stream, labels,
         static_cast<const double*>(l.p), s, win, l.hbuf);
  launch(hl_dssim, grid_stride_blocks(s.n * s.c * h2 * w2, kThreads), dim3(kThreads), 0, stream,
         static_cast<const double*>(l.hbuf), s, win, coef, grad_out, l.pos);
  double* ubuf = l.hbuf;  // hbuf is no longer needed: the transposed sums take its first 3/5
  launch(hl_vblur_t, grid_stride_blocks(s.n * s.c * s.h * w2, kThreads), dim3(kThreads), 0, stream,
         static_cast<const double*>(l.pos), s, win, ubuf);
  launch(hl_grad<L>, grid_stride_blocks(pixels, kThreads), dim3(kThreads), 0, stream, static_cast<const double*>(l.p),
         labels, s, win, alpha, gamma, coef, grad_out, static_cast<const double*>(ubuf), grad);
}

}  // namespace

size_t hybrid_loss_workspace_bytes(HybridLossShape s) {
  const int64_t pixels = s.n * s.h * s.w, planes = s.n * s.c, w2 = s.w - (kWin - 1), h2 = s.h - (kWin - 1);
  const int64_t doubles = pixels * s.c + pixels * 3 + planes * s.h * w2 * 5 + planes * h2 * w2 * 3 + kMaxBlocks * 3;
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
