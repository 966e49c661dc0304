// The inference pipeline (models/predictor.h).
#include "models/predictor.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "engine/ops.h"
#include "io/dataset.h"
#include "models/trainer.h"

namespace unet::models {
namespace {

// The model card of a checkpoint, without the training-only heads.
ModelCard inference_card(const io::SafetensorsContent& weights, const std::string& path) {
  ModelCard card = card_from_metadata(weights.metadata, path);
  card.net.deep_supervision = false;
  return card;
}

}  // namespace

Predictor::Predictor(const std::string& checkpoint, const PredictorOptions& o)
    : Predictor(read_weights(checkpoint), checkpoint, o) {}

Predictor::Predictor(const io::SafetensorsContent& weights, const std::string& checkpoint, const PredictorOptions& o)
    : card_(inference_card(weights, checkpoint)), net_(card_.net), precision_(o.precision) {
  load_weights(weights, net_, checkpoint);
  net_.to(o.device);
  window_.patch = card_.patch;
  window_.overlap = o.overlap;
  window_.blend = o.blend;
  window_.tta = o.tta;
  window_.batch_size = o.batch;
}

Segmentation Predictor::segment(const io::NiftiVolume& volume, const std::string& source, std::string* warning) const {
  if (volume.data.dim(-1) != card_.net.in_channels)
    throw std::runtime_error(source + ": has " + std::to_string(volume.data.dim(-1)) + " channel(s), the model expects " +
                             std::to_string(card_.net.in_channels));
  const auto spacing = volume.spacing();
  for (int a = 0; a < 3; ++a)
    if (warning && card_.spacing.size() == 3 && std::abs(spacing[a] - card_.spacing[a]) > 0.01 * card_.spacing[a]) {
      char text[400];
      std::snprintf(text, sizeof text,
                    "%s has spacing %.3g,%.3g,%.3g mm (z,y,x), the model was trained at %.3g,%.3g,%.3g; resampling is "
                    "not implemented yet, so results may be worse",
                    source.c_str(), spacing[0], spacing[1], spacing[2], card_.spacing[0], card_.spacing[1],
                    card_.spacing[2]);
      *warning = text;
      break;
    }
  Tensor image = volume.data.clone();
  io::normalize_image(image, card_.normalization);
  Segmentation out;
  out.logits = predict_volume(net_, image, window_, precision_);
  const Tensor labels = ops::argmax_channels(out.logits);  // i32, on the cpu like the blended logits
  out.labels = Tensor::empty(labels.shape(), DType::u8);
  const int32_t* l = labels.data<int32_t>();
  uint8_t* u = out.labels.data<uint8_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) u[i] = static_cast<uint8_t>(l[i]);
  return out;
}

}  // namespace unet::models
