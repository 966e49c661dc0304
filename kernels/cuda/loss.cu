// CUDA fused softmax + Dice + cross-entropy kernels, the CUDA twin of kernels/cpu/loss.cpp (maths in kernels/cpu/loss.h).
// One thread owns one voxel at a time (channels-last: its C logits are contiguous); the channel count is a template
// parameter for 2..8 classes, so the per-voxel loops unroll and the softmax stays in registers. Other counts (1, 9..16)
// use a loop over kMaxLossChannels slots guarded by `c < n`, which also unrolls, at the price of more registers.
// Forward reduction, deterministic: per-thread double sums, a fixed shuffle tree per warp, the warps added in order
// into one row per block, and a final single-block kernel adding the rows in block order. No float atomics.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/loss.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace unet::kernels::cuda {
namespace {


constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBlocks = 1024;
constexpr int kFinalThreads = 64;  // > 3 * kMaxLossChannels + 1 row entries, plus one thread for the bad label
static_assert(3 * kMaxLossChannels + 1 < kFinalThreads);

// Blocks of kThreads that __launch_bounds__ asks ptxas to fit on one SM, i.e. a register cap of 65536 / (kThreads *
// blocks) per thread, for the channel counts where the uncapped allocation lands just above an occupancy step. Each
// cap was checked to cost no spills on sm_80 and sm_90 (kernel_report, which fails on any spill). 0 = no cap: nvcc then
// emits no .minnctapersm, the same code as the one-argument form (an explicit 1 lets ptxas spend more registers).
// dce_partials, generic: I, P (double) and Y (count) for 16 slots need ~126 registers: the cap of 128 keeps 2 blocks.
constexpr int partials_min_blocks(int cc) {
  return cc == 0 ? 2 : 0;
}
// dce_backward, generic: 64 registers (4 blocks, 50%) instead of 80 for int labels; 8 classes: 40 instead of 48 (in
// nnU-Net's form; DLE's squared form would spill under that cap, so it has none).
constexpr int backward_min_blocks(int cc, bool squared) {
  return cc == 0 ? 4 : (cc == 8 && !squared ? 6 : 0);
}

// ---- kernels ----

__device__ __forceinline__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;  // lane 0: a fixed tree, whatever order the lanes run in
}
__device__ __forceinline__ long long warp_min(long long v) {
  for (int off = 16; off > 0; off >>= 1) {
    long long o = __shfl_down_sync(0xffffffffu, v, off);
    v = o < v ? o : v;
  }
  return v;
}

// e[c] = exp(z[c] - max) for c < n, and the sum of e (max-subtracted softmax numerators); *max_out = max.
// Forward and backward both call this, so the probabilities they see are the same bits.
template <int M>
__device__ __forceinline__ float softmax_numerators(const float* z, int n, float (&e)[M], float* max_out) {
  float m = z[0];
  UNET_UNROLL
  for (int c = 1; c < M; ++c)
    if (c < n) m = fmaxf(m, z[c]);
  float s = 0.f;
  UNET_UNROLL
  for (int c = 0; c < M; ++c)
    if (c < n) {
      e[c] = expf(z[c] - m);
      s += e[c];
    }
  *max_out = m;
  return s;
}

