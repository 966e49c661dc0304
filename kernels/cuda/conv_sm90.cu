// The Hopper (sm_90a) convolution, fprop (and dgrad as fprops, one per parity class of the strides: DgradPhase in
// kernels/cuda/conv_sm90.cuh) and wgrad:
// warpgroup MMA on operands the tensor memory accelerator stages. A block of three warpgroups computes a 128-pixel x
// BN-channel tile of y:
//   - warpgroup 0, the producer, gives up registers (setmaxnreg.dec) and its thread 0 issues every k-step's two tensor
//     copies into a ring of kStages stages (produce_fprop_operands);
//   - warpgroups 1 and 2, the consumers, take rows 0..63 and 64..127 of the tile; per k-step each waits for the stage,
//     issues BK / 16 wgmma m64nBNk16 (f32 accumulators in registers, A and B read from the swizzled stage through
//     matrix descriptors) as one group, and keeps it in flight while the next k-step's group is issued
//     (wgmma.wait_group 1): a stage goes back to the producer only once the group that reads it has retired.
// With the norm + act transform (conv_fprop_norm_act's, a compile-time option: the plain kernels are unchanged), each
// consumer warpgroup rewrites its 64 rows of the A stage in place after the full barrier (StageTransform), zeros where
// the padding is, then fence.proxy.async (its ordinary stores become visible to wgmma, an async-proxy reader) and a
// named barrier of its 128 threads (every row written before any thread issues the wgmma that reads them all).
// The epilogue adds the bias and rounds to the storage type and stores where ConvGeometry::out says (y, or a dgrad
// parity class's positions in dx); output pixels beyond the tensor (partial tiles) and channels beyond K are not
// stored. With statistics it also leaves the tile's per-channel sum and sum of squares of the stored values, in the
// layout of the mma.sync path's per-tile partials, for the same finalize (kernels/cuda/conv_reduce.cuh): a tile is a
// box of one sample, so it never spans two and only slot 0 is used.
// The wgrad kernel has the same roles over its own GEMM (conv_sm90.cuh): one or two consumer warpgroups, one per 64
// output channels of the block's dw tile, a k-step is a box of 64 output pixels, both operands MN-major; each split of
// the pixel boxes writes an f32 partial, summed in split order by sum_splits (conv_reduce.cuh).
// The sums run in one fixed order, so the result does not depend on the schedule.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/conv_reduce.cuh"
#include "kernels/cuda/conv_sm90.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/scratch.cuh"
#include "kernels/cuda/wgmma.cuh"
// clang-format on

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <string>

namespace unet::kernels::cuda::sm90 {
namespace {

constexpr int kStages = 4, kThreads = 384, kConsumers = 256;

// The descriptor swizzle for a stage row of bk 16-bit values (one swizzle span).
__host__ __device__ constexpr WgmmaSwizzle descriptor_swizzle(int bk) {
  return bk == 64 ? WgmmaSwizzle::b128 : bk == 32 ? WgmmaSwizzle::b64 : WgmmaSwizzle::b32;
}

// conv_fprop_norm_act's transform of a consumer warpgroup's 64 rows of the A stage, in place. Thread r of the
// warpgroup takes the 16-byte chunks r, r + 128, .. (BK / 16 of them) of the rows as they lie in shared memory; the
// swizzle permutes chunks within a row only, so those are whole chunks of BK / 16 rows, and all hold the same 8
// channels c_off .. c_off + 7 of the k-step's BK (the XOR value, row bits 0..2, is the same in each). Per tile, the
// rows' input pixels at tap (0, 0, 0) (one division per row); per k-step, the 8 channels' coefficients of the tile's
// sample (a tile is a box of one sample), which the producer copied into shared memory with the stage: a load from
// global memory here, while the previous k-step's MMAs are in flight, makes ptxas serialise the MMAs (C7515).
// Chunks whose input pixel lies in the padding at the k-step's tap, or whose channels lie past C, are written as
// zeros: the copy's zeros, kept zero rather than transformed.
template <class E, int BK>
struct StageTransform {
  static constexpr int chunks_per_row = BK / 8, rows = BK / 16;
  int d0[rows], h0[rows], w0[rows];
  int c_off;

