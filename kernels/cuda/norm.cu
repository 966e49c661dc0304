// CUDA instance normalisation (forward, backward, and fused with leaky ReLU) and batch norm's evaluation and running
// statistics, the CUDA twin of kernels/cpu/norm.cpp.
// Layout channels-last [n, s, c]: a block takes 32 adjacent channels (one coalesced 128-byte row segment per warp)
// and 8 spatial rows at a time. Statistics are deterministic without atomics, in three launches:
//   1. partial: block (channel tile, spatial chunk of kChunkRows, n) sums its chunk in double per thread, then a
//      fixed shared-memory tree over the 8 row-threads; one partial per (n, chunk, c);
//   2. finalize: block (channel tile, n) sums the chunk partials (thread ty takes chunks ty, ty+8, ... in order, then
//      the same tree) and turns the sums into per-(n, c) coefficients;
//   3. apply: elementwise over x.
// The chunk size depends only on the shape, so the summation order, and the bits, are the same on every run and
// under every schedule. The forward sums are shifted by the first value of each (n, c) (x[n, 0, c]): with a common
// shift the chunk partials are plain sums, and in double the variance does not cancel when |mean| >> std.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/scratch.cuh"
// clang-format on

#include <stdexcept>

namespace unet::kernels::cuda {
namespace {

constexpr int kTileC = 32;            // channels per block (threadIdx.x)
constexpr int kRowsY = 8;             // spatial rows per block step (threadIdx.y)
constexpr int64_t kChunkRows = 1024;  // spatial rows per partial: 128 per thread, enough to hide the final combine
// Threads per block, each shared by the launches and the kernels' __launch_bounds__ so that they cannot drift apart:
constexpr int kStatThreads = kTileC * kRowsY;  // partial and finalize kernels, block (kTileC, kRowsY)
constexpr int kApplyThreads = 256;             // elementwise apply kernels
constexpr int kParamThreads = 256;             // instance_norm_param_grads, one thread per channel

// ---- kernels ----

// red[k][0][tx] = sum over ty of red[k][ty][tx], by a fixed tree (4, 2, 1). Every thread of the block calls it.
template <int K>
__device__ void column_tree_sum(double (&red)[K][kRowsY][kTileC]) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int stride = kRowsY / 2; stride > 0; stride /= 2) {
    __syncthreads();
    if (ty < stride)
      for (int k = 0; k < K; ++k) red[k][ty][tx] += red[k][ty + stride][tx];
  }
  __syncthreads();
}

// The two per-(n, c) sums of the partial kernels' chunks, added in chunk order: red[k][0][threadIdx.x] holds sum k
// afterwards. Shared by the forward and backward finalize kernels.
__device__ void sum_chunk_partials(const double* part, int64_t n, int64_t chunks, int64_t C, int64_t c,
                                   double (&red)[2][kRowsY][kTileC]) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  double s1 = 0.0, s2 = 0.0;
  if (c < C)
    for (int64_t ch = ty; ch < chunks; ch += kRowsY) {
      s1 += part[((n * chunks + ch) * 2 + 0) * C + c];
      s2 += part[((n * chunks + ch) * 2 + 1) * C + c];
    }
  red[0][ty][tx] = s1;
  red[1][ty][tx] = s2;
  column_tree_sum(red);
}

// part[n, chunk, 0, c] = sum (x - x[n, 0, c]), part[n, chunk, 1, c] = sum (x - x[n, 0, c])^2 over the chunk.
// E (element.cuh) is the element type of x, y, dy and dx in every kernel below; statistics are f32 / double.
template <class E>
__global__ void __launch_bounds__(kStatThreads)
    instance_norm_forward_partial(const typename E::T* x, int64_t S, int64_t C, int64_t chunks, double* part) {
  __shared__ double red[2][kRowsY][kTileC];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kTileC + tx, ch = blockIdx.y, n = blockIdx.z;
  const int64_t b = ch * kChunkRows, e = b + kChunkRows < S ? b + kChunkRows : S;
  double s1 = 0.0, s2 = 0.0;
  if (c < C) {
    const typename E::T* xs = x + n * S * C + c;
    const double shift = E::load(xs[0]);
    for (int64_t i = b + ty; i < e; i += kRowsY) {
      const double d = static_cast<double>(E::load(xs[i * C])) - shift;
      s1 += d;
      s2 += d * d;
    }
  }
  red[0][ty][tx] = s1;
  red[1][ty][tx] = s2;
  column_tree_sum(red);
  if (ty == 0 && c < C) {
    part[((n * chunks + ch) * 2 + 0) * C + c] = red[0][0][tx];
    part[((n * chunks + ch) * 2 + 1) * C + c] = red[1][0][tx];
  }
}

