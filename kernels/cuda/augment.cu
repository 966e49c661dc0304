// CUDA batched augmentation, the twin of kernels/cpu/augment.cpp: one thread per output value in grid-stride loops,
// and for the statistics one block of kStatParts threads per (sample, channel) whose thread t sums part t and whose
// thread 0 adds the parts in order, the CPU's order. Under the emulator this file is built with -ffp-contract=off;
// under nvcc kernels/augment.h's arithmetic uses the round-to-nearest intrinsics, so neither fuses a multiply-add.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/augment.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

namespace unet::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// Within one sample: the product of the dims before `axis` (outer) and after it, channels included (inner).
inline void split(const AugmentShape& s, int axis, int64_t* outer, int64_t* inner) {
  const int64_t d[3] = {s.z, s.y, s.x};
  *outer = 1;
  *inner = s.c;
  for (int a = 0; a < axis; ++a) *outer *= d[a];
  for (int a = axis + 1; a < 3; ++a) *inner *= d[a];
}

// Element e of [batch, outer, n, inner] as its (j, i, o, b): three divisions (fewer registers than five).
__device__ __forceinline__ void unflatten(int64_t e, int64_t inner, int64_t n, int64_t outer, int64_t* j, int64_t* i,
                                          int64_t* o, int64_t* b) {
  const int64_t r = e / inner, q = r / n;
  *j = e - r * inner;
  *i = r - q * n;
  *b = q / outer;
  *o = q - *b * outer;
}

__global__ void __launch_bounds__(kThreads)
    resample_axis_k(AugmentShape s, int64_t outer, int64_t inner, int64_t n, int taps, const int32_t* index,
                    const double* weight, const uint8_t* active, const float* x, float* y) {
  const int64_t total = s.n * outer * n * inner;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    int64_t j, i, o, b;
    unflatten(e, inner, n, outer, &j, &i, &o, &b);
    if (!active[b]) {
      y[e] = x[e];
      continue;
    }
    const float* base = x + (b * outer + o) * n * inner + j;
    const int32_t* idx = index + (b * n + i) * taps;
    const double* w = weight + (b * n + i) * taps;
    double acc = 0;
    for (int k = 0; k < taps; ++k) acc = augment_madd(acc, w[k], base[idx[k] * inner]);
    y[e] = static_cast<float>(acc);
  }
}

__global__ void __launch_bounds__(kThreads)
    gather_label_axis_k(int64_t batch, int64_t outer, int64_t inner, int64_t n, const int32_t* index,
                        const uint8_t* active, const int32_t* x, int32_t* y) {
  const int64_t total = batch * outer * n * inner;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    int64_t j, i, o, b;
    unflatten(e, inner, n, outer, &j, &i, &o, &b);
    y[e] = active[b] ? x[((b * outer + o) * n + index[b * n + i]) * inner + j] : x[e];
  }
}

// The point-wise transforms, one kernel each; `op` selects the formula of kernels/augment.h.
enum class PointOp { noise, brightness, contrast, gamma, restore };

__global__ void __launch_bounds__(kThreads)
    point_k(PointOp op, int64_t batch, int64_t per, int64_t C, const AugmentSampleParams* p, const double* stats,
            const double* after, float* x) {
  const int64_t total = batch * per;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / per, i = e % per;
    const AugmentSampleParams q = p[b];
    const float v = x[e];
    switch (op) {
      case PointOp::noise:
        if (q.noise_std > 0) x[e] = augment_noise(v, q, static_cast<uint64_t>(i));
        break;
      case PointOp::brightness:
        if (q.brightness != 1) x[e] = augment_brightness(v, q);
        break;
      case PointOp::contrast:
        if (q.contrast != 1) {
          double lo = stats[b * C * 4 + kStatMin], hi = stats[b * C * 4 + kStatMax];
          for (int64_t c = 1; c < C; ++c) {
            lo = fmin(lo, stats[(b * C + c) * 4 + kStatMin]);
            hi = fmax(hi, stats[(b * C + c) * 4 + kStatMax]);
          }
          x[e] = augment_contrast(v, q, static_cast<float>(lo), static_cast<float>(hi));
        }
        break;
      case PointOp::gamma:
        if (q.gamma != 1) x[e] = augment_gamma(v, q, stats + (b * C + i % C) * 4);
        break;
      case PointOp::restore:
        if (q.gamma != 1) x[e] = augment_restore(v, stats + (b * C + i % C) * 4, after + (b * C + i % C) * 4);
        break;
    }
  }
}

