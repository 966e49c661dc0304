// CPU instance and batch normalisation (see kernels/norm.h).
// Channels-last means a per-channel reduction is a sum of contiguous channel vectors, which vectorizes over c.
// Reductions run over fixed spatial chunks (about 64 KiB of x each; the size depends only on the shape) with
// double partials per (n, chunk, c), combined in chunk order: results are bitwise identical for any thread count.
// The forward statistics read x from memory once: each chunk, still in cache, gets an exact two-pass mean and sum
// of squared deviations, and the chunks are merged with Chan's pairwise formula, so a large mean never cancels
// the variance.
#include "kernels/cpu/norm.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/common/allocator.h"
#include "kernels/common/parallel.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/element.h"

namespace unet::kernels::cpu {
namespace {

// Spatial positions per reduction chunk: about 64 KiB of f32 channel rows, so a chunk stays in L2 between passes.
int64_t chunk_rows(int64_t c) {
  return std::max<int64_t>(256, 16384 / std::max<int64_t>(1, c));
}

// Calls f(c) for c in [0, C). For f16 / bf16 in blocks of 16 channels with a constant trip count: for a loop over a
// row's channels that loads or stores 16-bit values GCC picks 32 lanes, and leaves a row of 16 channels (a UNet's
// first level, its largest tensors) to the scalar remainder loop, where bf16 ran at half f32's speed. Fixed blocks
// of 16 are vectorised. The same operations in the same order: the same bits.
template <class E, class F>
inline void for_each_channel(int64_t C, F&& f) {
  int64_t c = 0;
  if constexpr (!std::is_same_v<E, element::F32>)
    for (; c + 16 <= C; c += 16)
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) f(c + j);
  for (; c < C; ++c) f(c);
}

// For every (n, chunk), calls fn(n, s_begin, s_end, partial) where partial is that item's zeroed double[c];
// returns sums[n][c] = the chunk partials added in chunk order.
template <class F>
std::vector<double> chunked_channel_sums(const NormShape& sh, int parts, F&& fn) {
  const int64_t rows = chunk_rows(sh.c);
  const int64_t chunks = std::max<int64_t>(1, (sh.s + rows - 1) / rows);
  const int64_t width = sh.c * parts;
  std::vector<double> partial(static_cast<size_t>(sh.n * chunks * width), 0.0);
  parallel_for(sh.n * chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t n = item / chunks, ch = item % chunks;
      fn(n, ch * rows, std::min(sh.s, (ch + 1) * rows), partial.data() + item * width);
    }
  });
  std::vector<double> sums(static_cast<size_t>(sh.n * width), 0.0);
  for (int64_t n = 0; n < sh.n; ++n)
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const double* p = partial.data() + (n * chunks + ch) * width;
      double* out = sums.data() + n * width;
      for (int64_t j = 0; j < width; ++j) out[j] += p[j];
    }
  return sums;
}

