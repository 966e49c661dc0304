// CPU convolution, 2D and 3D: fprop, dgrad and wgrad as channels-last direct convolutions with register blocking.
//
// fprop and dgrad share one micro-kernel, a "gather tile": NP output pixels of one output row times KV vectors of
// output channels stay in registers while it sums, over a list of taps and the reduction channels, a broadcast input
// value times a vector of packed weights. To make every broadcast a load at a compile-time offset (so the loop needs
// only two moving pointers, whatever the channel count), the input is first copied into a transposed, zero-padded
// layout, one row at a time: [channel][stride phase][pixel]. Pixel j of a tile then sits at offset j from the tap's
// pointer for any stride, and the W-axis padding costs no branches. The D and H axes skip taps outside the input.
//  - fprop: output y row (n,z,p), reduction over taps (t,r,s) x C, vectors over K; weights packed [kblock][tap][c][KB].
//  - dgrad: output dx row (n,d,h), split by W parity b (w = b + sw*j) so that the taps that reach it form a unit-stride
//    gather over dy: q = j + (b + pw - s)/sw for the taps s with (b + pw - s) % sw == 0 (likewise for the D and H
//    axes, tap by tap); reduction over those taps x K, vectors over C; weights packed [cblock][tap][k][CB].
// wgrad is a reduction over output pixels: a register tile holds NC (tap s, channel c) pairs x KV vectors of k, and
// sums dy[pixel][k-vector] * x[pixel][(s,c)] over the pixels of a chunk of rows. With x padded along W, the NC
// broadcasts of one pixel are consecutive floats (index s*C + c), so again only two pointers move. Threads own
// disjoint sets of tiles of dw and walk the rows in the same order, so every dw element is summed in one fixed order
// by one thread: bitwise deterministic for any thread count, with no partial buffers or atomics.
//
// Vector width follows the build: 16 floats with AVX-512 (32 registers: tiles of 14 pixels x 2 vectors), 8 with AVX2
// (16 registers: 6 x 2). Both are written with GCC vector extensions; masked loads/stores only at channel tails.
#include "kernels/conv.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <utility>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "engine/allocator.h"
#include "engine/parallel.h"

namespace unet::kernels {

void ConvProblem::compute_output_size() {
  Z = (D + 2 * pad_d - T) / stride_d + 1;
  P = (H + 2 * pad_h - R) / stride_h + 1;
  Q = (W + 2 * pad_w - S) / stride_w + 1;
  // Integer division truncates toward zero; a negative numerator must still give an empty output.
  if (D + 2 * pad_d < T) Z = 0;
  if (H + 2 * pad_h < R) P = 0;
  if (W + 2 * pad_w < S) Q = 0;
}

std::string ConvProblem::describe() const {
  std::ostringstream o;
  o << "N=" << N << " in=[" << D << "," << H << "," << W << "] C=" << C << " K=" << K << " kernel=[" << T << "," << R
    << "," << S << "] stride=[" << stride_d << "," << stride_h << "," << stride_w << "] pad=[" << pad_d << "," << pad_h
    << "," << pad_w << "] out=[" << Z << "," << P << "," << Q << "]";
  return o.str();
}

}  // namespace unet::kernels

namespace unet::kernels::cpu {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Vectors and tile sizes for the instruction set this file is compiled for.
#if defined(__AVX512F__)
constexpr int VL = 16;
constexpr int kMaxPixels = 14;  // gather tile: 14 x 2 accumulators + 2 weight vectors of the 32 registers
constexpr int kMaxPairs = 14;   // wgrad tile: 14 (s,c) pairs x 2 vectors of k
#elif defined(__AVX__)
constexpr int VL = 8;
constexpr int kMaxPixels = 6;  // 6 x 2 accumulators + 2 weights + 1 broadcast of the 16 registers
constexpr int kMaxPairs = 6;
#else
constexpr int VL = 4;
constexpr int kMaxPixels = 6;
constexpr int kMaxPairs = 6;
#endif
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef float vf_unaligned __attribute__((vector_size(VL * sizeof(float)), aligned(sizeof(float))));

inline vf load(const float* p) { return *reinterpret_cast<const vf_unaligned*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf_unaligned*>(p) = v; }

// The first n (< VL) lanes; the others read as 0 and are never touched in memory.
inline vf load_first(const float* p, int n) {
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p));
#else
  vf v = {};
  for (int i = 0; i < n; ++i) v[i] = p[i];
  return v;
