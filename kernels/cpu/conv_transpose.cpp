// CPU transposed convolution with kernel == stride (see kernels/conv_transpose.h).
// All three passes are one register-blocked product, acc[R][NB] += A[R][L] * B[L][NB]: R rows (pixels, or output
// channels in wgrad) times NB columns (channels, one or two 16-float vectors) held in registers. B (weights, or x in
// wgrad) has rows padded to whole vectors: the weights are repacked (small), x is used in place when its channel
// count is a multiple of NB and copied into padded rows otherwise. Work is split over pixel blocks (fprop, dgrad)
// or over fixed pixel chunks and taps (wgrad); each output element is produced by one thread in a fixed order, and
// wgrad's chunk partials are summed in chunk order: bitwise deterministic for any thread count.
// f16 / bf16 tensors run the same passes: each operand is widened to f32 (exact) where it is packed or read as a small
// tile (the rows of one block of pixels), and each output row rounded once from the f32 accumulators.
// Measured (bench: 2 threads, AVX-512, quiet machine) at about 100-200 GFLOP/s per pass for 64-128 channels.
#include "kernels/cpu/conv_transpose.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/common/parallel.h"
#include "kernels/cpu/element.h"

namespace unet::kernels::cpu {
namespace {

// 16 floats; GCC splits it into two ymm registers without AVX-512. aligned(4) allows unaligned loads and stores.
typedef float vf16 __attribute__((vector_size(64), aligned(4)));
#if defined(__AVX512F__)
constexpr int kNV = 2;  // 2 zmm per row: 6 x 2 = 12 accumulators of 32 registers
#else
constexpr int kNV = 1;  // 1 (split) vector per row: 6 x 2 ymm = 12 accumulators of 16 registers
#endif
constexpr int64_t kNB = 16 * kNV;  // columns per micro-tile
constexpr int kRB = 6;             // rows per micro-tile

int64_t round_up(int64_t v, int64_t m) {
  return (v + m - 1) / m * m;
}

// acc[r * ldc + j] += sum_l A(r, l) * b[l * ldb + j] for r < R, j < kNB. A comes in two layouts: by rows
// (a[r][l]: fprop and dgrad, one pointer per output row) or by columns (cols[l][r]: wgrad, where cols[l] is the dy row
// of pixel l, so dy is read in place, never transposed). ByColumns selects the second.
template <int R, bool ByColumns>
void micro_kernel(const float* const* a, int64_t L, const float* b, int64_t ldb, float* acc, int64_t ldc) {
  vf16 v[R][kNV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kNV; ++j) v[r][j] = *reinterpret_cast<const vf16*>(acc + r * ldc + 16 * j);
  for (int64_t l = 0; l < L; ++l) {
    vf16 bv[kNV];
    for (int j = 0; j < kNV; ++j) bv[j] = *reinterpret_cast<const vf16*>(b + l * ldb + 16 * j);
    for (int r = 0; r < R; ++r) {
      float s = ByColumns ? a[l][r] : a[r][l];
      for (int j = 0; j < kNV; ++j) v[r][j] += s * bv[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kNV; ++j) *reinterpret_cast<vf16*>(acc + r * ldc + 16 * j) = v[r][j];
}

template <bool ByColumns>
void micro(int rows, const float* const* a, int64_t L, const float* b, int64_t ldb, float* acc, int64_t ldc) {
  switch (rows) {
    case 1: micro_kernel<1, ByColumns>(a, L, b, ldb, acc, ldc); break;
    case 2: micro_kernel<2, ByColumns>(a, L, b, ldb, acc, ldc); break;
    case 3: micro_kernel<3, ByColumns>(a, L, b, ldb, acc, ldc); break;
    case 4: micro_kernel<4, ByColumns>(a, L, b, ldb, acc, ldc); break;
    case 5: micro_kernel<5, ByColumns>(a, L, b, ldb, acc, ldc); break;
    case 6: micro_kernel<6, ByColumns>(a, L, b, ldb, acc, ldc); break;
    default: break;
  }
}

// Output-row geometry: input pixel i maps, through tap (t, r, s), to output row base(i) + tap_offset(t, r, s).
struct Geometry {
  explicit Geometry(const ConvTransposeShape& s)
      : sh(s), od(s.d * s.kt), oh(s.h * s.kr), ow(s.w * s.ks), tap_offset(static_cast<size_t>(s.taps())) {
    for (int64_t t = 0; t < s.kt; ++t)
      for (int64_t r = 0; r < s.kr; ++r)
        for (int64_t q = 0; q < s.ks; ++q)
          tap_offset[static_cast<size_t>((t * s.kr + r) * s.ks + q)] = (t * oh + r) * ow + q;
  }
  int64_t base(int64_t i) const {
    int64_t q = i % sh.w, p = (i / sh.w) % sh.h, z = (i / (sh.w * sh.h)) % sh.d, n = i / (sh.w * sh.h * sh.d);
    return ((n * od + z * sh.kt) * oh + p * sh.kr) * ow + q * sh.ks;
  }
  const ConvTransposeShape& sh;
  int64_t od, oh, ow;
  std::vector<int64_t> tap_offset;
};

template <class E>
constexpr bool is_f32 = std::is_same_v<E, element::F32>;

template <class E>
void fprop(const ConvTransposeShape& s, const typename E::T* x, const typename E::T* w, const float* bias,
           typename E::T* y) {
  const int64_t T = s.taps(), C = s.c, K = s.k, M = s.pixels(), Kp = round_up(K, kNB);
  // wf[tap][c][Kp] = w[k][tap][c]: output channels contiguous, zero-padded to whole vectors.
  std::vector<float> wf(static_cast<size_t>(T * C * Kp), 0.f), bp(static_cast<size_t>(Kp), 0.f);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) wf[static_cast<size_t>((t * C + c) * Kp + k)] = E::load(w[(k * T + t) * C + c]);
  if (bias) std::copy(bias, bias + K, bp.begin());
  Geometry g(s);
  const int64_t blocks = (M + kRB - 1) / kRB;
  parallel_for(blocks, 8, [&](int64_t lo, int64_t hi) {
    alignas(64) float acc[kRB * kNB];
    const float* a[kRB];
    int64_t base[kRB];
    std::vector<float> xw(static_cast<size_t>(kRB * C));  // f16 / bf16: the block's x rows widened
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t p0 = b * kRB;
      const int rows = static_cast<int>(std::min<int64_t>(kRB, M - p0));
      for (int r = 0; r < rows; ++r) {
        a[r] = element::as_f32<E>(x + (p0 + r) * C, C, xw.data() + r * C);
        base[r] = g.base(p0 + r);
      }
      for (int64_t t = 0; t < T; ++t) {
        const int64_t off = g.tap_offset[static_cast<size_t>(t)];
        for (int64_t k0 = 0; k0 < K; k0 += kNB) {
          for (int r = 0; r < rows; ++r) std::memcpy(acc + r * kNB, bp.data() + k0, sizeof(float) * kNB);
          micro<false>(rows, a, C, wf.data() + t * C * Kp + k0, Kp, acc, kNB);
          const int64_t kn = std::min(kNB, K - k0);
          for (int r = 0; r < rows; ++r) element::round_to<E>(acc + r * kNB, y + (base[r] + off) * K + k0, kn);
        }
      }
    }
  });
}

template <class E>
void dgrad(const ConvTransposeShape& s, const typename E::T* dy, const typename E::T* w, typename E::T* dx) {
  const int64_t T = s.taps(), C = s.c, K = s.k, M = s.pixels(), Cp = round_up(C, kNB);
  // wd[tap][k][Cp] = w[k][tap][c]: input channels contiguous, zero-padded.
  std::vector<float> wd(static_cast<size_t>(T * K * Cp), 0.f);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t t = 0; t < T; ++t) element::widen<E>(w + (k * T + t) * C, wd.data() + (t * K + k) * Cp, C);
  Geometry g(s);
  const int64_t blocks = (M + kRB - 1) / kRB;
  parallel_for(blocks, 8, [&](int64_t lo, int64_t hi) {
    alignas(64) float acc[kRB * kNB];
    const float* a[kRB];
    int64_t base[kRB];
    std::vector<float> dyw(static_cast<size_t>(kRB * K));  // f16 / bf16: the dy rows of a tap widened
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t p0 = b * kRB;
      const int rows = static_cast<int>(std::min<int64_t>(kRB, M - p0));
      for (int r = 0; r < rows; ++r) base[r] = g.base(p0 + r);
      for (int64_t c0 = 0; c0 < C; c0 += kNB) {
        std::memset(acc, 0, sizeof(acc));
        for (int64_t t = 0; t < T; ++t) {  // taps in a fixed order: the sum over (t, k) is deterministic
          const int64_t off = g.tap_offset[static_cast<size_t>(t)];
          for (int r = 0; r < rows; ++r) a[r] = element::as_f32<E>(dy + (base[r] + off) * K, K, dyw.data() + r * K);
          micro<false>(rows, a, K, wd.data() + t * K * Cp + c0, Cp, acc, kNB);
        }
        const int64_t cn = std::min(kNB, C - c0);
        for (int r = 0; r < rows; ++r) element::round_to<E>(acc + r * kNB, dx + (p0 + r) * C + c0, cn);
      }
    }
  });
}

