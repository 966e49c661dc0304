// Data augmentation of a whole batch where it lives (on the GPU when training there): the transforms of io/augment.h
// (DLE's zoom, flips, noise, blur, brightness, contrast; nnU-Net's gamma and low-resolution simulation) as a few
// batched kernels with per-sample parameters, and the table of entry points the engine dispatches through
// (kernels::cpu::augment_kernels in kernels/cpu/augment.h, kernels::cuda::augment_kernels in kernels/cuda/augment.cuh).
// io::augment_batch (io/augment.h) draws the parameters on the host and runs these.
//
// The spatial transforms are all one kernel, resample_axis: along one axis, output i of sample b is a weighted sum of
// `taps` inputs of that axis whose positions and weights come from a per-sample table, computed on the host by the
// *_axis_map builders below from io/augment.cpp's formulas. Zoom (a centred crop resized back by Keys' cubic
// convolution) is three such passes, a flip reverses a pass's rows, the Gaussian blur is three passes of 2r+1 taps
// with mirrored edges, and the low-resolution simulation is three passes whose cubic taps read the nearest-neighbour
// downsampled positions. The labels take the nearest neighbour (gather_label_axis). Each pass sums in double in tap
// order, as io::resize_axis_cubic and io::gaussian_blur do, so a sample comes out as the host transform makes it.
//
// The arithmetic both backends share is below as UNET_HOST_DEVICE functions, without fused multiply-adds (the host
// files are built with -ffp-contract=off, the GPU uses the round-to-nearest intrinsics), so the CPU and the emulated
// CUDA kernels give the same bits; on a GPU the double log, cos and pow of noise and gamma may differ in the last bit.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/common/counter_random.h"
#include "kernels/common/host_device.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

// Keys' cubic convolution kernel, a = -0.5: the weight of a tap at distance x (the zoom's and low resolution's
// resampling here and in io/augment.cpp).
inline double keys_cubic(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x <= 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

// Index j mirrored into [0, n) without repeating the edge (reflect 101: ... 2 1 | 0 1 2 ...), as the blur reads.
inline int64_t reflect101(int64_t j, int64_t n) {
  if (n == 1) return 0;
  while (j < 0 || j >= n) j = j < 0 ? -j : 2 * (n - 1) - j;
  return j;
}

// A batch: image f32 [n, z, y, x, c] (channels last), label i32 [n, z, y, x].
struct AugmentShape {
  int64_t n = 1, z = 1, y = 1, x = 1, c = 1;
  int64_t dim(int axis) const { return axis == 0 ? z : axis == 1 ? y : x; }
  int64_t voxels() const { return z * y * x; }     // per sample
  int64_t values() const { return voxels() * c; }  // per sample
};

// One sample's point-wise parameters (the identity where noted), in device memory as an array [n].
struct AugmentSampleParams {
  uint64_t noise_seed = 0;
  double noise_std = 0;   // 0: no noise
  double brightness = 1;  // 1: none
  double contrast = 1;    // 1: none
  double gamma = 1;       // 1: none
};

// Per-sample, per-channel statistics [n, c, 4] of channel_stats: min, max, mean, standard deviation (population).
enum AugmentStat { kStatMin = 0, kStatMax = 1, kStatMean = 2, kStatStd = 3 };
// channel_stats sums each (sample, channel) in kStatParts interleaved parts (part t: voxels t, t + kStatParts, ...),
// each in voxel order, then the parts in order: one block of kStatParts threads on a GPU, the same order on the CPU.
constexpr int kStatParts = 256;

// acc + w * x rounded twice, never fused.
UNET_HOST_DEVICE inline double augment_madd(double acc, double w, double x) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(acc, __dmul_rn(w, x));
#else
  return acc + w * x;  // kernels/cpu/augment.cpp and the emulated kernels/cuda/augment.cu: -ffp-contract=off
#endif
}

