// CUDA direct convolution for the thin first layer (C = 1..4 input channels; kernels/cuda/conv_thin.cuh). Implicit
// GEMM would run a reduction of only T*R*S*C <= 108 terms through tiles built for hundreds, so here the filter of a
// 32-output-channel tile (at most 108 x 32 floats) sits in shared memory and each thread computes 8 output channels of
// one output pixel directly from x (4 threads per pixel, 64 pixels per 256-thread block).
//   fprop: the epilogue adds bias, rounds to dt, stores y and, when asked, reduces the stored values per (n, k) over
//          the block's pixels by a fixed shared-memory tree; a second kernel sums the block partials in block order.
//   wgrad: a block takes a fixed chunk of output pixels and a 32-channel tile; it stages 32 pixels at a time (dy rows
//          and the x patches, plus a column of ones whose products give dbias) and each thread accumulates up to 14
//          of the tile's K x (T*R*S*C + 1) outputs in pixel order; chunk partials are summed in chunk order.
// Every sum has one fixed order, so the results are bitwise identical under any schedule.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/conv_thin.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/scratch.cuh"
// clang-format on

#include <cstdint>
#include <stdexcept>
#include <string>

namespace unet::kernels::cuda {
namespace {


constexpr int kThreads = 256;
constexpr int kMaxC = 4, kMaxExtent = 3;
constexpr int kMaxTC = kMaxExtent * kMaxExtent * kMaxExtent * kMaxC;  // filter values per output channel
constexpr int kKTile = 32;                                            // output channels per block
constexpr int kKPerThread = 8;
constexpr int kGroups = kKTile / kKPerThread;  // threads per output pixel (fprop)
constexpr int kPixels = kThreads / kGroups;    // output pixels per block (fprop)
constexpr int kWPix = 32;                      // output pixels per staged wgrad slice
constexpr int kWCols = kMaxTC + 1;             // x patch columns + the ones column
// wgrad outputs per thread
constexpr int kWOut = (kKTile * kWCols + kThreads - 1) / kThreads;

using element::BF16;
using element::F16;
using element::F32;

struct ThinGeometry {
  int64_t D, H, W, Z, P, Q;
  int T, R, S, sd, sh, sw, pd, ph, pw, K;
};

// ---- kernels ----

// y tile (64 output pixels of sample blockIdx.z) x (32 output channels of tile blockIdx.y); part [n][pixel tile][k][2]
// receives the tile's sum and sum of squares of the stored y when not null. (The second launch bound, two resident
// blocks, which the 30 KiB of shared memory allows anyway, keeps ptxas from spilling for some C.)
template <class E, int C>
__global__ void __launch_bounds__(kThreads, 2)
    conv_thin_fprop_kernel(ThinGeometry g, const typename E::T* x, const typename E::T* w, const float* bias,
                           typename E::T* y, float* part) {
  __shared__ float ws[kMaxTC][kKTile];  // ws[tap * C + c][k - k0]
  __shared__ float red[2][kPixels][kKTile + 1];
  const int tid = threadIdx.x, kg = tid % kGroups, px = tid / kGroups;
  const int TC = g.T * g.R * g.S * C, k0 = static_cast<int>(blockIdx.y) * kKTile;
  const int64_t n = blockIdx.z, ZPQ = g.Z * g.P * g.Q;
  for (int e = tid; e < TC * kKTile; e += kThreads) {
    const int kk = e / TC, tc = e % TC;  // consecutive threads read consecutive filter values
    ws[tc][kk] = k0 + kk < g.K ? E::load(w[int64_t(k0 + kk) * TC + tc]) : 0.f;
  }
  __syncthreads();

  const int64_t o = int64_t(blockIdx.x) * kPixels + px;
  const bool valid = o < ZPQ;
  float acc[kKPerThread];
  UNET_UNROLL
  for (int j = 0; j < kKPerThread; ++j) acc[j] = 0.f;
  if (valid) {
    const int64_t z = o / (g.P * g.Q), p = (o / g.Q) % g.P, q = o % g.Q;
    const typename E::T* xn = x + n * g.D * g.H * g.W * C;
    int tc = 0;
    for (int t = 0; t < g.T; ++t) {
      const int64_t iz = z * g.sd - g.pd + t;
      for (int r = 0; r < g.R; ++r) {
        const int64_t ip = p * g.sh - g.ph + r;
        for (int s = 0; s < g.S; ++s, tc += C) {
          const int64_t iq = q * g.sw - g.pw + s;
          if (iz < 0 || iz >= g.D || ip < 0 || ip >= g.H || iq < 0 || iq >= g.W) continue;  // zero padding
          const typename E::T* xp = xn + ((iz * g.H + ip) * g.W + iq) * C;
          UNET_UNROLL
          for (int c = 0; c < C; ++c) {
            const float xv = E::load(xp[c]);
            UNET_UNROLL
            for (int j = 0; j < kKPerThread; ++j) acc[j] += xv * ws[tc + c][kg * kKPerThread + j];
          }
        }
      }
    }
  }
  float v[kKPerThread];  // the stored values, as the next layer will read them
  UNET_UNROLL
  for (int j = 0; j < kKPerThread; ++j) {
    const int k = k0 + kg * kKPerThread + j;
    v[j] = 0.f;
    if (!valid || k >= g.K) continue;
    const auto stored = E::store(acc[j] + (bias ? bias[k] : 0.f));
    y[(n * ZPQ + o) * g.K + k] = stored;
    v[j] = E::load(stored);
  }
  if (!part) return;  // block-uniform: every thread returns here or none does
  UNET_UNROLL
  for (int j = 0; j < kKPerThread; ++j) {
    red[0][px][kg * kKPerThread + j] = v[j];
    red[1][px][kg * kKPerThread + j] = v[j] * v[j];
  }
  for (int stride = kPixels / 2; stride > 0; stride /= 2) {
    __syncthreads();
    if (px < stride) {
      UNET_UNROLL
      for (int j = 0; j < kKPerThread; ++j) {
        const int kk = kg * kKPerThread + j;
        red[0][px][kk] += red[0][px + stride][kk];
        red[1][px][kk] += red[1][px + stride][kk];
      }
    }
  }
  __syncthreads();
  if (px == 0) {
    UNET_UNROLL
    for (int j = 0; j < kKPerThread; ++j) {
      const int kk = kg * kKPerThread + j;
      if (k0 + kk >= g.K) continue;
      float* dst = part + ((n * gridDim.x + blockIdx.x) * g.K + k0 + kk) * 2;
      dst[0] = red[0][0][kk];
      dst[1] = red[1][0][kk];
    }
  }
}

// stats[(n, k)] = the pixel tiles' partials summed in tile order (in double: there can be many tiles).
__global__ void __launch_bounds__(kThreads)
    conv_thin_stats_finalize(const float* part, int64_t NK, int64_t K, int64_t tiles, float* stats) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < NK; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / K, k = i % K;
    double s1 = 0.0, s2 = 0.0;
    for (int64_t t = 0; t < tiles; ++t) {
      const float* src = part + ((n * tiles + t) * K + k) * 2;
      s1 += src[0];
      s2 += src[1];
    }
    stats[i * 2 + 0] = static_cast<float>(s1);
    stats[i * 2 + 1] = static_cast<float>(s2);
  }
}

