// DiceCE loss (ops::dice_ce_loss): forward against a naive double-precision reference written here from the formula
// of docs/reference.md, "DiceCE loss"; gradient against finite differences, known values, errors, and bitwise
// determinism.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "tests/test_util.h"

using namespace unet;

namespace {

struct RefParts {
  double dice = 0, ce = 0;
};

// Straightforward DiceCE in double: softmax per voxel, per-class sums over batch and space, the formula of
// docs/reference.md, "DiceCE loss".
RefParts reference_dice_ce(const std::vector<double>& z, const std::vector<int>& y, int C) {
  const size_t V = y.size();
  std::vector<double> I(C, 0.0), P(C, 0.0), Y(C, 0.0);
  double ce = 0.0;
  for (size_t v = 0; v < V; ++v) {
    double m = -std::numeric_limits<double>::infinity();
    for (int c = 0; c < C; ++c) m = std::max(m, z[v * C + c]);
    double s = 0.0;
    for (int c = 0; c < C; ++c) s += std::exp(z[v * C + c] - m);
    for (int c = 0; c < C; ++c) {
      double p = std::exp(z[v * C + c] - m) / s;
      double t = y[v] == c ? 1.0 : 0.0;
      I[c] += p * t;
      P[c] += p;
      Y[c] += t;
    }
    ce += -(z[v * C + y[v]] - m - std::log(s));
  }
  RefParts r;
  for (int c = 1; c < C; ++c) r.dice += 1.0 - (2.0 * I[c] + 1e-5) / (P[c] + Y[c] + 1e-5);
  r.dice /= C - 1;
  r.ce = ce / static_cast<double>(V);
  return r;
}

// DLE UNet_Medical's loss (SPEC 1.2) in double, straight from its formula: per sample b and class c (background
// included) dice_bc = (2 sum p t + 1e-6) / (sum p^2 + sum t^2 + 1e-6) over that sample's pixels; the Dice part is the
// mean of 1 - dice_bc, CE the mean over all pixels.
RefParts reference_dle(const std::vector<double>& z, const std::vector<int>& y, int C, int batch) {
  const size_t V = y.size(), per = V / batch;
  RefParts r;
  double ce = 0.0;
  for (int b = 0; b < batch; ++b) {
    std::vector<double> I(C, 0.0), Q(C, 0.0), T(C, 0.0);
    for (size_t v = b * per; v < (b + 1) * per; ++v) {
      double s = 0.0;
      for (int c = 0; c < C; ++c) s += std::exp(z[v * C + c]);
      for (int c = 0; c < C; ++c) {
        const double p = std::exp(z[v * C + c]) / s, t = y[v] == c ? 1.0 : 0.0;
        I[c] += p * t;
        Q[c] += p * p;
        T[c] += t * t;
      }
      ce += -std::log(std::exp(z[v * C + y[v]]) / s);
    }
    for (int c = 0; c < C; ++c) r.dice += 1.0 - (2.0 * I[c] + 1e-6) / (Q[c] + T[c] + 1e-6);
  }
  r.dice /= batch * C;
  r.ce = ce / static_cast<double>(V);
  return r;
}

std::vector<double> to_double(const Tensor& t) {
  std::vector<float> f = t.to_vector();
  return std::vector<double>(f.begin(), f.end());
}

std::vector<int> label_values(const Tensor& labels) {
  std::vector<float> f = labels.to_vector();
  return std::vector<int>(f.begin(), f.end());
}

// Labels uniform in [0, classes_used), stored as dtype; shape [N, spatial...] or with a trailing 1.
Tensor random_labels(const Shape& logits_shape, int classes_used, DType dtype, bool trailing_one, Rng& rng) {
  Shape s(logits_shape.begin(), logits_shape.end() - 1);
  if (trailing_one) s.push_back(1);
  std::vector<float> v(static_cast<size_t>(shape_numel(s)));
  for (float& x : v) x = static_cast<float>(rng.below(classes_used));
  return Tensor::from_vector(s, v, dtype);
}

struct Case {
  Shape shape;
  DType label_dtype;
  bool trailing_one;
  bool absent_class;  // the last class never appears in the labels
};

const std::vector<Case> kCases = {
    {{2, 5, 7, 2}, DType::u8, false, false},     {{3, 4, 6, 3}, DType::i32, true, true},
    {{2, 3, 4, 5, 4}, DType::i32, false, false}, {{2, 2, 3, 4, 5}, DType::u8, true, true},
    {{2, 6, 5, 4, 3}, DType::u8, false, false},
};

}  // namespace