  __device__ __forceinline__ StageTransform(const ConvGeometry& g, const ConvTile& t, const TileOrigin& o, int half) {
    const int r = int(threadIdx.x) % 128;
    UNET_UNROLL
    for (int i = 0; i < rows; ++i) {
      const int m = half * 64 + (r + 128 * i) / chunks_per_row;
      const int qi = m % t.qt, pi = m / t.qt % t.pt, zi = m / (t.qt * t.pt);
      d0[i] = (o.z0 + zi) * g.sd - g.pd;
      h0[i] = (o.p0 + pi) * g.sh - g.ph;
      w0[i] = (o.q0 + qi) * g.sw - g.pw;
    }
    c_off = (r % chunks_per_row ^ (r >> 3 & (chunks_per_row - 1))) * 8;
  }

  // Rewrites the chunks of `a` (the warpgroup's rows of the stage) for tap (tt, rr, ss) and channels from c0, with
  // the stage's coefficients coef[{mean, scale, shift}][BK].
  __device__ __forceinline__ void apply(unsigned char* a, const float (&coef)[3][BK], const ConvGeometry& g, int c0,
                                        int tt, int rr, int ss, float slope) const {
    const int r = int(threadIdx.x) % 128;
    const bool channels = c0 + c_off < g.C;
    float mean[8], scale[8], shift[8];  // past C: stale values, never used
    UNET_UNROLL
    for (int e = 0; e < 8; ++e) {
      mean[e] = coef[0][c_off + e];
      scale[e] = coef[1][c_off + e];
      shift[e] = coef[2][c_off + e];
    }
    UNET_UNROLL
    for (int i = 0; i < rows; ++i) {
      uint4* const p = reinterpret_cast<uint4*>(a + (r + 128 * i) * 16);
      const bool inside = channels && unsigned(d0[i] + tt) < unsigned(g.D) && unsigned(h0[i] + rr) < unsigned(g.H) &&
                          unsigned(w0[i] + ss) < unsigned(g.W);
      uint32_t v[4] = {0, 0, 0, 0};
      if (inside) {
        const uint4 x4 = *p;
        const uint32_t x[4] = {x4.x, x4.y, x4.z, x4.w};
        UNET_UNROLL
        for (int e = 0; e < 8; ++e) {  // element e in half e % 2 of word e / 2 (the lower-numbered in the low half)
          float f = fmaf(E::load(uint16_t(x[e / 2] >> 16 * (e % 2))) - mean[e], scale[e], shift[e]);
          f = f > 0.f ? f : f * slope;
          v[e / 2] |= uint32_t(E::store(f)) << 16 * (e % 2);
        }
      }
      *p = make_uint4(v[0], v[1], v[2], v[3]);
    }
  }
};

// BN and BK are compile-time so that the MMAs of a k-step unroll into one chain (with a run-time trip count ptxas
// serialises them, inserting a warpgroup.arrive before each). part: null, or the statistics partials of the tiles,
// part[(m_block * 4 + {sum, squares}) * K + k] (tile_stats_finalize's slot 0). NormActA: x is transformed by na.
template <class E, int BN, int BK, bool NormActA>
__global__ void __launch_bounds__(kThreads, 1)
    conv_fprop_sm90_kernel(const __grid_constant__ TensorMap x_map, const __grid_constant__ TensorMap w_map,
                           ConvGeometry g, ConvTile t, const float* bias, typename E::T* y, float* part, NormAct na) {
  __shared__ StageBarriers<kStages> bars;
  // The statistics: each consumer warp's column sums [warp][sum, squares][BN], and the barrier of the consumers alone
  // that says all are written (the producer warpgroup has returned by then, so __syncthreads cannot serve).
  __shared__ float warp_sums[kConsumers / 32][2][BN];
  __shared__ uint64_t sums_written;
  // NormActA: each stage's mean, scale and shift of the k-step's BK channels (the producer's bulk copies).
  __shared__ __align__(16) float coefs[NormActA ? kStages : 1][3][BK];
  DYN_SMEM(unsigned char, raw);
  const StageBuffers st(raw, t);
  init_stage_barriers(bars, kConsumers);
  if (threadIdx.x == 0) {
    mbarrier_init(&sums_written, kConsumers);
    fence_mbarrier_init();
  }
  __syncthreads();
  const TileOrigin o = tile_origin(g, t, int(blockIdx.x));
  const int k0 = int(blockIdx.y) * BN;
  if (threadIdx.x < 128) {
    setmaxnreg_dec<40>();
    if (threadIdx.x == 0)
      produce_fprop_operands<kStages>(x_map, w_map, g, t, o, k0, bars, st, NormActA ? &coefs[0][0][0] : nullptr, na);
    return;
  }
  setmaxnreg_inc<232>();
  const int half = int(threadIdx.x) / 128 - 1;  // which 64 rows of the tile
  constexpr int row_bytes = BK * 2, sbo = 8 * row_bytes;
  constexpr WgmmaSwizzle swizzle = descriptor_swizzle(BK);
  float d[BN / 2];
  UNET_UNROLL
  for (int v = 0; v < BN / 2; ++v) d[v] = 0.0f;
  const int steps = g.steps();
  [[maybe_unused]] StageTransform<E, BK> transform(g, t, o, half);
  [[maybe_unused]] int chunk = 0, tt = 0, rr = 0, ss = 0;  // k-step j's channel chunk and tap, as the producer's
  for (int j = 0; j < steps; ++j) {
    const int stage = j % kStages;
    unsigned char* const a = st.a(stage) + half * 64 * row_bytes;
    mbarrier_wait_parity(&bars.full[stage], (j / kStages) & 1);
    if constexpr (NormActA) {
      transform.apply(a, coefs[stage], g, chunk * BK, tt, rr, ss, na.slope);
      fence_proxy_async_shared();  // the stores, before the wgmma (the async proxy) reads them
      // Every row of the warpgroup's written before any of its threads issues the MMAs (constant ids: with a
      // run-time id ptxas reserves all 16 barriers).
      if (half == 0)
        named_barrier_sync(1, 128);
      else
        named_barrier_sync(2, 128);
      if (++chunk == g.c_chunks) {
        chunk = 0;
        if (++ss == g.S) {
          ss = 0;
          if (++rr == g.R) rr = 0, ++tt;
        }
      }
    }
    wgmma_fence_operand(d);  // keeps the compiler from touching the accumulators while MMAs are in flight
    wgmma_fence();
    const unsigned char* b = st.b(stage);
    UNET_UNROLL
    for (int k = 0; k < BK / 16; ++k)  // 32 bytes of the reduction per MMA, inside the swizzled rows
      wgmma_m64nNk16_ss<typename E::Mma, BN>(d, make_wgmma_desc(a + 32 * k, 16, sbo, swizzle),
                                             make_wgmma_desc(b + 32 * k, 16, sbo, swizzle), true);
    wgmma_commit_group();
    wgmma_fence_operand(d);
    wgmma_wait_group<1>();  // the previous k-step's group has retired: its stage may be refilled
    if (j > 0) mbarrier_arrive(&bars.empty[(j - 1) % kStages]);
  }
  wgmma_wait_group<0>();
  wgmma_fence_operand(d);

  // d[4j + i] is row 16 w + g + 8 (i >> 1), column 8 j + 2 t + (i & 1) of this warpgroup's 64 x BN (wgmma.cuh).
  const int r = int(threadIdx.x) % 128, warp = r / 32, lane = r % 32;
  UNET_UNROLL
  for (int j = 0; j < BN / 8; ++j) {
    float sums[4] = {};  // [column (i & 1)][sum, squares] of the values this thread stores, rows in a fixed order
    UNET_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int m = half * 64 + 16 * warp + lane / 4 + 8 * (i >> 1);
      const int k = k0 + 8 * j + 2 * (lane % 4) + (i & 1);
      const int qi = m % t.qt, pi = m / t.qt % t.pt, zi = m / (t.qt * t.pt);
      const int z = o.z0 + zi, p = o.p0 + pi, q = o.q0 + qi;
      if (z >= g.Z || p >= g.P || q >= g.Q || k >= g.K) continue;
      const typename E::T s = E::store(d[4 * j + i] + (bias ? bias[k] : 0.0f));
      y[o.n * g.out.n + z * g.out.z + p * g.out.p + q * g.out.q + k] = s;
      const float v = E::load(s);
      sums[(i & 1) * 2 + 0] += v;
      sums[(i & 1) * 2 + 1] += v * v;
    }
    if (part) {  // uniform over the grid
      // The 8 lanes of a column pair (same lane % 4) by a fixed butterfly: every lane ends with the same bits.
      UNET_UNROLL
      for (int x = 0; x < 4; ++x)
        for (int off = 4; off < 32; off *= 2) sums[x] += __shfl_xor_sync(0xffffffffu, sums[x], off);
      if (lane < 4)
        for (int x = 0; x < 4; ++x) warp_sums[half * 4 + warp][x & 1][8 * j + 2 * lane + (x >> 1)] = sums[x];
    }
  }
  if (!part) return;
  // The tile's sums: the 8 warps' in warp order, one thread per (sum or squares, column).
  mbarrier_arrive(&sums_written);
  mbarrier_wait_parity(&sums_written, 0);
  const int c = int(threadIdx.x) - 128;
  for (int x = c; x < 2 * BN; x += kConsumers) {
    const int col = x % BN, sq = x / BN;
    float total = 0.0f;
    for (int w = 0; w < kConsumers / 32; ++w) total += warp_sums[w][sq][col];
    if (k0 + col < g.K) part[(int64_t(blockIdx.x) * 4 + sq) * g.K + k0 + col] = total;
  }
}

// dw of output channels k0 .. k0 + BN - 1 (blockIdx.y), tap and channel chunk blockIdx.x (tap * c_chunks + chunk),
// over pixel boxes blockIdx.z * per_split .. + per_split - 1 (the split), into out + blockIdx.z * (the size of dw):
// dw itself for one split, the split's partial otherwise. 128 + 2 BN threads: warpgroup h >= 1 takes output channels
// k0 + 64 (h - 1) .. + 63: per k-step 4 MMAs m64nBKk16 (16 pixels each) with both operands MN-major, A its dy box of
// the stage (128-byte rows), B the stage's x box (rows of BK * 2 bytes). The accumulators are BK / 2 floats, so the
// consumers need no extra registers (no setmaxnreg).
template <class E, int BN, int BK>
__global__ void __launch_bounds__(128 + 2 * BN, 1)
    conv_wgrad_sm90_kernel(const __grid_constant__ TensorMap dy_map, const __grid_constant__ TensorMap x_map,
                           ConvGeometry g, ConvTile t, int C, int per_split, float* out) {
  __shared__ StageBarriers<kStages> bars;
  DYN_SMEM(unsigned char, raw);
  const StageBuffers st(raw, wgrad_a_bytes(t), wgrad_b_bytes(t));
  init_stage_barriers(bars, 2 * BN);
  __syncthreads();
  const int tap = int(blockIdx.x) / g.c_chunks, c0 = int(blockIdx.x) % g.c_chunks * BK, k0 = int(blockIdx.y) * BN;
  const int boxes = g.N * g.tiles_z * g.tiles_p * g.tiles_q;
  const int first = int(blockIdx.z) * per_split, last = first + per_split < boxes ? first + per_split : boxes;
  if (threadIdx.x < 128) {
    if (threadIdx.x == 0) produce_wgrad_operands<kStages>(dy_map, x_map, g, t, tap, c0, k0, first, last, bars, st);
    return;
  }
  const int group = int(threadIdx.x) / 128 - 1;  // which 64 output channels
  constexpr int a_row = 128, b_row = BK * 2;     // bytes per pixel row of the A and B tiles
  constexpr int pixels = 64;                     // per k-step
  float d[BK / 2];
  UNET_UNROLL
  for (int v = 0; v < BK / 2; ++v) d[v] = 0.0f;
  for (int j = 0; j < last - first; ++j) {
    const int stage = j % kStages;
    mbarrier_wait_parity(&bars.full[stage], (j / kStages) & 1);
    wgmma_fence_operand(d);
    wgmma_fence();
    const unsigned char* a = st.a(stage) + group * pixels * a_row;
    const unsigned char* b = st.b(stage);
    // MN-major descriptors: a row per pixel, 8 rows (SBO) per swizzle atom; the channels fit one row, so LBO (the
    // next row segment of channels) is never used. 16 pixels per MMA: two atoms further on.
    UNET_UNROLL
    for (int k = 0; k < pixels / 16; ++k)
      wgmma_m64nNk16_ss<typename E::Mma, BK, 1, 1>(
          d, make_wgmma_desc(a + 16 * a_row * k, 0, 8 * a_row, WgmmaSwizzle::b128),
          make_wgmma_desc(b + 16 * b_row * k, 0, 8 * b_row, descriptor_swizzle(BK)), true);
    wgmma_commit_group();
    wgmma_fence_operand(d);
    wgmma_wait_group<1>();  // the previous k-step's group has retired: its stage may be refilled
    if (j > 0) mbarrier_arrive(&bars.empty[(j - 1) % kStages]);
  }
  wgmma_wait_group<0>();
  wgmma_fence_operand(d);

  // d[4j + i] is row (output channel) 16 w + g + 8 (i >> 1), column (input channel) 8 j + 2 t + (i & 1).
  const int r = int(threadIdx.x) % 128, warp = r / 32, lane = r % 32, taps = g.T * g.R * g.S;
  float* const dst = out + int64_t(blockIdx.z) * g.K * taps * C;
  UNET_UNROLL
  for (int v = 0; v < BK / 2; ++v) {
    const int k = k0 + group * 64 + 16 * warp + lane / 4 + 8 * ((v % 4) >> 1);
    const int c = c0 + 8 * (v / 4) + 2 * (lane % 4) + (v & 1);
    if (k < g.K && c < C) dst[(int64_t(k) * taps + tap) * C + c] = d[v];
  }
}

// The taps of a dgrad parity class (DgradPhase) in w [K][T][R][S][C]: along each axis Tp of them, from t0 every
// stride-th.
struct SubKernel {
  int K, C, T, R, S;
  int t0, r0, s0, Tp, Rp, Sp, sd, sh, sw;
};

// wt [C][Tp][Rp][Sp][K] = w [K][t0 + sd (Tp-1-i)][r0 + sh (Rp-1-j)][s0 + sw (Sp-1-l)][C]: the weights of a dgrad parity
// class as those of a stride-1 fprop (its taps reversed, input and output channels swapped). One thread per element
// of wt. Stride 1: the whole kernel reversed.
__global__ void __launch_bounds__(256) sub_kernel_weights(const uint16_t* w, uint16_t* wt, SubKernel sk) {
  const int taps = sk.Tp * sk.Rp * sk.Sp;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(sk.K) * taps * sk.C) return;
  const int k = int(i % sk.K), tap = int(i / sk.K % taps), c = int(i / sk.K / taps);
  const int l = tap % sk.Sp, j = tap / sk.Sp % sk.Rp, it = tap / (sk.Sp * sk.Rp);
  const int t = sk.t0 + sk.sd * (sk.Tp - 1 - it), r = sk.r0 + sk.sh * (sk.Rp - 1 - j),
            s = sk.s0 + sk.sw * (sk.Sp - 1 - l);
  wt[i] = w[(((int64_t(k) * sk.T + t) * sk.R + r) * sk.S + s) * sk.C + c];
}

