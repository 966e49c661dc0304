// DLE UNet_Medical's ISBI 2012 pipeline (its data_loading/data_loader.py), for UNet2D with data.pipeline = dle_isbi:
// intensities x / 127.5 - 1; every slice resized (bilinear, half-pixel centres as tf.image.resize) to the network's
// output size (388 for a 572 input), the labels as each class's indicator resized the same way, the largest winning
// (DLE: threshold 0.5); the training sampler then zero-pads the slice by the network's context to its input size
// (DLE's resize_with_crop_or_pad to 572). Its augmentation acts on that padded input: horizontal and vertical flips,
// a random crop with each side moved in by U(0, 0.3) of the size and resized back (tf.image.crop_and_resize,
// bilinear), a brightness delta U(-0.2, 0.2), values clipped to [-1, 1].
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/random.h"
#include "engine/tensor.h"
#include "io/augment.h"
#include "io/dataset.h"

namespace unet::io {

// Bilinear sampling of the y and x axes of a [Z, Y, X, C] array at source coordinates src_y (size h) and src_x (size
// w), each clamped to [0, size - 1]: -> [Z, h, w, C]. The value at (y, x) = (1 - fy)((1 - fx) a + fx b) + fy(...),
// with floor / floor + 1 neighbours (the last repeated).
std::vector<float> sample_bilinear(const std::vector<float>& in, const std::array<int64_t, 4>& shape,
                                   const std::vector<double>& src_y, const std::vector<double>& src_x);
// tf.image.resize's half-pixel coordinates: output i samples (i + 0.5) * n_in / n_out - 0.5.
std::vector<double> half_pixel_coordinates(int64_t n_in, int64_t n_out);

// The image (f32 [Z, Y, X, C]) with its y and x resized to h x w (half-pixel bilinear).
Tensor resize_planes(const Tensor& image, int64_t h, int64_t w);
// Labels (u8 or i32 [Z, Y, X], classes < `classes`) resized alike: each class's indicator interpolated, the largest
// wins, ties to the higher class (two classes: foreground where its indicator >= 0.5, DLE's threshold).
Tensor resize_label_planes(const Tensor& labels, int64_t h, int64_t w, int classes);

// DLE's intensities: x / 127.5 - 1 (8-bit images to [-1, 1]). A value outside 0..255 (a 16-bit or float stack,
// which this scaling would saturate) is std::runtime_error naming `source`, the value and where it is.
void dle_normalize(Tensor& image, const std::string& source);
// A case as DLE feeds it to the network: normalised, every slice resized to out x out (`source`: its image file).
void dle_isbi_case(Case& c, int64_t out, int classes, const std::string& source);

// DLE's augmentation of one padded sample, drawn from rng in a fixed order (the same number of draws whatever is
// applied): flips of y and x with probability flip_prob each, the crop-and-resize with probability crop_prob,
// brightness with probability brightness_prob, then the clip to [-1, 1] (always). `classes` for the labels' resize.
AugmentRecord dle_isbi_augment(Sample& s, double flip_prob, double crop_prob, double brightness_prob, int classes,
                               Rng& rng);

}  // namespace unet::io