// part[chunk blockIdx.x][k][j] for the 32 output channels of tile blockIdx.y: sum over the chunk's output pixels of
// dy[pixel, k] * patch[pixel, j], where patch columns j < T*R*S*C are x under the filter tap (0 in the padding) and
// column T*R*S*C is 1 (so it sums dy: dbias). x may be null (no dw wanted): its columns are then 0.
template <class E, int C>
__global__ void __launch_bounds__(kThreads)
    conv_thin_wgrad_kernel(ThinGeometry g, const typename E::T* x, const typename E::T* dy, float* part, int64_t chunk,
                           int64_t total) {
  __shared__ float dys[kWPix][kKTile + 1];
  __shared__ float xs[kWPix][kWCols];
  __shared__ int64_t sx[kWPix];  // offset of the pixel's sample in x, -1 past the chunk
  __shared__ int sz[kWPix], sp[kWPix], sq[kWPix];
  const int tid = threadIdx.x;
  const int TC = g.T * g.R * g.S * C, cols = TC + 1, k0 = static_cast<int>(blockIdx.y) * kKTile;
  const int64_t ZPQ = g.Z * g.P * g.Q, b = int64_t(blockIdx.x) * chunk, e = b + chunk < total ? b + chunk : total;
  float acc[kWOut];
  UNET_UNROLL
  for (int i = 0; i < kWOut; ++i) acc[i] = 0.f;
  for (int64_t o0 = b; o0 < e; o0 += kWPix) {
    if (tid < kWPix) {
      const int64_t o = o0 + tid;
      sx[tid] = -1;
      if (o < e) {
        const int64_t n = o / ZPQ, r = o % ZPQ;
        sx[tid] = n * g.D * g.H * g.W * C;
        sz[tid] = static_cast<int>(r / (g.P * g.Q) * g.sd - g.pd);
        sp[tid] = static_cast<int>((r / g.Q) % g.P * g.sh - g.ph);
        sq[tid] = static_cast<int>(r % g.Q * g.sw - g.pw);
      }
    }
    for (int el = tid; el < kWPix * kKTile; el += kThreads) {
      const int pp = el / kKTile, kk = el % kKTile;
      const int64_t o = o0 + pp;
      dys[pp][kk] = o < e && k0 + kk < g.K ? E::load(dy[o * g.K + k0 + kk]) : 0.f;
    }
    __syncthreads();
    for (int el = tid; el < kWPix * cols; el += kThreads) {
      const int pp = el / cols, j = el % cols;
      float v = 0.f;
      if (sx[pp] >= 0) {
        if (j == TC) {
          v = 1.f;
        } else if (x) {
          const int tap = j / C, c = j % C;
          const int t = tap / (g.R * g.S), r = (tap / g.S) % g.R, s = tap % g.S;
          const int64_t iz = sz[pp] + t, ip = sp[pp] + r, iq = sq[pp] + s;
          if (iz >= 0 && iz < g.D && ip >= 0 && ip < g.H && iq >= 0 && iq < g.W)
            v = E::load(x[sx[pp] + ((iz * g.H + ip) * g.W + iq) * C + c]);
        }
      }
      xs[pp][j] = v;
    }
    __syncthreads();
    UNET_UNROLL
    for (int i = 0; i < kWOut; ++i) {
      const int oi = tid + i * kThreads;
      if (oi >= kKTile * cols) continue;
      const int kk = oi / cols, j = oi % cols;
      float a = acc[i];
      for (int pp = 0; pp < kWPix; ++pp) a += dys[pp][kk] * xs[pp][j];
      acc[i] = a;
    }
    __syncthreads();
  }
  UNET_UNROLL
  for (int i = 0; i < kWOut; ++i) {
    const int oi = tid + i * kThreads;
    if (oi >= kKTile * cols) continue;
    const int kk = oi / cols, j = oi % cols;
    if (k0 + kk < g.K) part[(int64_t(blockIdx.x) * g.K + k0 + kk) * cols + j] = acc[i];
  }
}