// Zeros at the positions of a dgrad parity class that no tap reaches: N x Z x P x Q pixels of C channels, pixel
// (n, z, p, q) at dx + the strides' offsets. One thread per element.
__global__ void __launch_bounds__(256) zero_pixels(uint16_t* dx, int N, int Z, int P, int Q, int C, PixelStrides st) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(N) * Z * P * Q * C) return;
  const int c = int(i % C);
  int64_t m = i / C;
  const int q = int(m % Q), p = int(m / Q % P), z = int(m / Q / P % Z), n = int(m / Q / P / Z);
  dx[n * st.n + z * st.z + p * st.p + q * st.q + c] = 0;
}

template <class E, int BN, int BK, bool NormActA>
void launch_fprop(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y, float* part,
                  const ConvTile& t, const NormAct& na, const PixelStrides& out, cudaStream_t stream) {
  const TensorMap x_map = make_activation_map(p, dt, x, t), w_map = make_weight_map(p, dt, w, t);
  ConvGeometry g = make_geometry(p, t);
  g.out = out;
  const size_t smem = size_t(kStages) * size_t(t.a_bytes() + t.b_bytes()) + 1024;
  auto kernel = conv_fprop_sm90_kernel<E, BN, BK, NormActA>;
#if !UNET_EMULATED
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
#endif
  const dim3 grid(unsigned(p.N * g.tiles_z * g.tiles_p * g.tiles_q), unsigned((p.K + BN - 1) / BN));
  launch(kernel, grid, dim3(kThreads), smem, stream, x_map, w_map, g, t, bias, static_cast<typename E::T*>(y), part,
         na);
}