// mean, rstd [n, c]; coef[0][n, c] = rstd * gamma (rounded once from double, as the CPU), coef[1][n, c] = beta.
template <class E>
__global__ void __launch_bounds__(kStatThreads)
    instance_norm_forward_finalize(const typename E::T* x, const double* part, int64_t S, int64_t C, int64_t chunks,
                                   const float* gamma, const float* beta, float eps, float* mean, float* rstd,
                                   float* coef, int64_t NC) {
  __shared__ double red[2][kRowsY][kTileC];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kTileC + tx, n = blockIdx.z;
  sum_chunk_partials(part, n, chunks, C, c, red);
  if (ty == 0 && c < C) {
    const double count = static_cast<double>(S);
    const double t1 = red[0][0][tx], t2 = red[1][0][tx];
    const double m = static_cast<double>(E::load(x[n * S * C + c])) + t1 / count;
    double var = (t2 - t1 * t1 / count) / count;
    var = var > 0.0 ? var : 0.0;
    const double r = 1.0 / sqrt(var + static_cast<double>(eps));
    const int64_t j = n * C + c;
    mean[j] = static_cast<float>(m);
    rstd[j] = static_cast<float>(r);
    coef[j] = static_cast<float>(r * (gamma ? static_cast<double>(gamma[c]) : 1.0));
    coef[NC + j] = beta ? beta[c] : 0.f;
  }
}

// y = (x - mean) * a + b, then leaky ReLU when kLeaky. (x - mean) is kept unfolded, as on the CPU: the folded
// x * a + (b - mean * a) cancels when |mean| >> std.
template <class E, bool kLeaky>
__global__ void __launch_bounds__(kApplyThreads)
    instance_norm_forward_apply(const typename E::T* x, const float* mean, const float* coef, int64_t S, int64_t C,
                                int64_t NC, float slope, typename E::T* y, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = (i / (S * C)) * C + i % C;
    float v = (E::load(x[i]) - mean[j]) * coef[j] + coef[NC + j];
    // Rounded to E before the leaky ReLU too, so the fused result is bitwise that of the two ops in sequence.
    if (kLeaky) v = E::load(E::store(v)), v = v > 0.f ? v : v * slope;
    y[i] = E::store(v);
  }
}

// The gradient reaching the normalised value: dy, or through the leaky ReLU whose output is y.
// Through the leaky ReLU the gradient is rounded to E as leaky_relu_backward would store it.
template <class E, bool kLeaky>
__device__ float upstream_grad(const typename E::T* y, const typename E::T* dy, int64_t i, float slope) {
  const float g = E::load(dy[i]);
  if (!kLeaky) return g;
  return E::load(y[i]) > 0.f ? g : E::load(E::store(g * slope));
}

// part[n, chunk, 0, c] = sum g, part[n, chunk, 1, c] = sum g * (x - mean) over the chunk (g the upstream gradient).
template <class E, bool kLeaky>
__global__ void __launch_bounds__(kStatThreads)
    instance_norm_backward_partial(const typename E::T* x, const typename E::T* y, const typename E::T* dy,
                                   const float* mean, float slope, int64_t S, int64_t C, int64_t chunks, double* part) {
  __shared__ double red[2][kRowsY][kTileC];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kTileC + tx, ch = blockIdx.y, n = blockIdx.z;
  const int64_t b = ch * kChunkRows, e = b + kChunkRows < S ? b + kChunkRows : S;
  double s1 = 0.0, s2 = 0.0;
  if (c < C) {
    const float mu = mean[n * C + c];
    for (int64_t i = b + ty; i < e; i += kRowsY) {
      const int64_t o = (n * S + i) * C + c;
      const float g = upstream_grad<E, kLeaky>(y, dy, o, slope);
      s1 += g;
      s2 += static_cast<double>(g) * static_cast<double>(E::load(x[o]) - mu);
    }
  }
  red[0][ty][tx] = s1;
  red[1][ty][tx] = s2;
  column_tree_sum(red);
  if (ty == 0 && c < C) {
    part[((n * chunks + ch) * 2 + 0) * C + c] = red[0][0][tx];
    part[((n * chunks + ch) * 2 + 1) * C + c] = red[1][0][tx];
  }
}