TEST_CASE("dice_ce_loss forward matches a double-precision reference on random 2D and 3D shapes") {
  Rng rng(7);
  for (const Case& k : kCases) {
    const int C = static_cast<int>(k.shape.back());
    CAPTURE(shape_str(k.shape));
    Tensor logits = randn(k.shape, rng, 2.0f);
    Tensor labels = random_labels(k.shape, k.absent_class ? C - 1 : C, k.label_dtype, k.trailing_one, rng);
    RefParts ref = reference_dice_ce(to_double(logits), label_values(labels), C);
    float dice = -1, ce = -1;
    Tensor loss = test::dice_ce(logits, labels, &dice, &ce);
    REQUIRE(loss.shape() == Shape{1});
    REQUIRE(loss.dtype() == DType::f32);
    // The kernel computes each softmax in f32 (a few ulps per probability) and sums in double: 1e-6 relative
    // leaves room for those ulps and nothing more.
    CHECK(dice == doctest::Approx(ref.dice).epsilon(1e-6));
    CHECK(ce == doctest::Approx(ref.ce).epsilon(1e-6));
    CHECK(loss.item() == doctest::Approx(ref.dice + ref.ce).epsilon(1e-6));
  }
}

TEST_CASE("dice_ce_loss sums over more voxels than one kernel chunk and is the same for any thread count") {
  Rng rng(11);
  Shape shape{2, 20, 24, 22, 3};  // 21120 voxels: several 4096-voxel partial sums
  Tensor logits = randn(shape, rng, 3.0f);
  Tensor labels = random_labels(shape, 3, DType::u8, false, rng);
  RefParts ref = reference_dice_ce(to_double(logits), label_values(labels), 3);
  float dice = 0, ce = 0;
  float total = test::dice_ce(logits, labels, &dice, &ce).item();
  CHECK(dice == doctest::Approx(ref.dice).epsilon(1e-6));  // f32 softmax, double sums (as above)
  CHECK(ce == doctest::Approx(ref.ce).epsilon(1e-6));

  int threads = omp_get_max_threads();
  for (int t : {1, 2, 3}) {
    omp_set_num_threads(t);
    float d2 = 0, c2 = 0;
    float total2 = test::dice_ce(logits, labels, &d2, &c2).item();
    CHECK(std::memcmp(&total, &total2, 4) == 0);
    CHECK(std::memcmp(&dice, &d2, 4) == 0);
    CHECK(std::memcmp(&ce, &c2, 4) == 0);
  }
  omp_set_num_threads(threads);
}

TEST_CASE("dice_ce_loss forward and gradient are bitwise identical across runs") {
  Rng rng(3);
  Shape shape{2, 12, 10, 9, 4};
  Tensor logits = randn(shape, rng).set_requires_grad(true);
  Tensor labels = random_labels(shape, 4, DType::i32, false, rng);
  std::vector<float> first_loss, first_grad;
  for (int run = 0; run < 2; ++run) {
    logits.impl().grad.reset();
    Tensor loss = ops::dice_ce_loss(logits, labels);
    autograd::backward(loss);
    std::vector<float> l = loss.to_vector(), g = logits.grad().to_vector();
    if (run == 0) {
      first_loss = l;
      first_grad = g;
    } else {
      CHECK(std::memcmp(l.data(), first_loss.data(), 4) == 0);
      CHECK(std::memcmp(g.data(), first_grad.data(), g.size() * 4) == 0);
    }
  }
}