template <class E>
void forward_impl(const NormShape& sh, const typename E::T* x, const float* gamma, const float* beta, float eps,
                  typename E::T* y, float* mean, float* rstd) {
  const int64_t C = sh.c, S = sh.s;
  const int64_t rows = chunk_rows(C);
  const int64_t chunks = std::max<int64_t>(1, (S + rows - 1) / rows);
  // partial[(n, chunk)] = chunk mean [C] then chunk sum of squared deviations [C].
  std::vector<double> partial(static_cast<size_t>(sh.n * chunks * 2 * C), 0.0);
  parallel_for(sh.n * chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t n = item / chunks, ch = item % chunks;
      const int64_t b = ch * rows, e = std::min(S, b + rows);
      double* mu = partial.data() + item * 2 * C;
      double* m2 = mu + C;
      for (int64_t i = b; i < e; ++i) {
        const auto* row = x + (n * S + i) * C;
        for_each_channel<E>(C, [&](int64_t c) { mu[c] += E::load(row[c]); });
      }
      const double inv = e > b ? 1.0 / static_cast<double>(e - b) : 0.0;
      for (int64_t c = 0; c < C; ++c) mu[c] *= inv;
      for (int64_t i = b; i < e; ++i) {
        const auto* row = x + (n * S + i) * C;
        for_each_channel<E>(C, [&](int64_t c) {
          const double d = E::load(row[c]) - mu[c];
          m2[c] += d * d;
        });
      }
    }
  });
  // Chan et al.: merging (count na, mean ma, M2a) with (nb, mb, M2b) gives mean ma + (mb - ma) nb / (na + nb) and
  // M2a + M2b + (mb - ma)^2 na nb / (na + nb). Merged in chunk order.
  std::vector<double> m(static_cast<size_t>(sh.n * C), 0.0), var(m.size(), 0.0);
  for (int64_t n = 0; n < sh.n; ++n) {
    double count = 0.0;
    double* mo = m.data() + n * C;
    double* vo = var.data() + n * C;
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const double nb = static_cast<double>(std::min(S, (ch + 1) * rows) - ch * rows);
      const double* mu = partial.data() + (n * chunks + ch) * 2 * C;
      const double* m2 = mu + C;
      const double total = count + nb;
      for (int64_t c = 0; c < C; ++c) {
        const double delta = mu[c] - mo[c];
        mo[c] += delta * nb / total;
        vo[c] += m2[c] + delta * delta * count * nb / total;
      }
      count = total;
    }
  }
  // Per (n, c) scale a = rstd * gamma and shift beta. The apply pass computes (x - mean) * a + beta rather than
  // x * a + (beta - mean * a): the folded form cancels catastrophically when |mean| >> std.
  std::vector<float> a(static_cast<size_t>(sh.n * C)), b(static_cast<size_t>(sh.n * C));
  for (int64_t n = 0; n < sh.n; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const size_t j = static_cast<size_t>(n * C + c);
      const double r = 1.0 / std::sqrt(var[j] / static_cast<double>(S) + static_cast<double>(eps));
      mean[j] = static_cast<float>(m[j]);
      rstd[j] = static_cast<float>(r);
      const double g = gamma ? gamma[c] : 1.0;
      a[j] = static_cast<float>(r * g);
      b[j] = beta ? beta[c] : 0.f;
    }
  parallel_for(sh.n * S, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t n = i / S;
      const auto* row = x + i * C;
      const float* mu = mean + n * C;
      const float* an = a.data() + n * C;
      const float* bn = b.data() + n * C;
      auto* out = y + i * C;
      for_each_channel<E>(C, [&](int64_t c) { out[c] = E::store((E::load(row[c]) - mu[c]) * an[c] + bn[c]); });
    }
  });
}

