// The operand pipeline of the Hopper (sm_90a) convolution path (issue 16): an implicit GEMM whose operands the tensor
// memory accelerator brings straight from the NDHWC activations and the [K][taps][C] weights, without im2col and
// without integer division per element, into a ring of swizzled shared-memory stages that complete on mbarriers.
//
// The GEMM of fprop: M = output pixels, N = output channels K, reduction = taps x C. A block computes an M tile that
// is a box of Zt x Pt x Qt output pixels of one sample (BM = Zt Pt Qt rows) by BN output channels. Its reduction runs
// over k-steps (tap, channel chunk of BK): for tap (t, r, s) the input pixels the tile's outputs read form a box too,
// starting at (z0 sd + t - pd, p0 sh + r - ph, q0 sw + s - pw) with element strides (sd, sh, sw); so one 5D tensor
// copy of box {BK, Qt sw, Pt sh, Zt sd, 1} with element strides {1, sw, sh, sd, 1} brings the A tile (BM rows of BK
// channels, row m = (zi Pt + pi) Qt + qi), zeros where the padding or the tensor's end is, and channels past C are
// zeros too. One 3D copy of box {BK, 1, BN} of the weights (dims {C, taps, K}) brings the B tile: BN rows of BK
// channels. Both are "K-major" (the reduction dimension contiguous), the layout wgmma reads for 16-bit operands
// without transposition, and are swizzled with the span BK * 2 bytes (128B for BK = 64).
//
// Roles: one thread of the producer warpgroup issues the copies for every k-step, after waiting on the stage's
// "empty" barrier; the consumers wait on its "full" barrier (the copies' bytes), read the stage, and arrive on
// "empty" to give it back. Stage i of k-step j is j % Stages, on the (j / Stages)-th use of its barriers, whose parity
// is (j / Stages) & 1. The consumers' arithmetic (wgmma, or the scalar reference of tests/emu_conv_sm90_kernels.cuh)
// and the epilogue are the caller's.
//
// wgrad runs the same pipeline on another GEMM: M = output channels K, N = taps x C, reduction = output pixels. A
// block computes dw for BN = 64 or 128 output channels (64 when K <= 64) by one tap and BK input channels, over a
// range of pixel boxes (its split of the reduction); a k-step is one box of Zt x Pt x Qt = 64 output pixels of one
// sample. Its A tile is dy over the box, BN / 64 5D copies of box {64, Qt, Pt, Zt, 1} (64 output channels each,
// channels past K zeros), one per consumer warpgroup; its B
// tile is the fprop's activation box for the block's tap and channel chunk. Both are "MN-major" (a row per pixel,
// the channels contiguous, swizzled with the row's span), which wgmma reads transposed. Output pixels past the
// tensor's end are zero rows of dy, so they add nothing (0 x finite x).
//
// Requirements (conv_sm90_problem): f16 or bf16 storage; C a multiple of 8 (and K for wgrad: the tensor maps' byte
// strides are multiples of 16); BK 16, 32 or 64 (32-, 64- or 128-byte swizzle); box sizes within the copy engine's
// 256 per dim.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/conv.h"
#include "kernels/cuda/tensor_copy.cuh"

