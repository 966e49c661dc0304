// Dynamic loss scaling (engine/loss_scaler.h) with torch.amp.GradScaler's semantics, alone and inside a training step
// (models::train_step): skipped steps halve the scale and change no weight, the scale doubles after the growth
// interval, its state survives the training state's metadata, bf16 and f32 run unscaled, and an fp16 run started
// with an overflowing scale recovers.
#include <doctest/doctest.h>

#include <cmath>

#include "engine/loss_scaler.h"
#include "io/synthetic.h"
#include "models/nnunet_plan.h"
#include "models/trainer.h"
#include "tests/test_util.h"

using namespace unet;

namespace {

LossScalerOptions dynamic(double init, int64_t interval) {
  LossScalerOptions o;
  o.enabled = true;
  o.init_scale = init;
  o.growth_interval = interval;
  return o;
}

// One synthetic 16^3 case as a batch of one, and a small DynUNet for it.
struct TinyProblem {
  Tensor x, y;
  models::DynUNetConfig cfg;
  TinyProblem() {
    io::SynthOptions o;
    o.output = "unused";  // only the in-memory case is made
    o.size = {16, 16, 16};
    io::SynthCase sc = io::make_synthetic_case(o, 0);
    x = sc.image.clone().reshape({1, 16, 16, 16, 1});
    float* px = x.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) px[i] = (px[i] - 200.f) / 150.f;
    y = Tensor::from_vector({1, 16, 16, 16}, sc.label.to_vector(), DType::i32);
    models::UNetPlan plan = models::plan_unet({16, 16, 16}, {1, 1, 1}, 2);
    cfg = {1, 3, plan.kernels, plan.strides, {8, 16, 16}};
  }
};

std::vector<std::vector<float>> values(const models::DynUNet& net) {
  std::vector<std::vector<float>> v;
  for (const Tensor& p : net.parameters()) v.push_back(p.to_vector());
  return v;
}

}  // namespace

TEST_CASE("GradScaler defaults: start at 2^16, halve and reset the counter on a skipped step") {
  LossScaler s(dynamic(65536, 2000));
  CHECK(s.scale() == 65536.f);
  s.update(true);
  s.update(true);
  CHECK(s.growth_tracker() == 2);
  s.update(false);
  CHECK(s.scale() == 32768.f);
  CHECK(s.growth_tracker() == 0);
  CHECK(s.skipped_steps() == 1);
  s.update(false);
  CHECK(s.scale() == 16384.f);
  CHECK(s.skipped_steps() == 2);
}

TEST_CASE("the scale doubles after growth_interval finite steps in a row, and never to infinity") {
  LossScaler s(dynamic(1024, 3));
  s.update(true);
  s.update(true);
  CHECK(s.scale() == 1024.f);
  s.update(true);
  CHECK(s.scale() == 2048.f);
  CHECK(s.growth_tracker() == 0);
  s.update(true);
  s.update(false);  // a skip restarts the count
  s.update(true);
  s.update(true);
  CHECK(s.scale() == 1024.f);
  s.update(true);
  CHECK(s.scale() == 2048.f);
  LossScaler top(dynamic(std::ldexp(1.0, 127), 1));
  top.update(true);  // 2^128 is not a finite f32: the scale stays
  CHECK(top.scale() == std::ldexp(1.f, 127));
}

TEST_CASE("disabled (bf16 and f32 by default) the scale is 1 and only skipped steps are counted") {
  LossScaler s;
  CHECK(s.scale() == 1.f);
  s.update(false);
  s.update(true);
  CHECK(s.scale() == 1.f);
  CHECK(s.skipped_steps() == 1);
  CHECK(s.growth_tracker() == 0);
}

TEST_CASE("the scaler's state round-trips through metadata, and bad entries are named") {
  LossScaler a(dynamic(65536, 5));
  for (bool stepped : {true, false, true, true}) a.update(stepped);
  LossScaler b(dynamic(65536, 5));
  b.from_metadata(a.to_metadata());
  CHECK(b.scale() == a.scale());
  CHECK(b.growth_tracker() == 2);
  CHECK(b.skipped_steps() == 1);
  auto m = a.to_metadata();
  m["loss_scale"] = "inf";
  CHECK_THROWS_WITH_AS(b.from_metadata(m), doctest::Contains("'loss_scale' = 'inf'"), std::invalid_argument);
  m = a.to_metadata();
  m.erase("skipped_steps");
  CHECK_THROWS_WITH_AS(b.from_metadata(m), doctest::Contains("no 'skipped_steps'"), std::invalid_argument);
  CHECK_THROWS_AS(LossScaler(dynamic(0, 5)), std::invalid_argument);
  CHECK_THROWS_AS(LossScaler(dynamic(1, 0)), std::invalid_argument);
}