template <class E, int BN, int BK>
void launch_wgrad(const ConvProblem& p, DType dt, const void* x, const void* dy, float* out, const ConvTile& t,
                  int per_split, int splits, cudaStream_t stream) {
  const TensorMap dy_map = make_gradient_map(p, dt, dy, t), x_map = make_activation_map(p, dt, x, t);
  const ConvGeometry g = make_geometry(p, t);
  const size_t smem = size_t(kStages) * size_t(wgrad_a_bytes(t) + wgrad_b_bytes(t)) + 1024;
  auto kernel = conv_wgrad_sm90_kernel<E, BN, BK>;
#if !UNET_EMULATED
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
#endif
  const dim3 grid(unsigned(p.taps() * g.c_chunks), unsigned((p.K + BN - 1) / BN), unsigned(splits));
  launch(kernel, grid, dim3(128 + 2 * BN), smem, stream, dy_map, x_map, g, t, int(p.C), per_split, out);
}

// conv_fprop_sm90 storing y's pixels where `out` says (conv_dgrad_sm90_phase: a parity class's positions in dx).
void fprop(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y, float* stats,
           const ConvTile& t, cudaStream_t stream, const NormAct& norm_act, const PixelStrides& out) {
  if (const std::string why = conv_sm90_problem(p, dt, t); !why.empty())
    throw std::invalid_argument("conv_fprop_sm90: " + why + " (" + p.describe() + ")");
  if (t.bm() != 128) throw std::invalid_argument("conv_fprop_sm90: the tile must hold 128 output pixels");
  if (t.bn != 64 && t.bn != 128) throw std::invalid_argument("conv_fprop_sm90: BN must be 64 or 128");
  const auto aligned16 = [](const float* f) { return reinterpret_cast<uintptr_t>(f) % 16 == 0; };
  if (norm_act.mean && !(norm_act.scale && norm_act.shift && aligned16(norm_act.mean) && aligned16(norm_act.scale) &&
                         aligned16(norm_act.shift)))
    throw std::invalid_argument("conv_fprop_sm90: the norm + act coefficients must be 16-byte aligned");
  // Statistics: per-tile partials, then tile_stats_finalize with a sample's rows counted as its tiles' (128 each,
  // rows past the tensor's end adding nothing), so that every tile lies in one sample.
  const ConvGeometry g = make_geometry(p, t);
  const int64_t tiles_per_sample = int64_t(g.tiles_z) * g.tiles_p * g.tiles_q;
  std::optional<Scratch<float>> part_buffer;
  if (stats) part_buffer.emplace(size_t(p.N * tiles_per_sample * 4 * p.K), stream);
  float* const part = stats ? part_buffer->get() : nullptr;
  const auto run = [&](auto e) {
    using E = decltype(e);
    const auto with_bk = [&]<int BN, bool NormActA>() {
      if (t.bk == 16) return launch_fprop<E, BN, 16, NormActA>(p, dt, x, w, bias, y, part, t, norm_act, out, stream);
      if (t.bk == 32) return launch_fprop<E, BN, 32, NormActA>(p, dt, x, w, bias, y, part, t, norm_act, out, stream);
      return launch_fprop<E, BN, 64, NormActA>(p, dt, x, w, bias, y, part, t, norm_act, out, stream);
    };
    const auto with_bn = [&]<bool NormActA>() {
      if (t.bn == 64) return with_bk.template operator()<64, NormActA>();
      return with_bk.template operator()<128, NormActA>();
    };
    if (norm_act.mean) return with_bn.template operator()<true>();
    return with_bn.template operator()<false>();
  };
  if (dt == DType::bf16)
    run(element::BF16{});
  else
    run(element::F16{});
  if (stats) finalize_tile_stats(part, p.N, tiles_per_sample * t.bm(), p.K, t.bm(), stats, stream);
}

}  // namespace

