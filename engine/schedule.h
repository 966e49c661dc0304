// Learning-rate schedules: none, poly (1 - t/T)^0.9 (MIC-DKFZ), cosine with warm restarts (DLE: T_0 4096,
// eta_min 8e-5), each optionally preceded by a linear warm-up from 0.
#pragma once
#include <cmath>
#include <stdexcept>
#include <string>

namespace unet {

struct LrSchedule {
  std::string kind = "none";  // none | poly | cosine
  double base_lr = 8e-4;
  int64_t total_steps = 1;
  int64_t warmup_steps = 0;
  int64_t cosine_period = 4096;  // T_0 of the warm restarts
  double eta_min = 8e-5;
  double poly_power = 0.9;

  double at(int64_t step) const {  // the rate for 0-based step `step`
    if (step < warmup_steps) return base_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
    int64_t t = step - warmup_steps;
    if (kind == "none") return base_lr;
    if (kind == "poly") {
      double frac = std::min(1.0, static_cast<double>(t) / static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps)));
      return base_lr * std::pow(1.0 - frac, poly_power);
    }
    if (kind == "cosine") {
      double cycle = static_cast<double>(t % cosine_period) / static_cast<double>(cosine_period);
      return eta_min + (base_lr - eta_min) * (1.0 + std::cos(M_PI * cycle)) / 2.0;
    }
    throw std::invalid_argument("unknown learning-rate schedule '" + kind + "' (expected none, poly or cosine)");
  }
};

}  // namespace unet