template <class E>
void backward_impl(const NormShape& sh, const typename E::T* x, const typename E::T* dy, const float* mean,
                   const float* rstd, const float* gamma, typename E::T* dx, float* dgamma, float* dbeta) {
  const int64_t C = sh.c, S = sh.s;
  // sums[n][0..C) = sum dy, sums[n][C..2C) = sum dy * (x - mean); times rstd gives sum dy * xhat.
  std::vector<double> sums = chunked_channel_sums(sh, 2, [&](int64_t n, int64_t b, int64_t e, double* acc) {
    const float* mu = mean + n * C;
    double* s1 = acc;
    double* s2 = acc + C;
    for (int64_t i = b; i < e; ++i) {
      const auto* xr = x + (n * S + i) * C;
      const auto* gr = dy + (n * S + i) * C;
      for_each_channel<E>(C, [&](int64_t c) {
        const float g = E::load(gr[c]);
        s1[c] += g;
        s2[c] += static_cast<double>(g) * (E::load(xr[c]) - mu[c]);
      });
    }
  });
  for (int64_t n = 0; n < sh.n; ++n)
    for (int64_t c = 0; c < C; ++c) sums[static_cast<size_t>(n * 2 * C + C + c)] *= rstd[n * C + c];
  if (dgamma || dbeta)
    for (int64_t c = 0; c < C; ++c) {
      double g = 0.0, bsum = 0.0;
      for (int64_t n = 0; n < sh.n; ++n) {
        bsum += sums[static_cast<size_t>(n * 2 * C + c)];
        g += sums[static_cast<size_t>(n * 2 * C + C + c)];
      }
      if (dgamma) dgamma[c] = static_cast<float>(g);
      if (dbeta) dbeta[c] = static_cast<float>(bsum);
    }
  if (!dx) return;
  // dx = k1 * dy + k2 * (x - mean) + k3 per (n, c), with xhat = (x - mean) * rstd expanded:
  // k1 = rstd * gamma, k2 = -k1 * rstd * s2 / S, k3 = -k1 * s1 / S. (x - mean) is kept unfolded, as in the forward.
  std::vector<float> k1(static_cast<size_t>(sh.n * C)), k2(k1.size()), k3(k1.size());
  for (int64_t n = 0; n < sh.n; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const size_t j = static_cast<size_t>(n * C + c);
      const double r = rstd[j], g = gamma ? gamma[c] : 1.0;
      const double s1 = sums[static_cast<size_t>(n * 2 * C + c)], s2 = sums[static_cast<size_t>(n * 2 * C + C + c)];
      const double a = r * g, b = -a * r * s2 / static_cast<double>(S);
      k1[j] = static_cast<float>(a);
      k2[j] = static_cast<float>(b);
      k3[j] = static_cast<float>(-a * s1 / static_cast<double>(S));
    }
  parallel_for(sh.n * S, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t n = i / S;
      const auto* xr = x + i * C;
      const auto* gr = dy + i * C;
      const float* a = k1.data() + n * C;
      const float* b = k2.data() + n * C;
      const float* d = k3.data() + n * C;
      const float* mu = mean + n * C;
      auto* out = dx + i * C;
      for_each_channel<E>(
          C, [&](int64_t c) { out[c] = E::store(a[c] * E::load(gr[c]) + b[c] * (E::load(xr[c]) - mu[c]) + d[c]); });
    }
  });
}

}  // namespace

void instance_norm_forward(const NormShape& sh, DType dt, const void* x, const float* gamma, const float* beta,
                           float eps, void* y, float* mean, float* rstd) {
  element::with_element_type(dt, "instance_norm", [&](auto e) {
    using E = decltype(e);
    forward_impl<E>(sh, static_cast<const typename E::T*>(x), gamma, beta, eps, static_cast<typename E::T*>(y), mean,
                    rstd);
  });
}

void instance_norm_backward(const NormShape& sh, DType dt, const void* x, const void* dy, const float* mean,
                            const float* rstd, const float* gamma, void* dx, float* dgamma, float* dbeta) {
  element::with_element_type(dt, "instance_norm", [&](auto e) {
    using E = decltype(e);
    backward_impl<E>(sh, static_cast<const typename E::T*>(x), static_cast<const typename E::T*>(dy), mean, rstd, gamma,
                     static_cast<typename E::T*>(dx), dgamma, dbeta);
  });
}

void instance_sums(const NormShape& sh, DType dt, const void* x, float* sums) {
  element::with_element_type(dt, "instance_sums", [&](auto e) {
    using E = decltype(e);
    const auto* xt = static_cast<const typename E::T*>(x);
    const std::vector<double> total =
        chunked_channel_sums(sh, 2, [&](int64_t n, int64_t b, int64_t end, double* partial) {
          for (int64_t i = b; i < end; ++i) {
            const auto* row = xt + (n * sh.s + i) * sh.c;
            for_each_channel<E>(sh.c, [&](int64_t c) {
              const double v = E::load(row[c]);
              partial[2 * c] += v;
              partial[2 * c + 1] += v * v;
            });
          }
        });
    for (size_t i = 0; i < total.size(); ++i) sums[i] = static_cast<float>(total[i]);
  });
}