// sums[n, 0, c] = s1 = sum g, sums[n, 1, c] = s2 = sum g * xhat (for dgamma / dbeta); and the dx coefficients
// dx = k1 * g + k2 * (x - mean) + k3 with k1 = rstd * gamma, k2 = -k1 * rstd * s2 / S, k3 = -k1 * s1 / S.
__global__ void __launch_bounds__(kStatThreads)
    instance_norm_backward_finalize(const double* part, const float* rstd, const float* gamma, int64_t S, int64_t C,
                                    int64_t chunks, double* sums, float* coef, int64_t NC) {
  __shared__ double red[2][kRowsY][kTileC];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kTileC + tx, n = blockIdx.z;
  sum_chunk_partials(part, n, chunks, C, c, red);
  if (ty == 0 && c < C) {
    const int64_t j = n * C + c;
    const double r = rstd[j], t1 = red[0][0][tx], t2 = red[1][0][tx] * r;
    sums[(n * 2 + 0) * C + c] = t1;
    sums[(n * 2 + 1) * C + c] = t2;
    const double a = r * (gamma ? static_cast<double>(gamma[c]) : 1.0), count = static_cast<double>(S);
    coef[j] = static_cast<float>(a);
    coef[NC + j] = static_cast<float>(-a * r * t2 / count);
    coef[2 * NC + j] = static_cast<float>(-a * t1 / count);
  }
}

// dgamma[c] = sum over n of s2, dbeta[c] = sum over n of s1, in n order (as the CPU).
__global__ void __launch_bounds__(kParamThreads)
    instance_norm_param_grads(const double* sums, int64_t N, int64_t C, float* dgamma, float* dbeta) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  double g = 0.0, bsum = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    bsum += sums[(n * 2 + 0) * C + c];
    g += sums[(n * 2 + 1) * C + c];
  }
  if (dgamma) dgamma[c] = static_cast<float>(g);
  if (dbeta) dbeta[c] = static_cast<float>(bsum);
}

template <class E, bool kLeaky>
__global__ void __launch_bounds__(kApplyThreads)
    instance_norm_backward_apply(const typename E::T* x, const typename E::T* y, const typename E::T* dy,
                                 const float* mean, const float* coef, int64_t S, int64_t C, int64_t NC, float slope,
                                 typename E::T* dx, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = (i / (S * C)) * C + i % C;
    const float g = upstream_grad<E, kLeaky>(y, dy, i, slope);
    dx[i] = E::store(coef[j] * g + coef[NC + j] * (E::load(x[i]) - mean[j]) + coef[2 * NC + j]);
  }
}

// Batch norm in evaluation: scale[c] = gamma / sqrt(running_var + eps) computed per element in double (as the CPU,
// which rounds it to f32 once), then y = (x - running_mean) * scale + beta, ReLU when kRelu: the CPU's bits.
template <class E, bool kRelu>
__global__ void __launch_bounds__(kApplyThreads)
    batch_norm_inference_apply(const typename E::T* x, const float* running_mean, const float* running_var,
                               const float* gamma, const float* beta, float eps, int64_t C, typename E::T* y,
                               int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C;
    const float scale = static_cast<float>((gamma ? static_cast<double>(gamma[c]) : 1.0) /
                                           sqrt(static_cast<double>(running_var[c]) + static_cast<double>(eps)));
    // __fmul_rn / __fadd_rn: no FMA contraction, each operation rounded once as on the CPU (built without contraction).
    const float v = __fadd_rn(__fmul_rn(E::load(x[i]) - running_mean[c], scale), beta ? beta[c] : 0.f);
    y[i] = E::store(kRelu && !(v > 0.f) ? 0.f : v);
  }
}

// One thread per channel, in double (as the CPU).
__global__ void __launch_bounds__(kParamThreads)
    batch_norm_running_update(int64_t C, double bessel, float eps, float momentum, const float* mean, const float* rstd,
                              float* running_mean, float* running_var) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const double m = momentum, r = rstd[c];
  double var = 1.0 / (r * r) - static_cast<double>(eps);
  var = var > 0.0 ? var : 0.0;
  running_mean[c] = static_cast<float>((1.0 - m) * running_mean[c] + m * mean[c]);
  running_var[c] = static_cast<float>((1.0 - m) * running_var[c] + m * var * bessel);
}

