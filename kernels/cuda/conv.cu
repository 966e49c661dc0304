// CUDA convolution, fprop / dgrad / wgrad as implicit GEMM (entry points and GEMM views in conv.cuh).
// One main loop serves all three passes. It is parameterised by two operand iterators that map (row of the GEMM's M or
// N dimension, GEMM k index) to a global address or to "zero" (padding, out of range), and by the layout each operand
// has along its contiguous dimension:
//   k-contiguous  (fprop A and B, dgrad A): staged as [rows][k], fragments by ldmatrix;
//   mn-contiguous (dgrad B, wgrad A and B): staged as [k][rows], fragments by ldmatrix.trans.
// Shared memory rows are padded by 16 bytes, so every ldmatrix phase reads 8 distinct bank quads (no conflicts).
// f16 / bf16 run on the tensor cores (mma m16n8k16, f32 accumulation) behind a multi-stage cp.async pipeline when the
// contiguous channel counts are multiples of 8 and the pointers 16-byte aligned; otherwise the same loop loads single
// elements (any channel count is correct). f32 runs a SIMT loop (register-blocked FMA) over the same iterators.
// Everything is deterministic: wgrad splits K (pixels) into a number of ranges fixed by the shape and sums the f32
// partials in split order; the instance-norm statistics of fprop are per-CTA partials summed in tile order.
// conv_fprop_norm_act swaps fprop's A iterator for one that applies the previous layer's instance norm + leaky ReLU
// to every loaded value (through registers instead of cp.async, as the values must be transformed on the way).
// Strided dgrad runs one GEMM per stride phase over only the taps that reach it (no MMAs on zeros).
// f32 with conv_allow_tf32() runs the tensor-core loop too (element trait TF32): f32 staged in shared memory (cp.async
// chunks of 4 when the channel counts are multiples of 4), fragments read by plain shared loads and rounded by to_tf32
// (cvt.rna), mma m16n8k8 .tf32 with f32 accumulation, half the k per stage (16) so the f32 stages fit the same smem.
// Not done yet: incremental (division-free) iterators, a fused-statistics epilogue for the f32 SIMT path.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/conv.cuh"
#include "kernels/cuda/conv_reduce.cuh"
#include "kernels/cuda/conv_sm90.cuh"
#include "kernels/cuda/conv_thin.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/scratch.cuh"
// clang-format on

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace unet::kernels::cuda {

namespace {
std::atomic<bool> allow_tf32{false};
std::atomic<int> sm90_mode{-1};  // -1: not set yet (UNET_CONV_SM90 decides at first use)
}  // namespace

void set_conv_sm90(bool enable) {
  sm90_mode.store(enable ? 1 : 0, std::memory_order_relaxed);
}
bool conv_sm90_enabled() {
  int mode = sm90_mode.load(std::memory_order_relaxed);
  if (mode < 0) {
    const char* v = std::getenv("UNET_CONV_SM90");
    mode = v && std::string(v) == "1" ? 1 : 0;
    sm90_mode.store(mode, std::memory_order_relaxed);
  }
  return mode == 1;
}

namespace {
// Whether conv_fprop takes the sm_90a path (conv.cuh): enabled, and the current device runs the build's sm_90a code
// (UNET_HAVE_CONV_SM90: the GPU build compiled conv_sm90.cu for it). The emulator runs it always.
bool sm90_device() {
  if (!conv_sm90_enabled()) return false;
#if UNET_EMULATED
  return true;
#elif defined(UNET_HAVE_CONV_SM90)
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
    return false;
  return major == 9 && minor == 0;
#else
  return false;
#endif
}
}  // namespace

void set_conv_allow_tf32(bool allow) {
  allow_tf32.store(allow, std::memory_order_relaxed);
}
bool conv_allow_tf32() {
  return allow_tf32.load(std::memory_order_relaxed);
}

namespace testing {
int forced_tile_m = 0, forced_tile_n = 0, forced_wgrad_splits = 0;
// The most blocks column_sums launches along y (CUDA's limit for gridDim.y); more row chunks than that are looped
// over inside the kernel. Lowered only by tests/test_cuda_conv_grid.cpp, to reach that loop at small sizes.
int64_t column_sums_max_grid_y = 65535;
void force_column_sums_max_grid_y(int64_t most) {
  column_sums_max_grid_y = most > 0 ? most : 65535;
}
void force_conv_tile(int bm, int bn) {
  forced_tile_m = bm;
  forced_tile_n = bn;
}
void force_wgrad_splits(int splits) {
  forced_wgrad_splits = splits;
}
}  // namespace testing

namespace {

// Full unrolling under nvcc, so the fragment and accumulator arrays live in registers; nothing to gain on the CPU.
#if UNET_EMULATED
#define CONV_UNROLL
#define CONV_NO_UNROLL
#define CONV_UNROLL_N(n)
#else
#define CONV_UNROLL _Pragma("unroll")
#define CONV_NO_UNROLL _Pragma("unroll 1")
#define CONV_PRAGMA(x) _Pragma(#x)
#define CONV_UNROLL_N(n) CONV_PRAGMA(unroll(n))  // n: an integral constant expression, template-dependent allowed
#endif

constexpr int kThreads = 128;  // 4 warps per CTA
constexpr int kBK = 32;        // wgrad's split granule: a whole number of pipeline stages for every element size

// Per element type E of the staged operands (16-bit or f32): a pipeline stage holds 64 bytes of every staged row
// along k (32 16-bit or 16 f32 values), so the bytes per stage and the 16-byte chunks per thread are the same for both.
template <class E>
constexpr int kBKOf = 64 / int(sizeof(E));
template <class E>
constexpr int kVecOf = 16 / int(sizeof(E));  // elements per 16-byte cp.async chunk
// Padding per staged row, in elements; always 16 bytes or more, so every row stays 16-byte aligned.
//   16-bit: 16 bytes move consecutive rows by 4 banks (row strides of 80, 144 and 272 bytes), so the 8 rows one
//           ldmatrix phase reads hit 8 distinct bank quads.
//   f32:    fragments are read one word per lane, lane (g, t) at row g and k t (k-contiguous, row stride 20 words:
//           banks 20g + t) or at k t and row g (mn-contiguous, stride BX + 8: banks 8t + g): 32 distinct banks.
template <class E, bool kKContig>
constexpr int kPadOf = sizeof(E) == 2 ? 8
                       : kKContig     ? 4
                                      : 8;

// Element types (kernels/cuda/element.cuh): 16-bit values travel as raw bits (uint16_t); Mma names the tensor-core
// input type.
using element::BF16;
using element::F16;
using element::F32;
// f32 storage on the tensor cores: operands rounded to tf32 (to_tf32) as fragments are read, mma m16n8k8 .tf32.
// (A full struct, not derived from F32: nvcc's host stubs lose an empty derived class in an anonymous namespace.)
struct TF32 {
  using T = float;
  static __device__ float load(float v) { return v; }
  static __device__ float store(float f) { return f; }
};
template <class Ty>
constexpr bool kIsTf32 = std::is_same_v<Ty, TF32>;

// The problem in 32-bit coordinates (sizes are checked against 2^31 by the launchers); linear offsets are 64-bit.
struct Geo {
  int N, D, H, W, C, K, T, R, S, sd, sh, sw, pd, ph, pw, Z, P, Q;
};

// ---- operand iterators: Row is what a thread can compute once per GEMM row, ptr() the per-k part ----

// fprop A: x viewed as [M = N*Z*P*Q][T*R*S*C].
template <class E>
struct FpropA {
  static constexpr bool kKContig = true;
  const E* x;
  Geo g;
  int64_t rows;
  struct Row {
    int n, d, h, w;  // the input position of tap (0, 0, 0); n < 0 marks a row past the end
  };
  __device__ Row row(int64_t m64) const {
    if (m64 >= rows) return {-1, 0, 0, 0};
    int m = int(m64);  // GEMM extents are below 2^31 (checked by the launchers): 32-bit division is much cheaper
    const int q = m % g.Q;
    m /= g.Q;
    const int p = m % g.P;
    m /= g.P;
    const int z = m % g.Z;
    return {m / g.Z, z * g.sd - g.pd, p * g.sh - g.ph, q * g.sw - g.pw};
  }
  __device__ const E* ptr(const Row& r, int64_t k64) const {
    if (r.n < 0) return nullptr;
    const int k = int(k64), tap = k / g.C, c = k - tap * g.C;
    const int s = tap % g.S, rr = (tap / g.S) % g.R, t = tap / (g.S * g.R);
    const int d = r.d + t, h = r.h + rr, w = r.w + s;
    if (unsigned(d) >= unsigned(g.D) || unsigned(h) >= unsigned(g.H) || unsigned(w) >= unsigned(g.W)) return nullptr;
    return x + (((int64_t(r.n) * g.D + d) * g.H + h) * g.W + w) * g.C + c;
  }
};

// fprop B: w viewed as [N = K][T*R*S*C] (k-contiguous rows of the weight tensor).
template <class E>
struct FpropB {
  static constexpr bool kKContig = true;
  const E* w;
  int64_t rows, ktotal;
  struct Row {
    int n;  // < 0 past the end (an index, not a pointer: half the registers)
  };
  __device__ Row row(int64_t n) const { return {n < rows ? int(n) : -1}; }
  __device__ const E* ptr(const Row& r, int64_t k) const { return r.n < 0 ? nullptr : w + r.n * ktotal + k; }
};

// fprop A of a convolution whose input is the previous layer's instance norm + leaky ReLU, applied while loading:
// x' = leaky_relu(fma(x - mean[n, c], scale[n, c], shift[n, c])) rounded to the storage type, as if x' had been
// materialised; padding and rows past the end stay zero because only loaded values are transformed.
template <class Ty>
struct FpropANormAct : FpropA<typename Ty::T> {
  const float *mean, *scale, *shift;
  float slope;
  using E = typename Ty::T;
  using Row = typename FpropA<E>::Row;
  __device__ E transform(const Row& r, int64_t k, E v) const {
    const int64_t j = int64_t(r.n) * this->g.C + int(k) % this->g.C;
    float t = fmaf(Ty::load(v) - mean[j], scale[j], shift[j]);
    t = t > 0.f ? t : t * slope;
    return Ty::store(t);
  }
};

// Whether an operand iterator transforms the values it loads (FpropANormAct only: it has a transform()).
template <class It>
struct Transforms : std::false_type {};
template <class Ty>
struct Transforms<FpropANormAct<Ty>> : std::true_type {};
template <class It>
constexpr bool kTransforms = Transforms<It>::value;

// dgrad B, stride 1: w viewed as [T*R*S*K][N = C] (element ((tap, k), c) = w[k, tap, c]): contiguous along c. (The
// whole-problem phase of DgradPhaseB, without recomposing the tap index.)
template <class E>
struct DgradB {
  static constexpr bool kKContig = false;
  const E* w;
  Geo g;
  struct Row {
    int c;  // < 0 past the end
  };
  __device__ Row row(int64_t c) const { return {c < g.C ? int(c) : -1}; }
  __device__ const E* ptr(const Row& r, int64_t k64) const {
    if (r.c < 0) return nullptr;
    const int k = int(k64), tap = k / g.K, ko = k - tap * g.K;
    return w + (int64_t(ko) * g.T * g.R * g.S + tap) * g.C + r.c;
  }
};

// Strided dgrad, one phase at a time: the dx positions d = d0 + sd * i (likewise h, w) are reached only by the taps
// t = t0 + sd * j with t0 = (d0 + pad) mod sd, so each phase is its own GEMM over just those taps instead of
// predicating away the (sd*sh*sw - 1) / (sd*sh*sw) of the taps that would land between outputs. With stride 1 there
// is one phase, the whole problem (d0 = t0 = 0, every tap, zb = pad).
struct Phase {
  int d0, h0, w0;  // the phase: first dx position along each axis
  int Dp, Hp, Wp;  // dx positions of the phase along each axis
  int t0, r0, s0;  // first tap that reaches them
  int Tp, Rp, Sp;  // taps that reach them
  int zb, pb, qb;  // output position read by tap t0 from position d0 (may be out of range; checked per element)
};

// dgrad A of one phase: dy viewed as [M = N*Dp*Hp*Wp][Tp*Rp*Sp*K]: element (x position, (tap, k)) is dy at the
// output position that reads x through that tap, or zero when it is outside.
template <class E>
struct DgradA {
  static constexpr bool kKContig = true;
  const E* dy;
  Geo g;
  Phase ph;
  int64_t rows;
  struct Row {
    int n, z, p, q;  // output position read through the phase's first tap; n < 0 past the end
  };
  __device__ Row row(int64_t m64) const {
    if (m64 >= rows) return {-1, 0, 0, 0};
    int m = int(m64);
    const int l = m % ph.Wp;
    m /= ph.Wp;
    const int j = m % ph.Hp;
    m /= ph.Hp;
    const int i = m % ph.Dp;
    return {m / ph.Dp, ph.zb + i, ph.pb + j, ph.qb + l};
  }
  __device__ const E* ptr(const Row& r, int64_t k64) const {
    if (r.n < 0) return nullptr;
    const int k = int(k64), tap = k / g.K, ko = k - tap * g.K;
    const int z = r.z - tap / (ph.Sp * ph.Rp), p = r.p - (tap / ph.Sp) % ph.Rp, q = r.q - tap % ph.Sp;
    if (unsigned(z) >= unsigned(g.Z) || unsigned(p) >= unsigned(g.P) || unsigned(q) >= unsigned(g.Q)) return nullptr;
    return dy + (((int64_t(r.n) * g.Z + z) * g.P + p) * g.Q + q) * g.K + ko;
  }
};

// dgrad B of one phase: w viewed as [Tp*Rp*Sp*K][N = C].
template <class E>
struct DgradPhaseB {
  static constexpr bool kKContig = false;
  const E* w;
  Geo g;
  Phase ph;
  struct Row {
    int c;  // < 0 past the end
  };
  __device__ Row row(int64_t c) const { return {c < g.C ? int(c) : -1}; }
  __device__ const E* ptr(const Row& r, int64_t k64) const {
    if (r.c < 0) return nullptr;
    const int k = int(k64), tap = k / g.K, ko = k - tap * g.K;
    const int t = ph.t0 + g.sd * (tap / (ph.Sp * ph.Rp)), rr = ph.r0 + g.sh * ((tap / ph.Sp) % ph.Rp),
              s = ph.s0 + g.sw * (tap % ph.Sp);
    return w + (int64_t(ko) * g.T * g.R * g.S + (t * g.R + rr) * g.S + s) * g.C + r.c;
  }
};

// wgrad A: dy viewed as [K = N*Z*P*Q pixels][M = K channels]: contiguous along the output channel.
template <class E>
struct WgradA {
  static constexpr bool kKContig = false;
  const E* dy;
  int K;
  struct Row {
    int k;  // < 0 past the end
  };
  __device__ Row row(int64_t k) const { return {k < K ? int(k) : -1}; }
  __device__ const E* ptr(const Row& r, int64_t pixel) const { return r.k < 0 ? nullptr : dy + pixel * K + r.k; }
};

// wgrad B: x viewed as [K = N*Z*P*Q pixels][N = T*R*S*C]: element (pixel, (tap, c)) is the x value that tap reads.
template <class E>
struct WgradB {
  static constexpr bool kKContig = false;
  const E* x;
  Geo g;
  struct Row {
    int t, r, s, c;  // c < 0 past the end
  };
  __device__ Row row(int64_t n) const {
    if (n >= int64_t(g.T) * g.R * g.S * g.C) return {0, 0, 0, -1};
    const int tap = int(n) / g.C, c = int(n) - tap * g.C;
    return {tap / (g.S * g.R), (tap / g.S) % g.R, tap % g.S, c};
  }
  __device__ const E* ptr(const Row& r, int64_t pixel64) const {
    if (r.c < 0) return nullptr;
    int pixel = int(pixel64);
    const int q = pixel % g.Q;
    pixel /= g.Q;
    const int p = pixel % g.P;
    pixel /= g.P;
    const int z = pixel % g.Z, n = pixel / g.Z;
    const int d = z * g.sd - g.pd + r.t, h = p * g.sh - g.ph + r.r, w = q * g.sw - g.pw + r.s;
    if (unsigned(d) >= unsigned(g.D) || unsigned(h) >= unsigned(g.H) || unsigned(w) >= unsigned(g.W)) return nullptr;
    return x + (((int64_t(n) * g.D + d) * g.H + h) * g.W + w) * g.C + r.c;
  }
};

// ---- epilogues: what happens to accumulator (m, n) ----

// fprop and dgrad: out[m, n] = acc (+ bias[n]) rounded to the storage type. With `part` set (fprop with statistics,
// tensor-core path, samples of at least one tile of rows), the main loop also leaves per-CTA column sums of the stored
// values in part[((tile_m * 2 + slot) * 2 + {sum, squares}) * ld + n], slot 0 for rows of the sample the tile starts
// in, slot 1 for the next one (a tile of BM <= S rows spans at most two samples).
template <class Ty, bool kWithStats>
struct StoreOut {
  static constexpr bool kStats = kWithStats;  // compiled in for fprop only: the statistics cost registers
  typename Ty::T* out;
  const float* bias;
  int64_t ld;
  float* part = nullptr;
  int64_t S = 0;  // rows (output pixels) per sample
  // Stores and returns the value as stored.
  __device__ float store(int64_t m, int64_t n, float v) const {
    const auto s = Ty::store(bias ? v + bias[n] : v);
    out[m * ld + n] = s;
    return Ty::load(s);
  }
  __device__ void operator()(int64_t m, int64_t n, float v) const { store(m, n, v); }
};

// Strided dgrad: row m of a phase GEMM is dx position (n, d0 + sd * i, h0 + sh * j, w0 + sw * l).
template <class Ty>
struct StorePhase {
  static constexpr bool kStats = false;
  typename Ty::T* out;
  Geo g;
  Phase ph;
  __device__ void operator()(int64_t m64, int64_t c, float v) const {
    int m = int(m64);
    const int l = m % ph.Wp;
    m /= ph.Wp;
    const int j = m % ph.Hp;
    m /= ph.Hp;
    const int i = m % ph.Dp, n = m / ph.Dp;
    const int d = ph.d0 + g.sd * i, h = ph.h0 + g.sh * j, w = ph.w0 + g.sw * l;
    out[(((int64_t(n) * g.D + d) * g.H + h) * g.W + w) * g.C + c] = Ty::store(v);
  }
};

// wgrad: this split's f32 partial, part[split][m][n].
struct StorePartial {
  static constexpr bool kStats = false;
  float* part;
  int64_t ld, split_stride;
  __device__ void operator()(int64_t m, int64_t n, float v) const { part[blockIdx.z * split_stride + m * ld + n] = v; }
};

// ---- tensor-core main loop ----

// Element q (0..7) of 8 16-bit values held in a uint4 (no type punning: the emulator's compiler enforces aliasing).
__device__ __forceinline__ uint16_t half_at(const uint4& v, int q) {
  const uint32_t w = q < 2 ? v.x : q < 4 ? v.y : q < 6 ? v.z : v.w;
  return uint16_t(w >> (16 * (q & 1)));
}
__device__ __forceinline__ uint32_t pack2(uint16_t lo, uint16_t hi) {
  return uint32_t(lo) | uint32_t(hi) << 16;
}

// Stages one operand's BX x BK tile of E values into shared memory. kVec: 16-byte cp.async chunks of V elements along
// the contiguous dimension (zero chunks are plain stores); otherwise single elements, loaded and stored by hand.
template <class It, class E, int BX, bool kVec>
struct TileLoader {
  static constexpr bool kK = It::kKContig;
  static constexpr int BK = kBKOf<E>, V = kVecOf<E>;
  static constexpr int kStride = kK ? BK + kPadOf<E, true> : BX + kPadOf<E, false>;
  static constexpr int kElems = (kK ? BX : BK) * kStride;
  static constexpr int kChunks = BX * BK / V / kThreads;  // 16-byte chunks per thread
  static constexpr int kRows = kVec && kK ? kChunks : 1;
  static_assert(kChunks >= 1 && kThreads % (BX / V) == 0, "tile too small for the loader");
  using Row = typename It::Row;
  Row rows[kRows];  // this thread's GEMM rows, decomposed once
  int fixed;        // this thread's k offset (k-contiguous) or row offset (mn-contiguous) in the tile

  __device__ TileLoader(const It& it, int64_t mn0) {
    const int tid = threadIdx.x;
    if constexpr (kVec && kK) {
      constexpr int kRowChunks = BK / V;  // chunks per k-contiguous row of the tile (4)
      fixed = V * (tid % kRowChunks);
      CONV_UNROLL
      for (int i = 0; i < kRows; ++i) rows[i] = it.row(mn0 + tid / kRowChunks + (kThreads / kRowChunks) * i);
    } else if constexpr (kVec) {
      fixed = V * (tid % (BX / V));
      rows[0] = it.row(mn0 + fixed);
    } else if constexpr (kK) {
      fixed = tid % BK;
      rows[0] = it.row(mn0);  // unused: rows change per element
    } else {
      fixed = tid % BX;
      rows[0] = it.row(mn0 + fixed);
    }
  }

  __device__ void operator()(const It& it, E* sm, int64_t mn0, int64_t k0, int64_t k_end) const {
    const int tid = threadIdx.x;
    if constexpr (kVec) {
      CONV_UNROLL
      for (int i = 0; i < kChunks; ++i) {
        const E* src;
        E* dst;
        if constexpr (kK) {
          constexpr int kRowChunks = BK / V;
          const int64_t k = k0 + fixed;
          src = k < k_end ? it.ptr(rows[i], k) : nullptr;
          dst = sm + (tid / kRowChunks + (kThreads / kRowChunks) * i) * kStride + fixed;
        } else {
          const int kl = tid / (BX / V) + (kThreads / (BX / V)) * i;
          src = k0 + kl < k_end ? it.ptr(rows[0], k0 + kl) : nullptr;
          dst = sm + kl * kStride + fixed;
        }
        if (src)
          cp_async(dst, src);
        else
          *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
      }
    } else {
      constexpr int kLoads = BX * BK / kThreads;
      auto load = [&](int i) {
        const E* src;
        E* dst;
        if constexpr (kK) {
          const int ml = tid / BK + (kThreads / BK) * i;
          const int64_t k = k0 + fixed;
          const typename It::Row row = it.row(mn0 + ml);
          src = k < k_end ? it.ptr(row, k) : nullptr;
          dst = sm + ml * kStride + fixed;
          if constexpr (kTransforms<It>) {
            *dst = src ? it.transform(row, k, *src) : E(0);
            return;
          }
        } else {
          const int kl = tid / BX + (kThreads / BX) * i;
          src = k0 + kl < k_end ? it.ptr(rows[0], k0 + kl) : nullptr;
          dst = sm + kl * kStride + fixed;
        }
        *dst = src ? *src : E(0);
      };
      // f32 elements rolled: unrolled, ptxas spills the TF32 fprop 64x64 kernels on sm_80.
      if constexpr (sizeof(E) == 4) {
        CONV_NO_UNROLL
        for (int i = 0; i < kLoads; ++i) load(i);
      } else {
        for (int i = 0; i < kLoads; ++i) load(i);  // left to the compiler: it keeps the 16-bit kernels spill-free
      }
    }
  }

  // A transforming iterator cannot use cp.async (the values pass through registers): fetch() issues this thread's
  // 16-byte global loads for a stage into registers, store() transforms them and writes the stage; the main loop
  // puts its math between the two so the loads are in flight meanwhile. k-contiguous, vector loads only.
  __device__ unsigned fetch(const It& it, int64_t k0, int64_t k_end, uint4 (&v)[kChunks]) const {
    unsigned loaded = 0;
    const int64_t k = k0 + fixed;
    CONV_UNROLL
    for (int i = 0; i < kChunks; ++i) {
      const auto* src = k < k_end ? it.ptr(rows[i], k) : nullptr;
      v[i] = src ? *reinterpret_cast<const uint4*>(src) : make_uint4(0u, 0u, 0u, 0u);
      loaded |= src ? 1u << i : 0u;
    }
    return loaded;
  }
  __device__ void store(const It& it, E* sm, int64_t k0, const uint4 (&v)[kChunks], unsigned loaded) const {
    const int tid = threadIdx.x;
    const int64_t k = k0 + fixed;
    constexpr int kRowChunks = BK / V;
    CONV_UNROLL
    for (int i = 0; i < kChunks; ++i) {
      uint4 out = v[i];
      if (loaded >> i & 1u) {
        if constexpr (sizeof(E) == 2) {
          uint16_t e[8];
          CONV_UNROLL
          for (int q = 0; q < 8; ++q) e[q] = it.transform(rows[i], k + q, half_at(v[i], q));
          out = make_uint4(pack2(e[0], e[1]), pack2(e[2], e[3]), pack2(e[4], e[5]), pack2(e[6], e[7]));
        } else {
          out = make_uint4(__float_as_uint(it.transform(rows[i], k + 0, __uint_as_float(v[i].x))),
                           __float_as_uint(it.transform(rows[i], k + 1, __uint_as_float(v[i].y))),
                           __float_as_uint(it.transform(rows[i], k + 2, __uint_as_float(v[i].z))),
                           __float_as_uint(it.transform(rows[i], k + 3, __uint_as_float(v[i].w))));
        }
      }
      *reinterpret_cast<uint4*>(sm + (tid / kRowChunks + (kThreads / kRowChunks) * i) * kStride + fixed) = out;
    }
  }
};

// C[M, N] (+)= A[M, K] * B[K, N] over this CTA's k range (blockIdx.z selects the split), BM x BN per CTA, warps in a
// WM x (4 / WM) grid, kStages-deep pipeline. Ty F16 / BF16: mma m16n8k16 on ldmatrix fragments; Ty TF32: f32 staged
// operands, fragments by plain shared loads (ldmatrix moves 16-bit elements) rounded by to_tf32, mma m16n8k8 .tf32.
template <class Ty, class ItA, class ItB, class Epi, int BM, int BN, int WM, int kStages, bool kVec>
__global__ void __launch_bounds__(kThreads)
    conv_gemm_tc(ItA a, ItB b, Epi epi, int64_t M, int64_t N, int64_t Kg, int64_t k_per_split) {
  using E = typename Ty::T;
  using LA = TileLoader<ItA, E, BM, kVec>;
  using LB = TileLoader<ItB, E, BN, kVec>;
  constexpr int BK = kBKOf<E>, KS = kIsTf32<Ty> ? 8 : 16;  // k per stage, k per mma
  constexpr int WN = 4 / WM, WTM = BM / WM, WTN = BN / WN, MI = WTM / 16, NI = WTN / 8;
  static_assert(MI >= 1 && NI >= 2 && NI % 2 == 0, "warp tile");
  static_assert(kStages * (LA::kElems + LB::kElems) * int(sizeof(E)) <= 48 * 1024,
                "static shared memory is limited to 48 KiB");
  __shared__ __align__(16) E smem[kStages * (LA::kElems + LB::kElems)];
  E* const sa = smem;
  E* const sb = smem + kStages * LA::kElems;

  const int64_t m0 = int64_t(blockIdx.x) * BM, n0 = int64_t(blockIdx.y) * BN;
  const int64_t kb = int64_t(blockIdx.z) * k_per_split;
  const int64_t ke = kb + k_per_split < Kg ? kb + k_per_split : Kg;
  const int nk = ke > kb ? int((ke - kb + BK - 1) / BK) : 0;
  const LA load_a(a, m0);
  const LB load_b(b, n0);
  constexpr bool kStagedA = kTransforms<ItA> && kVec;  // A through registers (see TileLoader::fetch)
  uint4 staged[kStagedA ? LA::kChunks : 1] = {};       // written by fetch before any store reads it (g++ cannot tell)
  unsigned staged_mask = 0;

  CONV_UNROLL
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nk) {
      if constexpr (kStagedA) {
        staged_mask = load_a.fetch(a, kb + s * BK, ke, staged);
        load_a.store(a, sa + s * LA::kElems, kb + s * BK, staged, staged_mask);
      } else {
        load_a(a, sa + s * LA::kElems, m0, kb + s * BK, ke);
      }
      load_b(b, sb + s * LB::kElems, n0, kb + s * BK, ke);
    }
    cp_async_commit();
  }

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wm = warp / WN, wn = warp % WN;
  const int lj = lane >> 3, lr = lane & 7;  // the ldmatrix matrix and row this lane addresses
  const int g = lane >> 2, t = lane & 3;    // the fragment layouts' group and thread in group
  float acc[MI][NI][4] = {};

  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage kt landed for every thread; stage kt - 1 is free for the next load
    const int kn = kt + kStages - 1;
    if (kn < nk) {
      if constexpr (kStagedA)
        staged_mask = load_a.fetch(a, kb + int64_t(kn) * BK, ke, staged);
      else
        load_a(a, sa + (kn % kStages) * LA::kElems, m0, kb + int64_t(kn) * BK, ke);
      load_b(b, sb + (kn % kStages) * LB::kElems, n0, kb + int64_t(kn) * BK, ke);
    }
    cp_async_commit();
    const E* const ta = sa + (kt % kStages) * LA::kElems;
    const E* const tb = sb + (kt % kStages) * LB::kElems;
    // TF32 keeps its two k steps rolled: unrolled, ptxas hoists both steps' 16 scalar fragment loads and the fprop
    // 128x64 tile spills on sm_80. (16-bit: both steps unrolled, as ldmatrix needs a quarter of the instructions.)
    CONV_UNROLL_N(kIsTf32<Ty> ? 1 : BK / KS)
    for (int kk = 0; kk < BK; kk += KS) {
      uint32_t af[MI][4], bf[NI][2];
      if constexpr (kIsTf32<Ty>) {
        // a_r at (row g + 8 (r & 1), k t + 4 (r >> 1)), b_r at (k t + 4r, column g): see kernels/cuda/mma.cuh.
        // This lane's element (g, t) of the warp's first fragments; the rest are at compile-time offsets from it.
        const E* const pa = LA::kK ? ta + (wm * WTM + g) * LA::kStride + t : ta + t * LA::kStride + wm * WTM + g;
        const E* const pb = LB::kK ? tb + (wn * WTN + g) * LB::kStride + t : tb + t * LB::kStride + wn * WTN + g;
        CONV_UNROLL
        for (int x = 0; x < MI * 4; ++x) {
          const int i = x / 4, r = x % 4, row = i * 16 + 8 * (r & 1), k = kk + 4 * (r >> 1);
          af[i][r] = to_tf32(pa[LA::kK ? row * LA::kStride + k : k * LA::kStride + row]);
        }
        CONV_UNROLL
        for (int x = 0; x < NI * 2; ++x) {
          const int j = x / 2, r = x % 2, col = j * 8, k = kk + 4 * r;
          bf[j][r] = to_tf32(pb[LB::kK ? col * LB::kStride + k : k * LB::kStride + col]);
        }
      } else {
        CONV_UNROLL
        for (int i = 0; i < MI; ++i) {
          const int mb = wm * WTM + i * 16;
          if constexpr (LA::kK)
            ldmatrix_x4(af[i], ta + (mb + lr + 8 * (lj & 1)) * LA::kStride + kk + 8 * (lj >> 1));
          else
            ldmatrix_x4_trans(af[i], ta + (kk + lr + 8 * (lj >> 1)) * LA::kStride + mb + 8 * (lj & 1));
        }
        CONV_UNROLL
        for (int j = 0; j < NI; j += 2) {
          const int nb = wn * WTN + j * 8;
          uint32_t r[4];
          if constexpr (LB::kK)
            ldmatrix_x4(r, tb + (nb + lr + 8 * (lj >> 1)) * LB::kStride + kk + 8 * (lj & 1));
          else
            ldmatrix_x4_trans(r, tb + (kk + lr + 8 * (lj & 1)) * LB::kStride + nb + 8 * (lj >> 1));
          bf[j][0] = r[0];
          bf[j][1] = r[1];
          bf[j + 1][0] = r[2];
          bf[j + 1][1] = r[3];
        }
      }
      // Nested loops are flattened throughout: one pragma per loop nest (clang-format keeps it on its own line).
      CONV_UNROLL
      for (int x = 0; x < MI * NI; ++x) {
        const int i = x / NI, j = x % NI;
        if constexpr (kIsTf32<Ty>)
          mma_m16n8k8_tf32(acc[i][j], af[i], bf[j], acc[i][j]);
        else
          mma_m16n8k16<typename Ty::Mma>(acc[i][j], af[i], bf[j], acc[i][j]);
      }
    }
    // Stage kn was last read in iteration kt - 1, which every thread finished before this iteration's barrier.
    if constexpr (kStagedA)
      if (kn < nk) load_a.store(a, sa + (kn % kStages) * LA::kElems, kb + int64_t(kn) * BK, staged, staged_mask);
  }
  cp_async_wait<0>();

  if constexpr (Epi::kStats) {
    if (epi.part) {                                       // uniform over the grid
      const int64_t boundary = (m0 / epi.S + 1) * epi.S;  // first row of the next sample
      __syncthreads();  // every warp is done with the pipeline's shared memory: reuse it for [WM][slot][2][BN]
      float* red = reinterpret_cast<float*>(smem);
      static_assert(WM * 4 * BN * 4 <= int(sizeof(smem)), "statistics scratch fits the pipeline buffer");
      // One 8-column block at a time keeps the live sums at 8 registers beside the accumulators.
      CONV_UNROLL
      for (int j = 0; j < NI; ++j) {
        float sums[8] = {};  // [column e & 1][slot][sum, squares], this thread's rows in a fixed order
        CONV_UNROLL
        for (int x = 0; x < MI * 4; ++x) {
          const int i = x / 4, e = x % 4;
          const int64_t m = m0 + wm * WTM + i * 16 + g + 8 * (e >> 1), n = n0 + wn * WTN + j * 8 + 2 * t + (e & 1);
          if (m < M && n < N) {
            const float v = epi.store(m, n, acc[i][j][e]);
            const bool next = m >= boundary;  // selects, not a runtime index: the sums stay in registers
            sums[(e & 1) * 4 + 0] += next ? 0.f : v;
            sums[(e & 1) * 4 + 1] += next ? 0.f : v * v;
            sums[(e & 1) * 4 + 2] += next ? v : 0.f;
            sums[(e & 1) * 4 + 3] += next ? v * v : 0.f;
          }
        }
        // The 8 lanes of a column (same t) by a fixed butterfly: every lane ends with the same bits.
        CONV_UNROLL
        for (int q = 0; q < 8; ++q)
          for (int off = 4; off < 32; off *= 2) sums[q] += __shfl_xor_sync(0xffffffffu, sums[q], off);
        if (g == 0) {
          CONV_UNROLL
          for (int q = 0; q < 8; ++q) red[(wm * 4 + (q & 3)) * BN + wn * WTN + j * 8 + 2 * t + (q >> 2)] = sums[q];
        }
      }
      __syncthreads();
      for (int idx = threadIdx.x; idx < 4 * BN; idx += kThreads) {
        const int col = idx % BN, sq = idx / BN;  // sq = slot * 2 + (sum, squares)
        float tot = 0.f;
        for (int w = 0; w < WM; ++w) tot += red[(w * 4 + sq) * BN + col];
        if (n0 + col < N) epi.part[(int64_t(blockIdx.x) * 4 + sq) * N + n0 + col] = tot;
      }
      return;
    }
  }
  CONV_UNROLL
  for (int x = 0; x < MI * NI * 4; ++x) {
    const int i = x / (NI * 4), j = x / 4 % NI, e = x % 4;
    const int64_t m = m0 + wm * WTM + i * 16 + g + 8 * (e >> 1), n = n0 + wn * WTN + j * 8 + 2 * t + (e & 1);
    if (m < M && n < N) epi(m, n, acc[i][j][e]);
  }
}