// Each block writes partial[blockIdx.x * (3n + 1) + q] (intersect[n], prob[n], count[n], ce) and bad_at[blockIdx.x]
// (first invalid voxel of the block's voxels, or `voxels` when none). Dynamic shared memory: kWarps * (3n + 1) doubles.
template <int CC, class L>
__global__ void __launch_bounds__(kThreads, partials_min_blocks(CC))
    dce_partials(const float* logits, const L* labels, int64_t voxels, int C, bool squared, double* partial,
                 long long* bad_at) {
  const int n = CC > 0 ? CC : C;
  constexpr int M = CC > 0 ? CC : kMaxLossChannels;
  // Y counts voxels, so it is a 32-bit integer (one register a class instead of two; a thread visits at most
  // max(4, voxels / 2^18) voxels, far below 2^32): converted to double before the warp sum it is exactly the value a
  // double accumulation of 1.0s gave, so the sums keep their bits.
  double I[M], P[M];
  unsigned Y[M];
  UNET_UNROLL
  for (int c = 0; c < M; ++c) {
    I[c] = P[c] = 0.0;
    Y[c] = 0u;
  }
  double ce = 0.0;
  long long bad = voxels;  // a thread's voxels come in increasing order: its first bad one is its smallest
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < voxels; v += int64_t(gridDim.x) * blockDim.x) {
    const int64_t y = static_cast<int64_t>(labels[v]);
    if (y < 0 || y >= n) {
      if (bad == voxels) bad = v;
      continue;
    }
    const float* z = logits + v * n;
    float e[M] = {};
    float m;
    const float s = softmax_numerators(z, n, e, &m);
    const float inv = 1.f / s;
    UNET_UNROLL
    for (int c = 0; c < M; ++c)
      if (c < n) {
        const double p = static_cast<double>(e[c] * inv);
        P[c] += squared ? p * p : p;
        if (c == y) {  // selects in registers, no dynamically indexed local array
          I[c] += p;
          ++Y[c];
        }
      }
    // -log p_y = log(s) + (max - z_y), as on the CPU
    ce += static_cast<double>(logf(s)) + static_cast<double>(m - z[y]);
  }

  const int q_count = 3 * n + 1;
  DYN_SMEM(double, red);  // [kWarps][q_count]
  __shared__ long long bad_red[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  UNET_UNROLL
  for (int c = 0; c < M; ++c)
    if (c < n) {
      const double i = warp_sum(I[c]), p = warp_sum(P[c]), y = warp_sum(static_cast<double>(Y[c]));
      if (lane == 0) {
        red[warp * q_count + c] = i;
        red[warp * q_count + n + c] = p;
        red[warp * q_count + 2 * n + c] = y;
      }
    }
  ce = warp_sum(ce);
  bad = warp_min(bad);
  if (lane == 0) {
    red[warp * q_count + 3 * n] = ce;
    bad_red[warp] = bad;
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < q_count) {
    double acc = 0.0;
    for (int w = 0; w < kWarps; ++w) acc += red[w * q_count + threadIdx.x];
    partial[blockIdx.x * int64_t(q_count) + threadIdx.x] = acc;
  }
  if (threadIdx.x == 0) {
    long long b = bad_red[0];
    for (int w = 1; w < kWarps; ++w) b = bad_red[w] < b ? bad_red[w] : b;
    bad_at[blockIdx.x] = b;
  }
}

// One block: thread q < 3n + 1 adds column q of the block rows in block order; thread 3n + 1 finds the first bad voxel.
template <class L>
__global__ void __launch_bounds__(kFinalThreads)
    dce_final(const double* partial, const long long* bad_at, int blocks, int n, const L* labels, int64_t voxels,
              double* sums, int64_t* bad) {
  const int q_count = 3 * n + 1, q = threadIdx.x;
  if (q < q_count) {
    double acc = 0.0;
    for (int b = 0; b < blocks; ++b) acc += partial[b * int64_t(q_count) + q];
    sums[q] = acc;
  } else if (q == q_count) {
    long long first = voxels;
    for (int b = 0; b < blocks; ++b) first = bad_at[b] < first ? bad_at[b] : first;
    if (first < voxels) {
      bad[0] = first;
      bad[1] = static_cast<int64_t>(labels[first]);
    } else {
      bad[0] = -1;
    }
  }
}

// The loss, its parts and the gradient's coefficients from the sums of `groups` groups, on the device (kernels::cpu::
// softmax_dice_ce_finish, the same double arithmetic): one thread, a few dozen operations a group.
__global__ void __launch_bounds__(1)
    dce_finish(const double* sums, const int64_t* bad, int groups, int64_t dice_groups, int C, int64_t voxels,
               DiceForm form, float* loss, float* parts, float* coef_a, float* coef_b) {
  const int c0 = form.background ? 0 : 1;
  const double F = static_cast<double>(C - c0) * static_cast<double>(dice_groups);
  const double da = form.squared ? 2.0 : 1.0;
  double dice = 0.0, ce_sum = 0.0;
  bool invalid = false;
  for (int g = 0; g < groups; ++g) {
    const double* s = sums + int64_t(g) * (3 * C + 1);
    float* a = coef_a + int64_t(g) * C;
    float* b = coef_b + int64_t(g) * C;
    a[0] = b[0] = 0.f;
    for (int c = c0; c < C; ++c) {
      const double num = 2.0 * s[c] + form.smooth, den = s[C + c] + s[2 * C + c] + form.smooth;
      dice += 1.0 - num / den;
      a[c] = static_cast<float>(da * num / (F * den * den));
      b[c] = static_cast<float>(2.0 / (F * den));
    }
    ce_sum += s[3 * C];
    invalid = invalid || bad[2 * g] >= 0;
  }
  dice /= F;
  const double ce = ce_sum / static_cast<double>(voxels);
  const float nan = __int_as_float(0x7fc00000);
  parts[0] = invalid ? nan : static_cast<float>(dice);
  parts[1] = invalid ? nan : static_cast<float>(ce);
  loss[0] = invalid ? nan : static_cast<float>(dice + ce);
}