void instance_norm_stats(const NormShape& sh, const float* sums, const float* gamma, const float* beta, float eps,
                         float* mean, float* rstd, float* scale, float* shift) {
  const double inv = sh.s > 0 ? 1.0 / static_cast<double>(sh.s) : 0.0;
  for (int64_t n = 0; n < sh.n; ++n)
    for (int64_t c = 0; c < sh.c; ++c) {
      const int64_t j = n * sh.c + c;
      const double s1 = sums[2 * j], s2 = sums[2 * j + 1];
      const double m = s1 * inv;
      const double var = std::max(s2 * inv - m * m, 0.0);
      // Sums that overflowed f32 (finite activations whose squares sum past 3.4e38: absurd weights) give NaN, not an
      // infinite variance whose rstd of 0 would flatten the channel to its shift without a word: the NaN reaches the
      // logits or the loss, which the tools check.
      const double r =
          std::isfinite(s1) && std::isfinite(s2) ? 1.0 / std::sqrt(var + static_cast<double>(eps)) : std::nan("");
      mean[j] = static_cast<float>(m);
      rstd[j] = static_cast<float>(r);
      scale[j] = static_cast<float>(r * (gamma ? static_cast<double>(gamma[c]) : 1.0));
      shift[j] = beta ? beta[c] : 0.f;
    }
}

void instance_norm_apply(const NormShape& sh, DType dt, const void* x, const float* mean, const float* scale,
                         const float* shift, float slope, void* y) {
  element::with_element_type(dt, "instance_norm", [&](auto e) {
    using E = decltype(e);
    const auto* xt = static_cast<const typename E::T*>(x);
    auto* yt = static_cast<typename E::T*>(y);
    parallel_for(sh.n * sh.s, 1024, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t o = (i / sh.s) * sh.c;
        const auto* row = xt + i * sh.c;
        auto* out = yt + i * sh.c;
        for_each_channel<E>(sh.c, [&](int64_t c) {
          const float t = std::fma(E::load(row[c]) - mean[o + c], scale[o + c], shift[o + c]);
          out[c] = E::store(t > 0.f ? t : t * slope);  // the transform of kernels/cuda/conv.cu's FpropANormAct
        });
      }
    });
  });
}

void batch_norm_inference(const NormShape& sh, DType dt, const void* x, const float* running_mean,
                          const float* running_var, const float* gamma, const float* beta, float eps, bool relu,
                          void* y) {
  const int64_t C = sh.c, rows = sh.n * sh.s;
  std::vector<float> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    scale[size_t(c)] = static_cast<float>((gamma ? double(gamma[c]) : 1.0) / std::sqrt(double(running_var[c]) + eps));
    shift[size_t(c)] = beta ? beta[c] : 0.f;
  }
  element::with_element_type(dt, "batch_norm", [&](auto e) {
    using E = decltype(e);
    const auto* xs = static_cast<const typename E::T*>(x);
    auto* ys = static_cast<typename E::T*>(y);
    parallel_for(rows, 256, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = r * C + c;
          const float v = (E::load(xs[i]) - running_mean[c]) * scale[size_t(c)] + shift[size_t(c)];
          ys[i] = E::store(relu && !(v > 0.f) ? 0.f : v);
        }
    });
  });
}

void batch_norm_update_running(int64_t c, int64_t count, float eps, float momentum, const float* mean,
                               const float* rstd, float* running_mean, float* running_var) {
  const double m = momentum, bessel = double(count) / double(count - 1);
  for (int64_t j = 0; j < c; ++j) {
    const double r = rstd[j], var = std::max(0.0, 1.0 / (r * r) - double(eps));
    running_mean[j] = static_cast<float>((1.0 - m) * running_mean[j] + m * mean[j]);
    running_var[j] = static_cast<float>((1.0 - m) * running_var[j] + m * var * bessel);
  }
}

namespace {

constexpr int64_t kSumRows = 1024;  // rows per chunk of the synchronised batch norm's sums

// sums[2c] = per channel sum a, sum b over the rows, a and b given per (row, channel) by term(i, c, &a, &b), in chunks
// of kSumRows rows whose partial sums are added in chunk order.
template <class Term>
void channel_sums(int64_t rows, int64_t C, double* sums, const Term& term) {
  const int64_t chunks = std::max<int64_t>(1, (rows + kSumRows - 1) / kSumRows);
  std::vector<double> partial(size_t(chunks * 2 * C), 0.0);
  parallel_for(chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      double* p = partial.data() + k * 2 * C;
      for (int64_t r = k * kSumRows; r < std::min(rows, (k + 1) * kSumRows); ++r)
        for (int64_t c = 0; c < C; ++c) {
          double a, b;
          term(r * C + c, c, &a, &b);
          p[c] += a;
          p[C + c] += b;
        }
    }
  });
  for (int64_t j = 0; j < 2 * C; ++j) sums[j] = 0.0;
  for (int64_t k = 0; k < chunks; ++k)
    for (int64_t j = 0; j < 2 * C; ++j) sums[j] += partial[size_t(k * 2 * C + j)];
}

}  // namespace