// ---- batch norm synchronised over ranks ----
// Per-channel sums in double, deterministic: block b takes rows [b kSyncRows, (b + 1) kSyncRows), its threads the
// channels (c, c + blockDim, ...), each adding its rows in order into partial[b][2C]; then one thread per column adds
// the blocks in order. The block count depends only on the row count.
constexpr int64_t kSyncRows = 256;
constexpr int kSyncThreads = 128;

// term: 0 forward (x, x^2), 1 backward (g, g xhat).
template <class E, int kTerm>
__global__ void __launch_bounds__(kSyncThreads)
    bn_sync_partials(const typename E::T* x, const typename E::T* y, const typename E::T* dy, const float* mean,
                     const float* rstd, bool relu, int64_t rows, int64_t C, double* partial) {
  const int64_t r0 = blockIdx.x * kSyncRows, r1 = r0 + kSyncRows < rows ? r0 + kSyncRows : rows;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    double a = 0.0, b = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r * C + c;
      const double v = E::load(x[i]);
      if (kTerm == 0) {
        a += v;
        b += v * v;
      } else {
        const double g = relu && !(E::load(y[i]) > 0.f) ? 0.0 : static_cast<double>(E::load(dy[i]));
        a += g;
        b += g * ((v - mean[c]) * rstd[c]);
      }
    }
    partial[blockIdx.x * 2 * C + c] = a;
    partial[blockIdx.x * 2 * C + C + c] = b;
  }
}

__global__ void __launch_bounds__(kParamThreads)
    bn_sync_final(const double* partial, int64_t blocks, int64_t C, double* sums, float* dgamma, float* dbeta) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= 2 * C) return;
  double acc = 0.0;
  for (int64_t b = 0; b < blocks; ++b) acc += partial[b * 2 * C + j];
  sums[j] = acc;
  if (j < C && dbeta) dbeta[j] = static_cast<float>(acc);
  if (j >= C && dgamma) dgamma[j - C] = static_cast<float>(acc);
}

__global__ void __launch_bounds__(kParamThreads)
    bn_sync_stats(int64_t C, int64_t count, float eps, const double* sums, float* mean, float* var, float* rstd) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const double m = sums[c] / double(count);
  double v = sums[C + c] / double(count) - m * m;
  v = v > 0.0 ? v : 0.0;
  mean[c] = static_cast<float>(m);
  var[c] = static_cast<float>(v);
  rstd[c] = static_cast<float>(1.0 / sqrt(v + static_cast<double>(eps)));
}

// Instance norm from a convolution's sums: one thread per (n, c), in double (the CPU's formulas, so the same bits).
__global__ void __launch_bounds__(kParamThreads)
    in_stats_from_sums(int64_t rows, int64_t C, double inv_s, const float* sums, const float* gamma, const float* beta,
                       float eps, float* mean, float* rstd, float* scale, float* shift) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= rows) return;
  const int64_t c = j % C;
  const double s1 = sums[2 * j], s2 = sums[2 * j + 1];
  const double m = s1 * inv_s;
  double v = s2 * inv_s - m * m;
  v = v > 0.0 ? v : 0.0;
  // A sum that overflowed f32 gives NaN, as the CPU's instance_norm_stats does (see there).
  const double r = s1 - s1 == 0.0 && s2 - s2 == 0.0 ? 1.0 / sqrt(v + static_cast<double>(eps)) : __builtin_nan("");
  mean[j] = static_cast<float>(m);
  rstd[j] = static_cast<float>(r);
  scale[j] = static_cast<float>(r * (gamma ? static_cast<double>(gamma[c]) : 1.0));
  shift[j] = beta ? beta[c] : 0.f;
}

// y = leaky_relu(fma(x - mean, scale, shift), slope) per (n, c): conv.cu's FpropANormAct transform.
template <class E>
__global__ void __launch_bounds__(kApplyThreads)
    in_apply(const typename E::T* x, const float* mean, const float* scale, const float* shift, float slope, int64_t S,
             int64_t C, typename E::T* y, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = (i / (S * C)) * C + i % C;
    const float t = fmaf(E::load(x[i]) - mean[j], scale[j], shift[j]);
    y[i] = E::store(t > 0.f ? t : t * slope);
  }
}

