// The inference pipeline: a unet_train checkpoint's network on a device, applied to whole volumes (the checkpoint's
// normalisation, sliding-window prediction with blending and optional flips, argmax). tools/unet_infer.cpp is its
// command-line front end (files, directories, output names).
#pragma once
#include <string>

#include "engine/precision.h"
#include "engine/sliding_window.h"
#include "io/nifti.h"
#include "models/checkpoint.h"
#include "models/nnunet.h"

namespace unet::models {

struct PredictorOptions {
  double overlap = 0.5;
  Blend blend = Blend::gaussian;
  bool tta = false;   // average the logits over every flip of the spatial axes
  int batch = 1;      // windows per forward pass
  Device device = Device::cpu;
  Precision precision = Precision::fp32;  // tf32: the caller sets ops::set_conv_allow_tf32
};

struct Segmentation {
  Tensor labels;  // u8 [Z, Y, X]: argmax of the blended logits
  Tensor logits;  // f32 [Z, Y, X, classes]: the blended logits (softmax_channels gives the probabilities)
};

class Predictor {
 public:
  // Reads the weights and the model card; throws std::runtime_error naming `checkpoint` when it cannot.
  Predictor(const std::string& checkpoint, const PredictorOptions& options);
  const ModelCard& card() const { return card_; }
  // `volume` read from `source` (named in errors). Throws std::runtime_error when its channel count is not the
  // model's; sets *warning (when not null) when its spacing differs from the training spacing by more than 1%.
  Segmentation segment(const io::NiftiVolume& volume, const std::string& source, std::string* warning = nullptr) const;

 private:
  Predictor(const io::SafetensorsContent& weights, const std::string& checkpoint, const PredictorOptions& options);
  ModelCard card_;
  DynUNet net_;
  SlidingWindowOptions window_;
  Precision precision_;
};

}  // namespace unet::models