// ---- f32 SIMT main loop ----

// The same GEMM with FMA: both operands staged as [k][rows], each thread owns a 4 x 8 block of C.
template <class ItA, class ItB, class Epi, int BM, int BN>
__global__ void __launch_bounds__(kThreads)
    conv_gemm_simt(ItA a, ItB b, Epi epi, int64_t M, int64_t N, int64_t Kg, int64_t k_per_split) {
  constexpr int BK = 16, TM = 4, TN = 8, TX = BN / TN;
  static_assert((BM / TM) * (BN / TN) == kThreads, "one 4 x 8 block per thread");
  __shared__ __align__(16) float as[BK][BM + 4];
  __shared__ __align__(16) float bs[BK][BN + 4];
  const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
  const int64_t m0 = int64_t(blockIdx.x) * BM, n0 = int64_t(blockIdx.y) * BN;
  const int64_t kb = int64_t(blockIdx.z) * k_per_split;
  const int64_t ke = kb + k_per_split < Kg ? kb + k_per_split : Kg;
  float acc[TM][TN] = {};
  for (int64_t k0 = kb; k0 < ke; k0 += BK) {
    // Consecutive threads take consecutive elements of the operand's contiguous dimension.
    CONV_NO_UNROLL
    for (int e = tid; e < BM * BK; e += kThreads) {
      const int kk = ItA::kKContig ? e % BK : e / BM, mm = ItA::kKContig ? e / BK : e % BM;
      const typename ItA::Row row = a.row(m0 + mm);
      const float* src = k0 + kk < ke ? a.ptr(row, k0 + kk) : nullptr;
      if constexpr (kTransforms<ItA>)
        as[kk][mm] = src ? a.transform(row, k0 + kk, *src) : 0.f;
      else
        as[kk][mm] = src ? *src : 0.f;
    }
    CONV_NO_UNROLL
    for (int e = tid; e < BN * BK; e += kThreads) {
      const int kk = ItB::kKContig ? e % BK : e / BN, nn = ItB::kKContig ? e / BK : e % BN;
      const float* src = k0 + kk < ke ? b.ptr(b.row(n0 + nn), k0 + kk) : nullptr;
      bs[kk][nn] = src ? *src : 0.f;
    }
    __syncthreads();
    CONV_UNROLL
    for (int kk = 0; kk < BK; ++kk) {
      float av[TM], bv[TN];
      CONV_UNROLL
      for (int i = 0; i < TM; ++i) av[i] = as[kk][ty * TM + i];
      CONV_UNROLL
      for (int j = 0; j < TN; ++j) bv[j] = bs[kk][tx * TN + j];
      CONV_UNROLL
      for (int x = 0; x < TM * TN; ++x) acc[x / TN][x % TN] = fmaf(av[x / TN], bv[x % TN], acc[x / TN][x % TN]);
    }
    __syncthreads();
  }
  CONV_UNROLL
  for (int x = 0; x < TM * TN; ++x) {
    const int i = x / TN, j = x % TN;
    const int64_t m = m0 + ty * TM + i, n = n0 + tx * TN + j;
    if (m < M && n < N) epi(m, n, acc[i][j]);
  }
}