// dw[k, j] (j = tap * C + c) and dbias[k]: the chunk partials summed in chunk order.
__global__ void __launch_bounds__(kThreads)
    conv_thin_wgrad_finalize(const float* part, int64_t chunks, int64_t K, int TC, float* dw, float* dbias) {
  const int cols = TC + 1;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < K * cols; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i / cols;
    const int j = static_cast<int>(i % cols);
    if (j < TC ? !dw : !dbias) continue;
    float s = 0.f;
    for (int64_t ch = 0; ch < chunks; ++ch) s += part[ch * K * cols + i];
    if (j < TC)
      dw[k * TC + j] = s;
    else
      dbias[k] = s;
  }
}

// ---- launchers ----

ThinGeometry check_problem(const ConvProblem& p, const char* pass) {
  const std::string where = std::string("cuda ") + pass + ": ";
  if (!conv_thin_applies(p))
    throw std::invalid_argument(where + "the thin path needs 1 <= C <= 4 and filter extents 1..3, got " + p.describe());
  ConvProblem q = p;
  q.compute_output_size();
  if (p.N < 0 || p.K < 1 || p.D < 1 || p.H < 1 || p.W < 1 || p.stride_d < 1 || p.stride_h < 1 || p.stride_w < 1 ||
      p.pad_d < 0 || p.pad_h < 0 || p.pad_w < 0 || q.Z < 1 || q.P < 1 || q.Q < 1 || q.Z != p.Z || q.P != p.P ||
      q.Q != p.Q)
    throw std::invalid_argument(where +
                                "expected N >= 0, K >= 1, positive sizes and strides, pads >= 0 and the output "
                                "size of compute_output_size(), got " +
                                p.describe());
  if (p.N > 65535 || (p.K + kKTile - 1) / kKTile > 65535)
    throw std::invalid_argument(where + "N = " + std::to_string(p.N) + " and K = " + std::to_string(p.K) +
                                " exceed one launch's grid");
  ThinGeometry g;
  g.D = p.D, g.H = p.H, g.W = p.W, g.Z = p.Z, g.P = p.P, g.Q = p.Q;
  g.T = p.T, g.R = p.R, g.S = p.S;
  g.sd = p.stride_d, g.sh = p.stride_h, g.sw = p.stride_w;
  g.pd = p.pad_d, g.ph = p.pad_h, g.pw = p.pad_w;
  g.K = static_cast<int>(p.K);
  return g;
}