template <class E>
__global__ void __launch_bounds__(kApplyThreads)
    bn_sync_backward_apply(const typename E::T* x, const typename E::T* y, const typename E::T* dy, const float* mean,
                           const float* rstd, const float* gamma, const double* sums, double inv_count, bool relu,
                           int64_t C, typename E::T* dx, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C;
    const double g = relu && !(E::load(y[i]) > 0.f) ? 0.0 : static_cast<double>(E::load(dy[i]));
    const double xhat = (static_cast<double>(E::load(x[i])) - mean[c]) * rstd[c];
    // Products by 1 / count, not divisions (whose out-of-line slow path made the kernel spill); the CPU does the same.
    const double v = (gamma ? static_cast<double>(gamma[c]) : 1.0) * rstd[c] *
                     (g - sums[c] * inv_count - xhat * (sums[C + c] * inv_count));
    dx[i] = E::store(static_cast<float>(v));
  }
}

struct Plan {
  int64_t N, S, C, NC, total, chunks;
  dim3 partial_grid, finalize_grid, block;
};

Plan plan_for(const NormShape& sh) {
  if (sh.n < 0 || sh.s < 1 || sh.c < 0) throw std::invalid_argument("cuda instance norm: needs s >= 1");
  Plan p;
  p.N = sh.n;
  p.S = sh.s;
  p.C = sh.c;
  p.NC = sh.n * sh.c;
  p.total = p.NC * sh.s;
  p.chunks = (sh.s + kChunkRows - 1) / kChunkRows;
  if (p.chunks > 65535 || sh.n > 65535) throw std::invalid_argument("cuda instance norm: shape too large for the grid");
  const auto tiles = static_cast<unsigned>((sh.c + kTileC - 1) / kTileC);
  p.partial_grid = dim3(tiles, static_cast<unsigned>(p.chunks), static_cast<unsigned>(sh.n));
  p.finalize_grid = dim3(tiles, 1, static_cast<unsigned>(sh.n));
  p.block = dim3(kTileC, kRowsY);
  return p;
}

template <class E, bool kLeaky>
void forward_impl(const NormShape& sh, const typename E::T* x, const float* gamma, const float* beta, float eps,
                  float slope, typename E::T* y, float* mean, float* rstd, cudaStream_t stream) {
  const Plan p = plan_for(sh);
  if (p.total == 0) return;
  Scratch<double> part(static_cast<size_t>(p.N * p.chunks * 2 * p.C), stream);
  Scratch<float> coef(static_cast<size_t>(2 * p.NC), stream);
  launch(instance_norm_forward_partial<E>, p.partial_grid, p.block, 0, stream, x, p.S, p.C, p.chunks, part.get());
  launch(instance_norm_forward_finalize<E>, p.finalize_grid, p.block, 0, stream, x, part.get(), p.S, p.C, p.chunks,
         gamma, beta, eps, mean, rstd, coef.get(), p.NC);
  launch(instance_norm_forward_apply<E, kLeaky>, grid_stride_blocks(p.total, kApplyThreads), dim3(kApplyThreads), 0,
         stream, x, mean, coef.get(), p.S, p.C, p.NC, slope, y, p.total);
}

template <class E, bool kLeaky>
void backward_impl(const NormShape& sh, const typename E::T* x, const typename E::T* y, const typename E::T* dy,
                   const float* mean, const float* rstd, const float* gamma, float slope, typename E::T* dx,
                   float* dgamma, float* dbeta, cudaStream_t stream) {
  const Plan p = plan_for(sh);
  if (p.C == 0) return;
  if (!dx && !dgamma && !dbeta) return;
  Scratch<double> part(static_cast<size_t>(p.N * p.chunks * 2 * p.C), stream);
  Scratch<double> sums(static_cast<size_t>(p.N * 2 * p.C), stream);
  Scratch<float> coef(static_cast<size_t>(3 * p.NC), stream);
  if (p.N > 0) {
    launch(instance_norm_backward_partial<E, kLeaky>, p.partial_grid, p.block, 0, stream, x, y, dy, mean, slope, p.S,
           p.C, p.chunks, part.get());
    launch(instance_norm_backward_finalize, p.finalize_grid, p.block, 0, stream, part.get(), rstd, gamma, p.S, p.C,
           p.chunks, sums.get(), coef.get(), p.NC);
  }
  if (dgamma || dbeta)
    launch(instance_norm_param_grads, dim3(static_cast<unsigned>((p.C + kParamThreads - 1) / kParamThreads)),
           dim3(kParamThreads), 0, stream, static_cast<const double*>(sums.get()), p.N, p.C, dgamma, dbeta);
  if (dx && p.total > 0)
    launch(instance_norm_backward_apply<E, kLeaky>, grid_stride_blocks(p.total, kApplyThreads), dim3(kApplyThreads), 0,
           stream, x, y, dy, mean, static_cast<const float*>(coef.get()), p.S, p.C, p.NC, slope, dx, p.total);
}

}  // namespace