// ---- reductions ----

// Per-column sums over row chunks, the first level of dbias and of the (unfused) instance-norm statistics:
// part[((grp * chunks + ch) * 2 + {0, 1}) * cols + c] = sum of v, v^2 over rows [ch * chunk_rows, ...) of group grp,
// v = src[(grp * rows + row) * cols + c]. Block (32 columns, 8 row lanes); a fixed tree combines the row lanes.
constexpr int kColTile = 32, kRowLanes = 8;
constexpr int64_t kChunkRows = 2048;

__device__ void row_lane_tree(double (&red)[2][kRowLanes][kColTile]) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int stride = kRowLanes / 2; stride > 0; stride /= 2) {
    __syncthreads();
    if (ty < stride)
      for (int k = 0; k < 2; ++k) red[k][ty][tx] += red[k][ty + stride][tx];
  }
  __syncthreads();
}

template <class Ty>
__global__ void __launch_bounds__(kColTile* kRowLanes)
    column_sums_partial(const typename Ty::T* src, int64_t rows, int64_t cols, int64_t chunks, double* part) {
  __shared__ double red[2][kRowLanes][kColTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kColTile + tx, grp = blockIdx.z;
  // Chunks beyond gridDim.y (capped at CUDA's 65535) are taken in turn: each chunk's sum is the same computation
  // whichever block does it, so the results do not depend on the grid.
  for (int64_t ch = blockIdx.y; ch < chunks; ch += gridDim.y) {
    const int64_t b = ch * kChunkRows, e = b + kChunkRows < rows ? b + kChunkRows : rows;
    double s1 = 0.0, s2 = 0.0;
    if (c < cols)
      for (int64_t r = b + ty; r < e; r += kRowLanes) {
        const double v = Ty::load(src[(grp * rows + r) * cols + c]);
        s1 += v;
        s2 += v * v;
      }
    red[0][ty][tx] = s1;
    red[1][ty][tx] = s2;
    // The next chunk may refill red without another barrier: each lane rewrites only its own row, and row 0's sums
    // are read by the lanes that wrote them.
    row_lane_tree(red);
    if (ty == 0 && c < cols) {
      part[((grp * chunks + ch) * 2 + 0) * cols + c] = red[0][0][tx];
      part[((grp * chunks + ch) * 2 + 1) * cols + c] = red[1][0][tx];
    }
  }
}

// Sums the chunks in order. stats != null: stats[(grp * cols + c) * 2 + {0, 1}] = (sum, sum of squares); else
// sums[c] = sum (group 0).
__global__ void __launch_bounds__(kColTile* kRowLanes)
    column_sums_finalize(const double* part, int64_t cols, int64_t chunks, float* sums, float* stats) {
  __shared__ double red[2][kRowLanes][kColTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kColTile + tx, grp = blockIdx.z;
  double s1 = 0.0, s2 = 0.0;
  if (c < cols)
    for (int64_t ch = ty; ch < chunks; ch += kRowLanes) {
      s1 += part[((grp * chunks + ch) * 2 + 0) * cols + c];
      s2 += part[((grp * chunks + ch) * 2 + 1) * cols + c];
    }
  red[0][ty][tx] = s1;
  red[1][ty][tx] = s2;
  row_lane_tree(red);
  if (ty == 0 && c < cols) {
    if (stats) {
      stats[(grp * cols + c) * 2 + 0] = float(red[0][0][tx]);
      stats[(grp * cols + c) * 2 + 1] = float(red[1][0][tx]);
    } else {
      sums[c] = float(red[0][0][tx]);
    }
  }
}

// ---- launchers ----

Geo make_geo(const ConvProblem& p, const char* who) {
  auto fits = [&](int64_t v, const char* name, int64_t lo) {
    if (v < lo || v > (int64_t(1) << 30))
      throw std::invalid_argument(std::string(who) + ": " + name + " = " + std::to_string(v) + " (expected " +
                                  std::to_string(lo) + " to 2^30) for " + p.describe());
    return int(v);
  };
  Geo g;
  g.N = fits(p.N, "N", 1);
  g.D = fits(p.D, "D", 1);
  g.H = fits(p.H, "H", 1);
  g.W = fits(p.W, "W", 1);
  g.C = fits(p.C, "C", 1);
  g.K = fits(p.K, "K", 1);
  g.T = fits(p.T, "T", 1);
  g.R = fits(p.R, "R", 1);
  g.S = fits(p.S, "S", 1);
  g.sd = fits(p.stride_d, "stride_d", 1);
  g.sh = fits(p.stride_h, "stride_h", 1);
  g.sw = fits(p.stride_w, "stride_w", 1);
  g.pd = fits(p.pad_d, "pad_d", 0);
  g.ph = fits(p.pad_h, "pad_h", 0);
  g.pw = fits(p.pad_w, "pad_w", 0);
  g.Z = fits(p.Z, "Z (output depth)", 1);
  g.P = fits(p.P, "P (output height)", 1);
  g.Q = fits(p.Q, "Q (output width)", 1);
  const int64_t Z = (p.D + 2 * p.pad_d - p.T) / p.stride_d + 1, P = (p.H + 2 * p.pad_h - p.R) / p.stride_h + 1,
                Q = (p.W + 2 * p.pad_w - p.S) / p.stride_w + 1;
  if (Z != p.Z || P != p.P || Q != p.Q)
    throw std::invalid_argument(std::string(who) + ": output size " + std::to_string(p.Z) + "x" + std::to_string(p.P) +
                                "x" + std::to_string(p.Q) + " does not match the input (expected " + std::to_string(Z) +
                                "x" + std::to_string(P) + "x" + std::to_string(Q) + "; call compute_output_size) for " +
                                p.describe());
  return g;
}

// Calls f with the element trait conv runs for dt: F32, or TF32 when conv_allow_tf32(); F16; BF16 (any other dtype
// is std::invalid_argument naming `who`).
template <class F>
void with_conv_type(DType dt, const char* who, F&& f) {
  element::with_element_type(dt, who, [&](auto ty) {
    if constexpr (std::is_same_v<decltype(ty), F32>) {
      if (conv_allow_tf32()) return f(TF32{});
    }
    f(ty);
  });
}

void check_ptr(const void* p, const char* who, const char* name) {
  if (!p) throw std::invalid_argument(std::string(who) + ": " + name + " is null");
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

struct Tile {
  int bm, bn;
};

// Tensor-core tile for an M x N GEMM: thin N (32 or 64 output channels) gets tiles as narrow as N so no column
// work is wasted; small grids fall back to 64 x 64 to give the SMs more CTAs. 128 x 128 only for wgrad (`wide`):
// with fprop's and dgrad's heavier operand iterators its 64 x 64 warp tiles would spill on sm_80.
Tile pick_tile(int64_t M, int64_t N, bool wide) {
  if (testing::forced_tile_m) return {testing::forced_tile_m, testing::forced_tile_n};
  if (N <= 32) return {128, 32};
  if (N <= 64 || !wide) return M >= 128 * 64 ? Tile{128, 64} : Tile{64, 64};
  if (M <= 64) return {64, 64};
  const int64_t big = ((M + 127) / 128) * ((N + 127) / 128);
  return big >= 64 ? Tile{128, 128} : Tile{64, 64};
}

dim3 gemm_grid(int64_t M, int64_t N, int bm, int bn, int splits, const char* who) {
  if (M >= (int64_t(1) << 31) - 256 || N >= (int64_t(1) << 31) - 256)
    throw std::invalid_argument(std::string(who) + ": GEMM " + std::to_string(M) + " x " + std::to_string(N) +
                                " (expected each extent below 2^31: split the batch)");
  const int64_t gx = (M + bm - 1) / bm, gy = (N + bn - 1) / bn;
  if (gx > 0x7fffffff || gy > 65535 || splits > 65535)
    throw std::invalid_argument(std::string(who) + ": GEMM " + std::to_string(M) + " x " + std::to_string(N) +
                                " needs a grid larger than CUDA allows");
  return dim3(unsigned(gx), unsigned(gy), unsigned(splits));
}

template <class Ty, class ItA, class ItB, class Epi>
void run_gemm(const ItA& a, const ItB& b, const Epi& epi, int64_t M, int64_t N, int64_t Kg, int splits,
              int64_t k_per_split, bool vec, Tile tile, cudaStream_t stream, const char* who) {
  if (Kg >= (int64_t(1) << 31) - 256)
    throw std::invalid_argument(std::string(who) + ": GEMM depth " + std::to_string(Kg) + " (expected below 2^31)");
  const dim3 block(kThreads);
  if constexpr (std::is_same_v<Ty, F32>) {
    const int bm = N <= 32 ? 128 : 64, bn = N <= 32 ? 32 : 64;
    const dim3 grid = gemm_grid(M, N, bm, bn, splits, who);
    if (bn == 32)
      launch(conv_gemm_simt<ItA, ItB, Epi, 128, 32>, grid, block, 0, stream, a, b, epi, M, N, Kg, k_per_split);
    else
      launch(conv_gemm_simt<ItA, ItB, Epi, 64, 64>, grid, block, 0, stream, a, b, epi, M, N, Kg, k_per_split);
  } else {
    if (!vec) {
      launch(conv_gemm_tc<Ty, ItA, ItB, Epi, 64, 64, 2, 2, false>, gemm_grid(M, N, 64, 64, splits, who), block, 0,
             stream, a, b, epi, M, N, Kg, k_per_split);
      return;
    }
    const dim3 grid = gemm_grid(M, N, tile.bm, tile.bn, splits, who);
    constexpr bool kWide = std::is_same_v<Epi, StorePartial>;  // see pick_tile
    if (kWide && tile.bm == 128 && tile.bn == 128) {
      if constexpr (kWide)
        launch(conv_gemm_tc<Ty, ItA, ItB, Epi, 128, 128, 2, 2, true>, grid, block, 0, stream, a, b, epi, M, N, Kg,
               k_per_split);
    } else if (tile.bm == 128 && tile.bn == 64)
      launch(conv_gemm_tc<Ty, ItA, ItB, Epi, 128, 64, 2, 3, true>, grid, block, 0, stream, a, b, epi, M, N, Kg,
             k_per_split);
    else if (tile.bm == 128 && tile.bn == 32)
      launch(conv_gemm_tc<Ty, ItA, ItB, Epi, 128, 32, 4, 3, true>, grid, block, 0, stream, a, b, epi, M, N, Kg,
             k_per_split);
    else if (tile.bm == 64 && tile.bn == 64)
      launch(conv_gemm_tc<Ty, ItA, ItB, Epi, 64, 64, 2, 4, true>, grid, block, 0, stream, a, b, epi, M, N, Kg,
             k_per_split);
    else
      throw std::invalid_argument(std::string(who) + ": no tile " + std::to_string(tile.bm) + "x" +
                                  std::to_string(tile.bn) + " (expected 128x64, 128x32, 64x64, or 128x128 for wgrad)");
  }
}

// Per-column sums of a [groups][rows][cols] tensor: dbias (groups = 1, sums) or the per-(n, k) statistics (stats).
template <class Ty>
void column_sums(const typename Ty::T* src, int64_t groups, int64_t rows, int64_t cols, float* sums, float* stats,
                 cudaStream_t stream) {
  const int64_t chunks = (rows + kChunkRows - 1) / kChunkRows;
  Scratch<double> part(size_t(groups * chunks * 2 * cols), stream);
  const dim3 block(kColTile, kRowLanes);
  const unsigned tiles = unsigned((cols + kColTile - 1) / kColTile);
  const int64_t grid_y = chunks < testing::column_sums_max_grid_y ? chunks : testing::column_sums_max_grid_y;
  launch(column_sums_partial<Ty>, dim3(tiles, unsigned(grid_y), unsigned(groups)), block, 0, stream, src, rows, cols,
         chunks, part.get());
  launch(column_sums_finalize, dim3(tiles, 1, unsigned(groups)), block, 0, stream, part.get(), cols, chunks, sums,
         stats);
}

// ItA: FpropA, or FpropANormAct for the normalising load (its FpropA part is a.x, a.g, a.rows).
template <class Ty, class ItA>
void fprop_typed(const ConvProblem& p, const ItA& a, const void* w, const float* bias, void* y, float* stats,
                 cudaStream_t stream) {
  using E = typename Ty::T;
  const int64_t M = p.N * p.Z * p.P * p.Q, N = p.K, Kg = p.taps() * p.C;
  const void* x = a.x;
  const FpropB<E> b{static_cast<const E*>(w), N, Kg};
  StoreOut<Ty, true> epi{static_cast<E*>(y), bias, N};
  const bool vec = p.C % kVecOf<E> == 0 && aligned16(x) && aligned16(w);
  const Tile tile = pick_tile(M, N, false);
  const int64_t S = p.Z * p.P * p.Q, bm = vec ? tile.bm : 64;
  // Statistics in the epilogue on the tensor-core path when a tile spans at most two samples; otherwise (f32, or
  // samples smaller than a tile) a second pass over y.
  const bool fused = decltype(epi)::kStats && stats && !std::is_same_v<Ty, F32> && S >= bm;
  if (!fused) {
    run_gemm<Ty>(a, b, epi, M, N, Kg, 1, Kg, vec, tile, stream, "conv_fprop");
    if (stats)
      column_sums<std::conditional_t<kIsTf32<Ty>, F32, Ty>>(static_cast<const E*>(y), p.N, S, p.K, nullptr, stats,
                                                            stream);
    return;
  }
  const int64_t tiles_m = (M + bm - 1) / bm;
  Scratch<float> part(size_t(tiles_m * 4 * N), stream);
  epi.part = part.get();
  epi.S = S;
  run_gemm<Ty>(a, b, epi, M, N, Kg, 1, Kg, vec, tile, stream, "conv_fprop");
  finalize_tile_stats(part.get(), p.N, S, p.K, int(bm), stats, stream);
}

template <class Ty>
void dgrad_typed(const ConvProblem& p, const Geo& g, const void* dy, const void* w, void* dx, cudaStream_t stream) {
  using E = typename Ty::T;
  const int64_t M = p.N * p.D * p.H * p.W, N = p.C, Kg = p.taps() * p.K;
  const StoreOut<Ty, false> epi{static_cast<E*>(dx), nullptr, N};
  const bool vec = p.C % kVecOf<E> == 0 && p.K % kVecOf<E> == 0 && aligned16(dy) && aligned16(w);
  static_assert(!decltype(epi)::kStats, "dgrad has no statistics epilogue");
  // The phase (pd, ph, pw): its dx positions and the taps that reach them along each axis.
  struct Axis {
    int first, count, tap0, taps, out0;
  };
  auto axis = [](int phase, int size, int stride, int pad, int taps) {
    const int tap0 = (phase + pad) % stride;
    return Axis{phase, phase < size ? (size - phase + stride - 1) / stride : 0, tap0,
                tap0 < taps ? (taps - tap0 + stride - 1) / stride : 0, (phase + pad - tap0) / stride};
  };
  auto make_phase = [&](int pd, int ph, int pw) {
    const Axis ad = axis(pd, g.D, g.sd, g.pd, g.T), ah = axis(ph, g.H, g.sh, g.ph, g.R),
               aw = axis(pw, g.W, g.sw, g.pw, g.S);
    return Phase{ad.first, ah.first, aw.first, ad.count, ah.count, aw.count, ad.tap0, ah.tap0,
                 aw.tap0,  ad.taps,  ah.taps,  aw.taps,  ad.out0,  ah.out0,  aw.out0};
  };
  if (g.sd == 1 && g.sh == 1 && g.sw == 1) {  // one phase, the whole problem
    const DgradA<E> a{static_cast<const E*>(dy), g, make_phase(0, 0, 0), M};
    const DgradB<E> b{static_cast<const E*>(w), g};
    run_gemm<Ty>(a, b, epi, M, N, Kg, 1, Kg, vec, pick_tile(M, N, false), stream, "conv_dgrad");
    return;
  }
  // One GEMM per phase (sd * sh * sw of them); a phase no tap reaches runs with an empty k range and stores zeros.
  for (int pd = 0; pd < g.sd; ++pd)
    for (int ph = 0; ph < g.sh; ++ph)
      for (int pw = 0; pw < g.sw; ++pw) {
        const Phase phase = make_phase(pd, ph, pw);
        const int64_t Mp = p.N * phase.Dp * phase.Hp * phase.Wp, Kp = int64_t(phase.Tp) * phase.Rp * phase.Sp * p.K;
        if (Mp == 0) continue;
        const DgradA<E> pa{static_cast<const E*>(dy), g, phase, Mp};
        const DgradPhaseB<E> pb{static_cast<const E*>(w), g, phase};
        const StorePhase<Ty> pe{static_cast<E*>(dx), g, phase};
        static_assert(!decltype(pe)::kStats, "dgrad has no statistics epilogue");
        run_gemm<Ty>(pa, pb, pe, Mp, N, Kp, 1, Kp, vec, pick_tile(Mp, N, false), stream, "conv_dgrad");
      }
}

// Splits of wgrad's pixel dimension: enough CTAs to fill a large GPU twice over, each split at least 512 pixels.
// Depends only on the shape (and the tile, itself a function of the shape), so the summation order is fixed.
int wgrad_splits(int64_t tiles, int64_t pixels, int64_t* k_per_split) {
  int64_t splits = testing::forced_wgrad_splits > 0 ? testing::forced_wgrad_splits : (264 + tiles - 1) / tiles;
  const int64_t most = pixels / 512 > 1 ? pixels / 512 : 1;
  if (testing::forced_wgrad_splits <= 0 && splits > most) splits = most;
  if (splits > 4096) splits = 4096;
  if (splits < 1) splits = 1;
  int64_t per = (pixels + splits - 1) / splits;
  per = (per + kBK - 1) / kBK * kBK;  // whole pipeline chunks, so no split but the last ends mid-chunk
  *k_per_split = per;
  return int((pixels + per - 1) / per);
}

template <class Ty>
void wgrad_typed(const ConvProblem& p, const Geo& g, const void* x, const void* dy, float* dw, float* dbias,
                 cudaStream_t stream) {
  using E = typename Ty::T;
  const int64_t M = p.K, N = p.taps() * p.C, Kg = p.N * p.Z * p.P * p.Q;
  if (dw) {
    const WgradA<E> a{static_cast<const E*>(dy), g.K};
    const WgradB<E> b{static_cast<const E*>(x), g};
    const bool vec = p.C % kVecOf<E> == 0 && p.K % kVecOf<E> == 0 && aligned16(x) && aligned16(dy);
    Tile tile = pick_tile(M, N, true);
    if (std::is_same_v<Ty, F32>) tile = N <= 32 ? Tile{128, 32} : Tile{64, 64};
    if (!vec) tile = {64, 64};
    const int64_t tiles = ((M + tile.bm - 1) / tile.bm) * ((N + tile.bn - 1) / tile.bn);
    int64_t per = 0;
    const int splits = wgrad_splits(tiles, Kg, &per);
    if (splits == 1) {
      run_gemm<Ty>(a, b, StorePartial{dw, N, 0}, M, N, Kg, 1, per, vec, tile, stream, "conv_wgrad");
    } else {
      Scratch<float> part(size_t(splits) * size_t(M * N), stream);
      run_gemm<Ty>(a, b, StorePartial{part.get(), N, M * N}, M, N, Kg, splits, per, vec, tile, stream, "conv_wgrad");
      sum_split_partials(part.get(), M * N, splits, dw, stream);
    }
  }
  using Sums = std::conditional_t<kIsTf32<Ty>, F32, Ty>;  // the same f32 values: no second set of kernels
  if (dbias) column_sums<Sums>(static_cast<const E*>(dy), 1, Kg, p.K, dbias, nullptr, stream);
}

}  // namespace

void conv_fprop(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y, float* stats,
                cudaStream_t stream) {
  const Geo g = make_geo(p, "conv_fprop");
  check_ptr(x, "conv_fprop", "x");
  check_ptr(w, "conv_fprop", "w");
  check_ptr(y, "conv_fprop", "y");
  if (conv_thin_applies(p)) return conv_fprop_thin(p, dt, x, w, bias, y, stats, stream);  // 1-4 input channels
  if (sm90_device()) {
    const sm90::ConvTile t = sm90::choose_tile(p);
    if (sm90::conv_sm90_problem(p, dt, t).empty() && aligned16(x) && aligned16(w))
      return sm90::conv_fprop_sm90(p, dt, x, w, bias, y, stats, t, stream);
  }
  const int64_t M = p.N * p.Z * p.P * p.Q;
  with_conv_type(dt, "conv_fprop", [&](auto ty) {
    using Ty = decltype(ty);
    fprop_typed<Ty>(p, FpropA<typename Ty::T>{static_cast<const typename Ty::T*>(x), g, M}, w, bias, y, stats, stream);
  });
}

namespace {
template <class Ty>
FpropANormAct<Ty> norm_act_operand(const void* x, const Geo& g, int64_t M, const float* mean, const float* scale,
                                   const float* shift, float slope) {
  FpropANormAct<Ty> a;
  a.x = static_cast<const typename Ty::T*>(x);
  a.g = g;
  a.rows = M;
  a.mean = mean;
  a.scale = scale;
  a.shift = shift;
  a.slope = slope;
  return a;
}
}  // namespace

void conv_fprop_norm_act(const ConvProblem& p, DType dt, const void* x, const float* mean, const float* scale,
                         const float* shift, float slope, const void* w, const float* bias, void* y, float* stats,
                         cudaStream_t stream) {
  const char* who = "conv_fprop_norm_act";
  const Geo g = make_geo(p, who);
  check_ptr(x, who, "x");
  check_ptr(w, who, "w");
  check_ptr(y, who, "y");
  check_ptr(mean, who, "mean");
  check_ptr(scale, who, "scale");
  check_ptr(shift, who, "shift");
  if (sm90_device()) {  // as conv_fprop, with 16-byte aligned coefficients too
    const sm90::ConvTile t = sm90::choose_tile(p);
    if (sm90::conv_sm90_problem(p, dt, t).empty() && aligned16(x) && aligned16(w) && aligned16(mean) &&
        aligned16(scale) && aligned16(shift))
      return sm90::conv_fprop_sm90(p, dt, x, w, bias, y, stats, t, stream, {mean, scale, shift, slope});
  }
  const int64_t M = p.N * p.Z * p.P * p.Q;
  with_conv_type(dt, who, [&](auto ty) {
    using Ty = decltype(ty);
    fprop_typed<Ty>(p, norm_act_operand<Ty>(x, g, M, mean, scale, shift, slope), w, bias, y, stats, stream);
  });
}

void conv_dgrad(const ConvProblem& p, DType dt, const void* dy, const void* w, void* dx, cudaStream_t stream) {
  const Geo g = make_geo(p, "conv_dgrad");
  check_ptr(dy, "conv_dgrad", "dy");
  check_ptr(w, "conv_dgrad", "w");
  check_ptr(dx, "conv_dgrad", "dx");
  if (sm90_device() && sm90::conv_dgrad_sm90_problem(p, dt).empty() && aligned16(dy))
    return sm90::conv_dgrad_sm90(p, dt, dy, w, dx, stream);
  with_conv_type(dt, "conv_dgrad", [&](auto ty) { dgrad_typed<decltype(ty)>(p, g, dy, w, dx, stream); });
}

void conv_wgrad(const ConvProblem& p, DType dt, const void* x, const void* dy, float* dw, float* dbias,
                cudaStream_t stream) {
  const Geo g = make_geo(p, "conv_wgrad");
  if (dw) check_ptr(x, "conv_wgrad", "x");  // x is not read when only dbias is wanted
  check_ptr(dy, "conv_wgrad", "dy");
  if (conv_thin_applies(p)) return conv_wgrad_thin(p, dt, x, dy, dw, dbias, stream);  // 1-4 input channels
  if (dw && sm90_device() && sm90::conv_wgrad_sm90_problem(p, dt).empty() && aligned16(x) && aligned16(dy)) {
    sm90::conv_wgrad_sm90(p, dt, x, dy, dw, testing::forced_wgrad_splits, stream);
    if (!dbias) return;
    dw = nullptr;  // dbias: the column sums of dy below
  }
  with_conv_type(dt, "conv_wgrad", [&](auto ty) { wgrad_typed<decltype(ty)>(p, g, x, dy, dw, dbias, stream); });
}

const ConvKernels conv_kernels{
    .conv_fprop = conv_fprop,
    .conv_fprop_norm_act = conv_fprop_norm_act,
    .conv_dgrad = conv_dgrad,
    .conv_wgrad = conv_wgrad,
};

}  // namespace unet::kernels::cuda
