// CUDA fused optimizer kernels, the CUDA twin of kernels/cpu/optim.cpp (see kernels/cpu/optim.h and kernels/cuda/optim.cuh).
// All parameters of one step are cut into chunks of at most kChunk elements; one block handles one chunk (grid-stride
// over chunks), so hundreds of small parameters cost two launches in all. Per-parameter constants (bias corrections,
// step size) are derived on the host in double exactly as the CPU does and rounded to f32 once.
// The element update follows torch.optim's single-tensor path operation by operation; on a GPU the products and sums
// are the round-to-nearest intrinsics (__fmul_rn, __fadd_rn), which nvcc never contracts into an FMA, so each
// operation rounds once as torch's separate kernels do.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/optim.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>
#include <algorithm>

namespace unet::kernels::cuda {
namespace {

constexpr int64_t kChunk = 4096;
constexpr int kThreads = 256;
constexpr unsigned kMaxGrid = 1u << 16;

struct Chunk {
  const float* grad;  // the chunk's parameter gradient (for the finite check)
  int64_t lo, hi;     // element range of that parameter
  int64_t slice;      // index into the parameter table
};

struct AdamParam {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  AdamConsts c;  // shared with the CPU kernel (kernels/optim.h)
};

struct SgdParam {
  float* param;
  const float* grad;
  float* momentum_buffer;
  float momentum, wd, neg_lr, inv_scale;
  int nesterov, first, has_momentum;
};

// Workspace layout: [flag (16 bytes)] [Chunk x chunks] [param table]. The flag's 0 travels with the table copy.
constexpr size_t kFlagBytes = 16;
size_t align16(size_t b) {
  return (b + 15) / 16 * 16;
}

// ---- kernels ----

__device__ __forceinline__ float mul(float a, float b) {
  return __fmul_rn(a, b);
}
__device__ __forceinline__ float add(float a, float b) {
  return __fadd_rn(a, b);
}

// Sets *flag = 1 when some gradient * inv_scale is inf or nan (every writer stores the same value).
__global__ void __launch_bounds__(kThreads)
    check_finite(const Chunk* chunks, int64_t chunk_count, float inv_scale, int* flag) {
  for (int64_t k = blockIdx.x; k < chunk_count; k += gridDim.x) {
    const Chunk ch = chunks[k];
    bool bad = false;
    for (int64_t i = ch.lo + threadIdx.x; i < ch.hi; i += blockDim.x)
      bad |= (__float_as_uint(mul(ch.grad[i], inv_scale)) & 0x7f800000u) == 0x7f800000u;
    if (bad) *flag = 1;
  }
}

__device__ __forceinline__ void adam_element(const AdamParam& k, int64_t i) {
  float g = mul(k.grad[i], k.c.inv_scale);
  float p = k.param[i];
  if (k.c.decoupled)
    p = mul(p, k.c.decay);  // param.mul_(1 - lr * weight_decay)
  else
    g = add(g, mul(p, k.c.wd));                                                // grad.add(param, alpha=weight_decay)
  const float m = add(mul(k.exp_avg[i], k.c.beta1), mul(g, k.c.one_minus_beta1));  // exp_avg.mul_(b1).add_(g, 1-b1)
  const float v = add(mul(k.exp_avg_sq[i], k.c.beta2), mul(mul(g, k.c.one_minus_beta2), g));  // addcmul_(g, g, 1-b2)
  const float den = add(__fsqrt_rn(v) / k.c.bc2_sqrt, k.c.eps);  // (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
  k.param[i] = add(p, mul(m, k.c.neg_step_size) / den);       // param.addcdiv_(exp_avg, denom, -step_size)
  k.exp_avg[i] = m;
  k.exp_avg_sq[i] = v;
}

__device__ __forceinline__ void sgd_element(const SgdParam& k, int64_t i) {
  const float p = k.param[i];
  float d = add(mul(k.grad[i], k.inv_scale), mul(p, k.wd));  // d_p.add(param, alpha=weight_decay)
  if (k.has_momentum) {
    const float b = k.first ? d : add(mul(k.momentum_buffer[i], k.momentum), d);  // clone | mul_(m).add_(d_p)
    k.momentum_buffer[i] = b;
    d = k.nesterov ? add(d, mul(b, k.momentum)) : b;
  }
  k.param[i] = add(p, mul(d, k.neg_lr));  // param.add_(d_p, alpha=-lr)
}

template <class Param>
__global__ void __launch_bounds__(kThreads)
    step_kernel(const Chunk* chunks, int64_t chunk_count, const Param* params, const int* flag, int* nonfinite) {
  const int skip = *flag;
  if (blockIdx.x == 0 && threadIdx.x == 0) *nonfinite = skip;
  if (skip != 0) return;  // a non-finite gradient somewhere: the whole step is skipped
  for (int64_t c = blockIdx.x; c < chunk_count; c += gridDim.x) {
    const Chunk ch = chunks[c];
    const Param k = params[ch.slice];
    for (int64_t i = ch.lo + threadIdx.x; i < ch.hi; i += blockDim.x) {
      if constexpr (std::is_same_v<Param, AdamParam>)
        adam_element(k, i);
      else
        sgd_element(k, i);
    }
  }
}

// ---- host side ----

void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
#if UNET_EMULATED
  (void)stream;
  emu::device_memcpy(dst, src, bytes);
#else
  const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream);
  if (e != cudaSuccess) throw std::runtime_error(std::string("optimizer table copy failed: ") + cudaGetErrorString(e));
#endif
}