namespace unet::kernels::cuda::sm90 {

// What a block computes and how its operands are staged.
struct ConvTile {
  int zt = 1, pt = 8, qt = 16;  // output pixels per block along Z, P, Q (BM = zt * pt * qt)
  int bn = 64;                  // output channels per block
  int bk = 64;                  // input channels per k-step (16, 32 or 64 16-bit values: one swizzle span)
  __host__ __device__ int bm() const { return zt * pt * qt; }
  __host__ __device__ int a_bytes() const { return bm() * bk * 2; }
  __host__ __device__ int b_bytes() const { return bn * bk * 2; }
};

// Where the fprop epilogue stores output pixel (n, z, p, q), in elements: at y + n * out.n + z * out.z + p * out.p +
// q * out.q, its K channels contiguous from there. dense_strides: the [N][Z][P][Q][K] tensor y; a strided dgrad's
// parity class (conv_dgrad_sm90_phase) gives its positions in dx instead, so each class is written in place.
struct PixelStrides {
  int64_t n, z, p, q;
};
inline PixelStrides dense_strides(const ConvProblem& p) {
  return {p.Z * p.P * p.Q * p.K, p.P * p.Q * p.K, p.Q * p.K, p.K};
}

// The geometry a kernel needs (passed by value), beside the two tensor maps.
struct ConvGeometry {
  int N, Z, P, Q, K;
  int T, R, S, sd, sh, sw, pd, ph, pw;
  int c_chunks;                   // ceil(C / bk)
  int tiles_z, tiles_p, tiles_q;  // M tiles per sample along each axis
  int D, H, W, C;                 // the input's size (the norm + act transform's padding test and coefficients)
  PixelStrides out;               // where the epilogue stores (dense_strides unless the caller says otherwise)
  __host__ __device__ int steps() const { return T * R * S * c_chunks; }
};

// The previous layer's instance norm + leaky ReLU that conv_fprop_norm_act (kernels/cuda/conv.cuh) applies to x as
// it is loaded: x' = leaky_relu(fmaf(x - mean[n, c], scale[n, c], shift[n, c]), slope) rounded to the storage type,
// padding zeros after it. mean, scale, shift [N * C] f32, 16-byte aligned; mean null: no transform.
struct NormAct {
  const float *mean = nullptr, *scale = nullptr, *shift = nullptr;
  float slope = 0.0f;
};

// Why the sm_90a path cannot run problem `p` in `dt` with tile `t`, or "" when it can.
inline std::string conv_sm90_problem(const ConvProblem& p, DType dt, const ConvTile& t) {
  if (dt != DType::f16 && dt != DType::bf16) return "needs f16 or bf16 storage";
  if (p.C % 8 != 0) return "needs C a multiple of 8 (C = " + std::to_string(p.C) + ")";
  if (p.N * p.Z * p.P * p.Q >= (int64_t(1) << 31) || p.N * p.D * p.H * p.W * p.C >= (int64_t(1) << 40))
    return "needs fewer than 2^31 output pixels";
  if (t.bk != 16 && t.bk != 32 && t.bk != 64) return "needs BK 16, 32 or 64";
  if (t.qt * p.stride_w > 256 || t.pt * p.stride_h > 256 || t.zt * p.stride_d > 256 || t.bn > 256)
    return "a box exceeds 256 elements along a dim";
  if (t.a_bytes() % 1024 != 0 || t.b_bytes() % 1024 != 0) return "stages must be whole 1024-byte swizzle atoms";
  return "";
}

// A box of `pixels` (a power of 2) output pixels as wide along Q as the output is (up to 16), then along P, the rest
// along Z; BK as wide as the channels allow (64, 32 or 16).
inline ConvTile pixel_box_tile(const ConvProblem& p, int pixels) {
  auto pow2_at_least = [pixels](int64_t n) {
    int v = 1;
    while (v < n && v < pixels) v *= 2;
    return v;
  };
  ConvTile t;
  t.bk = p.C >= 64 ? 64 : p.C >= 32 ? 32 : 16;
  t.qt = std::min(16, pow2_at_least(p.Q));
  t.pt = std::min(pixels / t.qt, pow2_at_least(p.P));
  t.zt = pixels / (t.qt * t.pt);
  return t;
}

// The tile conv_fprop uses: 128 output pixels, BN 64 for up to 64 output channels and 128 above.
inline ConvTile choose_tile(const ConvProblem& p) {
  ConvTile t = pixel_box_tile(p, 128);
  t.bn = p.K <= 64 ? 64 : 128;
  return t;
}

// wgrad's tile: k-steps of 64 output pixels, BN 64 output channels for up to 64 (one consumer warpgroup) and 128
// above (two), BK input channels of one tap.
inline ConvTile choose_wgrad_tile(const ConvProblem& p) {
  ConvTile t = pixel_box_tile(p, 64);
  t.bn = p.K <= 64 ? 64 : 128;
  return t;
}

inline CUtensorMapSwizzle swizzle_for(int bk) {
  return bk == 64 ? CU_TENSOR_MAP_SWIZZLE_128B : bk == 32 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_32B;
}

// The A map: x as dims {C, W, H, D, N}; one box per (k-step, tile) as described above.
inline TensorMap make_activation_map(const ConvProblem& p, DType dt, const void* x, const ConvTile& t) {
  const uint64_t e = 2;
  const uint64_t dims[5] = {uint64_t(p.C), uint64_t(p.W), uint64_t(p.H), uint64_t(p.D), uint64_t(p.N)};
  const uint64_t strides[4] = {p.C * e, p.W * p.C * e, p.H * p.W * p.C * e, p.D * p.H * p.W * p.C * e};
  const uint32_t box[5] = {uint32_t(t.bk), uint32_t(t.qt * p.stride_w), uint32_t(t.pt * p.stride_h),
                           uint32_t(t.zt * p.stride_d), 1};
  const uint32_t element_strides[5] = {1, uint32_t(p.stride_w), uint32_t(p.stride_h), uint32_t(p.stride_d), 1};
  const CUtensorMapDataType type =
      dt == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return make_tensor_map(type, 5, x, dims, strides, box, element_strides, swizzle_for(t.bk));
}

// The B map: w [K][taps][C] as dims {C, taps, K}; box {BK, 1, BN}.
inline TensorMap make_weight_map(const ConvProblem& p, DType dt, const void* w, const ConvTile& t) {
  const uint64_t e = 2, taps = uint64_t(p.taps());
  const uint64_t dims[3] = {uint64_t(p.C), taps, uint64_t(p.K)};
  const uint64_t strides[2] = {p.C * e, taps * p.C * e};
  const uint32_t box[3] = {uint32_t(t.bk), 1, uint32_t(t.bn)}, element_strides[3] = {1, 1, 1};
  const CUtensorMapDataType type =
      dt == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return make_tensor_map(type, 3, w, dims, strides, box, element_strides, swizzle_for(t.bk));
}

// wgrad's A map: dy as dims {K, Q, P, Z, N}; box {64, Qt, Pt, Zt, 1} (a row of 64 output channels per pixel, 128B
// swizzle), one per 64 of the block's BN output channels.
inline TensorMap make_gradient_map(const ConvProblem& p, DType dt, const void* dy, const ConvTile& t) {
  const uint64_t e = 2;
  const uint64_t dims[5] = {uint64_t(p.K), uint64_t(p.Q), uint64_t(p.P), uint64_t(p.Z), uint64_t(p.N)};
  const uint64_t strides[4] = {p.K * e, p.Q * p.K * e, p.P * p.Q * p.K * e, p.Z * p.P * p.Q * p.K * e};
  const uint32_t box[5] = {64, uint32_t(t.qt), uint32_t(t.pt), uint32_t(t.zt), 1}, element_strides[5] = {1, 1, 1, 1, 1};
  const CUtensorMapDataType type =
      dt == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return make_tensor_map(type, 5, dy, dims, strides, box, element_strides, CU_TENSOR_MAP_SWIZZLE_128B);
}

inline ConvGeometry make_geometry(const ConvProblem& p, const ConvTile& t) {
  auto up = [](int64_t a, int64_t b) { return int((a + b - 1) / b); };
  return {int(p.N), int(p.Z), int(p.P),      int(p.Q),      int(p.K),      p.T,
          p.R,      p.S,      p.stride_d,    p.stride_h,    p.stride_w,    p.pad_d,
          p.pad_h,  p.pad_w,  up(p.C, t.bk), up(p.Z, t.zt), up(p.P, t.pt), up(p.Q, t.qt),
          int(p.D), int(p.H),   int(p.W),      int(p.C),      dense_strides(p)};
}

// The M tile of block index `m_block` (blockIdx.x): its sample and first output pixel.
struct TileOrigin {
  int n, z0, p0, q0;
};
__device__ __forceinline__ TileOrigin tile_origin(const ConvGeometry& g, const ConvTile& t, int m_block) {
  const int q_tile = m_block % g.tiles_q, rest = m_block / g.tiles_q;
  const int p_tile = rest % g.tiles_p, rest2 = rest / g.tiles_p;
  return {rest2 / g.tiles_z, (rest2 % g.tiles_z) * t.zt, p_tile * t.pt, q_tile * t.qt};
}

// The ring's stages in the block's dynamic shared memory (`raw`, launched with the stages' bytes plus 1024): aligned to
// 1024 bytes, where the swizzle pattern starts, each stage the A tile then the B tile.
struct StageBuffers {
  unsigned char* base;
  int a_bytes, stage_bytes;
  __device__ __forceinline__ StageBuffers(unsigned char* raw, int a_tile_bytes, int b_tile_bytes)
      : base(raw + (1024 - reinterpret_cast<uintptr_t>(raw) % 1024) % 1024),
        a_bytes(a_tile_bytes),
        stage_bytes(a_tile_bytes + b_tile_bytes) {}
  __device__ __forceinline__ StageBuffers(unsigned char* raw, const ConvTile& t)
      : StageBuffers(raw, t.a_bytes(), t.b_bytes()) {}
  __device__ __forceinline__ unsigned char* a(int s) const { return base + s * stage_bytes; }
  __device__ __forceinline__ unsigned char* b(int s) const { return base + s * stage_bytes + a_bytes; }
};

// The full and empty barriers of a ring of Stages stages.
template <int Stages>
struct StageBarriers {
  uint64_t full[Stages], empty[Stages];
};

// Thread 0 of the block initialises the barriers: full expects the producer's one arrival (with the bytes), empty one
// arrival per consumer thread. The caller then synchronises the block.
template <int Stages>
__device__ __forceinline__ void init_stage_barriers(StageBarriers<Stages>& b, unsigned consumers) {
  if (threadIdx.x == 0) {
    for (int s = 0; s < Stages; ++s) {
      mbarrier_init(&b.full[s], 1);
      mbarrier_init(&b.empty[s], consumers);
    }
    fence_mbarrier_init();
  }
}

// The producer (one thread): for every k-step, waits until its stage is free, then issues the A and B copies that
// complete on the stage's full barrier, into the stages of `st`. With `coefs` (conv_fprop_norm_act's transform, na),
// also the k-step's channels of the tile's sample of na.mean, na.scale and na.shift (the channels below C of its BK)
// into coefs + (stage * 3 + {0, 1, 2}) * BK, three bulk copies on the same barrier.
template <int Stages>
__device__ __forceinline__ void produce_fprop_operands(const TensorMap& x_map, const TensorMap& w_map,
                                                       const ConvGeometry& g, const ConvTile& t, const TileOrigin& o,
                                                       int k0, StageBarriers<Stages>& bars, const StageBuffers& st,
                                                       float* coefs = nullptr, const NormAct& na = {}) {
  int tap = 0, chunk = 0, tt = 0, r = 0, s = 0;  // (tap, chunk) of k-step j, stepped without division
  for (int j = 0; j < g.steps(); ++j) {
    const int stage = j % Stages;
    const int left = g.C - chunk * t.bk, channels = left < t.bk ? left : t.bk;  // a multiple of 8: 32-byte copies
    const unsigned bytes = unsigned(t.a_bytes() + t.b_bytes()) + (coefs ? 3u * 4u * unsigned(channels) : 0u);
    mbarrier_wait_parity(&bars.empty[stage], ((j / Stages) & 1) ^ 1);  // the first use passes at once
    mbarrier_arrive_expect_tx(&bars.full[stage], bytes);
    if (coefs) {
      const int64_t from = int64_t(o.n) * g.C + chunk * t.bk;
      const float* const src[3] = {na.mean, na.scale, na.shift};
      for (int q = 0; q < 3; ++q)
        cp_async_bulk_global_to_shared(coefs + (stage * 3 + q) * t.bk, src[q] + from, unsigned(channels) * 4u,
                                       &bars.full[stage]);
    }
    const int32_t xc[5] = {chunk * t.bk, o.q0 * g.sw + s - g.pw, o.p0 * g.sh + r - g.ph, o.z0 * g.sd + tt - g.pd, o.n};
    cp_async_bulk_tensor_global_to_shared<5>(st.a(stage), x_map, xc, &bars.full[stage]);
    const int32_t wc[3] = {chunk * t.bk, tap, k0};
    cp_async_bulk_tensor_global_to_shared<3>(st.b(stage), w_map, wc, &bars.full[stage]);
    if (++chunk == g.c_chunks) {
      chunk = 0;
      ++tap;
      if (++s == g.S) {
        s = 0;
        if (++r == g.R) r = 0, ++tt;
      }
    }
  }
}

// wgrad's stages: A the dy boxes (64 pixels x BN output channels), B the x box (64 pixels x BK channels).
__host__ __device__ inline int wgrad_a_bytes(const ConvTile& t) {
  return t.bm() * t.bn * 2;
}
__host__ __device__ inline int wgrad_b_bytes(const ConvTile& t) {
  return t.bm() * t.bk * 2;
}

// The wgrad producer (one thread): for pixel boxes first .. last - 1 (k-steps 0, 1, ..), waits until the stage is
// free, then issues the dy copies of output channels k0 .. k0 + BN - 1 and the x copy of tap `tap`, channels c0 ..
// c0 + BK - 1, completing on the stage's full barrier.
template <int Stages>
__device__ __forceinline__ void produce_wgrad_operands(const TensorMap& dy_map, const TensorMap& x_map,
                                                       const ConvGeometry& g, const ConvTile& t, int tap, int c0,
                                                       int k0, int first, int last, StageBarriers<Stages>& bars,
                                                       const StageBuffers& st) {
  const int s = tap % g.S, r = tap / g.S % g.R, tt = tap / (g.S * g.R);
  const int half_bytes = t.bm() * 64 * 2;
  for (int j = 0; j < last - first; ++j) {
    const int stage = j % Stages;
    mbarrier_wait_parity(&bars.empty[stage], ((j / Stages) & 1) ^ 1);  // the first use passes at once
    mbarrier_arrive_expect_tx(&bars.full[stage], unsigned(st.stage_bytes));
    const TileOrigin o = tile_origin(g, t, first + j);
    for (int h = 0; h < t.bn / 64; ++h) {
      const int32_t yc[5] = {k0 + 64 * h, o.q0, o.p0, o.z0, o.n};
      cp_async_bulk_tensor_global_to_shared<5>(st.a(stage) + h * half_bytes, dy_map, yc, &bars.full[stage]);
    }
    const int32_t xc[5] = {c0, o.q0 * g.sw + s - g.pw, o.p0 * g.sh + r - g.ph, o.z0 * g.sd + tt - g.pd, o.n};
    cp_async_bulk_tensor_global_to_shared<5>(st.b(stage), x_map, xc, &bars.full[stage]);
  }
}

// y = conv(x', w) + bias on the sm_90a path (kernels/cuda/conv_sm90.cu): tile t with 128 output pixels and BN 64 or
// 128; x' = x, or x with norm_act's transform applied as each stage lands. stats: null, or as conv_fprop's
// (kernels/cuda/conv.cuh), the per-(sample, channel) sum and sum of squares of the stored y. Throws
// std::invalid_argument naming what conv_sm90_problem refuses. Under nvcc it needs an sm_90a device.
void conv_fprop_sm90(const ConvProblem& p, DType dt, const void* x, const void* w, const float* bias, void* y,
                     float* stats, const ConvTile& t, cudaStream_t stream, const NormAct& norm_act = {});

// dgrad by parity classes. Along an axis of stride s, kernel T and padding pd, dx[d] = sum over taps t with
// d + pd - t = s z of dy[z] w[t]: position d = d0 + s i (parity d0 in 0 .. s - 1) is reached only by the taps
// t = t0 + s j, t0 = (d0 + pd) mod s, j = 0 .. Tp - 1, from dy[z0 + i - j], z0 = (d0 + pd - t0) / s. Reversing j
// (j' = Tp - 1 - j), that is a stride-1 correlation of dy with the sub-kernel of those taps reversed, padding
// Tp - 1 - z0 (negative, or short of the far end: the tensor copy's out-of-bounds zeros serve as well), producing the
// class's ceil((D - d0) / s) positions. So each of the sd x sh x sw classes is a stride-1 fprop of the sm_90a kernel
// (dy in, dx's positions of the class out, written in place through PixelStrides), and a stride-1 dgrad is the one
// class d0 = t0 = 0, Tp = T, padding T - 1 - pd. Every dx element is one class's sum, in that fprop's fixed order.
struct DgradPhase {
  int d0, h0, w0;  // the class: dx positions (d0 + sd i, h0 + sh j, w0 + sw l)
  int t0, r0, s0;  // its first tap along each axis (then every stride-th)
  ConvProblem q;   // the stride-1 fprop: N, D, H, W = dy's N, Z, P, Q; C = K; K = C; T, R, S = the class's taps along
                   // each axis (a 0: no tap reaches it, its positions are zeros); Z, P, Q = its positions per axis
};
std::vector<DgradPhase> dgrad_phases(const ConvProblem& p);  // the sd x sh x sw classes, d0 slowest

// dx of a convolution with strides 1 or 2 on the sm_90a kernel, one fprop per parity class of dgrad_phases (a class no
// tap reaches gets zeros). conv_dgrad_sm90_problem says why a problem cannot take it (""). dy 16-byte aligned.
std::string conv_dgrad_sm90_problem(const ConvProblem& p, DType dt);
void conv_dgrad_sm90(const ConvProblem& p, DType dt, const void* dy, const void* w, void* dx, cudaStream_t stream);
// One class's part of conv_dgrad_sm90: the sub-kernel (w's taps of the class, reversed, channels swapped) into scratch
// memory, then the fprop of dy with it, storing to the class's positions of dx; or zeros there when no tap reaches it.
void conv_dgrad_sm90_phase(const ConvProblem& p, DType dt, const void* dy, const void* w, void* dx,
                           const DgradPhase& phase, cudaStream_t stream);

// dw [K][T][R][S][C] f32 = the sum over output pixels of dy x im2col(x), overwritten, with choose_wgrad_tile(p). The
// pixel boxes are split over `splits` ranges (0: chosen per problem), each block's f32 partial summed in split order
// afterwards (kernels/cuda/conv_reduce.cuh): the bits depend on the problem and the split count only.
// conv_wgrad_sm90_problem says why a problem cannot take it (""); x and dy must be 16-byte aligned.
std::string conv_wgrad_sm90_problem(const ConvProblem& p, DType dt);
void conv_wgrad_sm90(const ConvProblem& p, DType dt, const void* x, const void* dy, float* dw, int splits,
                     cudaStream_t stream);

}  // namespace unet::kernels::cuda::sm90