__global__ void __launch_bounds__(kStatParts)
    channel_stats_k(int64_t V, int64_t C, const uint8_t* active, const float* x, double* stats) {
  const int64_t b = blockIdx.x / C, c = blockIdx.x % C;
  if (!active[b]) return;  // the whole block
  __shared__ double part_min[kStatParts], part_max[kStatParts], part[kStatParts];
  __shared__ double mean_s;
  const int t = threadIdx.x;
  const float* v = x + b * V * C + c;
  double mn = INFINITY, mx = -INFINITY, sum = 0;
  for (int64_t i = t; i < V; i += kStatParts) {
    const double e = v[i * C];
    mn = fmin(mn, e);
    mx = fmax(mx, e);
    sum += e;
  }
  part_min[t] = mn;
  part_max[t] = mx;
  part[t] = sum;
  __syncthreads();
  if (t == 0) {
    double m0 = INFINITY, m1 = -INFINITY, s = 0;
    for (int k = 0; k < kStatParts; ++k) {
      m0 = fmin(m0, part_min[k]);
      m1 = fmax(m1, part_max[k]);
      s += part[k];
    }
    mean_s = s / static_cast<double>(V);
    double* out = stats + blockIdx.x * 4;
    out[kStatMin] = m0;
    out[kStatMax] = m1;
    out[kStatMean] = mean_s;
  }
  __syncthreads();
  const double mean = mean_s;
  double sum2 = 0;
  for (int64_t i = t; i < V; i += kStatParts) {
    const double d = v[i * C] - mean;
    sum2 = augment_madd(sum2, d, d);
  }
  __syncthreads();  // every thread has read part[] above before it is overwritten
  part[t] = sum2;
  __syncthreads();
  if (t == 0) {
    double s2 = 0;
    for (int k = 0; k < kStatParts; ++k) s2 += part[k];
    stats[blockIdx.x * 4 + kStatStd] = sqrt(s2 / static_cast<double>(V));
  }
}

void point(PointOp op, const AugmentShape& s, const AugmentSampleParams* p, const double* stats, const double* after,
           float* x, cudaStream_t stream) {
  const int64_t total = s.n * s.values();
  if (total == 0) return;
  launch(point_k, grid_stride_blocks(total, kThreads), dim3(kThreads), 0, stream, op, s.n, s.values(), s.c, p, stats,
         after, x);
}

}  // namespace

void augment_resample_axis(const AugmentShape& s, int axis, int taps, const int32_t* index, const double* weight,
                           const uint8_t* active, const float* x, float* y, cudaStream_t stream) {
  int64_t outer, inner;
  split(s, axis, &outer, &inner);
  const int64_t n = s.dim(axis), total = s.n * outer * n * inner;
  if (total == 0) return;
  launch(resample_axis_k, grid_stride_blocks(total, kThreads), dim3(kThreads), 0, stream, s, outer, inner, n, taps,
         index, weight, active, x, y);
}

void augment_gather_label_axis(const AugmentShape& s, int axis, const int32_t* index, const uint8_t* active,
                               const int32_t* x, int32_t* y, cudaStream_t stream) {
  int64_t outer, inner;
  split(s, axis, &outer, &inner);
  inner /= s.c;
  const int64_t n = s.dim(axis), total = s.n * outer * n * inner;
  if (total == 0) return;
  launch(gather_label_axis_k, grid_stride_blocks(total, kThreads), dim3(kThreads), 0, stream, s.n, outer, inner, n,
         index, active, x, y);
}

void augment_add_noise(const AugmentShape& s, const AugmentSampleParams* p, float* x, cudaStream_t stream) {
  point(PointOp::noise, s, p, nullptr, nullptr, x, stream);
}

void augment_brightness(const AugmentShape& s, const AugmentSampleParams* p, float* x, cudaStream_t stream) {
  point(PointOp::brightness, s, p, nullptr, nullptr, x, stream);
}

void augment_channel_stats(const AugmentShape& s, const uint8_t* active, const float* x, double* stats,
                           cudaStream_t stream) {
  if (s.n * s.c == 0 || s.voxels() == 0) return;
  launch(channel_stats_k, dim3(static_cast<unsigned>(s.n * s.c)), dim3(kStatParts), 0, stream, s.voxels(), s.c, active,
         x, stats);
}

void augment_contrast(const AugmentShape& s, const AugmentSampleParams* p, const double* stats, float* x,
                      cudaStream_t stream) {
  point(PointOp::contrast, s, p, stats, nullptr, x, stream);
}

void augment_gamma(const AugmentShape& s, const AugmentSampleParams* p, const double* stats, float* x,
                   cudaStream_t stream) {
  point(PointOp::gamma, s, p, stats, nullptr, x, stream);
}

void augment_restore_stats(const AugmentShape& s, const AugmentSampleParams* p, const double* before,
                           const double* after, float* x, cudaStream_t stream) {
  point(PointOp::restore, s, p, before, after, x, stream);
}

const AugmentKernels augment_kernels = {augment_resample_axis, augment_gather_label_axis, augment_add_noise,
                                        augment_brightness,    augment_channel_stats,     augment_contrast,
                                        augment_gamma,         augment_restore_stats};

}  // namespace unet::kernels::cuda