void conv_fprop_sm90(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y,
                     float* stats, const ConvTile& t, cudaStream_t stream, const NormAct& norm_act) {
  fprop(p, dt, x, w, bias, y, stats, t, stream, norm_act, dense_strides(p));
}

std::vector<DgradPhase> dgrad_phases(const ConvProblem& p) {
  // Along one axis: the class's first tap and tap count, its positions, and the padding of its stride-1 fprop.
  struct Axis {
    int tap0, taps;
    int64_t positions;
    int pad;
  };
  const auto axis = [](int first, int64_t size, int stride, int pad, int kernel) {
    const int tap0 = (first + pad) % stride, taps = tap0 < kernel ? (kernel - tap0 + stride - 1) / stride : 0;
    const int64_t positions = first < size ? (size - first + stride - 1) / stride : 0;
    return Axis{tap0, taps, positions, taps - 1 - (first + pad - tap0) / stride};
  };
  std::vector<DgradPhase> phases;
  for (int d0 = 0; d0 < p.stride_d; ++d0)
    for (int h0 = 0; h0 < p.stride_h; ++h0)
      for (int w0 = 0; w0 < p.stride_w; ++w0) {
        const Axis ad = axis(d0, p.D, p.stride_d, p.pad_d, p.T), ah = axis(h0, p.H, p.stride_h, p.pad_h, p.R),
                   aw = axis(w0, p.W, p.stride_w, p.pad_w, p.S);
        ConvProblem q;
        q.N = p.N, q.D = p.Z, q.H = p.P, q.W = p.Q, q.C = p.K, q.K = p.C;
        q.T = ad.taps, q.R = ah.taps, q.S = aw.taps;
        q.pad_d = ad.pad, q.pad_h = ah.pad, q.pad_w = aw.pad;
        q.Z = ad.positions, q.P = ah.positions, q.Q = aw.positions;
        phases.push_back({d0, h0, w0, ad.tap0, ah.tap0, aw.tap0, q});
      }
  return phases;
}