TEST_CASE("dice_ce_loss gradient matches finite differences (check_gradients)") {
  Rng rng(5);
  for (const Case& k : kCases) {
    CAPTURE(shape_str(k.shape));
    const int C = static_cast<int>(k.shape.back());
    Tensor logits = randn(k.shape, rng).set_requires_grad(true);
    Tensor labels = random_labels(k.shape, k.absent_class ? C - 1 : C, k.label_dtype, k.trailing_one, rng);
    // f32 central differences with h = 1e-2: the loss is O(1) and rounded to f32 (~1e-7), so the difference quotient
    // carries ~1e-5 absolute noise plus O(h^2) truncation; gradients are O(1/voxels) ~ 1e-2.
    test::check_gradients([&](const std::vector<Tensor>& in) { return ops::dice_ce_loss(in[0], labels); }, {logits},
                          1e-2, 2e-2, 2e-4);
  }
}

TEST_CASE("dice_ce_loss gradient matches double-precision finite differences of the reference on every element") {
  Rng rng(9);
  for (const Case& k : kCases) {
    CAPTURE(shape_str(k.shape));
    const int C = static_cast<int>(k.shape.back());
    Tensor logits = randn(k.shape, rng, 1.5f).set_requires_grad(true);
    Tensor labels = random_labels(k.shape, k.absent_class ? C - 1 : C, k.label_dtype, k.trailing_one, rng);
    autograd::backward(ops::dice_ce_loss(logits, labels));
    std::vector<float> analytic = logits.grad().to_vector();

    std::vector<double> z = to_double(logits);
    std::vector<int> y = label_values(labels);
    std::vector<float> numeric(z.size());
    const double h = 1e-5;  // double central differences: truncation ~h^2, rounding ~1e-16 / h, both ~1e-10
    for (size_t i = 0; i < z.size(); ++i) {
      double saved = z[i];
      z[i] = saved + h;
      RefParts plus = reference_dice_ce(z, y, C);
      z[i] = saved - h;
      RefParts minus = reference_dice_ce(z, y, C);
      z[i] = saved;
      numeric[i] = static_cast<float>(((plus.dice + plus.ce) - (minus.dice + minus.ce)) / (2 * h));
    }
    // The kernel's gradient is f32 arithmetic on f32 softmax values: relative 1e-4 with an absolute floor far below
    // the typical element (~1 / voxels ~ 1e-3).
    test::check_close(analytic, numeric, 1e-4, 1e-7, "d loss / d logits");
  }
}

TEST_CASE("dice_ce_loss in DLE's form (kDleDiceCe) matches its double-precision reference, loss and gradient") {
  Rng rng(21);
  for (const Case& k : kCases) {
    CAPTURE(shape_str(k.shape));
    const int C = static_cast<int>(k.shape.back()), N = static_cast<int>(k.shape[0]);
    Tensor logits = randn(k.shape, rng, 1.5f).set_requires_grad(true);
    Tensor labels = random_labels(k.shape, k.absent_class ? C - 1 : C, k.label_dtype, k.trailing_one, rng);
    std::vector<double> z = to_double(logits);
    std::vector<int> y = label_values(labels);
    const RefParts ref = reference_dle(z, y, C, N);
    Tensor parts;
    Tensor loss = ops::dice_ce_loss(logits, labels, &parts, nullptr, ops::kDleDiceCe);
    const std::vector<float> p = parts.to_vector();
    CHECK(p[0] == doctest::Approx(ref.dice).epsilon(1e-6));
    CHECK(p[1] == doctest::Approx(ref.ce).epsilon(1e-6));
    CHECK(loss.item() == doctest::Approx(ref.dice + ref.ce).epsilon(1e-6));
    // Not nnU-Net's value: the form matters.
    CHECK(std::abs(ops::dice_ce_loss(logits.detach(), labels).item() - loss.item()) > 1e-3);

    autograd::backward(loss);
    std::vector<float> analytic = logits.grad().to_vector(), numeric(z.size());
    const double h = 1e-5;
    for (size_t i = 0; i < z.size(); ++i) {
      const double saved = z[i];
      z[i] = saved + h;
      const RefParts plus = reference_dle(z, y, C, N);
      z[i] = saved - h;
      const RefParts minus = reference_dle(z, y, C, N);
      z[i] = saved;
      numeric[i] = static_cast<float>(((plus.dice + plus.ce) - (minus.dice + minus.ce)) / (2 * h));
    }
    test::check_close(analytic, numeric, 1e-4, 1e-7, "d loss / d logits");
  }
}

