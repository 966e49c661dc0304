// Dice counting over label maps.
#include "engine/metrics.h"

namespace unet {
namespace {
int32_t label_at(const Tensor& t, int64_t i) {
  return t.dtype() == DType::u8 ? static_cast<const uint8_t*>(t.raw())[i] : static_cast<const int32_t*>(t.raw())[i];
}
}  // namespace

void DiceCounts::add(const Tensor& pred, const Tensor& truth, int classes) {
  check_arg(pred.numel() == truth.numel(), "dice: prediction " + pred.describe() + " and label " + truth.describe() + " differ in size");
  for (const Tensor* t : {&pred, &truth})
    check_arg(t->dtype() == DType::u8 || t->dtype() == DType::i32, "dice: label maps must be u8 or i32, got " + t->describe());
  if (tp.empty()) tp.assign(classes - 1, 0), fp.assign(classes - 1, 0), fn.assign(classes - 1, 0);
  check_arg(static_cast<int>(tp.size()) == classes - 1, "dice: class count changed between cases");
  for (int64_t i = 0; i < pred.numel(); ++i) {
    int32_t p = label_at(pred, i), t = label_at(truth, i);
    if (p == t) {
      if (p > 0 && p < classes) ++tp[p - 1];
      continue;
    }
    if (p > 0 && p < classes) ++fp[p - 1];
    if (t > 0 && t < classes) ++fn[t - 1];
  }
}

std::vector<double> DiceCounts::dice() const {
  std::vector<double> d;
  for (size_t c = 0; c < tp.size(); ++c) {
    int64_t denom = 2 * tp[c] + fp[c] + fn[c];
    if (tp[c] + fn[c] == 0) d.push_back(fp[c] == 0 ? 1.0 : 0.0);
    else d.push_back(2.0 * tp[c] / denom);
  }
  return d;
}

double DiceCounts::mean_dice() const {
  auto d = dice();
  double s = 0;
  for (double v : d) s += v;
  return d.empty() ? 0.0 : s / d.size();
}

}  // namespace unet