template <class E>
void wgrad(const ConvTransposeShape& s, const typename E::T* x, const typename E::T* dy, float* dw, float* dbias) {
  const int64_t T = s.taps(), C = s.c, K = s.k, M = s.pixels(), Cp = round_up(C, kNB);
  // Chunk size depends on M only (never on the thread count): at most 64 chunks, at least 1024 pixels each.
  const int64_t chunk = std::max<int64_t>(1024, (M + 63) / 64);
  const int64_t chunks = (M + chunk - 1) / chunk;
  constexpr int64_t kSub = 256;  // pixels packed at a time: the packed x panel (kSub x Cp) stays in L2
  std::vector<float> part(dw ? static_cast<size_t>(chunks * T * K * Cp) : 0);
  std::vector<float> part_bias(static_cast<size_t>(chunks * T * K));
  Geometry g(s);
  // With C a multiple of kNB the x rows serve as the B panel in place; otherwise (and for f16 / bf16, widened) each
  // sub-block is copied into zero-padded rows first. f16 / bf16 dy rows are widened as the sub-block is gathered.
  const bool pack_x = dw && (C % kNB != 0 || !is_f32<E>);
  parallel_for(chunks * T, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> xs(pack_x ? static_cast<size_t>(kSub * Cp) : 0, 0.f);  // pad columns stay zero
    std::vector<const float*> cols(static_cast<size_t>(kSub));
    std::vector<float> dyw(is_f32<E> ? 0 : static_cast<size_t>(kSub * K));
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t ci = item / T, t = item % T, off = g.tap_offset[static_cast<size_t>(t)];
      float* acc = dw ? part.data() + item * K * Cp : nullptr;  // item = ci * T + t
      float* pb = part_bias.data() + item * K;
      if (dw) std::fill(acc, acc + K * Cp, 0.f);
      std::fill(pb, pb + K, 0.f);
      const int64_t begin = ci * chunk, end = std::min(M, begin + chunk);
      for (int64_t p0 = begin; p0 < end; p0 += kSub) {
        const int64_t L = std::min(kSub, end - p0);
        for (int64_t l = 0; l < L; ++l) {
          const typename E::T* dy_row = dy + (g.base(p0 + l) + off) * K;
          const float* gr;
          if constexpr (is_f32<E>) {
            gr = dy_row;
          } else {
            gr = dyw.data() + l * K;
            element::widen<E>(dy_row, dyw.data() + l * K, K);
          }
          cols[static_cast<size_t>(l)] = gr;
          for (int64_t k = 0; k < K; ++k) pb[k] += gr[k];
          if (pack_x) element::widen<E>(x + (p0 + l) * C, xs.data() + l * Cp, C);
        }
        if (!dw) continue;
        const float* bx = xs.data();
        if constexpr (is_f32<E>)
          if (!pack_x) bx = x + p0 * C;
        const int64_t ldb = pack_x ? Cp : C;
        for (int64_t k0 = 0; k0 < K; k0 += kRB) {
          const int rows = static_cast<int>(std::min<int64_t>(kRB, K - k0));
          if (k0 > 0)
            for (int64_t l = 0; l < L; ++l) cols[static_cast<size_t>(l)] += kRB;
          for (int64_t c0 = 0; c0 < Cp; c0 += kNB)
            micro<true>(rows, cols.data(), L, bx + c0, ldb, acc + k0 * Cp + c0, Cp);
        }
      }
    }
  });
  // Combine the chunk partials in chunk order.
  if (dw)
    parallel_for(K * T, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t kt = lo; kt < hi; ++kt) {
        const int64_t k = kt / T, t = kt % T;
        float* out = dw + (k * T + t) * C;
        std::fill(out, out + C, 0.f);
        for (int64_t ci = 0; ci < chunks; ++ci) {
          const float* p = part.data() + ((ci * T + t) * K + k) * Cp;
          for (int64_t c = 0; c < C; ++c) out[c] += p[c];
        }
      }
    });
  if (dbias) {
    for (int64_t k = 0; k < K; ++k) dbias[k] = 0.f;
    for (int64_t ci = 0; ci < chunks; ++ci)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t k = 0; k < K; ++k) dbias[k] += part_bias[static_cast<size_t>((ci * T + t) * K + k)];
  }
}

}  // namespace

