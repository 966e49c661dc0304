// Synthetic 3D segmentation data in the Medical Segmentation Decathlon layout, for the quick start, the tests and
// demos without downloading anything. Each case holds a random number of shapes in millimetre space, placed and sized
// relative to the field of view (size x spacing): anisotropic spacing gives the same anatomy on a coarser grid, and
// one spacing for every axis the same voxels whatever its value; every foreground class has its own shape type and mean
// intensity, so a network must use both shape and contrast. A smooth multiplicative bias field, a fine background
// texture and gaussian noise make intensity thresholding imperfect, yet a small 3D UNet learns the task in minutes.
// All randomness comes from Rng streams derived from (seed, case, slice): the bytes depend on the seed only, never
// on the thread count.
#pragma once
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "engine/tensor.h"

namespace unet::io {

// Bad options (a usage error: tools exit with status 2).
struct SynthOptionsError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

struct SynthOptions {
  std::string output;                       // dataset directory (created; see write_synthetic_dataset)
  int train = 24;                           // cases in imagesTr/labelsTr
  int test = 6;                             // cases in imagesTs/labelsTs
  int dim = 3;                              // 2: each case one slice, size[0] = 1 (the isbi format's only choice)
  std::array<int64_t, 3> size{48, 48, 48};  // voxels (z, y, x)
  std::array<double, 3> spacing{1, 1, 1};   // mm (z, y, x)
  int channels = 1;                         // image channels (4D NIfTI when > 1)
  int classes = 3;                          // label values 0..classes-1, 0 = background
  uint64_t seed = 0;
  bool overwrite = false;  // replace a dataset unet_synth wrote (write_synthetic_dataset)
  // Each case scanned differently, as in a multi-centre dataset: noise std kSynthNoiseStd x 0.5..2 (log-uniform), a
  // gaussian point spread of sigma 0..1.5 voxels (uniform; in-plane in 2D) and a contrast power law about the
  // background's intensity, gamma 0.7..1.4 (log-uniform). Off: noise kSynthNoiseStd, no blur, gamma 1 in every case.
  bool scanner_variation = false;
  // The layout (io/dataset.h): msd (one file per case), nnunetv2 (one file per channel, labels by name) or isbi
  // (ISBI 2012: each case an EM-like page of size[1] x size[2] (make_synthetic_em_page; size[0] unused) in
  // train-volume.tif / test-volume.tif, 8-bit; labels 0 (membrane) / 255 (cell) in train-labels.tif /
  // test-labels.tif; needs classes = 2 and channels = 1).
  std::string format = "msd";
};

// Throws SynthOptionsError naming the option and the accepted range.
void validate_synth_options(const SynthOptions& o);

// Shape type of a foreground class: classes cycle through ellipsoid, tube (a thick curved segment) and box.
enum class SynthShape { ellipsoid, tube, box };
SynthShape synthetic_class_shape(int cls);
std::string synthetic_class_name(int cls);  // "background", "ellipsoid", "tube", "box", "ellipsoid_2", ...

// Design mean intensity of class `cls` (0 = background) in channel `ch` before bias field, texture and noise.
// Background 100; foreground classes 150 apart (250, 400, ...), in reverse order in odd channels, so every
// channel separates every class. Noise std is kSynthNoiseStd; the bias field stays within [0.6, 1.4].
double synthetic_class_mean(int ch, int cls, int classes);
constexpr double kSynthNoiseStd = 30.0;

// How case `index` was scanned (SynthOptions::scanner_variation): noise std, the point spread's gaussian sigma in
// voxels, and the contrast's power: intensity t becomes bg * (t / bg)^gamma, bg = synthetic_class_mean(0, 0, classes).
struct SynthAcquisition {
  double noise_std = kSynthNoiseStd;
  double blur = 0;
  double gamma = 1;
};
SynthAcquisition synthetic_acquisition(const SynthOptions& o, int index);

struct SynthCase {
  Tensor image;  // f32 [Z, Y, X, C], integer-valued, >= 0
  Tensor label;  // u8 [Z, Y, X]
};

// Case number `index` of the dataset for options o (train cases first, then test cases). Depends only on
// (o.seed, index, dim, size, spacing, channels, classes, scanner_variation). dim 2: the middle plane of a volume as
// deep as the slice is wide, so the shapes have the sizes they have in 3D.
SynthCase make_synthetic_case(const SynthOptions& o, int index);

// An electron-microscopy-like page for the ISBI layout, after ISBI 2012's neuronal membranes: cells (a jittered
// Voronoi tessellation, 16..22 pixels across, each its own brightness) separated by dark membranes 2..3 pixels wide,
// dark organelle discs inside the cells as distractors, a 3 x 3 blur, a bias field and noise. image u8 [Y, X] and
// label u8 [Y, X], 0 = membrane and 255 = cell as ISBI 2012. Depends only on (o.seed, index, size[1], size[2]).
struct SynthPage {
  Tensor image, label;
};
SynthPage make_synthetic_em_page(const SynthOptions& o, int index);

// File stem of case `index`: "case_000" (more digits when there are over 1000 cases).
std::string synthetic_case_id(const SynthOptions& o, int index);

// Writes o.output/{dataset.json, imagesTr, labelsTr, imagesTs, labelsTs} (the ISBI layout: its four TIFF files).
// Everything is built in a hidden sibling directory and renamed into place at the end, so a failure never leaves a
// partial dataset. o.output must not exist, be an empty directory, or (with o.overwrite) hold a dataset unet_synth
// wrote: its marker file .unet_synth and nothing it does not write (a real MSD or ISBI dataset is never replaced).
// Throws SynthOptionsError for bad options or an occupied output, std::runtime_error for I/O failures.
void write_synthetic_dataset(const SynthOptions& o);

}  // namespace unet::io