TEST_CASE("a power-of-two loss scale leaves an f32 training step bit for bit unchanged") {
  // The scale multiplies the loss gradient and the optimizer divides it out: with powers of two both are exact, so a
  // scaled step must give the very weights of an unscaled one (this fails if the unscaling were missing or applied
  // twice).
  TinyProblem t;
  models::DynUNet a(t.cfg), b(t.cfg);
  a.initialize(1);
  b.initialize(1);
  AdamW oa(a.parameters()), ob(b.parameters());
  LossScaler scaler(dynamic(1024, 2000));
  for (int i = 0; i < 2; ++i) {
    models::train_step(a, oa, t.x, t.y);
    const models::StepStats st = models::train_step(b, ob, t.x, t.y, Precision::fp32, &scaler);
    CHECK(st.stepped);
    CHECK(st.loss_scale == 1024.0);
  }
  CHECK(values(a) == values(b));
}

TEST_CASE("an fp16 run started with an overflowing loss scale skips, halves and recovers") {
  // 2^40 times the logits' gradient overflows f16 (largest finite 65504): the first steps must be skipped without
  // touching a weight, each halving the scale, until the scaled gradients fit; then steps are taken and the loss falls.
  TinyProblem t;
  models::DynUNet net(t.cfg);
  net.initialize(2);
  AdamW opt(net.parameters(), AdamOptions{1e-2, 0.9, 0.999, 1e-8, 0});
  LossScaler scaler(dynamic(std::ldexp(1.0, 40), 2000));
  const auto initial = values(net);
  int64_t skipped = 0;
  double first_loss = -1, last_loss = 0;
  for (int i = 0; i < 60; ++i) {
    const models::StepStats st = models::train_step(net, opt, t.x, t.y, Precision::fp16, &scaler);
    if (!st.stepped) {
      ++skipped;
      CHECK(values(net) == initial);  // nothing moved while skipping
      CHECK(opt.step_count() == 0);
      continue;
    }
    if (first_loss < 0) first_loss = st.loss();
    last_loss = st.loss();
  }
  CHECK(skipped >= 10);  // at least 2^40 -> 2^30: a logit gradient of 1e-4 overflows above 2^29
  CHECK(skipped == scaler.skipped_steps());
  CHECK(scaler.scale() == static_cast<float>(std::ldexp(1.0, 40 - static_cast<int>(skipped))));
  CHECK(opt.step_count() == 60 - skipped);
  CHECK(opt.step_count() >= 20);
  CHECK(last_loss < 0.8 * first_loss);
}

TEST_CASE("mixed-precision training steps follow the f32 ones closely, with f32 master weights") {
  TinyProblem t;
  for (Precision p : {Precision::bf16, Precision::fp16}) {
    CAPTURE(std::string(precision_name(p)));
    models::DynUNet ref(t.cfg), mixed(t.cfg);
    ref.initialize(3);
    mixed.initialize(3);
    AdamW oref(ref.parameters(), AdamOptions{1e-3, 0.9, 0.999, 1e-8, 0});
    AdamW omix(mixed.parameters(), AdamOptions{1e-3, 0.9, 0.999, 1e-8, 0});
    LossScaler scaler(dynamic(65536, 2000));
    for (int i = 0; i < 5; ++i) {
      const double lr = models::train_step(ref, oref, t.x, t.y).loss();
      const models::StepStats st = models::train_step(mixed, omix, t.x, t.y, p, &scaler);
      REQUIRE(st.stepped);
      // The loss of a 16-bit forward pass is within a few 2^-8 (bf16's precision) of the f32 one.
      CHECK(std::abs(st.loss() - lr) <= 0.02 * lr);
    }
    for (const Tensor& w : mixed.parameters()) CHECK(w.dtype() == DType::f32);
  }
}