int64_t chunk_count_of(const int64_t* sizes, size_t count) {
  int64_t n = 0;
  for (size_t s = 0; s < count; ++s) n += (sizes[s] + kChunk - 1) / kChunk;
  return n;
}

// Builds [flag = 0][chunks][params] on the host, copies it into the workspace and runs check + step.
template <class Param, class Slice>
void run_step(const Slice* slices, size_t count, const std::vector<Param>& params, float inv_scale, void* workspace,
              int* nonfinite, cudaStream_t stream) {
  std::vector<Chunk> chunks;
  for (size_t s = 0; s < count; ++s)
    for (int64_t lo = 0; lo < slices[s].n; lo += kChunk)
      chunks.push_back({slices[s].grad, lo, std::min(slices[s].n, lo + kChunk), static_cast<int64_t>(s)});
  const size_t chunk_bytes = align16(chunks.size() * sizeof(Chunk));
  std::vector<unsigned char> host(kFlagBytes + chunk_bytes + params.size() * sizeof(Param), 0);
  if (!chunks.empty()) std::memcpy(host.data() + kFlagBytes, chunks.data(), chunks.size() * sizeof(Chunk));
  if (!params.empty()) std::memcpy(host.data() + kFlagBytes + chunk_bytes, params.data(), params.size() * sizeof(Param));
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  copy_to_device(ws, host.data(), host.size(), stream);
  int* flag = reinterpret_cast<int*>(ws);
  const Chunk* dchunks = reinterpret_cast<const Chunk*>(ws + kFlagBytes);
  const Param* dparams = reinterpret_cast<const Param*>(ws + kFlagBytes + chunk_bytes);
  const int64_t n = static_cast<int64_t>(chunks.size());
  const dim3 grid(static_cast<unsigned>(n < 1 ? 1 : (n > kMaxGrid ? kMaxGrid : n)));
  launch(check_finite, grid, dim3(kThreads), 0, stream, dchunks, n, inv_scale, flag);
  launch(step_kernel<Param>, grid, dim3(kThreads), 0, stream, dchunks, n, dparams, static_cast<const int*>(flag),
         nonfinite);
}

}  // namespace

// ---- launchers ----

size_t optim_workspace_bytes(const int64_t* sizes, size_t count) {
  const size_t chunks = static_cast<size_t>(chunk_count_of(sizes, count));
  const size_t param = sizeof(AdamParam) > sizeof(SgdParam) ? sizeof(AdamParam) : sizeof(SgdParam);
  return kFlagBytes + align16(chunks * sizeof(Chunk)) + count * param;
}

void adam_step(const AdamSlice* slices, size_t count, const AdamArgs& a, void* workspace, int* nonfinite,
               cudaStream_t stream) {
  std::vector<AdamParam> params(count);
  for (size_t s = 0; s < count; ++s) {  // as kernels/cpu/optim.cpp derives them
    AdamParam& k = params[s];
    k.param = slices[s].param;
    k.grad = slices[s].grad;
    k.exp_avg = slices[s].exp_avg;
    k.exp_avg_sq = slices[s].exp_avg_sq;
    k.c = adam_consts(a, slices[s].step);
  }
  run_step(slices, count, params, a.inv_scale, workspace, nonfinite, stream);
}

void sgd_step(const SgdSlice* slices, size_t count, const SgdArgs& a, void* workspace, int* nonfinite,
              cudaStream_t stream) {
  std::vector<SgdParam> params(count);
  for (size_t s = 0; s < count; ++s) {
    if (a.momentum != 0.0 && slices[s].momentum_buffer == nullptr)
      throw std::invalid_argument("cuda sgd_step: momentum needs a momentum buffer");
    params[s] = SgdParam{slices[s].param,
                         slices[s].grad,
                         slices[s].momentum_buffer,
                         static_cast<float>(a.momentum),
                         static_cast<float>(a.weight_decay),
                         static_cast<float>(-a.lr),
                         a.inv_scale,
                         a.nesterov ? 1 : 0,
                         slices[s].first ? 1 : 0,
                         a.momentum != 0.0 ? 1 : 0};
  }
  run_step(slices, count, params, a.inv_scale, workspace, nonfinite, stream);
}

const OptimKernels optim_kernels{optim_workspace_bytes, adam_step, sgd_step};

}  // namespace unet::kernels::cuda