// grad[v,k] = p_k (a_k - sum_c p_c g_c) + ce_scale p_k, then grad[v,y] -= p_y b_y + ce_scale: kernels::cpu's
// operation order, so the emulated result matches the CPU's to the rounding of expf. The incoming gradient go is read
// from device memory and folded into the coefficients in f32, as on the CPU.
// SQ: DLE's squared Dice (g_c = a_c p_c - b_c [c == y]), a template parameter so that nnU-Net's form keeps its code.
template <int CC, bool SQ, class L>
__global__ void __launch_bounds__(kThreads, backward_min_blocks(CC, SQ))
    dce_backward(const float* logits, const L* labels, int64_t voxels, int64_t ce_voxels, int C, const float* coef_a,
                 const float* coef_b, const float* grad_out, float* grad) {
  const int n = CC > 0 ? CC : C;
  constexpr int M = CC > 0 ? CC : kMaxLossChannels;
  __shared__ float a[M], b[M];
  const float go = *grad_out;
  const float ce_scale = static_cast<float>(static_cast<double>(go) / static_cast<double>(ce_voxels));
  if (static_cast<int>(threadIdx.x) < n) {
    a[threadIdx.x] = go * coef_a[threadIdx.x];
    b[threadIdx.x] = go * coef_b[threadIdx.x];
  }
  __syncthreads();
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < voxels; v += int64_t(gridDim.x) * blockDim.x) {
    const float* z = logits + v * n;
    float* g = grad + v * n;
    const int y = static_cast<int>(labels[v]);
    float e[M] = {};
    float m;
    const float s = softmax_numerators(z, n, e, &m);
    const float inv = 1.f / s;
    float pg = 0.f, ey = 0.f;
    UNET_UNROLL
    for (int c = 0; c < M; ++c)
      if (c < n) {
        e[c] *= inv;
        pg += e[c] * (SQ ? a[c] * e[c] : a[c]);
        if (c == y) ey = e[c];
      }
    pg -= ey * b[y];
    UNET_UNROLL
    for (int c = 0; c < M; ++c)
      if (c < n) {
        float gc = e[c] * ((SQ ? a[c] * e[c] : a[c]) - pg) + ce_scale * e[c];
        if (c == y) gc -= ey * b[y] + ce_scale;
        g[c] = gc;
      }
  }
}