// ---- launchers ----

void instance_norm_forward(const NormShape& sh, DType dt, const void* x, const float* gamma, const float* beta,
                           float eps, void* y, float* mean, float* rstd, cudaStream_t stream) {
  element::with_element_type(dt, "instance_norm", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    forward_impl<E, false>(sh, static_cast<const T*>(x), gamma, beta, eps, 0.f, static_cast<T*>(y), mean, rstd, stream);
  });
}

void instance_norm_backward(const NormShape& sh, DType dt, const void* x, const void* dy, const float* mean,
                            const float* rstd, const float* gamma, void* dx, float* dgamma, float* dbeta,
                            cudaStream_t stream) {
  element::with_element_type(dt, "instance_norm", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    backward_impl<E, false>(sh, static_cast<const T*>(x), nullptr, static_cast<const T*>(dy), mean, rstd, gamma, 0.f,
                            static_cast<T*>(dx), dgamma, dbeta, stream);
  });
}

void instance_norm_leaky_relu_forward(const NormShape& sh, DType dt, const void* x, const float* gamma,
                                      const float* beta, float eps, float slope, void* y, float* mean, float* rstd,
                                      cudaStream_t stream) {
  element::with_element_type(dt, "instance_norm_leaky_relu", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    forward_impl<E, true>(sh, static_cast<const T*>(x), gamma, beta, eps, slope, static_cast<T*>(y), mean, rstd,
                          stream);
  });
}

void instance_norm_leaky_relu_backward(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                                       const float* mean, const float* rstd, const float* gamma, float slope, void* dx,
                                       float* dgamma, float* dbeta, cudaStream_t stream) {
  element::with_element_type(dt, "instance_norm_leaky_relu", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    backward_impl<E, true>(sh, static_cast<const T*>(x), static_cast<const T*>(y), static_cast<const T*>(dy), mean,
                           rstd, gamma, slope, static_cast<T*>(dx), dgamma, dbeta, stream);
  });
}

void instance_norm_stats(const NormShape& sh, const float* sums, const float* gamma, const float* beta, float eps,
                         float* mean, float* rstd, float* scale, float* shift, cudaStream_t stream) {
  const int64_t rows = sh.n * sh.c;
  if (rows == 0) return;
  launch(in_stats_from_sums, dim3(static_cast<unsigned>((rows + kParamThreads - 1) / kParamThreads)),
         dim3(kParamThreads), 0, stream, rows, sh.c, sh.s > 0 ? 1.0 / double(sh.s) : 0.0, sums, gamma, beta, eps, mean,
         rstd, scale, shift);
}

void instance_norm_apply(const NormShape& sh, DType dt, const void* x, const float* mean, const float* scale,
                         const float* shift, float slope, void* y, cudaStream_t stream) {
  const int64_t total = sh.n * sh.s * sh.c;
  if (total == 0) return;
  element::with_element_type(dt, "instance_norm", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(in_apply<E>, grid_stride_blocks(total, kApplyThreads), dim3(kApplyThreads), 0, stream,
           static_cast<const T*>(x), mean, scale, shift, slope, sh.s, sh.c, static_cast<T*>(y), total);
  });
}

