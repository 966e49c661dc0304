// Data augmentation of one training sample on the host (docs/reference.md, "Augmentation"): the transforms of NVIDIA's
// nnU-Net (DLE) with its probabilities and ranges, and nnU-Net's rotation, gamma and low-resolution simulation as
// options (off by default, as in DLE).
//
// A sample is a patch: image f32 [Z, Y, X, C] (channels last) and label i32 [Z, Y, X], held in a Sample. Each transform
// is a plain function of the sample and its parameters, so it can be tested alone; augment() draws the parameters
// from the sample's own random stream and applies them in DLE's order: zoom, flips, noise, blur, brightness, contrast;
// then gamma and low resolution when enabled (rotation is applied while the patch is cut: io/dataset.h).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "engine/random.h"

namespace unet::io {

struct AugmentOptions {
  // DLE (data_loading/dali_loader.py): each with probability 0.15 per sample.
  double zoom_prob = 0.15, zoom_min = 0.7, zoom_max = 1.0;  // centre crop of scale * patch, resized back
  double flip_prob = 0.5;                                   // per spatial axis
  double noise_prob = 0.15, noise_std_max = 0.33;           // + N(0, s^2), s ~ U(0, noise_std_max)
  double blur_prob = 0.15, blur_sigma_min = 0.5, blur_sigma_max = 1.5;
  double brightness_prob = 0.15, brightness_min = 0.7, brightness_max = 1.3;
  double contrast_prob = 0.15, contrast_min = 0.65, contrast_max = 1.5;
  // nnU-Net (batchgenerators) options, 0 = off: rotation about each axis U(-30, 30) degrees (p 0.2 in nnU-Net);
  // gamma U(0.7, 1.5) with the mean and standard deviation kept (p 0.3); low resolution, each channel downsampled
  // by U(0.5, 1) with nearest neighbours and upsampled back with cubic interpolation (p 0.25).
  double rotation_prob = 0, rotation_max_degrees = 30;
  double gamma_prob = 0, gamma_min = 0.7, gamma_max = 1.5;
  double low_resolution_prob = 0, low_resolution_min = 0.5;
  // 2D networks (patches of slices): zoom, flips, blur, low resolution and rotation act in the y-x plane only, so
  // adjacent slices taken as channels stay apart (the draws are the same, only their effect on z is dropped).
  bool in_plane = false;
  // DLE UNet_Medical's ISBI augmentation instead (io/dle.h, data.pipeline = dle_isbi): flips of y and x with flip_prob,
  // its crop-and-resize with zoom_prob, its brightness delta with brightness_prob, the clip to [-1, 1]; `classes`
  // for the labels' interpolation.
  bool dle_isbi = false;
  int classes = 2;
  // The sampler only draws the parameters (draw_augment) and leaves every transform but
  // the rotation to augment_batch on the batch's device: the trainer sets it when it trains on a GPU, where the
  // transforms run as kernels (kernels/augment.h) instead of on the loader's threads. Not with dle_isbi.
  bool on_device = false;