int partial_blocks(int64_t voxels) {
  const int64_t per_block = int64_t(kThreads) * 4;  // at least 4 voxels a thread before the block reduction
  const int64_t b = (voxels + per_block - 1) / per_block;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

// Calls f(std::integral_constant<int, CC>) with CC = C for 2 <= C <= 8, CC = 0 (the generic kernel) otherwise.
template <int CC = 2, class F>
void with_channel_count(int C, F&& f) {
  if constexpr (CC > 8) {
    f(std::integral_constant<int, 0>{});
  } else {
    if (C == CC) return f(std::integral_constant<int, CC>{});
    with_channel_count<CC + 1>(C, std::forward<F>(f));
  }
}

void check_args(DType label_dtype, int channels, const char* what) {
  if (label_dtype != DType::i32 && label_dtype != DType::u8)
    throw std::invalid_argument(std::string(what) + ": labels must be i32 or u8, got " + dtype_name(label_dtype));
  if (channels < 1 || channels > kMaxLossChannels)
    throw std::invalid_argument(std::string(what) + ": channels must be 1.." + std::to_string(kMaxLossChannels) +
                                ", got " + std::to_string(channels));
}

template <class L>
void forward_typed(const float* logits, const L* labels, int64_t voxels, int C, bool squared, void* workspace,
                   double* sums, int64_t* bad, cudaStream_t stream) {
  const int blocks = partial_blocks(voxels);
  double* partial = static_cast<double*>(workspace);
  long long* bad_at = reinterpret_cast<long long*>(partial + int64_t(blocks) * (3 * C + 1));
  const size_t smem = sizeof(double) * kWarps * (3 * C + 1);
  with_channel_count(C, [&](auto cc) {
    launch(dce_partials<decltype(cc)::value, L>, dim3(blocks), dim3(kThreads), smem, stream, logits, labels, voxels, C,
           squared, partial, bad_at);
  });
  launch(dce_final<L>, dim3(1), dim3(kFinalThreads), 0, stream, partial, bad_at, blocks, C, labels, voxels, sums, bad);
}

template <class L>
void backward_typed(const float* logits, const L* labels, int64_t voxels, int64_t ce_voxels, int C, bool squared,
                    const float* a, const float* b, const float* grad_out, float* grad, cudaStream_t stream) {
  int64_t blocks = (voxels + kThreads - 1) / kThreads;
  blocks = blocks < 1 ? 1 : (blocks > 4096 ? 4096 : blocks);
  with_channel_count(C, [&](auto cc) {
    if (squared)
      launch(dce_backward<decltype(cc)::value, true, L>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0, stream,
             logits, labels, voxels, ce_voxels, C, a, b, grad_out, grad);
    else
      launch(dce_backward<decltype(cc)::value, false, L>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0,
             stream, logits, labels, voxels, ce_voxels, C, a, b, grad_out, grad);
  });
}

}  // namespace

// ---- launchers ----

size_t softmax_dice_ce_workspace_bytes(int64_t voxels, int channels) {
  const size_t blocks = static_cast<size_t>(partial_blocks(voxels));
  return blocks * (3 * static_cast<size_t>(channels) + 1) * sizeof(double) + blocks * sizeof(long long);
}

void softmax_dice_ce_forward(const float* logits, const void* labels, DType label_dtype, int64_t voxels, int channels,
                             bool squared, void* workspace, double* sums, int64_t* bad, cudaStream_t stream) {
  check_args(label_dtype, channels, "cuda softmax_dice_ce_forward");
  if (label_dtype == DType::i32)
    forward_typed(logits, static_cast<const int32_t*>(labels), voxels, channels, squared, workspace, sums, bad, stream);
  else
    forward_typed(logits, static_cast<const uint8_t*>(labels), voxels, channels, squared, workspace, sums, bad, stream);
}

void softmax_dice_ce_finish(const double* sums, const int64_t* bad, int groups, int64_t dice_groups, int channels,
                            int64_t voxels, DiceForm form, float* loss, float* parts, float* coef_a, float* coef_b,
                            cudaStream_t stream) {
  check_args(DType::i32, channels, "cuda softmax_dice_ce_finish");
  launch(dce_finish, dim3(1), dim3(1), 0, stream, sums, bad, groups, dice_groups, channels, voxels, form, loss, parts,
         coef_a, coef_b);
}

void softmax_dice_ce_backward(const float* logits, const void* labels, DType label_dtype, int64_t voxels,
                              int64_t ce_voxels, int channels, bool squared, const float* a, const float* b,
                              const float* grad_out, float* grad_logits, cudaStream_t stream) {
  check_args(label_dtype, channels, "cuda softmax_dice_ce_backward");
  if (label_dtype == DType::i32)
    backward_typed(logits, static_cast<const int32_t*>(labels), voxels, ce_voxels, channels, squared, a, b, grad_out,
                   grad_logits, stream);
  else
    backward_typed(logits, static_cast<const uint8_t*>(labels), voxels, ce_voxels, channels, squared, a, b, grad_out,
                   grad_logits, stream);
}

const LossKernels loss_kernels{kMaxLossChannels, softmax_dice_ce_workspace_bytes, softmax_dice_ce_forward,
                               softmax_dice_ce_finish, softmax_dice_ce_backward};

}  // namespace unet::kernels::cuda