std::string conv_dgrad_sm90_problem(const ConvProblem& p, DType dt) {
  for (const int s : {p.stride_d, p.stride_h, p.stride_w})
    if (s != 1 && s != 2) return "needs strides 1 or 2";
  if (p.pad_d >= p.T || p.pad_h >= p.R || p.pad_w >= p.S) return "needs padding below the kernel size";
  for (const DgradPhase& ph : dgrad_phases(p))
    if (ph.q.taps() > 0)
      if (std::string why = conv_sm90_problem(ph.q, dt, choose_tile(ph.q)); !why.empty()) return why;
  return "";
}

void conv_dgrad_sm90(const ConvProblem& p, DType dt, const void* dy, const void* w, void* dx, cudaStream_t stream) {
  if (const std::string why = conv_dgrad_sm90_problem(p, dt); !why.empty())
    throw std::invalid_argument("conv_dgrad_sm90: " + why + " (" + p.describe() + ")");
  for (const DgradPhase& ph : dgrad_phases(p)) conv_dgrad_sm90_phase(p, dt, dy, w, dx, ph, stream);
}

void conv_dgrad_sm90_phase(const ConvProblem& p, DType dt, const void* dy, const void* w, void* dx,
                           const DgradPhase& phase, cudaStream_t stream) {
  const ConvProblem& q = phase.q;
  const int64_t elements = q.N * q.Z * q.P * q.Q * q.K;
  if (elements == 0) return;  // no position of dx has this parity (an axis shorter than its stride)
  uint16_t* const out = static_cast<uint16_t*>(dx) + ((phase.d0 * p.H + phase.h0) * p.W + phase.w0) * p.C;
  const PixelStrides strides{p.D * p.H * p.W * p.C, p.stride_d * p.H * p.W * p.C, p.stride_h * p.W * p.C,
                             p.stride_w * p.C};
  if (q.taps() == 0) {
    launch(zero_pixels, dim3(unsigned((elements + 255) / 256)), dim3(256), 0, stream, out, int(q.N), int(q.Z),
           int(q.P), int(q.Q), int(q.K), strides);
    return;
  }
  const ConvTile t = choose_tile(q);
  if (const std::string why = conv_sm90_problem(q, dt, t); !why.empty())
    throw std::invalid_argument("conv_dgrad_sm90_phase: " + why + " (" + q.describe() + ")");
  const int64_t n = p.K * q.taps() * p.C;
  Scratch<uint16_t> wt(size_t(n), stream);
  const SubKernel sk{.K = int(p.K), .C = int(p.C), .T = p.T, .R = p.R, .S = p.S,
                     .t0 = phase.t0, .r0 = phase.r0, .s0 = phase.s0, .Tp = q.T, .Rp = q.R, .Sp = q.S,
                     .sd = p.stride_d, .sh = p.stride_h, .sw = p.stride_w};
  launch(sub_kernel_weights, dim3(unsigned((n + 255) / 256)), dim3(256), 0, stream, static_cast<const uint16_t*>(w),
         wt.get(), sk);
  fprop(q, dt, dy, wt.get(), nullptr, out, nullptr, t, stream, {}, strides);
}

