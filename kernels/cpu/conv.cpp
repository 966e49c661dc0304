// CPU convolution, 2D and 3D: fprop, dgrad and wgrad as channels-last direct convolutions with register blocking.
//
// fprop and dgrad share one micro-kernel, a "gather tile": NP output pixels of one output row times KV vectors of
// output channels stay in registers while it sums, over a list of taps and the reduction channels, a broadcast input
// value times a vector of packed weights. To make every broadcast a load at a compile-time offset (so the loop needs
// only two moving pointers, whatever the channel count), input rows are copied into a transposed, zero-padded layout
// [channel][stride phase][pixel]: pixel j of a tile then sits at offset j from the tap's pointer for any stride, and
// the W-axis padding costs no branches. Rows are transposed lazily, by whichever thread first needs them, with the
// next rows prefetched, so the copy overlaps the arithmetic and is read back from cache (LazyRows). Kernels of width 1
// without W padding skip the copy and read channels-last rows directly. The D and H axes skip taps outside the input.
//  - fprop: output y row (n,z,p), reduction over taps (t,r,s) x C, vectors over K; weights packed [kblock][tap][c][KB].
//  - dgrad: output dx row (n,d,h), split by W parity b (w = b + sw*j) so that the taps that reach it form a unit-stride
//    gather over dy: q = j + (b + pw - s)/sw for the taps s with (b + pw - s) % sw == 0 (likewise for the D and H
//    axes, tap by tap); reduction over those taps x K, vectors over C; weights packed [cblock][tap][k][CB].
// wgrad is a reduction over output pixels: a register tile holds NC (tap s, channel c) pairs x KV vectors of k, and
// sums dy[pixel][k-vector] * x[pixel][(s,c)] over the pixels of a chunk of rows. With x rows padded along W (again
// lazily), the NC broadcasts of one pixel are consecutive floats (index s*C + c), so again only two pointers move.
// Threads own disjoint sets of tiles of dw and walk the rows in the same order, so every dw element is summed in one
// fixed order by one thread: bitwise deterministic for any thread count, with no partial buffers or atomics.
//
// Vector width follows the build: 16 floats with AVX-512 (32 registers: tiles of 14 pixels x 2 vectors), 8 with AVX2
// (16 registers: 6 x 2). Both are written with GCC vector extensions; masked loads/stores only at channel tails.
// Weights are repacked on every call (cheap next to the arithmetic except for the deepest, smallest layers).
// f16 / bf16 tensors run the same kernels: their operands are widened to f32 as they are packed or transposed (or,
// where f32 is read in place, copied to widened rows lazily), and outputs rounded once per group of rows.
#include "kernels/cpu/conv.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/common/allocator.h"
#include "kernels/common/parallel.h"
#include "kernels/cpu/element.h"
#include "kernels/cpu/norm.h"

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

inline vf load(const float* p) {
  return *reinterpret_cast<const vf_unaligned*>(p);
}
inline void store(float* p, vf v) {
  *reinterpret_cast<vf_unaligned*>(p) = v;
}

// The first n (< VL) lanes; the others read as 0 and are never touched in memory.
inline vf load_first(const float* p, int n) {
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p));
#elif defined(__AVX2__)
  __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return reinterpret_cast<vf>(_mm256_maskload_ps(p, mask));
#else
  vf v = {};
  for (int i = 0; i < n; ++i) v[i] = p[i];
  return v;
#endif
}
inline void store_first(float* p, vf v, int n) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), reinterpret_cast<__m512>(v));
#elif defined(__AVX2__)
  __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  _mm256_maskstore_ps(p, mask, reinterpret_cast<__m256>(v));
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

// Operands of element type E (kernels/cpu/element.h). f16 / bf16 operands are widened to f32 (exact) where they are
// packed, transposed or copied anyway, and outputs rounded once as each group of rows is finished, so a 16-bit
// convolution is the f32 one on the widened operands, bit for bit, with no extra pass over any tensor.
template <class E>
constexpr bool is_f32 = std::is_same_v<E, element::F32>;

// VL 16-bit values, and VL bf16 values widened to f32: bf16 is the upper half of an f32, so a zero extension and a
// shift.
typedef uint16_t vh __attribute__((vector_size(VL * sizeof(uint16_t))));
typedef uint16_t vh_unaligned __attribute__((vector_size(VL * sizeof(uint16_t)), aligned(sizeof(uint16_t))));
inline vf widen_bf16(vh h) {
  typedef uint32_t vu __attribute__((vector_size(VL * sizeof(uint32_t))));
  return reinterpret_cast<vf>(__builtin_convertvector(h, vu) << 16);
}