TEST_CASE("dice_ce_loss gradient is scaled by the incoming gradient") {
  Rng rng(13);
  Shape shape{2, 4, 5, 3};
  Tensor logits = randn(shape, rng).set_requires_grad(true);
  Tensor labels = random_labels(shape, 3, DType::i32, false, rng);
  autograd::backward(ops::dice_ce_loss(logits, labels));
  std::vector<float> g1 = logits.grad().to_vector();
  logits.impl().grad.reset();
  autograd::backward(ops::dice_ce_loss(logits, labels), Tensor::full({1}, -2.5f));
  std::vector<float> g2 = logits.grad().to_vector();
  for (float& g : g1) g *= -2.5f;
  test::check_close(g2, g1, 1e-6, 1e-9, "gradient with incoming -2.5");  // f32 rounding of scaled coefficients
}

TEST_CASE("a perfect confident prediction gives dice part ~0 and cross-entropy ~0") {
  Rng rng(17);
  const int C = 4;
  Shape shape{2, 6, 5, C};
  Tensor labels = random_labels(shape, C, DType::u8, false, rng);
  std::vector<int> y = label_values(labels);
  for (int c = 0; c < C; ++c) REQUIRE(std::count(y.begin(), y.end(), c) > 0);  // every class present
  std::vector<float> z(y.size() * C, 0.f);
  for (size_t v = 0; v < y.size(); ++v) z[v * C + y[v]] = 40.f;  // p(label) = 1 - 3e-17
  Tensor logits = Tensor::from_vector(shape, z);
  float dice = -1, ce = -1;
  float total = test::dice_ce(logits, labels, &dice, &ce).item();
  CHECK(std::abs(dice) < 1e-6);  // D_c = 1 - (2Y + s) / (2Y + s) up to e^-40 terms
  CHECK(std::abs(ce) < 1e-6);    // -log(1 - 3e-17)
  CHECK(std::abs(total) < 1e-6);
}

TEST_CASE("uniform logits give cross-entropy log C and the dice of p = 1/C") {
  Rng rng(19);
  for (int C : {2, 3, 5}) {
    Shape shape{3, 4, 4, 3, C};
    Tensor labels = random_labels(shape, C, DType::i32, false, rng);
    std::vector<int> y = label_values(labels);
    Tensor logits = Tensor::full(shape, 0.75f);
    float dice = 0, ce = 0;
    test::dice_ce(logits, labels, &dice, &ce);
    CHECK(ce == doctest::Approx(std::log(static_cast<double>(C))).epsilon(1e-6));  // f32 log of the sum C
    // p = 1/C everywhere: I_c = Y_c / C, P_c = V / C.
    const double V = static_cast<double>(y.size());
    double expected = 0;
    for (int c = 1; c < C; ++c) {
      double Yc = static_cast<double>(std::count(y.begin(), y.end(), c));
      expected += 1.0 - (2.0 * Yc / C + 1e-5) / (V / C + Yc + 1e-5);
    }
    expected /= C - 1;
    CHECK(dice == doctest::Approx(expected).epsilon(1e-6));  // p = 1/C rounded to f32
  }
}

TEST_CASE("the dice and cross-entropy parts sum to the returned loss") {
  Rng rng(23);
  Shape shape{2, 5, 6, 4, 3};
  Tensor logits = randn(shape, rng, 2.f);
  Tensor labels = random_labels(shape, 3, DType::u8, true, rng);
  float dice = 0, ce = 0;
  float total = test::dice_ce(logits, labels, &dice, &ce).item();
  CHECK(dice > 0.1f);
  CHECK(ce > 0.1f);
  // Each of the three is the f32 rounding of a double, so they agree to a couple of f32 ulps.
  CHECK(total == doctest::Approx(static_cast<double>(dice) + ce).epsilon(2e-7));
}