// Value i of a sample (voxel * c + channel) plus noise_std * N(0, 1), the normal value i of the stream noise_seed.
UNET_HOST_DEVICE inline float augment_noise(float x, const AugmentSampleParams& p, uint64_t i) {
  return static_cast<float>(augment_madd(x, p.noise_std, counter_normal(p.noise_seed, i)));
}
UNET_HOST_DEVICE inline float augment_brightness(float x, const AugmentSampleParams& p) {
  return static_cast<float>(x * p.brightness);
}
// DLE's contrast: x * factor, clamped to the sample's minimum and maximum (over all channels) before the change.
UNET_HOST_DEVICE inline float augment_contrast(float x, const AugmentSampleParams& p, float lo, float hi) {
  const float v = static_cast<float>(x * p.contrast);
  return v < lo ? lo : (hi < v ? hi : v);
}
// nnU-Net's gamma on the channel's range; st = the channel's statistics before.
UNET_HOST_DEVICE inline float augment_gamma(float x, const AugmentSampleParams& p, const double* st) {
  const double range = st[kStatMax] - st[kStatMin] + 1e-7;
  return static_cast<float>(augment_madd(st[kStatMin], pow((x - st[kStatMin]) / range, p.gamma), range));
}
// ... then the channel's mean and standard deviation restored: after = its statistics after the gamma.
UNET_HOST_DEVICE inline float augment_restore(float x, const double* before, const double* after) {
  return static_cast<float>(
      augment_madd(before[kStatMean], (x - after[kStatMean]) / (after[kStatStd] + 1e-8), before[kStatStd]));
}

// ---- the spatial tables, built on the host ----

// One sample's map of one axis of n positions: output i = sum over k < taps of weight[i * taps + k] * input[index[i *
// taps + k]], summed in k order from 0.
struct AxisMap {
  int taps = 1;
  std::vector<int32_t> index;
  std::vector<double> weight;
};
// Output i = input i (weight 1, then zero weights): samples the batch's other samples transform while this one does
// not.
AxisMap identity_axis_map(int64_t n, int taps);
// io::zoom's image along one axis: the crop [start, start + len) resized to n by Keys' cubic convolution (4 taps,
// clamped to the crop), as io::resize_axis_cubic.
AxisMap cubic_axis_map(int64_t n, int64_t start, int64_t len);
// The map followed by a flip of the output (its rows reversed).
AxisMap flipped(AxisMap m);
// io::gaussian_blur along one axis: 2r + 1 taps, r = ceil(3 sigma), mirrored edges (reflect 101), normalised weights;
// padded to `taps` (>= gaussian_taps(sigma)) with zero weights.
int gaussian_taps(double sigma);
AxisMap gaussian_axis_map(int64_t n, double sigma, int taps);
// io::simulate_low_resolution along one axis: n positions downsampled to `low` by nearest neighbour and resized back
// by cubic convolution, one map of 4 taps.
AxisMap low_resolution_axis_map(int64_t n, int64_t low);
// io::zoom's label along one axis: output i takes the crop's floor((i + 0.5) len / n), reversed when flip.
std::vector<int32_t> nearest_axis_index(int64_t n, int64_t start, int64_t len, bool flip);

// Pointers in the backend's memory; the CPU ignores the stream. Tables and flags are per sample: index / weight [n,
// dim(axis), taps], label index [n, dim(axis)], active [n] (0: the sample is copied unchanged).
struct AugmentKernels {
  // y = the image resampled along `axis` (0 = z, 1 = y, 2 = x) by each active sample's map; x and y do not overlap.
  void (*resample_axis)(const AugmentShape& s, int axis, int taps, const int32_t* index, const double* weight,
                        const uint8_t* active, const float* x, float* y, cudaStream_t stream);
  // y = the labels gathered along `axis`: y[..., i, ...] = x[..., index[i], ...]; x and y do not overlap.
  void (*gather_label_axis)(const AugmentShape& s, int axis, const int32_t* index, const uint8_t* active,
                            const int32_t* x, int32_t* y, cudaStream_t stream);
  // In place, each sample with noise_std > 0: augment_noise.
  void (*add_noise)(const AugmentShape& s, const AugmentSampleParams* p, float* x, cudaStream_t stream);
  // In place, each sample with brightness != 1: augment_brightness.
  void (*brightness)(const AugmentShape& s, const AugmentSampleParams* p, float* x, cudaStream_t stream);
  // stats [n, c, 4] of each active sample (min and max exact, mean and standard deviation in double, kStatParts).
  void (*channel_stats)(const AugmentShape& s, const uint8_t* active, const float* x, double* stats,
                        cudaStream_t stream);
  // In place, each sample with contrast != 1: augment_contrast with its channels' overall min and max from stats.
  void (*contrast)(const AugmentShape& s, const AugmentSampleParams* p, const double* stats, float* x,
                   cudaStream_t stream);
  // In place, each sample with gamma != 1: augment_gamma with its channel's statistics.
  void (*gamma)(const AugmentShape& s, const AugmentSampleParams* p, const double* stats, float* x,
                cudaStream_t stream);
  // In place, each sample with gamma != 1: augment_restore.
  void (*restore_stats)(const AugmentShape& s, const AugmentSampleParams* p, const double* before, const double* after,
                        float* x, cudaStream_t stream);
};

}  // namespace unet::kernels