void batch_norm_sums(const NormShape& sh, DType dt, const void* x, double* sums) {
  element::with_element_type(dt, "batch_norm", [&](auto e) {
    using E = decltype(e);
    const auto* xs = static_cast<const typename E::T*>(x);
    channel_sums(sh.n * sh.s, sh.c, sums, [&](int64_t i, int64_t, double* a, double* b) {
      const double v = E::load(xs[i]);
      *a = v;
      *b = v * v;
    });
  });
}

void batch_norm_stats(int64_t c, int64_t count, float eps, const double* sums, float* mean, float* var, float* rstd) {
  for (int64_t j = 0; j < c; ++j) {
    const double m = sums[j] / double(count), v = std::max(0.0, sums[c + j] / double(count) - m * m);
    mean[j] = static_cast<float>(m);
    var[j] = static_cast<float>(v);
    rstd[j] = static_cast<float>(1.0 / std::sqrt(v + double(eps)));
  }
}

void batch_norm_backward_sums(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                              const float* mean, const float* rstd, bool relu, double* sums, float* dgamma,
                              float* dbeta) {
  element::with_element_type(dt, "batch_norm", [&](auto e) {
    using E = decltype(e);
    const auto *xs = static_cast<const typename E::T*>(x), *ys = static_cast<const typename E::T*>(y),
               *ds = static_cast<const typename E::T*>(dy);
    channel_sums(sh.n * sh.s, sh.c, sums, [&](int64_t i, int64_t c, double* a, double* b) {
      const double g = relu && !(E::load(ys[i]) > 0.f) ? 0.0 : double(E::load(ds[i]));
      *a = g;
      *b = g * ((double(E::load(xs[i])) - mean[c]) * rstd[c]);
    });
  });
  for (int64_t c = 0; c < sh.c; ++c) {
    if (dbeta) dbeta[c] = static_cast<float>(sums[c]);
    if (dgamma) dgamma[c] = static_cast<float>(sums[sh.c + c]);
  }
}

void batch_norm_backward_apply(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                               const float* mean, const float* rstd, const float* gamma, const double* sums,
                               int64_t count, bool relu, void* dx) {
  const int64_t C = sh.c, rows = sh.n * sh.s;
  const double inv_count = 1.0 / double(count);  // products, as the CUDA twin
  element::with_element_type(dt, "batch_norm", [&](auto e) {
    using E = decltype(e);
    const auto *xs = static_cast<const typename E::T*>(x), *ys = static_cast<const typename E::T*>(y),
               *ds = static_cast<const typename E::T*>(dy);
    auto* out = static_cast<typename E::T*>(dx);
    parallel_for(rows, 256, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = r * C + c;
          const double g = relu && !(E::load(ys[i]) > 0.f) ? 0.0 : double(E::load(ds[i]));
          const double xhat = (double(E::load(xs[i])) - mean[c]) * rstd[c];
          const double v = (gamma ? double(gamma[c]) : 1.0) * rstd[c] *
                           (g - sums[c] * inv_count - xhat * (sums[C + c] * inv_count));
          out[i] = E::store(static_cast<float>(v));
        }
    });
  });
}

namespace {
// Bytes from the CPU backend's memory pool for the length of a call.
struct HostBuffer {
  size_t bytes;
  void* data;
  explicit HostBuffer(size_t n) : bytes(n), data(HostAllocator::instance().allocate(n)) {}
  ~HostBuffer() { HostAllocator::instance().deallocate(data, bytes); }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
};
}  // namespace