TEST_CASE("a class absent from the labels and never predicted contributes ~0 to the dice part") {
  const int C = 3;
  Shape shape{2, 3, 3, C};
  std::vector<float> lab(18), z(18 * C, 0.f);
  for (size_t v = 0; v < lab.size(); ++v) {
    lab[v] = static_cast<float>(v % 2);  // classes 0 and 1 only
    z[v * C + (v % 2)] = 40.f;           // confidently right, class 2 never predicted
  }
  float dice = -1;
  test::dice_ce(Tensor::from_vector(shape, z), Tensor::from_vector({2, 3, 3}, lab, DType::u8), &dice);
  CHECK(std::abs(dice) < 1e-6);  // smoothing: D_2 = 1 - 1e-5 / (P_2 + 1e-5), P_2 ~ 18 e^-40
}

TEST_CASE("an absent class predicted with total probability equal to the smoothing 1e-5 has dice loss 1/2") {
  // D_1 = 1 - (0 + s) / (P_1 + 0 + s) with P_1 = s: pins the smoothing constant, which is otherwise invisible.
  const int V = 10;
  const double p1 = 1e-5 / V;
  std::vector<float> z(2 * V);
  for (int v = 0; v < V; ++v) z[2 * v + 1] = static_cast<float>(std::log(p1 / (1 - p1)));
  float dice = -1;
  test::dice_ce(Tensor::from_vector({2, 5, 1, 2}, z), Tensor::zeros({2, 5, 1}, DType::u8), &dice);
  CHECK(dice == doctest::Approx(0.5).epsilon(1e-5));  // f32 logit and softmax: p1 to ~1e-6 relative
}

TEST_CASE("a label outside [0, C) is an error naming the value") {
  Shape shape{1, 2, 3, 3};
  Tensor logits = Tensor::zeros(shape);
  std::vector<float> lab = {0, 1, 2, 7, 1, 0};
  CHECK_THROWS_WITH_AS(ops::dice_ce_loss(logits, Tensor::from_vector({1, 2, 3}, lab, DType::u8)),
                       doctest::Contains("label value 7 at voxel 3"), std::invalid_argument);
  lab[3] = 1;
  lab[5] = -1;
  CHECK_THROWS_WITH_AS(ops::dice_ce_loss(logits, Tensor::from_vector({1, 2, 3}, lab, DType::i32)),
                       doctest::Contains("label value -1"), std::invalid_argument);
  lab[5] = 3;  // == C
  CHECK_THROWS_WITH_AS(ops::dice_ce_loss(logits, Tensor::from_vector({1, 2, 3, 1}, lab, DType::i32)),
                       doctest::Contains("label value 3"), std::invalid_argument);
}

TEST_CASE("labels whose shape does not match the logits, or of a float type, are errors") {
  Tensor logits = Tensor::zeros({2, 4, 4, 3});
  CHECK_THROWS_WITH_AS(ops::dice_ce_loss(logits, Tensor::zeros({2, 4, 5}, DType::u8)),
                       doctest::Contains("do not match logits"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::dice_ce_loss(logits, Tensor::zeros({2, 4, 4, 3}, DType::u8)),
                       doctest::Contains("do not match logits"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::dice_ce_loss(logits, Tensor::zeros({2, 4, 4})), doctest::Contains("i32 or u8"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ops::dice_ce_loss(Tensor::zeros({2, 4, 4, 1}), Tensor::zeros({2, 4, 4}, DType::u8)),
                       doctest::Contains("at least 2 classes"), std::invalid_argument);
}

TEST_CASE("more classes than the unrolled kernels handle use the general path with the same result") {
  Rng rng(29);
  for (int C : {9, 13}) {
    Shape shape{2, 5, 7, C};
    Tensor logits = randn(shape, rng, 2.f).set_requires_grad(true);
    Tensor labels = random_labels(shape, C, DType::i32, false, rng);
    RefParts ref = reference_dice_ce(to_double(logits), label_values(labels), C);
    float total = ops::dice_ce_loss(logits, labels).item();
    CHECK(total == doctest::Approx(ref.dice + ref.ce).epsilon(1e-6));  // as the forward test above
    test::check_gradients([&](const std::vector<Tensor>& in) { return ops::dice_ce_loss(in[0], labels); }, {logits},
                          1e-2, 2e-2, 2e-4);  // as the check_gradients test above
  }
}
