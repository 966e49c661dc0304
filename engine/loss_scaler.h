// Dynamic loss scaling for fp16 training, with the semantics of torch.amp.GradScaler's defaults (SPEC 3): the loss is
// multiplied by `scale` before backward, so that small gradients survive f16's range; the optimizer unscales them
// (Optimizer::step(1 / scale)) and skips the step when any is inf or nan. Then update():
//   skipped step  scale *= backoff (0.5), the growth counter restarts;
//   taken step    the counter grows, and after growth_interval (2000) taken steps in a row scale *= growth (2).
// Disabled (bf16 and f32 by default), the scale stays 1 and update() only counts skipped steps.
#pragma once
#include <cstdint>
#include <map>
#include <string>

namespace unet {

struct LossScalerOptions {
  bool enabled = false;
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

class LossScaler {
 public:
  explicit LossScaler(LossScalerOptions options = {});

  float scale() const { return static_cast<float>(scale_); }
  // After each optimizer step: `stepped` is what Optimizer::step returned.
  void update(bool stepped);

  int64_t growth_tracker() const { return growth_tracker_; }  // taken steps since the last change of scale
  int64_t skipped_steps() const { return skipped_steps_; }    // steps skipped for inf/nan gradients, in all
  const LossScalerOptions& options() const { return options_; }

  // The state as text entries for the training state's metadata ("loss_scale", "loss_scale_growth_tracker",
  // "skipped_steps"), and back. from_metadata throws std::invalid_argument naming an entry that is missing or not a
  // number in range.
  std::map<std::string, std::string> to_metadata() const;
  void from_metadata(const std::map<std::string, std::string>& metadata);

 private:
  LossScalerOptions options_;
  double scale_;
  int64_t growth_tracker_ = 0;
  int64_t skipped_steps_ = 0;
};

}  // namespace unet