  static AugmentOptions none();  // every probability 0: the patch as cut
  void check() const;            // std::invalid_argument naming a probability or range out of bounds
};

struct Sample {
  std::array<int64_t, 3> size{};  // Z, Y, X
  int64_t channels = 1;
  std::vector<float> image;    // Z * Y * X * channels
  std::vector<int32_t> label;  // Z * Y * X
  Sample() = default;
  Sample(std::array<int64_t, 3> size, int64_t channels);
  int64_t voxels() const { return size[0] * size[1] * size[2]; }
};

// What augment() did to a sample (for logs and tests).
struct AugmentRecord {
  double zoom = 1;             // scale of the centre crop (1: none)
  std::array<bool, 3> flip{};  // per axis
  double noise_std = 0, blur_sigma = 0, brightness = 1, contrast = 1, gamma = 1, low_resolution = 1;
  uint64_t noise_seed = 0;  // the noise's stream (add_noise), drawn whether or not noise is applied
};

// ---- the transforms ----

// Resizes axis `axis` (0..2) of `in`, a [Z, Y, X, C] array of the given shape, from n_in = shape[axis] to n_out values
// with Keys' cubic convolution (a = -0.5, which reproduces quadratics exactly): output i samples the input at
// (i + 0.5) * n_in / n_out - 0.5, edge values repeated. Exposed for the tests.
std::vector<float> resize_axis_cubic(const std::vector<float>& in, const std::array<int64_t, 4>& shape, int axis,
                                     int64_t n_out);

// DLE's zoom: the centred crop of round(scale * size) voxels per axis (at least 1), resized back to the full size:
// the image by cubic convolution, the label by nearest neighbour (voxel i takes the crop's floor((i + 0.5) * c / n)).
// in_plane: z is kept whole.
void zoom(Sample& s, double scale, bool in_plane = false);
void flip(Sample& s, const std::array<bool, 3>& axes);
// image += stddev * N(0, 1), value i (voxel * channels + channel) taking kernels::counter_normal(seed, i): the noise
// of the device kernels (kernels/augment.h), so a sample gets the same noise on the loader's threads and on a GPU.
void add_noise(Sample& s, double stddev, uint64_t seed);
// Separable Gaussian blur of every channel, radius ceil(3 sigma) taps, mirrored edges (reflect 101: ... 2 1 | 0 1 2
// ...). in_plane: along y and x only.
void gaussian_blur(Sample& s, double sigma, bool in_plane = false);
void scale_brightness(Sample& s, double factor);
// DLE's contrast: image * factor, clamped to the image's minimum and maximum before the change (over all channels).
void scale_contrast(Sample& s, double factor);
// nnU-Net's gamma with retained statistics, per channel: x -> ((x - min) / (max - min + 1e-7))^gamma * (max - min +
// 1e-7) + min, then shifted and scaled back to the channel's mean and standard deviation.
void gamma_transform(Sample& s, double gamma);
// nnU-Net's low-resolution simulation: every channel downsampled to round(zoom * size) per axis (at least 1) by
// nearest neighbour and resized back by cubic convolution. in_plane: z is kept whole.
void simulate_low_resolution(Sample& s, double zoom, bool in_plane = false);

// Draws every parameter from rng (the same number of draws whatever is applied, so each decision has a fixed place
// in the stream) and applies the transforms in order. The flips are drawn here too.
AugmentRecord augment(Sample& s, const AugmentOptions& o, Rng& rng);
// augment()'s draws alone (seventeen uniforms and the noise seed; the flip of z cleared in plane), nothing applied.
AugmentRecord draw_augment(const AugmentOptions& o, Rng& rng);

// augment()'s transforms for a whole batch where it lives (io/augment_batch.cpp): image f32 [B, Z, Y, X, C] and label
// i32 [B, Z, Y, X] on one device, records[b] the parameters of item b (draw_augment's, with a noise seed). The
// backend's kernels (kernels/augment.h) run zoom, flips, noise, blur, brightness, contrast, gamma and low resolution
// in augment()'s order and with its formulas; only the statistics of contrast and gamma are summed in another order,
// so the result is augment()'s to within rounding, and the same bits on every backend but a GPU's last-bit libm
// differences (noise, gamma). The tensors are replaced by the augmented batch (image's storage may be written).
void augment_batch(Tensor& image, Tensor& label, const std::vector<AugmentRecord>& records, bool in_plane);

// The rotation part, drawn before the patch is cut (the sampler cuts a region large enough for the rotated patch):
// angles in radians about the z, y and x axes, zero when not applied (in_plane: about z only). Four draws.
std::array<double, 3> draw_rotation(const AugmentOptions& o, Rng& rng);

// Rotation matrix R = Rz * Ry * Rx (row-major) for angles about the z, y, x axes, in (z, y, x) coordinates.
std::array<double, 9> rotation_matrix(const std::array<double, 3>& angles);

// The patch of size `out` centred in `src` (whose centre is the rotation centre), rotated by R: output voxel p takes
// src at centre_src + R (p - centre_out), the image by trilinear interpolation, the label by nearest neighbour, zero
// and background outside src.
Sample rotate_crop(const Sample& src, const std::array<double, 9>& R, const std::array<int64_t, 3>& out);

// The size of the region, centred on the patch, that rotate_crop needs to fill a patch of size `patch` under R (with
// a margin for the interpolation; size - patch is even, so the two centres coincide).
std::array<int64_t, 3> rotated_extent(const std::array<double, 9>& R, const std::array<int64_t, 3>& patch);

}  // namespace unet::io
