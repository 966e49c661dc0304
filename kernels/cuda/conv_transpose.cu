// CUDA transposed convolution with kernel == stride (nnU-Net's learned upsampling), the CUDA twin of
// kernels/cpu/conv_transpose.cpp. The windows do not overlap, so every pass is one plain GEMM over index maps (no
// im2col, no scatter-add). With out(i, tap) the output pixel that input pixel i reaches through filter tap `tap`:
//   fprop  M = pixels, N = taps * K (column tap * K + k), L = C:
//          y[out(i, tap), k] = sum_c x[i, c] w[k, tap, c]
//   dgrad  M = pixels, N = C, L = taps * K (tap * K + k):
//          dx[i, c] = sum_{tap, k} dy[out(i, tap), k] w[k, tap, c]
//   wgrad  M = taps * K (tap * K + k), N = C (+1 column of ones whose sums are dbias), L = pixels, split into chunks.
// One SIMT kernel serves all three: a 64 x 64 tile per 256-thread block, 16-deep slices of L staged in shared memory
// (converted to f32 on load), a 4 x 4 register block per thread with rows and columns strided by 16 so that shared
// memory reads are conflict-free and stores to consecutive channels coalesce. Each pass differs only in its index maps
// (an Op struct). Every output is accumulated by one thread in L order; wgrad's per-chunk f32 partials go to a Scratch
// buffer and are summed in chunk order by a second kernel: bitwise deterministic under any schedule.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/conv_transpose.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/scratch.cuh"
// clang-format on

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace unet::kernels::cuda {
namespace {


constexpr int kBM = 64, kBN = 64, kBK = 16;  // block tile and L slice
constexpr int kThreads = 256;                // 16 x 16 threads, 4 x 4 outputs each
constexpr int kRegs = 4;
constexpr int kLoads = kBM * kBK / kThreads;  // tile elements each thread stages per slice (A and B alike)
static_assert(kBM == kBN && kBM == 16 * kRegs && kLoads * kThreads == kBM * kBK, "tile shape");
constexpr int kTcThreads = 128;                   // tensor-core kernel: 4 warps of 32 x 32
constexpr int kTcLoads = kBM * kBK / kTcThreads;  // staged elements per thread and operand
constexpr int kTcPad = 8;                         // 16-bit elements of padding per staged row
static_assert(kBK == 16 && (kBK + kTcPad) * 2 % 16 == 0, "tensor-core staging: one mma k-step, 16-byte rows");
static_assert(kTcThreads == kBM + kBN, "tensor-core kernel: one thread per tile row and column computes its offset");
constexpr int64_t kOutside = INT64_MIN;

using element::BF16;
using element::F16;
using element::F32;

// Input pixel i (flat over n, d, h, w) reaches output row base(i) + tap_offset(tap) (rows of y counted in pixels).
struct Geometry {
  int64_t w, hw, dhw;     // input extents as strides
  int64_t ow, ohw, odhw;  // output extents as strides
  int kt, kr, ks, taps, K, C;
  // 32-bit divisions (the launchers require fewer than 2^31 input pixels): a 64-bit division is a subroutine call
  // whose register saves spill.
  __device__ int64_t base(int64_t i) const {
    const uint32_t u = static_cast<uint32_t>(i), uw = static_cast<uint32_t>(w), uhw = static_cast<uint32_t>(hw),
                   udhw = static_cast<uint32_t>(dhw);
    const uint32_t n = u / udhw, r = u - n * udhw, z = r / uhw, r2 = r - z * uhw, p = r2 / uw, q = r2 - p * uw;
    return n * odhw + int64_t(z) * kt * ohw + int64_t(p) * kr * ow + int64_t(q) * ks;
  }
  __device__ int64_t tap_offset(int tap) const {
    const int t = tap / (kr * ks), r = (tap / ks) % kr, s = tap % ks;
    return t * ohw + r * ow + s;
  }
};

Geometry geometry_of(const ConvTransposeShape& s) {
  Geometry g;
  g.w = s.w;
  g.hw = s.h * s.w;
  g.dhw = s.d * g.hw;
  g.ow = s.w * s.ks;
  g.ohw = s.h * s.kr * g.ow;
  g.odhw = s.d * s.kt * g.ohw;
  g.kt = static_cast<int>(s.kt);
  g.kr = static_cast<int>(s.kr);
  g.ks = static_cast<int>(s.ks);
  g.taps = static_cast<int>(s.taps());
  g.K = static_cast<int>(s.k);
  g.C = static_cast<int>(s.c);
  return g;
}

// ---- the three passes as index maps ----
// Each Op gives: M, N, L; kALFast / kBLFast (whether L is the contiguous axis of A / B, which decides how the block
// stages the tile so that a warp reads consecutive addresses); arow(m) and a_raw(row, l) for A; bcol(n) and
// b_raw(l, col) for B; store(split, m, n, v). arow / bcol are per-thread constants across the L loop, computed once.
// a_raw / b_raw return the stored element (the tensor-core kernel stages raw 16-bit values); the SIMT kernel widens
// them to f32.

template <class E>
struct FpropOp {
  using T = typename E::T;
  using Elem = E;
  static constexpr bool kALFast = true, kBLFast = true;
  Geometry g;
  const T* x;
  const T* w;
  const float* bias;
  T* y;
  int64_t M, N, L;
  __device__ int64_t arow(int64_t i) const { return i * g.C; }
  __device__ T a_raw(int64_t row, int64_t c) const { return x[row + c]; }
  __device__ int64_t bcol(int64_t j) const {
    const int jj = static_cast<int>(j), tap = jj / g.K, k = jj % g.K;
    return (int64_t(k) * g.taps + tap) * g.C;
  }
  __device__ T b_raw(int64_t c, int64_t col) const { return w[col + c]; }
  __device__ void store(int, int64_t i, int64_t j, float v) const {
    const int jj = static_cast<int>(j), tap = jj / g.K, k = jj % g.K;
    if (bias) v += bias[k];
    y[(g.base(i) + g.tap_offset(tap)) * g.K + k] = E::store(v);
  }
};

template <class E>
struct DgradOp {
  using T = typename E::T;
  using Elem = E;
  static constexpr bool kALFast = true, kBLFast = false;
  Geometry g;
  const T* dy;
  const T* w;
  T* dx;
  int64_t M, N, L;
  __device__ int64_t arow(int64_t i) const { return g.base(i) * g.K; }
  __device__ T a_raw(int64_t row, int64_t l) const {
    const int ll = static_cast<int>(l), tap = ll / g.K, k = ll % g.K;
    return dy[row + g.tap_offset(tap) * g.K + k];
  }
  __device__ int64_t bcol(int64_t c) const { return c; }
  __device__ T b_raw(int64_t l, int64_t col) const {
    const int ll = static_cast<int>(l), tap = ll / g.K, k = ll % g.K;
    return w[(int64_t(k) * g.taps + tap) * g.C + col];
  }
  __device__ void store(int, int64_t i, int64_t c, float v) const { dx[i * g.C + c] = E::store(v); }
};

// Columns 0..C-1 are x's channels (only when dw is wanted), column `ones` is all ones: its products sum dy, which
// gives dbias from the same pass. part[split][m][n] receives the chunk's sums.
template <class E>
struct WgradOp {
  using T = typename E::T;
  using Elem = E;
  static constexpr bool kALFast = false, kBLFast = false;
  Geometry g;
  const T* dy;
  const T* x;
  float* part;
  int64_t ones;  // index of the column of ones (C, or 0 when dw is not wanted); -1: none
  int64_t M, N, L;
  __device__ int64_t arow(int64_t m) const {
    const int mm = static_cast<int>(m), tap = mm / g.K, k = mm % g.K;
    return g.tap_offset(tap) * g.K + k;
  }
  __device__ T a_raw(int64_t row, int64_t i) const { return dy[row + g.base(i) * g.K]; }
  __device__ int64_t bcol(int64_t n) const { return n == ones ? -1 : n; }
  __device__ T b_raw(int64_t i, int64_t col) const { return col < 0 ? E::store(1.f) : x[i * g.C + col]; }
  __device__ void store(int split, int64_t m, int64_t n, float v) const { part[(split * M + m) * N + n] = v; }
};

// ---- kernels ----

// C tile (blockIdx.x, blockIdx.y) of op, over the L range of chunk blockIdx.z (chunk = L when there is one split).
template <class Op>
__global__ void __launch_bounds__(kThreads) conv_transpose_gemm(Op op, int64_t chunk) {
  __shared__ float As[kBK][kBM + 1];
  __shared__ float Bs[kBK][kBN + 1];
  const int tid = threadIdx.x, tm = tid / 16, tn = tid % 16;
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const int split = static_cast<int>(blockIdx.z);
  const int64_t l_begin = split * chunk, l_end = l_begin + chunk < op.L ? l_begin + chunk : op.L;

  // Which tile elements this thread stages: element e = tid + r * kThreads of a kBM x kBK tile, with L the fast axis
  // when L is contiguous in memory (so a warp reads two 64-byte runs), else M / N the fast axis.
  int a_mm[kLoads], a_ll[kLoads], b_nn[kLoads], b_ll[kLoads];
  int64_t a_row[kLoads], b_col[kLoads];
  bool a_ok[kLoads], b_ok[kLoads];
  UNET_UNROLL
  for (int r = 0; r < kLoads; ++r) {
    const int e = tid + r * kThreads;
    a_mm[r] = Op::kALFast ? e / kBK : e % kBM;
    a_ll[r] = Op::kALFast ? e % kBK : e / kBM;
    b_nn[r] = Op::kBLFast ? e / kBK : e % kBN;
    b_ll[r] = Op::kBLFast ? e % kBK : e / kBN;
    a_ok[r] = m0 + a_mm[r] < op.M;
    b_ok[r] = n0 + b_nn[r] < op.N;
    a_row[r] = a_ok[r] ? op.arow(m0 + a_mm[r]) : 0;
    b_col[r] = b_ok[r] ? op.bcol(n0 + b_nn[r]) : 0;
  }

  float acc[kRegs][kRegs];
  UNET_UNROLL
  for (int i = 0; i < kRegs; ++i) {
    UNET_UNROLL
    for (int j = 0; j < kRegs; ++j) acc[i][j] = 0.f;
  }
  for (int64_t l0 = l_begin; l0 < l_end; l0 += kBK) {
    UNET_UNROLL
    for (int r = 0; r < kLoads; ++r) {
      const int64_t la = l0 + a_ll[r], lb = l0 + b_ll[r];
      As[a_ll[r]][a_mm[r]] = a_ok[r] && la < l_end ? Op::Elem::load(op.a_raw(a_row[r], la)) : 0.f;
      Bs[b_ll[r]][b_nn[r]] = b_ok[r] && lb < l_end ? Op::Elem::load(op.b_raw(lb, b_col[r])) : 0.f;
    }
    __syncthreads();
    UNET_UNROLL
    for (int ll = 0; ll < kBK; ++ll) {
      float av[kRegs], bv[kRegs];
      UNET_UNROLL
      for (int i = 0; i < kRegs; ++i) av[i] = As[ll][tm + 16 * i];
      UNET_UNROLL
      for (int j = 0; j < kRegs; ++j) bv[j] = Bs[ll][tn + 16 * j];
      UNET_UNROLL
      for (int i = 0; i < kRegs; ++i) {
        UNET_UNROLL
        for (int j = 0; j < kRegs; ++j) acc[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();
  }
  UNET_UNROLL
  for (int i = 0; i < kRegs; ++i) {
    const int64_t m = m0 + tm + 16 * i;
    if (m >= op.M) continue;
    UNET_UNROLL
    for (int j = 0; j < kRegs; ++j) {
      const int64_t n = n0 + tn + 16 * j;
      if (n < op.N) op.store(split, m, n, acc[i][j]);
    }
  }
}

// The same GEMM on the tensor cores for f16 / bf16 operands: a 64 x 64 tile per 128-thread block, each of the four
// warps a 32 x 32 quarter (2 x 4 mma_m16n8k16 tiles, 32 f32 accumulators per thread), one 16-deep L slice at a time.
// Both operands are staged as raw 16-bit values with L contiguous (As[m][l], Bs[n][l]: the mma's row-major A and
// column-major B), rows padded to 48 bytes so that every ldmatrix row address stays 16-byte aligned and the eight rows
// of one 8x8 matrix fall in different bank groups. The index maps are irregular (gathers), so the staging is
// elementwise rather than cp.async. Each accumulator sums its slices in L order: deterministic.
template <class Op>
__global__ void __launch_bounds__(kTcThreads) conv_transpose_gemm_tc(Op op, int64_t chunk) {
  using Mma = typename Op::Elem::Mma;
  __shared__ __align__(16) uint16_t As[kBM][kBK + kTcPad];
  __shared__ __align__(16) uint16_t Bs[kBN][kBK + kTcPad];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;  // the warp's quarter of the tile
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const int split = static_cast<int>(blockIdx.z);
  const int64_t l_begin = split * chunk, l_end = l_begin + chunk < op.L ? l_begin + chunk : op.L;

  // arow / bcol of the tile's rows and columns, computed once per block (kept in registers, the 8 staged elements per
  // thread would cost 16 64-bit registers); kOutside past the problem's edge.
  __shared__ int64_t a_off[kBM], b_off[kBN];
  if (tid < kBM)
    a_off[tid] = m0 + tid < op.M ? op.arow(m0 + tid) : kOutside;
  else
    b_off[tid - kBM] = n0 + tid - kBM < op.N ? op.bcol(n0 + tid - kBM) : kOutside;
  __syncthreads();

  float acc[2][4][4];
  UNET_UNROLL
  for (int i = 0; i < 2; ++i) {
    UNET_UNROLL
    for (int j = 0; j < 4; ++j) {
      UNET_UNROLL
      for (int v = 0; v < 4; ++v) acc[i][j][v] = 0.f;
    }
  }
  // ldmatrix row addresses: lane 8j + r gives row r of 8x8 matrix j. A (16 x 16 per m tile): matrices (rows 0-7, l
  // 0-7), (rows 8-15, l 0-7), (rows 0-7, l 8-15), (rows 8-15, l 8-15) = the fragment registers a0..a3. B (two n8
  // tiles): (n 0-7, l 0-7), (n 0-7, l 8-15), (n 8-15, l 0-7), (n 8-15, l 8-15) = b0, b1 of each tile.
  const int mat = lane / 8, row = lane % 8;
  const int a_r = (mat & 1) * 8 + row, a_c = (mat >> 1) * 8;
  const int b_r = (mat >> 1) * 8 + row, b_c = (mat & 1) * 8;
  for (int64_t l0 = l_begin; l0 < l_end; l0 += kBK) {
    // Element e = tid + r * kTcThreads of each 64 x 16 tile, L the fast axis when L is contiguous in memory.
    UNET_UNROLL
    for (int r = 0; r < kTcLoads; ++r) {
      const int e = tid + r * kTcThreads;
      const int a_mm = Op::kALFast ? e / kBK : e % kBM, a_ll = Op::kALFast ? e % kBK : e / kBM;
      const int b_nn = Op::kBLFast ? e / kBK : e % kBN, b_ll = Op::kBLFast ? e % kBK : e / kBN;
      const int64_t ar = a_off[a_mm], bc = b_off[b_nn], la = l0 + a_ll, lb = l0 + b_ll;
      As[a_mm][a_ll] = ar != kOutside && la < l_end ? op.a_raw(ar, la) : uint16_t(0);
      Bs[b_nn][b_ll] = bc != kOutside && lb < l_end ? op.b_raw(lb, bc) : uint16_t(0);
    }
    __syncthreads();
    uint32_t af[2][4], bf[2][4];
    UNET_UNROLL
    for (int i = 0; i < 2; ++i) ldmatrix_x4(af[i], &As[wm + 16 * i + a_r][a_c]);
    UNET_UNROLL
    for (int j = 0; j < 2; ++j) ldmatrix_x4(bf[j], &Bs[wn + 16 * j + b_r][b_c]);
    UNET_UNROLL
    for (int i = 0; i < 2; ++i) {
      UNET_UNROLL
      for (int j = 0; j < 4; ++j) {
        const uint32_t b[2] = {bf[j / 2][2 * (j % 2)], bf[j / 2][2 * (j % 2) + 1]};
        mma_m16n8k16<Mma>(acc[i][j], af[i], b, acc[i][j]);
      }
    }
    __syncthreads();
  }
  // Accumulator v of tile (i, j) sits at row g + 8 (v >= 2), column 2t + (v & 1) of that 16 x 8 tile.
  const int g = lane / 4, t = lane % 4;
  UNET_UNROLL
  for (int i = 0; i < 2; ++i) {
    UNET_UNROLL
    for (int j = 0; j < 4; ++j) {
      UNET_UNROLL
      for (int v = 0; v < 4; ++v) {
        const int64_t m = m0 + wm + 16 * i + g + 8 * (v >> 1), n = n0 + wn + 8 * j + 2 * t + (v & 1);
        if (m < op.M && n < op.N) op.store(split, m, n, acc[i][j][v]);
      }
    }
  }
}

// dw[k, tap, c] = sum over chunks (in chunk order) of part[chunk][tap * K + k][c]; dbias[k] = the same for the ones
// column, summed over taps in tap order after the chunks.
__global__ void __launch_bounds__(kThreads)
    conv_transpose_wgrad_finalize(const float* part, int64_t splits, int64_t M, int64_t N, int taps, int K, int C,
                                  int64_t ones, float* dw, float* dbias) {
  const int64_t outputs = int64_t(K) * taps * (dw ? C : 0) + (dbias ? K : 0);
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < outputs; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t dw_count = dw ? int64_t(K) * taps * C : 0;
    if (o < dw_count) {
      const int c = static_cast<int>(o % C), tap = static_cast<int>((o / C) % taps), k = static_cast<int>(o / C / taps);
      const int64_t m = int64_t(tap) * K + k;
      float s = 0.f;
      for (int64_t z = 0; z < splits; ++z) s += part[(z * M + m) * N + c];
      dw[o] = s;
    } else {
      const int k = static_cast<int>(o - dw_count);
      float s = 0.f;
      for (int tap = 0; tap < taps; ++tap) {
        const int64_t m = int64_t(tap) * K + k;
        float t = 0.f;
        for (int64_t z = 0; z < splits; ++z) t += part[(z * M + m) * N + ones];
        s += t;
      }
      dbias[k] = s;
    }
  }
}

// ---- launchers ----

void check_shape(const ConvTransposeShape& s, const char* pass) {
  const std::string where = std::string("cuda conv_transpose_") + pass + ": ";
  if (s.n < 0 || s.d < 0 || s.h < 0 || s.w < 0 || s.c < 1 || s.k < 1 || s.kt < 1 || s.kr < 1 || s.ks < 1)
    throw std::invalid_argument(where + "expected n, d, h, w >= 0 and c, k, kt, kr, ks >= 1, got n " +
                                std::to_string(s.n) + " d " + std::to_string(s.d) + " h " + std::to_string(s.h) +
                                " w " + std::to_string(s.w) + " c " + std::to_string(s.c) + " k " +
                                std::to_string(s.k) + " kernel " + std::to_string(s.kt) + "x" + std::to_string(s.kr) +
                                "x" + std::to_string(s.ks));
  if (s.taps() * s.k > (int64_t(1) << 30) || s.c > (int64_t(1) << 30) || s.pixels() >= (int64_t(1) << 31))
    throw std::invalid_argument(where + "taps * k = " + std::to_string(s.taps() * s.k) +
                                " and c = " + std::to_string(s.c) + " must be below 2^30 and the input pixels (" +
                                std::to_string(s.pixels()) + ") below 2^31");
}

dim3 gemm_grid(int64_t M, int64_t N, int64_t splits, const char* pass) {
  const int64_t gx = (M + kBM - 1) / kBM, gy = (N + kBN - 1) / kBN;
  if (gx > 0x7fffffff || gy > 65535 || splits > 65535)
    throw std::invalid_argument(std::string("cuda conv_transpose_") + pass + ": problem too large for one launch (" +
                                std::to_string(gx) + " x " + std::to_string(gy) + " x " + std::to_string(splits) +
                                " blocks)");
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(splits));
}

// f32 runs the SIMT kernel, f16 / bf16 the tensor-core one.
template <class Op>
void run_gemm(const Op& op, int64_t splits, int64_t chunk, const char* pass, cudaStream_t stream) {
  const dim3 grid = gemm_grid(op.M, op.N, splits, pass);
  if constexpr (std::is_same_v<typename Op::Elem, F32>)
    launch(conv_transpose_gemm<Op>, grid, dim3(kThreads), 0, stream, op, chunk);
  else
    launch(conv_transpose_gemm_tc<Op>, grid, dim3(kTcThreads), 0, stream, op, chunk);
}

template <class E>
void fprop_impl(const ConvTransposeShape& s, const void* x, const void* w, const float* bias, void* y,
                cudaStream_t stream) {
  using T = typename E::T;
  FpropOp<E> op;
  op.g = geometry_of(s);
  op.x = static_cast<const T*>(x);
  op.w = static_cast<const T*>(w);
  op.bias = bias;
  op.y = static_cast<T*>(y);
  op.M = s.pixels(), op.N = s.taps() * s.k, op.L = s.c;
  if (op.M == 0) return;
  run_gemm(op, 1, op.L, "fprop", stream);
}

template <class E>
void dgrad_impl(const ConvTransposeShape& s, const void* dy, const void* w, void* dx, cudaStream_t stream) {
  using T = typename E::T;
  DgradOp<E> op;
  op.g = geometry_of(s);
  op.dy = static_cast<const T*>(dy);
  op.w = static_cast<const T*>(w);
  op.dx = static_cast<T*>(dx);
  op.M = s.pixels(), op.N = s.c, op.L = s.taps() * s.k;
  if (op.M == 0) return;
  run_gemm(op, 1, op.L, "dgrad", stream);
}

// Pixels per wgrad chunk: a function of the pixel count only (never of the device), a multiple of the L slice, at
// least 64 pixels (a chunk's partial, M x N floats, is then at most 1/64 of its multiply-adds) and at most 64 chunks.
int64_t wgrad_chunk(int64_t pixels) {
  int64_t chunk = (pixels + 63) / 64;
  if (chunk < 64) chunk = 64;
  return (chunk + kBK - 1) / kBK * kBK;
}

template <class E>
void wgrad_impl(const ConvTransposeShape& s, const void* x, const void* dy, float* dw, float* dbias,
                cudaStream_t stream) {
  using T = typename E::T;
  if (!dw && !dbias) return;
  const int64_t M = s.taps() * s.k, N = (dw ? s.c : 0) + (dbias ? 1 : 0), L = s.pixels();
  const int64_t chunk = wgrad_chunk(L), splits = L == 0 ? 1 : (L + chunk - 1) / chunk;
  Scratch<float> part(static_cast<size_t>(splits * M * N), stream);
  WgradOp<E> op;
  op.g = geometry_of(s);
  op.dy = static_cast<const T*>(dy);
  op.x = dw ? static_cast<const T*>(x) : nullptr;
  op.part = part.get();
  op.ones = dbias ? (dw ? s.c : 0) : -1;
  op.M = M, op.N = N, op.L = L;
  run_gemm(op, splits, chunk, "wgrad", stream);
  const int64_t outputs = (dw ? M * s.c : 0) + (dbias ? s.k : 0);
  const int64_t blocks = (outputs + kThreads - 1) / kThreads;
  launch(conv_transpose_wgrad_finalize, dim3(static_cast<unsigned>(blocks < 4096 ? blocks : 4096)), dim3(kThreads), 0,
         stream, static_cast<const float*>(part.get()), splits, M, N, static_cast<int>(s.taps()), static_cast<int>(s.k),
         static_cast<int>(s.c), op.ones, dw, dbias);
}


}  // namespace

void conv_transpose_fprop(const ConvTransposeShape& s, DType dt, const void* x, const void* w, const float* bias,
                          void* y, cudaStream_t stream) {
  check_shape(s, "fprop");
  element::with_element_type(dt, "cuda conv_transpose_fprop",
                             [&](auto ty) { fprop_impl<decltype(ty)>(s, x, w, bias, y, stream); });
}

void conv_transpose_dgrad(const ConvTransposeShape& s, DType dt, const void* dy, const void* w, void* dx,
                          cudaStream_t stream) {
  check_shape(s, "dgrad");
  element::with_element_type(dt, "cuda conv_transpose_dgrad",
                             [&](auto ty) { dgrad_impl<decltype(ty)>(s, dy, w, dx, stream); });
}

void conv_transpose_wgrad(const ConvTransposeShape& s, DType dt, const void* x, const void* dy, float* dw, float* dbias,
                          cudaStream_t stream) {
  check_shape(s, "wgrad");
  element::with_element_type(dt, "cuda conv_transpose_wgrad",
                             [&](auto ty) { wgrad_impl<decltype(ty)>(s, x, dy, dw, dbias, stream); });
}

const ConvTransposeKernels conv_transpose_kernels{conv_transpose_fprop, conv_transpose_dgrad, conv_transpose_wgrad};

}  // namespace unet::kernels::cuda