void conv_transpose_fprop(const ConvTransposeShape& s, const float* x, const float* w, const float* bias, float* y) {
  fprop<element::F32>(s, x, w, bias, y);
}
void conv_transpose_dgrad(const ConvTransposeShape& s, const float* dy, const float* w, float* dx) {
  dgrad<element::F32>(s, dy, w, dx);
}
void conv_transpose_wgrad(const ConvTransposeShape& s, const float* x, const float* dy, float* dw, float* dbias) {
  wgrad<element::F32>(s, x, dy, dw, dbias);
}

void conv_transpose_fprop(const ConvTransposeShape& s, DType dt, const void* x, const void* w, const float* bias,
                          void* y) {
  element::with_element_type(dt, "conv_transpose_fprop", [&](auto e) {
    using T = typename decltype(e)::T;
    fprop<decltype(e)>(s, static_cast<const T*>(x), static_cast<const T*>(w), bias, static_cast<T*>(y));
  });
}
void conv_transpose_dgrad(const ConvTransposeShape& s, DType dt, const void* dy, const void* w, void* dx) {
  element::with_element_type(dt, "conv_transpose_dgrad", [&](auto e) {
    using T = typename decltype(e)::T;
    dgrad<decltype(e)>(s, static_cast<const T*>(dy), static_cast<const T*>(w), static_cast<T*>(dx));
  });
}
void conv_transpose_wgrad(const ConvTransposeShape& s, DType dt, const void* x, const void* dy, float* dw,
                          float* dbias) {
  element::with_element_type(dt, "conv_transpose_wgrad", [&](auto e) {
    using T = typename decltype(e)::T;
    wgrad<decltype(e)>(s, static_cast<const T*>(x), static_cast<const T*>(dy), dw, dbias);
  });
}

const ConvTransposeKernels conv_transpose_kernels{
    .conv_transpose_fprop = [](const ConvTransposeShape& s, DType dt, const void* x, const void* w, const float* bias,
                               void* y, cudaStream_t) { conv_transpose_fprop(s, dt, x, w, bias, y); },
    .conv_transpose_dgrad = [](const ConvTransposeShape& s, DType dt, const void* dy, const void* w, void* dx,
                               cudaStream_t) { conv_transpose_dgrad(s, dt, dy, w, dx); },
    .conv_transpose_wgrad = [](const ConvTransposeShape& s, DType dt, const void* x, const void* dy, float* dw,
                               float* dbias, cudaStream_t) { conv_transpose_wgrad(s, dt, x, dy, dw, dbias); },
};

}  // namespace unet::kernels::cpu