// No fused kernel here: the norm, then leaky ReLU in place (forward), and the activation's gradient into a buffer of
// x's size before the norm's (backward).
const NormKernels norm_kernels{
    .instance_norm_forward = [](const NormShape& sh, DType dt, const void* x, const float* gamma, const float* beta,
                                float eps, void* y, float* mean, float* rstd,
                                cudaStream_t) { instance_norm_forward(sh, dt, x, gamma, beta, eps, y, mean, rstd); },
    .instance_norm_backward =
        [](const NormShape& sh, DType dt, const void* x, const void* dy, const float* mean, const float* rstd,
           const float* gamma, void* dx, float* dgamma, float* dbeta,
           cudaStream_t) { instance_norm_backward(sh, dt, x, dy, mean, rstd, gamma, dx, dgamma, dbeta); },
    .instance_norm_leaky_relu_forward =
        [](const NormShape& sh, DType dt, const void* x, const float* gamma, const float* beta, float eps, float slope,
           void* y, float* mean, float* rstd, cudaStream_t) {
          instance_norm_forward(sh, dt, x, gamma, beta, eps, y, mean, rstd);
          leaky_relu_forward(dt, y, slope, y, sh.n * sh.s * sh.c);
        },
    .instance_norm_leaky_relu_backward =
        [](const NormShape& sh, DType dt, const void* x, const void* y, const void* dy, const float* mean,
           const float* rstd, const float* gamma, float slope, void* dx, float* dgamma, float* dbeta, cudaStream_t) {
          const int64_t n = sh.n * sh.s * sh.c;
          HostBuffer dz(static_cast<size_t>(n) * dtype_size(dt));  // the gradient reaching the normalised value
          leaky_relu_backward(dt, y, dy, slope, dz.data, n);
          instance_norm_backward(sh, dt, x, dz.data, mean, rstd, gamma, dx, dgamma, dbeta);
        },
    .instance_norm_stats =
        [](const NormShape& sh, const float* sums, const float* gamma, const float* beta, float eps, float* mean,
           float* rstd, float* scale, float* shift,
           cudaStream_t) { instance_norm_stats(sh, sums, gamma, beta, eps, mean, rstd, scale, shift); },
    .instance_norm_apply = [](const NormShape& sh, DType dt, const void* x, const float* mean, const float* scale,
                              const float* shift, float slope, void* y,
                              cudaStream_t) { instance_norm_apply(sh, dt, x, mean, scale, shift, slope, y); },
    .batch_norm_inference =
        [](const NormShape& sh, DType dt, const void* x, const float* running_mean, const float* running_var,
           const float* gamma, const float* beta, float eps, bool relu, void* y,
           cudaStream_t) { batch_norm_inference(sh, dt, x, running_mean, running_var, gamma, beta, eps, relu, y); },
    .batch_norm_update_running =
        [](int64_t c, int64_t count, float eps, float momentum, const float* mean, const float* rstd,
           float* running_mean, float* running_var,
           cudaStream_t) { batch_norm_update_running(c, count, eps, momentum, mean, rstd, running_mean, running_var); },
    .batch_norm_sums = [](const NormShape& sh, DType dt, const void* x, double* sums,
                          cudaStream_t) { batch_norm_sums(sh, dt, x, sums); },
    .batch_norm_stats = [](int64_t c, int64_t count, float eps, const double* sums, float* mean, float* var,
                           float* rstd, cudaStream_t) { batch_norm_stats(c, count, eps, sums, mean, var, rstd); },
    .batch_norm_backward_sums =
        [](const NormShape& sh, DType dt, const void* x, const void* y, const void* dy, const float* mean,
           const float* rstd, bool relu, double* sums, float* dgamma, float* dbeta,
           cudaStream_t) { batch_norm_backward_sums(sh, dt, x, y, dy, mean, rstd, relu, sums, dgamma, dbeta); },
    .batch_norm_backward_apply =
        [](const NormShape& sh, DType dt, const void* x, const void* y, const void* dy, const float* mean,
           const float* rstd, const float* gamma, const double* sums, int64_t count, bool relu, void* dx,
           cudaStream_t) { batch_norm_backward_apply(sh, dt, x, y, dy, mean, rstd, gamma, sums, count, relu, dx); },
};

}  // namespace unet::kernels::cpu
