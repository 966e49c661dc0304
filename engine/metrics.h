// Segmentation metrics (docs/reference.md, "Dice metric"): per-class Dice of label maps, as nnU-Net / DLE report it.
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace unet {

// Counts per foreground class c = 1..classes-1 of two label maps of equal shape (u8 or i32).
struct DiceCounts {
  std::vector<int64_t> tp, fp, fn;  // index c - 1
  void add(const Tensor& prediction, const Tensor& truth, int classes);
  // 2TP / (2TP + FP + FN); a class absent from both prediction and truth scores 1, absent only from the truth 0.
  std::vector<double> dice() const;
  double mean_dice() const;
};

}  // namespace unet