void batch_norm_inference(const NormShape& sh, DType dt, const void* x, const float* running_mean,
                          const float* running_var, const float* gamma, const float* beta, float eps, bool relu,
                          void* y, cudaStream_t stream) {
  const int64_t total = sh.n * sh.s * sh.c;
  if (total == 0) return;
  element::with_element_type(dt, "batch_norm", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    const auto kernel = relu ? batch_norm_inference_apply<E, true> : batch_norm_inference_apply<E, false>;
    launch(kernel, grid_stride_blocks(total, kApplyThreads), dim3(kApplyThreads), 0, stream, static_cast<const T*>(x),
           running_mean, running_var, gamma, beta, eps, sh.c, static_cast<T*>(y), total);
  });
}

void batch_norm_update_running(int64_t c, int64_t count, float eps, float momentum, const float* mean,
                               const float* rstd, float* running_mean, float* running_var, cudaStream_t stream) {
  if (c == 0) return;
  launch(batch_norm_running_update, dim3(static_cast<unsigned>((c + kParamThreads - 1) / kParamThreads)),
         dim3(kParamThreads), 0, stream, c, double(count) / double(count - 1), eps, momentum, mean, rstd, running_mean,
         running_var);
}

namespace {
template <int kTerm>
void sync_sums(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy, const float* mean,
               const float* rstd, bool relu, double* sums, float* dgamma, float* dbeta, cudaStream_t stream) {
  const int64_t rows = sh.n * sh.s, C = sh.c;
  if (C == 0) return;
  const int64_t blocks = rows > 0 ? (rows + kSyncRows - 1) / kSyncRows : 1;
  if (blocks > 2147483647) throw std::invalid_argument("cuda batch norm: too many rows");
  Scratch<double> partial(static_cast<size_t>(blocks * 2 * C), stream);
  element::with_element_type(dt, "batch_norm", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(bn_sync_partials<E, kTerm>, dim3(static_cast<unsigned>(blocks)), dim3(kSyncThreads), 0, stream,
           static_cast<const T*>(x), static_cast<const T*>(y), static_cast<const T*>(dy), mean, rstd, relu, rows, C,
           partial.get());
  });
  launch(bn_sync_final, dim3(static_cast<unsigned>((2 * C + kParamThreads - 1) / kParamThreads)), dim3(kParamThreads),
         0, stream, static_cast<const double*>(partial.get()), blocks, C, sums, dgamma, dbeta);
}
}  // namespace

void batch_norm_sums(const NormShape& sh, DType dt, const void* x, double* sums, cudaStream_t stream) {
  sync_sums<0>(sh, dt, x, nullptr, nullptr, nullptr, nullptr, false, sums, nullptr, nullptr, stream);
}

void batch_norm_stats(int64_t c, int64_t count, float eps, const double* sums, float* mean, float* var, float* rstd,
                      cudaStream_t stream) {
  if (c == 0) return;
  launch(bn_sync_stats, dim3(static_cast<unsigned>((c + kParamThreads - 1) / kParamThreads)), dim3(kParamThreads), 0,
         stream, c, count, eps, sums, mean, var, rstd);
}

void batch_norm_backward_sums(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                              const float* mean, const float* rstd, bool relu, double* sums, float* dgamma,
                              float* dbeta, cudaStream_t stream) {
  sync_sums<1>(sh, dt, x, y, dy, mean, rstd, relu, sums, dgamma, dbeta, stream);
}

void batch_norm_backward_apply(const NormShape& sh, DType dt, const void* x, const void* y, const void* dy,
                               const float* mean, const float* rstd, const float* gamma, const double* sums,
                               int64_t count, bool relu, void* dx, cudaStream_t stream) {
  const int64_t total = sh.n * sh.s * sh.c;
  if (total == 0) return;
  element::with_element_type(dt, "batch_norm", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(bn_sync_backward_apply<E>, grid_stride_blocks(total, kApplyThreads), dim3(kApplyThreads), 0, stream,
           static_cast<const T*>(x), static_cast<const T*>(y), static_cast<const T*>(dy), mean, rstd, gamma, sums,
           1.0 / double(count), relu, sh.c, static_cast<T*>(dx), total);
  });
}

const NormKernels norm_kernels{instance_norm_forward,
                               instance_norm_backward,
                               instance_norm_leaky_relu_forward,
                               instance_norm_leaky_relu_backward,
                               instance_norm_stats,
                               instance_norm_apply,
                               batch_norm_inference,
                               batch_norm_update_running,
                               batch_norm_sums,
                               batch_norm_stats,
                               batch_norm_backward_sums,
                               batch_norm_backward_apply};

}  // namespace unet::kernels::cuda
