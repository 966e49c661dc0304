// The inference pipeline: a unet_train checkpoint's network on a device, applied to whole volumes (cropping and
// resampling as in training, the checkpoint's normalisation, sliding-window prediction with blending and optional
// flips, the probabilities back on the input's grid, argmax). tools/unet_infer.cpp is its
// command-line front end (files, directories, output names).
#pragma once
#include <array>
#include <memory>
#include <string>

#include "engine/precision.h"
#include "engine/sliding_window.h"
#include "io/image.h"
#include "models/checkpoint.h"
#include "models/network.h"

namespace unet::models {

struct PredictorOptions {
  double overlap = 0.5;
  Blend blend = Blend::gaussian;
  bool tta = false;  // average the logits over every flip of the spatial axes
  int batch = 1;     // windows per forward pass
  Device device = Device::cpu;
  Precision precision = Precision::fp32;  // tf32: the caller sets ops::set_conv_allow_tf32
};

struct Segmentation {
  Tensor labels;         // u8 [Z, Y, X]: argmax of the probabilities, times the card's label_scale, on the input's grid
  Tensor probabilities;  // f32 [Z, Y, X, classes]: softmax of the blended logits, on the input's grid
  std::array<int64_t, 3> grid{};  // the grid the network segmented: the non-zero box, resampled when `resampled`
  bool resampled = false;
};

class Predictor {
 public:
  // Reads the weights and the model card; throws std::runtime_error naming `checkpoint` when it cannot.
  Predictor(const std::string& checkpoint, const PredictorOptions& options);
  const ModelCard& card() const { return card_; }
  // `volume` read from `source` (named in errors; std::runtime_error when its channel count is not the model's),
  // as nnU-Net predicts: cropped to the box of its non-zero voxels, resampled to the model's training spacing (when
  // it differs by more than 0.1%; io/resample.h), normalised, segmented by sliding window, the probabilities
  // resampled back to the cropped grid (linear; nearest along an anisotropic axis), put back into the whole volume
  // (background outside the box) and their argmax taken. A model of the dle_isbi pipeline (ModelCard::pipeline)
  // instead resizes each slice to its output size as DLE UNet_Medical does (io/dle.h) and the probabilities back. A
  // model whose training cases were single slices (ModelCard::slice_cases: ISBI's pages) segments each slice of a
  // volume as such a case, cropped and normalised by itself.
  Segmentation segment(const io::Image& volume, const std::string& source) const;
  // The grid segment() runs the network on for `volume`: its non-zero box, resampled to the model's spacing when that
  // differs (std::runtime_error when the spacing would overflow or collapse it; io/resample.h).
  std::array<int64_t, 3> grid(const io::Image& volume) const;

 private:
  Predictor(const io::SafetensorsContent& weights, const std::string& checkpoint, const PredictorOptions& options);
  // nnU-Net's way (segment): the probabilities on the volume's grid; out->grid and out->resampled.
  Tensor nnunet_probabilities(const io::Image& volume, const std::string& source, Segmentation* out) const;
  // nnunet_probabilities of each slice by itself, for a model whose training cases were slices
  // (ModelCard::slice_cases): a slice's labels do not depend on the slices stored beside it.
  Tensor slice_probabilities(const io::Image& volume, const std::string& source, Segmentation* out) const;
  std::string checkpoint_;  // its path, for messages
  ModelCard card_;
  std::unique_ptr<Network> net_;
  SlidingWindowOptions window_;
  Precision precision_;
};

}  // namespace unet::models