dim3 capped_grid(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return dim3(static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 4096 ? 4096 : blocks)));
}

template <class E, int C>
void fprop_impl(const ConvProblem& p, const ThinGeometry& g, const void* x, const void* w, const float* bias, void* y,
                float* stats, cudaStream_t stream) {
  using T = typename E::T;
  const int64_t tiles = (p.Z * p.P * p.Q + kPixels - 1) / kPixels;
  if (p.N == 0) return;
  Scratch<float> part(stats ? static_cast<size_t>(p.N * tiles * p.K * 2) : 0, stream);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>((p.K + kKTile - 1) / kKTile),
                  static_cast<unsigned>(p.N));
  launch(conv_thin_fprop_kernel<E, C>, grid, dim3(kThreads), 0, stream, g, static_cast<const T*>(x),
         static_cast<const T*>(w), bias, static_cast<T*>(y), stats ? part.get() : nullptr);
  if (stats)
    launch(conv_thin_stats_finalize, capped_grid(p.N * p.K), dim3(kThreads), 0, stream,
           static_cast<const float*>(part.get()), p.N * p.K, p.K, tiles, stats);
}

// Output pixels per wgrad chunk: a function of the problem size only, a multiple of the staged slice, at least 256
// pixels and at most 128 chunks.
int64_t wgrad_chunk(int64_t total) {
  int64_t chunk = (total + 127) / 128;
  if (chunk < 256) chunk = 256;
  return (chunk + kWPix - 1) / kWPix * kWPix;
}

template <class E, int C>
void wgrad_impl(const ConvProblem& p, const ThinGeometry& g, const void* x, const void* dy, float* dw, float* dbias,
                cudaStream_t stream) {
  using T = typename E::T;
  if (!dw && !dbias) return;
  const int64_t total = p.N * p.Z * p.P * p.Q, chunk = wgrad_chunk(total);
  const int64_t chunks = total == 0 ? 1 : (total + chunk - 1) / chunk;
  const int TC = static_cast<int>(p.taps()) * C;
  Scratch<float> part(static_cast<size_t>(chunks * p.K * (TC + 1)), stream);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>((p.K + kKTile - 1) / kKTile));
  launch(conv_thin_wgrad_kernel<E, C>, grid, dim3(kThreads), 0, stream, g, dw ? static_cast<const T*>(x) : nullptr,
         static_cast<const T*>(dy), part.get(), chunk, total);
  launch(conv_thin_wgrad_finalize, capped_grid(p.K * (TC + 1)), dim3(kThreads), 0, stream,
         static_cast<const float*>(part.get()), chunks, p.K, TC, dw, dbias);
}

// Calls f.template operator()<E, C>() for the run-time dtype and channel count.
template <class F>
void dispatch(DType dt, int64_t C, const char* pass, F&& f) {
  auto by_c = [&](auto e) {
    using E = decltype(e);
    switch (C) {
      case 1:
        return f.template operator()<E, 1>();
      case 2:
        return f.template operator()<E, 2>();
      case 3:
        return f.template operator()<E, 3>();
      default:
        return f.template operator()<E, 4>();
    }
  };
  element::with_element_type(dt, std::string("cuda ") + pass, by_c);
}

}  // namespace

bool conv_thin_applies(const ConvProblem& p) {
  return p.C >= 1 && p.C <= kMaxC && p.T >= 1 && p.T <= kMaxExtent && p.R >= 1 && p.R <= kMaxExtent && p.S >= 1 &&
         p.S <= kMaxExtent;
}

void conv_fprop_thin(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y,
                     float* stats, cudaStream_t stream) {
  const ThinGeometry g = check_problem(p, "conv_fprop_thin");
  dispatch(dt, p.C, "conv_fprop_thin", [&]<class E, int C>() { fprop_impl<E, C>(p, g, x, w, bias, y, stats, stream); });
}

void conv_wgrad_thin(const ConvProblem& p, DType dt, const void* x, const void* dy, float* dw, float* dbias,
                     cudaStream_t stream) {
  const ThinGeometry g = check_problem(p, "conv_wgrad_thin");
  dispatch(dt, p.C, "conv_wgrad_thin", [&]<class E, int C>() { wgrad_impl<E, C>(p, g, x, dy, dw, dbias, stream); });
}

}  // namespace unet::kernels::cuda