std::string conv_wgrad_sm90_problem(const ConvProblem& p, DType dt) {
  if (p.K % 8 != 0) return "needs K a multiple of 8 (K = " + std::to_string(p.K) + ")";
  return conv_sm90_problem(p, dt, choose_wgrad_tile(p));
}

void conv_wgrad_sm90(const ConvProblem& p, DType dt, const void* x, const void* dy, float* dw, int splits,
                     cudaStream_t stream) {
  if (const std::string why = conv_wgrad_sm90_problem(p, dt); !why.empty())
    throw std::invalid_argument("conv_wgrad_sm90: " + why + " (" + p.describe() + ")");
  const ConvTile t = choose_wgrad_tile(p);
  const ConvGeometry g = make_geometry(p, t);
  // Splits of the pixel boxes: by default enough blocks to fill a large GPU twice over (as the mma.sync path), each
  // split at least 8 boxes (512 pixels); a function of the shape only, so the summation order is fixed.
  const int64_t boxes = p.N * g.tiles_z * g.tiles_p * g.tiles_q;
  const int64_t blocks = p.taps() * g.c_chunks * ((p.K + t.bn - 1) / t.bn);
  int64_t want = splits > 0 ? splits : std::min((264 + blocks - 1) / blocks, std::max<int64_t>(1, boxes / 8));
  want = std::clamp<int64_t>(want, 1, std::min<int64_t>(boxes, 65535));
  const int64_t per = (boxes + want - 1) / want, count = p.K * p.taps() * p.C;
  const int used = int((boxes + per - 1) / per);
  std::optional<Scratch<float>> part_buffer;
  if (used > 1) part_buffer.emplace(size_t(used) * size_t(count), stream);
  float* const out = used > 1 ? part_buffer->get() : dw;
  const auto run = [&](auto e) {
    using E = decltype(e);
    const auto with_bk = [&]<int BN>() {
      if (t.bk == 16) return launch_wgrad<E, BN, 16>(p, dt, x, dy, out, t, int(per), used, stream);
      if (t.bk == 32) return launch_wgrad<E, BN, 32>(p, dt, x, dy, out, t, int(per), used, stream);
      return launch_wgrad<E, BN, 64>(p, dt, x, dy, out, t, int(per), used, stream);
    };
    if (t.bn == 64) return with_bk.template operator()<64>();
    return with_bk.template operator()<128>();
  };
  if (dt == DType::bf16)
    run(element::BF16{});
  else
    run(element::F16{});
  if (used > 1) sum_split_partials(out, count, used, dw, stream);
}

}  // namespace unet::kernels::cuda::sm90
