// The Dice metric (docs/reference.md, "Dice metric") on hand-counted label maps.
#include "engine/metrics.h"
#include "tests/test_util.h"

using namespace unet;

TEST_CASE("dice per class is 2TP / (2TP + FP + FN), ignoring background") {
  Tensor truth = Tensor::from_vector({8}, {0, 1, 1, 1, 2, 2, 0, 0}, DType::u8);
  Tensor pred = Tensor::from_vector({8}, {1, 1, 1, 0, 2, 0, 0, 2}, DType::i32);
  DiceCounts d;
  d.add(pred, truth, 3);
  // class 1: TP 2, FP 1, FN 1 -> 4/6; class 2: TP 1, FP 1, FN 1 -> 2/4
  CHECK(d.dice()[0] == doctest::Approx(4.0 / 6));
  CHECK(d.dice()[1] == doctest::Approx(0.5));
  CHECK(d.mean_dice() == doctest::Approx((4.0 / 6 + 0.5) / 2));
}

TEST_CASE("a class absent from the label scores 1 when also absent from the prediction, else 0") {
  Tensor truth = Tensor::from_vector({4}, {0, 1, 1, 0}, DType::u8);
  DiceCounts clean, spurious;
  clean.add(Tensor::from_vector({4}, {0, 1, 1, 0}, DType::u8), truth, 3);
  spurious.add(Tensor::from_vector({4}, {2, 1, 1, 0}, DType::u8), truth, 3);
  CHECK(clean.dice() == std::vector<double>{1.0, 1.0});
  CHECK(spurious.dice() == std::vector<double>{1.0, 0.0});
}

TEST_CASE("counts accumulate over cases before the ratio is taken") {
  DiceCounts d;
  d.add(Tensor::from_vector({2}, {1, 1}, DType::u8), Tensor::from_vector({2}, {1, 1}, DType::u8), 2);  // TP 2
  d.add(Tensor::from_vector({2}, {0, 0}, DType::u8), Tensor::from_vector({2}, {1, 1}, DType::u8), 2);  // FN 2
  CHECK(d.dice()[0] == doctest::Approx(4.0 / 6));
}