#endif
}
inline void store_first(float* p, vf v, int n) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), reinterpret_cast<__m512>(v));
#else
  for (int i = 0; i < n; ++i) p[i] = v[i];
#endif
}

// Stores acc[0..KV) to p, writing only the first `valid` floats of the KV*VL.
template <int KV>
inline void store_block(float* p, const vf* acc, int valid) {
  if (valid == KV * VL) {
    for (int v = 0; v < KV; ++v) store(p + v * VL, acc[v]);
    return;
  }
  for (int v = 0; v < KV; ++v) {
    int n = valid - v * VL;
    if (n >= VL) {
      store(p + v * VL, acc[v]);
    } else if (n > 0) {
      store_first(p + v * VL, acc[v], n);
    }
  }
}

// 64-byte aligned scratch from the pooled host allocator (so conv scratch shows in the engine's peak memory).
class Scratch {
 public:
  explicit Scratch(size_t floats) : bytes_(std::max<size_t>(floats, 1) * sizeof(float)) {
    data_ = static_cast<float*>(HostAllocator::instance().allocate(bytes_));
  }
  ~Scratch() { HostAllocator::instance().deallocate(data_, bytes_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* get() const { return data_; }

 private:
  size_t bytes_;
  float* data_;
};

// Splits n items into ceil(n / max_tile) tiles of nearly equal size; calls fn(begin, count) for each.
template <class F>
inline void for_each_balanced_tile(int64_t n, int max_tile, F&& fn) {
  if (n <= 0) return;
  int64_t tiles = (n + max_tile - 1) / max_tile;
  int64_t base = n / tiles, extra = n % tiles, begin = 0;
  for (int64_t i = 0; i < tiles; ++i) {
    int64_t count = base + (i < extra ? 1 : 0);
    fn(begin, static_cast<int>(count));
    begin += count;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Gather tile (fprop and dgrad).
struct Tap {
  const float* x;  // transposed input row: element (channel c, pixel j) at x[c * channel_stride + j]
  const float* w;  // packed weights for this tap: [reduction channel][KV * VL]
};
// A tap before its weight block is known: offset of its weights inside every block.
struct TapInRow {
  const float* x;
  int64_t w_offset;
};

// out[j][lanes] = init[lanes] + sum over taps and reduction channels c of x[c][x_offset + j] * w[c][lanes].
template <int NP, int KV>
void gather_tile(const Tap* taps, int ntaps, int64_t channels, int64_t channel_stride, int64_t x_offset,
                 const float* init, float* out, int64_t out_pixel_stride, int valid) {
  constexpr int KB = KV * VL;
  vf acc[NP][KV];
  for (int v = 0; v < KV; ++v) {
    vf b = init ? load(init + v * VL) : vf{};
#pragma GCC unroll 16
    for (int j = 0; j < NP; ++j) acc[j][v] = b;
  }
  for (int i = 0; i < ntaps; ++i) {
    const float* xp = taps[i].x + x_offset;
    const float* wp = taps[i].w;
    for (int64_t c = 0; c < channels; ++c) {
      vf wv[KV];
#pragma GCC unroll 4
      for (int v = 0; v < KV; ++v) wv[v] = load(wp + v * VL);
#pragma GCC unroll 16
      for (int j = 0; j < NP; ++j) {
        float xj = xp[j];
#pragma GCC unroll 4
        for (int v = 0; v < KV; ++v) acc[j][v] += wv[v] * xj;
      }
      xp += channel_stride;
      wp += KB;
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < NP; ++j) store_block<KV>(out + j * out_pixel_stride, acc[j], valid);
}

using GatherTileFn = void (*)(const Tap*, int, int64_t, int64_t, int64_t, const float*, float*, int64_t, int);

template <int KV, int... NPs>
constexpr std::array<GatherTileFn, sizeof...(NPs)> make_gather_table(std::integer_sequence<int, NPs...>) {
  return {&gather_tile<NPs + 1, KV>...};
}
const auto kGatherKV1 = make_gather_table<1>(std::make_integer_sequence<int, kMaxPixels>{});
const auto kGatherKV2 = make_gather_table<2>(std::make_integer_sequence<int, kMaxPixels>{});

inline GatherTileFn gather_fn(int kv, int np) { return kv == 1 ? kGatherKV1[np - 1] : kGatherKV2[np - 1]; }

// Vectors per register tile for `lanes` output channels: one when a single vector holds them all.
inline int vectors_for(int64_t lanes) { return lanes <= VL ? 1 : 2; }

// ---------------------------------------------------------------------------------------------------------------
// Wgrad tile: acc[i][lanes] += sum over segments and their pixels of x[pixel][i] * dy[pixel][lanes].
struct Segment {
  const float* x;   // first pixel's NC consecutive (s, c) inputs
  const float* dy;  // first pixel's KB output gradients
  int64_t pixels;
};

template <int NC, int KV>
void wgrad_tile(const Segment* segs, int nsegs, int64_t x_pixel_stride, int64_t dy_pixel_stride, float* acc_mem,
                int64_t acc_stride, int valid) {
  vf acc[NC][KV];
#pragma GCC unroll 16
  for (int i = 0; i < NC; ++i)
    for (int v = 0; v < KV; ++v) acc[i][v] = load(acc_mem + i * acc_stride + v * VL);
  const bool full = valid == KV * VL;
  for (int g = 0; g < nsegs; ++g) {
    const float* xp = segs[g].x;
    const float* dp = segs[g].dy;
    for (int64_t q = 0; q < segs[g].pixels; ++q) {
      vf dv[KV];
      if (full) {
        for (int v = 0; v < KV; ++v) dv[v] = load(dp + v * VL);
      } else {
        for (int v = 0; v < KV; ++v) {
          int n = valid - v * VL;
          dv[v] = n >= VL ? load(dp + v * VL) : n > 0 ? load_first(dp + v * VL, n) : vf{};
        }
      }
#pragma GCC unroll 16
      for (int i = 0; i < NC; ++i) {
        float xi = xp[i];
        for (int v = 0; v < KV; ++v) acc[i][v] += dv[v] * xi;
      }
      xp += x_pixel_stride;
      dp += dy_pixel_stride;
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NC; ++i)
    for (int v = 0; v < KV; ++v) store(acc_mem + i * acc_stride + v * VL, acc[i][v]);
}

using WgradTileFn = void (*)(const Segment*, int, int64_t, int64_t, float*, int64_t, int);

template <int KV, int... NCs>
constexpr std::array<WgradTileFn, sizeof...(NCs)> make_wgrad_table(std::integer_sequence<int, NCs...>) {
  return {&wgrad_tile<NCs + 1, KV>...};
}
const auto kWgradKV1 = make_wgrad_table<1>(std::make_integer_sequence<int, kMaxPairs>{});
const auto kWgradKV2 = make_wgrad_table<2>(std::make_integer_sequence<int, kMaxPairs>{});

inline WgradTileFn wgrad_fn(int kv, int nc) { return kv == 1 ? kWgradKV1[nc - 1] : kWgradKV2[nc - 1]; }

// ---------------------------------------------------------------------------------------------------------------
// Layout helpers.

// Copies rows [N*D*H] of x [.., W, C] into xt [row][C][phase][Wq]: element (c, u) with u = phase + stride*i the
// padded position u (input column u - pad, zero outside [0, W)).
void transpose_rows_phased(const float* x, int64_t rows, int64_t W, int64_t C, int pad, int stride, int64_t Wq,
                           float* xt) {
  const int64_t row_out = C * stride * Wq;
  parallel_for(rows, 4, [&](int64_t lo, int64_t hi) {
    for (int64_t row = lo; row < hi; ++row) {
      const float* src = x + row * W * C;
      float* dst = xt + row * row_out;
      for (int ph = 0; ph < stride; ++ph) {
        for (int64_t i = 0; i < Wq; ++i) {
          int64_t iw = ph + stride * i - pad;
          float* d = dst + ph * Wq + i;
          if (iw < 0 || iw >= W) {
            for (int64_t c = 0; c < C; ++c) d[c * stride * Wq] = 0.f;
          } else {
            const float* s = src + iw * C;
            for (int64_t c = 0; c < C; ++c) d[c * stride * Wq] = s[c];
          }
        }
      }
    }
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// fprop

void conv_fprop(const ConvProblem& p, const float* x, const float* w, const float* bias, float* y) {
  const int64_t C = p.C, K = p.K, taps = p.taps();
  const int sw = p.stride_w;
  const int KV = vectors_for(K), KB = KV * VL;
  const int64_t nkb = (K + KB - 1) / KB;

  // Weights [kblock][tap][c][KB], zero beyond K; bias [nkb * KB].
  Scratch wpack(static_cast<size_t>(nkb * taps * C * KB));
  Scratch bpack(static_cast<size_t>(nkb * KB));
  float* wp = wpack.get();
  for (int64_t k = 0; k < nkb * KB; ++k) bpack.get()[k] = (bias && k < K) ? bias[k] : 0.f;
  parallel_for(nkb * taps, 8, [&](int64_t lo, int64_t hi) {
    for (int64_t bt = lo; bt < hi; ++bt) {
      int64_t kb = bt / taps, tap = bt % taps;
      float* dst = wp + bt * C * KB;
      for (int64_t lane = 0; lane < KB; ++lane) {
        int64_t k = kb * KB + lane;
        if (k < K) {
          const float* src = w + (k * taps + tap) * C;
          for (int64_t c = 0; c < C; ++c) dst[c * KB + lane] = src[c];
        } else {
          for (int64_t c = 0; c < C; ++c) dst[c * KB + lane] = 0.f;
        }
      }
    }
  });

  // Input rows transposed to [C][phase][Wq]: tap s of output pixel j reads phase s % sw at index j + s / sw.
  const int64_t Wq = p.Q + (p.S - 1) / sw;
  const int64_t row_floats = C * sw * Wq;
  Scratch xt(static_cast<size_t>(p.N * p.D * p.H * row_floats));
  transpose_rows_phased(x, p.N * p.D * p.H, p.W, C, p.pad_w, sw, Wq, xt.get());

  const int64_t out_rows = p.N * p.Z * p.P;
  // Rows per group: weights of one k block are reused across the group's rows while they sit in L2.
  const int64_t group = nkb > 1 ? 8 : 1;
  parallel_for(out_rows, 1, [&](int64_t lo, int64_t hi) {
    std::vector<Tap> tap_list(static_cast<size_t>(taps));
    std::vector<int> count_per_row(static_cast<size_t>(group));
    std::vector<TapInRow> group_taps(static_cast<size_t>(group * taps));
    for (int64_t g0 = lo; g0 < hi; g0 += group) {
      int64_t g1 = std::min(hi, g0 + group);
      // Valid taps of each row (x pointers, weight offsets within a k block).
      for (int64_t row = g0; row < g1; ++row) {
        int64_t n = row / (p.Z * p.P), z = row / p.P % p.Z, pp = row % p.P;
        int cnt = 0;
        TapInRow* list = &group_taps[static_cast<size_t>((row - g0) * taps)];
        for (int t = 0; t < p.T; ++t) {
          int64_t iz = z * p.stride_d + t - p.pad_d;
          if (iz < 0 || iz >= p.D) continue;
          for (int r = 0; r < p.R; ++r) {
            int64_t ih = pp * p.stride_h + r - p.pad_h;
            if (ih < 0 || ih >= p.H) continue;
            const float* xrow = xt.get() + ((n * p.D + iz) * p.H + ih) * row_floats;
            for (int s = 0; s < p.S; ++s) {
              int64_t tap = (int64_t(t) * p.R + r) * p.S + s;
              list[cnt++] = TapInRow{xrow + (s % sw) * Wq + s / sw, tap * C * KB};
            }
          }
        }
        count_per_row[static_cast<size_t>(row - g0)] = cnt;
      }
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const float* wkb = wp + kb * taps * C * KB;
        int valid = static_cast<int>(std::min<int64_t>(KB, K - kb * KB));
        for (int64_t row = g0; row < g1; ++row) {
          int cnt = count_per_row[static_cast<size_t>(row - g0)];
          const TapInRow* list = &group_taps[static_cast<size_t>((row - g0) * taps)];
          for (int i = 0; i < cnt; ++i) tap_list[static_cast<size_t>(i)] = Tap{list[i].x, wkb + list[i].w_offset};
          float* yrow = y + row * p.Q * K + kb * KB;
          for_each_balanced_tile(p.Q, kMaxPixels, [&](int64_t j0, int np) {
            gather_fn(KV, np)(tap_list.data(), cnt, C, sw * Wq, j0, bpack.get() + kb * KB, yrow + j0 * K, K,
                              valid);
          });
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// dgrad

void conv_dgrad(const ConvProblem& p, const float* dy, const float* w, float* dx) {
  const int64_t C = p.C, K = p.K, taps = p.taps();
  const int sd = p.stride_d, sh = p.stride_h, sw = p.stride_w;
  const int CV = vectors_for(C), CB = CV * VL;
  const int64_t ncb = (C + CB - 1) / CB;

  // Weights [cblock][tap][k][CB], zero beyond C.
  Scratch wpack(static_cast<size_t>(ncb * taps * K * CB));
  float* wp = wpack.get();
  parallel_for(ncb * taps, 8, [&](int64_t lo, int64_t hi) {
    for (int64_t bt = lo; bt < hi; ++bt) {
      int64_t cb = bt / taps, tap = bt % taps;
      float* dst = wp + bt * K * CB;
      int64_t cvalid = std::min<int64_t>(CB, C - cb * CB);
      for (int64_t k = 0; k < K; ++k) {
        const float* src = w + (k * taps + tap) * C + cb * CB;
        for (int64_t lane = 0; lane < CB; ++lane) dst[k * CB + lane] = lane < cvalid ? src[lane] : 0.f;
      }
    }
  });

  // dy rows transposed to [K][Qp] with `lead` zeros before pixel 0 and zeros after pixel Q-1, so that every tap of
  // every W parity class reads inside the row.
  int64_t min_off = 0, max_end = p.Q;
  for (int b = 0; b < sw; ++b) {
    int64_t J = (p.W - b + sw - 1) / sw;
    for (int s = 0; s < p.S; ++s) {
      int64_t num = b + p.pad_w - s;
      if (num % sw != 0) continue;
      min_off = std::min(min_off, num / sw);
      max_end = std::max(max_end, J + num / sw);
    }
  }
  const int64_t lead = -min_off, Qp = lead + max_end;
  Scratch dyt(static_cast<size_t>(p.N * p.Z * p.P * K * Qp));
  transpose_rows_phased(dy, p.N * p.Z * p.P, p.Q, K, static_cast<int>(lead), 1, Qp, dyt.get());

  const int64_t rows = p.N * p.D * p.H;
  parallel_for(rows, 1, [&](int64_t lo, int64_t hi) {
    std::vector<TapInRow> rel(static_cast<size_t>(taps));
    std::vector<Tap> list(static_cast<size_t>(taps));
    for (int64_t row = lo; row < hi; ++row) {
      int64_t n = row / (p.D * p.H), d = row / p.H % p.D, h = row % p.H;
      for (int b = 0; b < sw && b < p.W; ++b) {
        int64_t J = (p.W - b + sw - 1) / sw;
        // Taps reaching this row and parity class: dy row (z, pp) and column offset q = j + off.
        int cnt = 0;
        for (int t = 0; t < p.T; ++t) {
          int64_t zn = d + p.pad_d - t;
          if (zn < 0 || zn % sd != 0 || zn / sd >= p.Z) continue;
          for (int r = 0; r < p.R; ++r) {
            int64_t pn = h + p.pad_h - r;
            if (pn < 0 || pn % sh != 0 || pn / sh >= p.P) continue;
            const float* dyrow = dyt.get() + ((n * p.Z + zn / sd) * p.P + pn / sh) * K * Qp + lead;
            for (int s = 0; s < p.S; ++s) {
              int64_t num = b + p.pad_w - s;
              if (num % sw != 0) continue;
              int64_t tap = (int64_t(t) * p.R + r) * p.S + s;
              rel[static_cast<size_t>(cnt++)] = TapInRow{dyrow + num / sw, tap * K * CB};
            }
          }
        }
        for (int64_t cb = 0; cb < ncb; ++cb) {
          const float* wcb = wp + cb * taps * K * CB;
          for (int i = 0; i < cnt; ++i)
            list[static_cast<size_t>(i)] = Tap{rel[static_cast<size_t>(i)].x, wcb + rel[static_cast<size_t>(i)].w_offset};
          int valid = static_cast<int>(std::min<int64_t>(CB, C - cb * CB));
          float* dxrow = dx + row * p.W * C + b * C + cb * CB;
          for_each_balanced_tile(J, kMaxPixels, [&](int64_t j0, int np) {
            gather_fn(CV, np)(list.data(), cnt, K, Qp, j0, nullptr, dxrow + j0 * sw * C, sw * C, valid);
          });
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// wgrad

void conv_wgrad(const ConvProblem& p, const float* x, const float* dy, float* dw, float* dbias) {
  const int64_t C = p.C, K = p.K, taps = p.taps();
  const int sw = p.stride_w;
  const int KV = vectors_for(K), KB = KV * VL;
  const int64_t nkb = (K + KB - 1) / KB, Kp = nkb * KB;

  // x padded along W so that every (s, c) pair of every output pixel reads inside the row: column u = iw + pad_w.
  const int64_t Wu = (p.Q - 1) * sw + p.S;
  const float* xw = x;
  std::unique_ptr<Scratch> xpad;
  if (p.pad_w != 0 || Wu > p.W) {
    xpad = std::make_unique<Scratch>(static_cast<size_t>(p.N * p.D * p.H * Wu * C));
    float* dst = xpad->get();
    parallel_for(p.N * p.D * p.H, 4, [&](int64_t lo, int64_t hi) {
      for (int64_t row = lo; row < hi; ++row) {
        for (int64_t u = 0; u < Wu; ++u) {
          int64_t iw = u - p.pad_w;
          float* d = dst + (row * Wu + u) * C;
          if (iw < 0 || iw >= p.W)
            std::memset(d, 0, static_cast<size_t>(C) * sizeof(float));
          else
            std::memcpy(d, x + (row * p.W + iw) * C, static_cast<size_t>(C) * sizeof(float));
        }
      }
    });
    xw = dst;
  }
  const int64_t x_row = (xpad ? Wu : p.W) * C;

  // Accumulators dwT [t][r][(s,c)][Kp]; tiles (t, r, kblock, block of (s,c) pairs).
  const int64_t SC = p.S * C;
  const int64_t nscb = (SC + kMaxPairs - 1) / kMaxPairs;
  Scratch dwt(static_cast<size_t>(taps * C * Kp));
  std::memset(dwt.get(), 0, static_cast<size_t>(taps * C * Kp) * sizeof(float));
  const int64_t tiles = int64_t(p.T) * p.R * nkb * nscb;

  const int64_t out_rows = p.N * p.Z * p.P;
  // Rows per chunk: the chunk's dy and x rows should stay in L2 while every tile of the thread sweeps them.
  const int64_t row_bytes = p.Q * (K + sw * C) * int64_t(sizeof(float)) * 2;
  const int64_t chunk = std::clamp<int64_t>((512 << 10) / std::max<int64_t>(row_bytes, 1), 1, out_rows);

  parallel_for(tiles, 1, [&](int64_t lo, int64_t hi) {
    std::vector<Segment> segs(static_cast<size_t>(chunk));
    for (int64_t r0 = 0; r0 < out_rows; r0 += chunk) {
      int64_t r1 = std::min(out_rows, r0 + chunk);
      for (int64_t tile = lo; tile < hi; ++tile) {
        int64_t scb = tile % nscb, kb = tile / nscb % nkb, tr = tile / (nscb * nkb);
        int t = static_cast<int>(tr / p.R), r = static_cast<int>(tr % p.R);
        // Balanced (s,c) blocks.
        int64_t sc0 = SC * scb / nscb, sc1 = SC * (scb + 1) / nscb;
        int nsegs = 0;
        for (int64_t row = r0; row < r1; ++row) {
          int64_t n = row / (p.Z * p.P), z = row / p.P % p.Z, pp = row % p.P;
          int64_t iz = z * p.stride_d + t - p.pad_d, ih = pp * p.stride_h + r - p.pad_h;
          if (iz < 0 || iz >= p.D || ih < 0 || ih >= p.H) continue;
          segs[static_cast<size_t>(nsegs++)] =
              Segment{xw + ((n * p.D + iz) * p.H + ih) * x_row + sc0, dy + row * p.Q * K + kb * KB, p.Q};
        }
        if (nsegs == 0) continue;
        int valid = static_cast<int>(std::min<int64_t>(KB, K - kb * KB));
        float* acc = dwt.get() + (tr * SC + sc0) * Kp + kb * KB;
        wgrad_fn(KV, static_cast<int>(sc1 - sc0))(segs.data(), nsegs, sw * C, K, acc, Kp, valid);
      }
    }
  });

  // dw [K][tap][C] from dwT [tap][C][Kp].
  parallel_for(K, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k)
      for (int64_t tc = 0; tc < taps * C; ++tc) dw[k * taps * C + tc] = dwt.get()[tc * Kp + k];
  });

  if (dbias) conv_bias_grad(p, dy, dbias);
}

void conv_bias_grad(const ConvProblem& p, const float* dy, float* dbias) {
  const int64_t K = p.K;
  // Fixed chunks of pixels (independent of the thread count), each summed in double, then combined in order.
  const int64_t pixels = p.N * p.Z * p.P * p.Q;
  constexpr int64_t kChunk = 4096;
  const int64_t nchunks = (pixels + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(nchunks * K), 0.0);
  parallel_for(nchunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t ch = lo; ch < hi; ++ch) {
      double* part = &partial[static_cast<size_t>(ch * K)];
      for (int64_t px = ch * kChunk; px < std::min(pixels, (ch + 1) * kChunk); ++px)
        for (int64_t k = 0; k < K; ++k) part[k] += dy[px * K + k];
    }
  });
  for (int64_t k = 0; k < K; ++k) {
    double s = 0.0;
    for (int64_t ch = 0; ch < nchunks; ++ch) s += partial[static_cast<size_t>(ch * K + k)];
    dbias[k] = static_cast<float>(s);
  }
}

}  // namespace unet::kernels::cpu
