// Dynamic loss scaling (engine/loss_scaler.h).
#include "engine/loss_scaler.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace unet {

LossScaler::LossScaler(LossScalerOptions options) : options_(options), scale_(options.enabled ? options.init_scale : 1.0) {
  if (options_.enabled && !(options_.init_scale > 0 && std::isfinite(options_.init_scale)))
    throw std::invalid_argument("loss scaling: the initial scale must be finite and > 0, got " +
                                std::to_string(options_.init_scale));
  if (options_.growth_interval < 1)
    throw std::invalid_argument("loss scaling: the growth interval must be >= 1, got " +
                                std::to_string(options_.growth_interval));
}

void LossScaler::update(bool stepped) {
  if (!stepped) {
    ++skipped_steps_;
    if (!options_.enabled) return;
    scale_ *= options_.backoff_factor;
    growth_tracker_ = 0;
    return;
  }
  if (!options_.enabled) return;
  if (++growth_tracker_ == options_.growth_interval) {
    // As GradScaler: grow only while the result stays finite in f32 (the scale is applied as an f32 number).
    const double grown = scale_ * options_.growth_factor;
    if (std::isfinite(static_cast<float>(grown))) scale_ = grown;
    growth_tracker_ = 0;
  }
}

std::map<std::string, std::string> LossScaler::to_metadata() const {
  char scale[64];
  std::snprintf(scale, sizeof scale, "%.17g", scale_);
  return {{"loss_scale", scale},
          {"loss_scale_growth_tracker", std::to_string(growth_tracker_)},
          {"skipped_steps", std::to_string(skipped_steps_)}};
}

void LossScaler::from_metadata(const std::map<std::string, std::string>& metadata) {
  auto entry = [&](const char* key) -> const std::string& {
    auto it = metadata.find(key);
    if (it == metadata.end()) throw std::invalid_argument(std::string("training state: no '") + key + "' entry");
    return it->second;
  };
  auto number = [&](const char* key) {
    const std::string& text = entry(key);
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (text.empty() || used != text.size() || !std::isfinite(v) || v < 0)
      throw std::invalid_argument(std::string("training state: '") + key + "' = '" + text +
                                  "' is not a finite number >= 0");
    return v;
  };
  const double scale = number("loss_scale");
  if (scale <= 0) throw std::invalid_argument("training state: 'loss_scale' must be > 0");
  const double tracker = number("loss_scale_growth_tracker"), skipped = number("skipped_steps");
  if (tracker != std::floor(tracker) || skipped != std::floor(skipped) || tracker > 9e15 || skipped > 9e15)
    throw std::invalid_argument("training state: 'loss_scale_growth_tracker' and 'skipped_steps' must be whole numbers");
  scale_ = scale;
  growth_tracker_ = static_cast<int64_t>(tracker);
  skipped_steps_ = static_cast<int64_t>(skipped);
}

}  // namespace unet