// VL elements widened to f32.
template <class E>
inline vf load_widened(const typename E::T* p) {
  if constexpr (is_f32<E>) {
    return load(p);
  } else if constexpr (std::is_same_v<E, element::BF16>) {
    return widen_bf16(*reinterpret_cast<const vh_unaligned*>(p));
  } else {
    vf v;
    for (int i = 0; i < VL; ++i) v[i] = E::load(p[i]);
    return v;
  }
}
// The first n (<= VL) elements widened; the other lanes read as 0 and are never touched in memory.
template <class E>
inline vf load_first_widened(const typename E::T* p, int n) {
  if constexpr (is_f32<E>) {
    return load_first(p, n);
  } else {
    if (n == VL) return load_widened<E>(p);  // transpose_edge_block's whole channel blocks
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    if constexpr (std::is_same_v<E, element::BF16> && VL == 16)
      return widen_bf16(reinterpret_cast<vh>(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p)));
#endif
    vf v = {};
    for (int i = 0; i < n; ++i) v[i] = E::load(p[i]);
    return v;
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

// Calls fn(begin, end) on chunks of [0, n), each a multiple of `granule` items, that threads take in turn as they
// finish (dynamic scheduling): on a machine shared with other work, a thread whose core is busy takes fewer chunks
// instead of holding everyone up. Only for work whose results do not depend on which thread does it (fprop and dgrad:
// every output element is computed whole by one tile); wgrad keeps a static split.
template <class F>
void parallel_chunks(int64_t n, int64_t granule, F&& fn) {
  if (n <= 0) return;
  const int threads_wanted = num_threads();
  // About 8 chunks per thread: enough to even out, few enough to keep each chunk's rows together in cache.
  int64_t chunk = std::max<int64_t>(granule, n / (int64_t(threads_wanted) * 8));
  chunk = (chunk + granule - 1) / granule * granule;
  const int64_t nchunks = (n + chunk - 1) / chunk;
  const int threads = static_cast<int>(std::min<int64_t>(threads_wanted, nchunks));
  if (threads <= 1 || omp_in_parallel()) {
    fn(int64_t(0), n);
    return;
  }
  std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(threads)
  {
    for (int64_t c = next.fetch_add(1); c < nchunks; c = next.fetch_add(1)) fn(c * chunk, std::min(n, (c + 1) * chunk));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Gather tile (fprop and dgrad).
struct Tap {
  const float* x;  // input row: element (channel c, pixel j) at x[c * channel_stride + j * pixel_stride]
  const float* w;  // packed weights for this tap: [reduction channel][KV * VL]
};
// A tap before its weight block is known: offset of its weights inside every block.
struct TapInRow {
  const float* x;
  int64_t w_offset;
};

// out[j][lanes] = init[lanes] + sum over taps and reduction channels c of x[c][j] * w[c][lanes].
// TRANSPOSED: x rows are [channel][pixel] (pixel_stride 1, so the NP broadcasts of a channel sit at constant offsets
// from one pointer); otherwise x is channels-last as given (channel_stride 1, pixel_stride runtime), used where no
// padding is needed along W and the transposition would cost more than the arithmetic it serves (1x1 kernels).
template <int NP, int KV, bool TRANSPOSED>
void gather_tile(const Tap* taps, int ntaps, int64_t channels, int64_t channel_stride, int64_t pixel_stride,
                 int64_t x_offset, const float* init, float* out, int64_t out_pixel_stride, int valid) {
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
        float xj = TRANSPOSED ? xp[j] : xp[j * pixel_stride];
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

using GatherTileFn = void (*)(const Tap*, int, int64_t, int64_t, int64_t, int64_t, const float*, float*, int64_t, int);

template <int KV, bool TRANSPOSED, int... NPs>
constexpr std::array<GatherTileFn, sizeof...(NPs)> make_gather_table(std::integer_sequence<int, NPs...>) {
  return {&gather_tile<NPs + 1, KV, TRANSPOSED>...};
}
const std::array<GatherTileFn, kMaxPixels> kGatherTables[2][2] = {
    {make_gather_table<1, false>(std::make_integer_sequence<int, kMaxPixels>{}),
     make_gather_table<1, true>(std::make_integer_sequence<int, kMaxPixels>{})},
    {make_gather_table<2, false>(std::make_integer_sequence<int, kMaxPixels>{}),
     make_gather_table<2, true>(std::make_integer_sequence<int, kMaxPixels>{})},
};

inline GatherTileFn gather_fn(int kv, bool transposed, int np) {
  return kGatherTables[kv - 1][transposed][np - 1];
}

// Vectors per register tile for `lanes` output channels: one when a single vector holds them all.
inline int vectors_for(int64_t lanes) {
  return lanes <= VL ? 1 : 2;
}

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

inline WgradTileFn wgrad_fn(int kv, int nc) {
  return kv == 1 ? kWgradKV1[nc - 1] : kWgradKV2[nc - 1];
}

// ---------------------------------------------------------------------------------------------------------------
// Layout helpers.

// In-register transpose of a VL x VL block: rows[i][j] becomes rows[j][i]. log2(VL) butterfly stages; stage b swaps
// bit b of the row index with bit b of the column index using two-source shuffles (vpermt2ps with AVX-512).
typedef int vi __attribute__((vector_size(VL * sizeof(int))));
template <int D, int... J>
constexpr vi butterfly_lo(std::integer_sequence<int, J...>) {
  return vi{((J & D) ? VL + (J - D) : J)...};
}
template <int D, int... J>
constexpr vi butterfly_hi(std::integer_sequence<int, J...>) {
  return vi{((J & D) ? VL + J : J + D)...};
}

#if defined(__clang__)
// clang (the fuzz build) has no __builtin_shuffle: the same two-source shuffles with constant indices.
template <int D, int... J>
__attribute__((always_inline)) inline vf shuffle_lo(vf a, vf b, std::integer_sequence<int, J...>) {
  return __builtin_shufflevector(a, b, ((J & D) ? VL + (J - D) : J)...);
}
template <int D, int... J>
__attribute__((always_inline)) inline vf shuffle_hi(vf a, vf b, std::integer_sequence<int, J...>) {
  return __builtin_shufflevector(a, b, ((J & D) ? VL + J : J + D)...);
}
#endif

template <int D>
__attribute__((always_inline)) inline void transpose_stage(vf* rows) {
#if !defined(__clang__)
  constexpr vi lo_mask = butterfly_lo<D>(std::make_integer_sequence<int, VL>{});
  constexpr vi hi_mask = butterfly_hi<D>(std::make_integer_sequence<int, VL>{});
#endif
#pragma GCC unroll 16
  for (int i = 0; i < VL; ++i) {
    if (i & D) continue;
    vf a = rows[i], b = rows[i + D];
#if defined(__clang__)
    rows[i] = shuffle_lo<D>(a, b, std::make_integer_sequence<int, VL>{});
    rows[i + D] = shuffle_hi<D>(a, b, std::make_integer_sequence<int, VL>{});
#else
    rows[i] = __builtin_shuffle(a, b, lo_mask);
    rows[i + D] = __builtin_shuffle(a, b, hi_mask);
#endif
  }
}

__attribute__((always_inline)) inline void transpose_block(vf* rows) {
  transpose_stage<1>(rows);
  transpose_stage<2>(rows);
  if constexpr (VL >= 8) transpose_stage<4>(rows);
  if constexpr (VL >= 16) transpose_stage<8>(rows);
}

// Transposes the VL x nch block src[j * src_stride + c] into dst[c * dst_stride + j] (all VL positions valid).
// Kept separate from the edge path so that the block stays in registers (every index is a compile-time constant).
template <class E>
inline void transpose_full_block(const typename E::T* src, int64_t src_stride, int nch, float* dst,
                                 int64_t dst_stride) {
  vf b[VL];
  if (nch == VL) {
#pragma GCC unroll 16
    for (int j = 0; j < VL; ++j) b[j] = load_widened<E>(src + j * src_stride);
  } else {  // thin inputs (first layer) and channel tails
#pragma GCC unroll 16
    for (int j = 0; j < VL; ++j) b[j] = load_first_widened<E>(src + j * src_stride, nch);
  }
  transpose_block(b);
#pragma GCC unroll 16
  for (int c = 0; c < VL; ++c)
    if (c < nch) store(dst + c * dst_stride, b[c]);
}

// The same for a block at the row's edges: positions j >= npos are not stored, positions reading columns outside
// [0, W) get zeros.
template <class E>
void transpose_edge_block(const typename E::T* row, int64_t W, int64_t C, int64_t iw0, int stride, int npos, int nch,
                          float* dst, int64_t dst_stride) {
  vf b[VL];
  for (int j = 0; j < VL; ++j) {
    int64_t iw = iw0 + stride * j;
    b[j] = (j >= npos || iw < 0 || iw >= W) ? vf{} : load_first_widened<E>(row + iw * C, nch);
  }
  transpose_block(b);
  for (int c = 0; c < nch; ++c) store_first(dst + c * dst_stride, b[c], npos);
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols (rows, cols any size).
template <class E = element::F32>
void transpose_matrix(const typename E::T* src, int64_t rows, int64_t cols, int64_t src_stride, float* dst,
                      int64_t dst_stride) {
  for (int64_t r0 = 0; r0 < rows; r0 += VL) {
    const int nr = static_cast<int>(std::min<int64_t>(VL, rows - r0));
    for (int64_t c0 = 0; c0 < cols; c0 += VL) {
      const int nc = static_cast<int>(std::min<int64_t>(VL, cols - c0));
      if (nr == VL) {
        transpose_full_block<E>(src + r0 * src_stride + c0, src_stride, nc, dst + c0 * dst_stride + r0, dst_stride);
      } else {
        vf b[VL];
        for (int j = 0; j < VL; ++j) b[j] = j < nr ? load_first_widened<E>(src + (r0 + j) * src_stride + c0, nc) : vf{};
        transpose_block(b);
        for (int c = 0; c < nc; ++c) store_first(dst + (c0 + c) * dst_stride + r0, b[c], nr);
      }
    }
  }
}

// Copies one row x [W, C] into xt [C][phase][Wq]: element (c, u) with u = phase + stride*i is padded position u
// (input column u - pad, zero outside [0, W)). Blocks of VL positions x VL channels are transposed in registers, so
// every store writes a whole vector.
template <class E>
void transpose_row(const typename E::T* src, int64_t W, int64_t C, int pad, int stride, int64_t Wq, float* dst) {
  const int64_t c_stride = stride * Wq;
  for (int ph = 0; ph < stride; ++ph) {
    for (int64_t i0 = 0; i0 < Wq; i0 += VL) {
      const int npos = static_cast<int>(std::min<int64_t>(VL, Wq - i0));
      const int64_t iw0 = ph + stride * i0 - pad;  // input column of position i0
      const bool interior = npos == VL && iw0 >= 0 && iw0 + stride * (VL - 1) < W;
      for (int64_t c0 = 0; c0 < C; c0 += VL) {
        const int nch = static_cast<int>(std::min<int64_t>(VL, C - c0));
        float* d = dst + c0 * c_stride + ph * Wq + i0;
        if (interior)
          transpose_full_block<E>(src + iw0 * C + c0, stride * C, nch, d, c_stride);
        else
          transpose_edge_block<E>(src + c0, W, C, iw0, stride, npos, nch, d, c_stride);
      }
    }
  }
}

// Rows of a derived copy of a tensor (transposed for fprop and dgrad, W-padded for wgrad), each made the first time
// any thread asks for it. Making rows lazily interleaves the memory-bound copying with the compute-bound tiles
// (instead of a separate pass over the whole tensor) and uses each new row while it is still in cache; prefetching
// the source rows of the next work item hides most of the memory latency. Every row gets the same values whichever
// thread makes it, so results do not depend on timing.
class LazyRows {
 public:
  using MakeRow = std::function<void(const void* src_row, float* dst_row)>;
  LazyRows(const void* src, int64_t src_row_bytes, int64_t rows, int64_t row_floats, MakeRow make)
      : src_(static_cast<const char*>(src)),
        src_row_bytes_(src_row_bytes),
        row_floats_(row_floats),
        make_(std::move(make)),
        buffer_(static_cast<size_t>(rows * row_floats)),
        state_(new std::atomic<uint8_t>[static_cast<size_t>(rows)]) {
    for (int64_t i = 0; i < rows; ++i) state_[i].store(kTodo, std::memory_order_relaxed);
  }

  // Makes every row of `ids` that no thread has started, then waits for those that other threads are making.
  // Making first and waiting last lets threads that need the same rows share the work instead of queueing for it.
  void make_all(const std::vector<int64_t>& ids) {
    for (int64_t id : ids) try_make(id);
    for (int64_t id : ids) wait_until_made(id);
  }
  // Row `id`, once make_all has returned for a list holding it.
  const float* made_row(int64_t id) const { return buffer_.get() + id * row_floats_; }

  void try_make(int64_t id) {
    std::atomic<uint8_t>& st = state_[id];
    if (st.load(std::memory_order_relaxed) != kTodo) return;
    uint8_t expected = kTodo;
    if (!st.compare_exchange_strong(expected, kBusy, std::memory_order_acquire)) return;
    make_(src_ + id * src_row_bytes_, buffer_.get() + id * row_floats_);
    st.store(kDone, std::memory_order_release);
  }

  void wait_until_made(int64_t id) const {
    // Spin briefly (a row takes microseconds), then yield: on a machine shared with other work the thread making
    // the row may have lost its core.
    for (int spins = 0; state_[id].load(std::memory_order_acquire) != kDone; ++spins) {
      if (spins < 4096)
        _mm_pause();
      else
        std::this_thread::yield();
    }
  }

  // Starts bringing the source of a row not made yet toward L2, so that making it later does not stall.
  void prefetch(int64_t id) const {
    if (state_[id].load(std::memory_order_relaxed) != kTodo) return;
    const char* p = src_ + id * src_row_bytes_;
    for (int64_t off = 0; off < src_row_bytes_; off += 64) __builtin_prefetch(p + off, 0, 2);
  }

 private:
  static constexpr uint8_t kTodo = 0, kBusy = 1, kDone = 2;
  const char* src_;
  int64_t src_row_bytes_, row_floats_;
  MakeRow make_;
  Scratch buffer_;
  std::unique_ptr<std::atomic<uint8_t>[]> state_;
};

// Makes rows [W][C] of element type E into transpose_row's layout [C][phase][Wq].
template <class E>
LazyRows::MakeRow transposing(int64_t W, int64_t C, int pad, int stride, int64_t Wq) {
  return [=](const void* s, float* d) {
    transpose_row<E>(static_cast<const typename E::T*>(s), W, C, pad, stride, Wq, d);
  };
}

// Makes f32 copies of rows of n elements of type E (for f16 / bf16 operands that are read in their own layout).
template <class E>
LazyRows::MakeRow widening(int64_t n) {
  return [=](const void* s, float* d) { element::widen<E>(static_cast<const typename E::T*>(s), d, n); };
}

// ---------------------------------------------------------------------------------------------------------------
// fprop

template <class E>
void fprop(const ConvProblem& p, const typename E::T* x, const typename E::T* w, const float* bias, typename E::T* y) {
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
      int64_t kvalid = std::min<int64_t>(KB, K - kb * KB);
      if (kvalid < KB)
        for (int64_t c = 0; c < C; ++c) std::memset(dst + c * KB + kvalid, 0, size_t(KB - kvalid) * sizeof(float));
      transpose_matrix<E>(w + (kb * KB * taps + tap) * C, kvalid, C, taps * C, dst, KB);
    }
  });

  // Input rows transposed to [C][phase][Wq]: tap s of output pixel j reads phase s % sw at index j + s / sw.
  // Kernels of width 1 without W padding read x in its own layout (see gather_tile): f32 in place, f16 / bf16 from
  // widened copies of the rows.
  const bool transposed = !(p.S == 1 && p.pad_w == 0);
  const int64_t Wq = p.Q + (p.S - 1) / sw;
  std::optional<LazyRows> xrows;
  const int64_t x_rows = p.N * p.D * p.H, x_row_bytes = p.W * C * int64_t(sizeof(*x));
  if (transposed)
    xrows.emplace(x, x_row_bytes, x_rows, C * sw * Wq, transposing<E>(p.W, C, p.pad_w, sw, Wq));
  else if (!is_f32<E>)
    xrows.emplace(x, x_row_bytes, x_rows, p.W * C, widening<E>(p.W * C));
  auto x_row = [&](int64_t id) -> const float* {
    if constexpr (is_f32<E>)
      if (!xrows) return x + id * p.W * C;
    return xrows->made_row(id);
  };
  const int64_t x_channel_stride = transposed ? sw * Wq : 1, x_pixel_stride = transposed ? 1 : sw * C;

  // Calls fn(input row id, t, r) for the taps (t, r) of output row `row` that fall inside the input.
  auto for_each_input_row = [&](int64_t row, auto&& fn) {
    int64_t n = row / (p.Z * p.P), z = row / p.P % p.Z, pp = row % p.P;
    for (int t = 0; t < p.T; ++t) {
      int64_t iz = z * p.stride_d + t - p.pad_d;
      if (iz < 0 || iz >= p.D) continue;
      for (int r = 0; r < p.R; ++r) {
        int64_t ih = pp * p.stride_h + r - p.pad_h;
        if (ih < 0 || ih >= p.H) continue;
        fn((n * p.D + iz) * p.H + ih, t, r);
      }
    }
  };

  const int64_t out_rows = p.N * p.Z * p.P;
  // Rows per group: weights of one k block are reused across the group's rows while they sit in L2.
  const int64_t group = nkb > 1 ? 8 : 1;
  parallel_chunks(out_rows, group, [&](int64_t lo, int64_t hi) {
    std::vector<Tap> tap_list(static_cast<size_t>(taps));
    std::vector<int> count_per_row(static_cast<size_t>(group));
    std::vector<TapInRow> group_taps(static_cast<size_t>(group * taps));
    std::vector<int64_t> needed;
    // f16 / bf16: the group's y rows in f32, rounded into y once they are complete.
    Scratch ygroup(is_f32<E> ? 0 : static_cast<size_t>(group * p.Q * K));
    for (int64_t g0 = lo; g0 < hi; g0 += group) {
      int64_t g1 = std::min(hi, g0 + group);
      if (xrows) {
        needed.clear();
        for (int64_t row = g0; row < g1; ++row)
          for_each_input_row(row, [&](int64_t id, int, int) { needed.push_back(id); });
        xrows->make_all(needed);
      }
      // Valid taps of each row (x pointers, weight offsets within a k block).
      for (int64_t row = g0; row < g1; ++row) {
        int cnt = 0;
        TapInRow* list = &group_taps[static_cast<size_t>((row - g0) * taps)];
        for_each_input_row(row, [&](int64_t id, int t, int r) {
          const float* xrow = x_row(id);
          if (!transposed) {
            list[cnt++] = TapInRow{xrow, (int64_t(t) * p.R + r) * C * KB};
            return;
          }
          for (int s = 0; s < p.S; ++s) {
            int64_t tap = (int64_t(t) * p.R + r) * p.S + s;
            list[cnt++] = TapInRow{xrow + (s % sw) * Wq + s / sw, tap * C * KB};
          }
        });
        count_per_row[static_cast<size_t>(row - g0)] = cnt;
      }
      // The next group's new input rows start loading while this group computes.
      if (xrows)
        for (int64_t row = g1; row < std::min(hi, g1 + group); ++row)
          for_each_input_row(row, [&](int64_t id, int, int) { xrows->prefetch(id); });
      float* ybase;
      if constexpr (is_f32<E>)
        ybase = y + g0 * p.Q * K;
      else
        ybase = ygroup.get();
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const float* wkb = wp + kb * taps * C * KB;
        int valid = static_cast<int>(std::min<int64_t>(KB, K - kb * KB));
        for (int64_t row = g0; row < g1; ++row) {
          int cnt = count_per_row[static_cast<size_t>(row - g0)];
          const TapInRow* list = &group_taps[static_cast<size_t>((row - g0) * taps)];
          for (int i = 0; i < cnt; ++i) tap_list[static_cast<size_t>(i)] = Tap{list[i].x, wkb + list[i].w_offset};
          float* yrow = ybase + (row - g0) * p.Q * K + kb * KB;
          for_each_balanced_tile(p.Q, kMaxPixels, [&](int64_t j0, int np) {
            gather_fn(KV, transposed, np)(tap_list.data(), cnt, C, x_channel_stride, x_pixel_stride,
                                          j0 * x_pixel_stride, bpack.get() + kb * KB, yrow + j0 * K, K, valid);
          });
        }
      }
      if constexpr (!is_f32<E>) element::round_to<E>(ygroup.get(), y + g0 * p.Q * K, (g1 - g0) * p.Q * K);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// dgrad

template <class E>
void dgrad(const ConvProblem& p, const typename E::T* dy, const typename E::T* w, typename E::T* dx) {
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
        element::widen<E>(w + (k * taps + tap) * C + cb * CB, dst + k * CB, cvalid);
        std::memset(dst + k * CB + cvalid, 0, size_t(CB - cvalid) * sizeof(float));
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
  // Kernels of width 1 without W padding read dy in its own layout (see gather_tile), f16 / bf16 from widened copies
  // of the rows: then q = j for the one parity class.
  const bool transposed = !(p.S == 1 && p.pad_w == 0);
  std::optional<LazyRows> dyrows;
  const int64_t dy_rows = p.N * p.Z * p.P, dy_row_bytes = p.Q * K * int64_t(sizeof(*dy));
  if (transposed)
    dyrows.emplace(dy, dy_row_bytes, dy_rows, K * Qp, transposing<E>(p.Q, K, static_cast<int>(lead), 1, Qp));
  else if (!is_f32<E>)
    dyrows.emplace(dy, dy_row_bytes, dy_rows, p.Q * K, widening<E>(p.Q * K));
  auto dy_row = [&](int64_t id) -> const float* {
    if constexpr (is_f32<E>)
      if (!dyrows) return dy + id * p.Q * K;
    return dyrows->made_row(id) + (transposed ? lead : 0);
  };
  const int64_t dy_channel_stride = transposed ? Qp : 1, dy_pixel_stride = transposed ? 1 : K;

  // Calls fn(dy row id, t, r) for the taps (t, r) through which dy row (z, p) reaches dx row (n, d, h).
  auto for_each_dy_row = [&](int64_t row, auto&& fn) {
    int64_t n = row / (p.D * p.H), d = row / p.H % p.D, h = row % p.H;
    for (int t = 0; t < p.T; ++t) {
      int64_t zn = d + p.pad_d - t;
      if (zn < 0 || zn % sd != 0 || zn / sd >= p.Z) continue;
      for (int r = 0; r < p.R; ++r) {
        int64_t pn = h + p.pad_h - r;
        if (pn < 0 || pn % sh != 0 || pn / sh >= p.P) continue;
        fn((n * p.Z + zn / sd) * p.P + pn / sh, t, r);
      }
    }
  };

  const int64_t rows = p.N * p.D * p.H;
  // Rows per group: weights of one c block are reused across the group's rows while they sit in L2.
  const int64_t group = ncb > 1 ? 8 : 1;
  parallel_chunks(rows, group, [&](int64_t lo, int64_t hi) {
    // Taps of each (row of the group, W parity class b): dy row pointer at column offset q = j + off.
    std::vector<TapInRow> rel(static_cast<size_t>(group * sw * taps));
    std::vector<int> count(static_cast<size_t>(group * sw));
    std::vector<Tap> list(static_cast<size_t>(taps));
    std::vector<int64_t> needed;
    // f16 / bf16: the group's dx rows in f32, rounded into dx once they are complete.
    Scratch dxgroup(is_f32<E> ? 0 : static_cast<size_t>(group * p.W * C));
    for (int64_t g0 = lo; g0 < hi; g0 += group) {
      int64_t g1 = std::min(hi, g0 + group);
      if (dyrows) {
        needed.clear();
        for (int64_t row = g0; row < g1; ++row)
          for_each_dy_row(row, [&](int64_t id, int, int) { needed.push_back(id); });
        dyrows->make_all(needed);
      }
      for (int64_t row = g0; row < g1; ++row) {
        for (int b = 0; b < sw; ++b) {
          size_t slot = static_cast<size_t>((row - g0) * sw + b);
          TapInRow* out = &rel[slot * static_cast<size_t>(taps)];
          int cnt = 0;
          for_each_dy_row(row, [&](int64_t id, int t, int r) {
            const float* dyrow = dy_row(id);
            for (int s = 0; s < p.S; ++s) {
              int64_t num = b + p.pad_w - s;
              if (num % sw != 0) continue;
              int64_t tap = (int64_t(t) * p.R + r) * p.S + s;
              out[cnt++] = TapInRow{dyrow + (num / sw) * dy_pixel_stride, tap * K * CB};
            }
          });
          count[slot] = cnt;
        }
      }
      if (dyrows)
        for (int64_t row = g1; row < std::min(hi, g1 + group); ++row)
          for_each_dy_row(row, [&](int64_t id, int, int) { dyrows->prefetch(id); });
      float* dxbase;
      if constexpr (is_f32<E>)
        dxbase = dx + g0 * p.W * C;
      else
        dxbase = dxgroup.get();
      for (int64_t cb = 0; cb < ncb; ++cb) {
        const float* wcb = wp + cb * taps * K * CB;
        int valid = static_cast<int>(std::min<int64_t>(CB, C - cb * CB));
        for (int64_t row = g0; row < g1; ++row) {
          for (int b = 0; b < sw && b < p.W; ++b) {
            size_t slot = static_cast<size_t>((row - g0) * sw + b);
            const TapInRow* in = &rel[slot * static_cast<size_t>(taps)];
            int cnt = count[slot];
            for (int i = 0; i < cnt; ++i) list[static_cast<size_t>(i)] = Tap{in[i].x, wcb + in[i].w_offset};
            int64_t J = (p.W - b + sw - 1) / sw;
            float* dxrow = dxbase + (row - g0) * p.W * C + b * C + cb * CB;
            for_each_balanced_tile(J, kMaxPixels, [&](int64_t j0, int np) {
              gather_fn(CV, transposed, np)(list.data(), cnt, K, dy_channel_stride, dy_pixel_stride,
                                            j0 * dy_pixel_stride, nullptr, dxrow + j0 * sw * C, sw * C, valid);
            });
          }
        }
      }
      if constexpr (!is_f32<E>) element::round_to<E>(dxgroup.get(), dx + g0 * p.W * C, (g1 - g0) * p.W * C);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// wgrad

template <class E>
void bias_grad(const ConvProblem& p, const typename E::T* dy, float* dbias) {
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
        for (int64_t k = 0; k < K; ++k) part[k] += E::load(dy[px * K + k]);
    }
  });
  for (int64_t k = 0; k < K; ++k) {
    double s = 0.0;
    for (int64_t ch = 0; ch < nchunks; ++ch) s += partial[static_cast<size_t>(ch * K + k)];
    dbias[k] = static_cast<float>(s);
  }
}

template <class E>
void wgrad(const ConvProblem& p, const typename E::T* x, const typename E::T* dy, float* dw, float* dbias) {
  const int64_t C = p.C, K = p.K, taps = p.taps();
  const int sw = p.stride_w;
  const int KV = vectors_for(K), KB = KV * VL;
  const int64_t nkb = (K + KB - 1) / KB, Kp = nkb * KB;

  // x padded along W so that every (s, c) pair of every output pixel reads inside the row: column u = iw + pad_w.
  const int64_t Wu = (p.Q - 1) * sw + p.S;
  const bool padded = p.pad_w != 0 || Wu > p.W;
  const int64_t x_row = (padded ? Wu : p.W) * C;
  const int64_t x_rows = p.N * p.D * p.H, x_row_bytes = p.W * C * int64_t(sizeof(*x));
  // f16 / bf16 x and dy are read from widened copies of their rows (x's padded, if it needs padding); f32 in place.
  std::optional<LazyRows> xrows, dyrows;
  if (padded) {
    xrows.emplace(x, x_row_bytes, x_rows, x_row, [&p, C, Wu](const void* src, float* dst) {
      const int64_t lead = std::min<int64_t>(p.pad_w, Wu), body = std::clamp<int64_t>(Wu - lead, 0, p.W);
      std::memset(dst, 0, static_cast<size_t>(lead * C) * sizeof(float));
      element::widen<E>(static_cast<const typename E::T*>(src), dst + lead * C, body * C);
      std::memset(dst + (lead + body) * C, 0, static_cast<size_t>((Wu - lead - body) * C) * sizeof(float));
    });
  } else if (!is_f32<E>) {
    xrows.emplace(x, x_row_bytes, x_rows, x_row, widening<E>(x_row));
  }
  const int64_t out_rows = p.N * p.Z * p.P;
  if (!is_f32<E>) dyrows.emplace(dy, p.Q * K * int64_t(sizeof(*dy)), out_rows, p.Q * K, widening<E>(p.Q * K));

  // Accumulators dwT [t][r][(s,c)][Kp]; tiles (t, r, kblock, block of (s,c) pairs), (s,c) fastest so that
  // consecutive tiles reuse the same dy columns and x rows from cache.
  const int64_t SC = p.S * C;
  int64_t nscb = (SC + kMaxPairs - 1) / kMaxPairs;
  // Few tiles (thin layers, 1x1 heads) would leave threads idle: split the pairs finer, down to blocks of ~4.
  const int64_t min_tiles = 8 * int64_t(num_threads());
  const int64_t other_tiles = int64_t(p.T) * p.R * nkb;
  if (other_tiles * nscb < min_tiles)
    nscb = std::clamp<int64_t>((min_tiles + other_tiles - 1) / other_tiles, nscb, std::max<int64_t>(nscb, SC / 4));
  Scratch dwt(static_cast<size_t>(taps * C * Kp));
  std::memset(dwt.get(), 0, static_cast<size_t>(taps * C * Kp) * sizeof(float));
  const int64_t tiles = int64_t(p.T) * p.R * nkb * nscb;

  // Rows per chunk: the chunk's dy and x rows should stay in L2 while every tile of the thread sweeps them.
  const int64_t row_bytes = p.Q * (K + sw * C) * int64_t(sizeof(float)) * 2;
  const int64_t chunk = std::clamp<int64_t>((1 << 20) / std::max<int64_t>(row_bytes, 1), 1, out_rows);

  // Per output row of a chunk: first input row index (n, iz0, ih0 before adding t and r) and dy row.
  struct RowInfo {
    int64_t n, iz0, ih0;
    const float* dy;
  };
  parallel_for(tiles, 1, [&](int64_t lo, int64_t hi) {
    std::vector<Segment> segs(static_cast<size_t>(chunk));
    std::vector<RowInfo> info(static_cast<size_t>(chunk));
    std::vector<int64_t> needed;
    auto for_each_input_row = [&](int64_t r0, int64_t r1, auto&& fn) {
      for (int64_t row = r0; row < r1; ++row) {
        int64_t n = row / (p.Z * p.P), z = row / p.P % p.Z, pp = row % p.P;
        for (int t = 0; t < p.T; ++t) {
          int64_t iz = z * p.stride_d + t - p.pad_d;
          if (iz < 0 || iz >= p.D) continue;
          for (int r = 0; r < p.R; ++r) {
            int64_t ih = pp * p.stride_h + r - p.pad_h;
            if (ih >= 0 && ih < p.H) fn((n * p.D + iz) * p.H + ih);
          }
        }
      }
    };
    for (int64_t r0 = 0; r0 < out_rows; r0 += chunk) {
      int64_t r1 = std::min(out_rows, r0 + chunk), r2 = std::min(out_rows, r1 + chunk);
      if (xrows) {
        needed.clear();
        for_each_input_row(r0, r1, [&](int64_t id) { needed.push_back(id); });
        xrows->make_all(needed);
        for_each_input_row(r1, r2, [&](int64_t id) { xrows->prefetch(id); });
      }
      if (dyrows) {
        needed.clear();
        for (int64_t row = r0; row < r1; ++row) needed.push_back(row);
        dyrows->make_all(needed);
        for (int64_t row = r1; row < r2; ++row) dyrows->prefetch(row);
      }
      const float *xbase, *dybase;
      if constexpr (is_f32<E>) {
        xbase = xrows ? xrows->made_row(0) : x;
        dybase = dy;
      } else {
        xbase = xrows->made_row(0);
        dybase = dyrows->made_row(0);
      }
      for (int64_t row = r0; row < r1; ++row) {
        int64_t n = row / (p.Z * p.P), z = row / p.P % p.Z, pp = row % p.P;
        info[static_cast<size_t>(row - r0)] =
            RowInfo{n, z * p.stride_d - p.pad_d, pp * p.stride_h - p.pad_h, dybase + row * p.Q * K};
      }
      for (int64_t tile = lo; tile < hi; ++tile) {
        int64_t scb = tile % nscb, kb = tile / nscb % nkb, tr = tile / (nscb * nkb);
        int t = static_cast<int>(tr / p.R), r = static_cast<int>(tr % p.R);
        int64_t sc0 = SC * scb / nscb, sc1 = SC * (scb + 1) / nscb;  // balanced (s,c) blocks
        int nsegs = 0;
        for (int64_t i = 0; i < r1 - r0; ++i) {
          const RowInfo& ri = info[static_cast<size_t>(i)];
          int64_t iz = ri.iz0 + t, ih = ri.ih0 + r;
          if (iz < 0 || iz >= p.D || ih < 0 || ih >= p.H) continue;
          segs[static_cast<size_t>(nsegs++)] =
              Segment{xbase + ((ri.n * p.D + iz) * p.H + ih) * x_row + sc0, ri.dy + kb * KB, p.Q};
        }
        if (nsegs == 0) continue;
        int valid = static_cast<int>(std::min<int64_t>(KB, K - kb * KB));
        float* acc = dwt.get() + (tr * SC + sc0) * Kp + kb * KB;
        wgrad_fn(KV, static_cast<int>(sc1 - sc0))(segs.data(), nsegs, sw * C, K, acc, Kp, valid);
      }
    }
  });

  // dw [K][tap*C] from dwT [tap*C][Kp].
  const int64_t TC = taps * C;
  parallel_for(nkb * KV, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t kv = lo; kv < hi; ++kv) {
      const int64_t k0 = kv * VL, nk = std::min<int64_t>(VL, K - k0);
      if (nk > 0) transpose_matrix(dwt.get() + k0, TC, nk, Kp, dw + k0 * TC, TC);
    }
  });

  if (dbias) bias_grad<E>(p, dy, dbias);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Entry points: f32 buffers, and f32 / f16 / bf16 buffers by dtype.

void conv_fprop(const ConvProblem& p, const float* x, const float* w, const float* bias, float* y) {
  fprop<element::F32>(p, x, w, bias, y);
}
void conv_dgrad(const ConvProblem& p, const float* dy, const float* w, float* dx) {
  dgrad<element::F32>(p, dy, w, dx);
}
void conv_wgrad(const ConvProblem& p, const float* x, const float* dy, float* dw, float* dbias) {
  wgrad<element::F32>(p, x, dy, dw, dbias);
}
void conv_bias_grad(const ConvProblem& p, const float* dy, float* dbias) {
  bias_grad<element::F32>(p, dy, dbias);
}

void conv_fprop(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y) {
  element::with_element_type(dt, "conv_fprop", [&](auto e) {
    using T = typename decltype(e)::T;
    fprop<decltype(e)>(p, static_cast<const T*>(x), static_cast<const T*>(w), bias, static_cast<T*>(y));
  });
}
void conv_dgrad(const ConvProblem& p, DType dt, const void* dy, const void* w, void* dx) {
  element::with_element_type(dt, "conv_dgrad", [&](auto e) {
    using T = typename decltype(e)::T;
    dgrad<decltype(e)>(p, static_cast<const T*>(dy), static_cast<const T*>(w), static_cast<T*>(dx));
  });
}
void conv_wgrad(const ConvProblem& p, DType dt, const void* x, const void* dy, float* dw, float* dbias) {
  element::with_element_type(dt, "conv_wgrad", [&](auto e) {
    using T = typename decltype(e)::T;
    if (dw)
      wgrad<decltype(e)>(p, static_cast<const T*>(x), static_cast<const T*>(dy), dw, dbias);
    else
      bias_grad<decltype(e)>(p, static_cast<const T*>(dy), dbias);
  });
}

namespace {

// conv_fprop, then the statistics of y (kernels/conv.h) in a pass of their own.
void conv_fprop_stats(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y,
                      float* stats) {
  conv_fprop(p, dt, x, w, bias, y);
  if (stats) instance_sums(NormShape{p.N, p.Z * p.P * p.Q, p.K}, dt, y, stats);
}

// The previous layer's norm + activation into a buffer of x's size (what CUDA applies as it loads x), then conv_fprop.
void conv_fprop_norm_act(const ConvProblem& p, DType dt, const void* x, const float* mean, const float* scale,
                         const float* shift, float slope, const void* w, const float* bias, void* y, float* stats) {
  const int64_t positions = p.D * p.H * p.W;
  Scratch act(static_cast<size_t>((p.N * positions * p.C * int64_t(dtype_size(dt)) + 3) / 4));
  instance_norm_apply(NormShape{p.N, positions, p.C}, dt, x, mean, scale, shift, slope, act.get());
  conv_fprop_stats(p, dt, act.get(), w, bias, y, stats);
}

}  // namespace

const ConvKernels conv_kernels{
    .conv_fprop = [](const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y,
                     float* stats, cudaStream_t) { conv_fprop_stats(p, dt, x, w, bias, y, stats); },
    .conv_fprop_norm_act =
        [](const ConvProblem& p, DType dt, const void* x, const float* mean, const float* scale, const float* shift,
           float slope, const void* w, const float* bias, void* y, float* stats,
           cudaStream_t) { conv_fprop_norm_act(p, dt, x, mean, scale, shift, slope, w, bias, y, stats); },
    .conv_dgrad = [](const ConvProblem& p, DType dt, const void* dy, const void* w, void* dx,
                     cudaStream_t) { conv_dgrad(p, dt, dy, w, dx); },
    .conv_wgrad = [](const ConvProblem& p, DType dt, const void* x, const void* dy, float* dw, float* dbias,
                     cudaStream_t) { conv_wgrad(p, dt, x, dy, dw, dbias); },
};

}  // namespace unet::kernels::cpu
