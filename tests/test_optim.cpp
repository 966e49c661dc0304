// Optimizers (engine/optim.h): AdamW, Adam and SGD against golden values from torch.optim (tests/golden/optim.json,
// written by tests/golden/make_optim_golden.py) and against a scalar double-precision reference written here from
// the torch.optim formulas; skipping on inf/nan, gradient unscaling, lazy state and checkpoint state round trips.
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "engine/optim.h"
#include "tests/test_util.h"

using namespace unet;
using json = nlohmann::json;

namespace {

// ---- golden values from torch.optim ----

const json& golden() {
  static const json data = [] {
    std::ifstream f(UNET_TEST_DATA_DIR "/optim.json");
    REQUIRE_MESSAGE(f.good(), "cannot open " UNET_TEST_DATA_DIR "/optim.json");
    return json::parse(f);
  }();
  return data;
}

const json& golden_case(const std::string& name) {
  for (const json& c : golden()["cases"])
    if (c["name"] == name) return c;
  FAIL("no golden case " << name);
  throw std::logic_error("unreachable");
}

std::vector<Tensor> golden_params() {
  std::vector<Tensor> ps;
  const json& g = golden();
  for (size_t i = 0; i < g["shapes"].size(); ++i) {
    Shape s = g["shapes"][i].get<Shape>();
    ps.push_back(Tensor::from_vector(s, g["params"][i].get<std::vector<float>>()).set_requires_grad(true));
  }
  return ps;
}

std::unique_ptr<Optimizer> make_optimizer(const json& c, std::vector<Tensor> params) {
  const json& h = c["hyper"];
  std::string kind = c["optimizer"];
  if (kind == "SGD") {
    SgdOptions o;
    o.lr = h["lr"];
    o.momentum = h["momentum"];
    o.nesterov = h["nesterov"];
    o.weight_decay = h["weight_decay"];
    return std::make_unique<SGD>(std::move(params), o);
  }
  AdamOptions o;
  o.lr = h["lr"];
  o.beta1 = h["beta1"];
  o.beta2 = h["beta2"];
  o.eps = h["eps"];
  o.weight_decay = h["weight_decay"];
  if (kind == "AdamW") return std::make_unique<AdamW>(std::move(params), o);
  REQUIRE(kind == "Adam");
  return std::make_unique<Adam>(std::move(params), o);
}

void set_golden_grads(std::vector<Tensor>& params, size_t step) {
  const json& row = golden()["grads"][step];
  for (size_t i = 0; i < params.size(); ++i) {
    if (row[i].is_null())
      params[i].impl().grad.reset();
    else
      params[i].set_grad(Tensor::from_vector(params[i].shape(), row[i].get<std::vector<float>>()));
  }
}

// torch and the fused kernel are both f32 but may round a multiply-add differently (FMA contraction, operation
// order): a few ulps per step, far below 1e-6 relative; atol covers elements that pass close to zero.
constexpr double kGoldenRtol = 1e-6, kGoldenAtol = 1e-7;

// Runs a golden case step by step, checking every parameter after every step; returns the optimizer.
std::unique_ptr<Optimizer> run_golden_case(const std::string& name) {
  const json& c = golden_case(name);
  std::vector<Tensor> params = golden_params();
  auto opt = make_optimizer(c, params);
  const json& after = c["after"];
  for (size_t step = 0; step < after.size(); ++step) {
    set_golden_grads(params, step);
    REQUIRE(opt->step());
    for (size_t i = 0; i < params.size(); ++i)
      test::check_close(params[i].to_vector(), after[step][i].get<std::vector<float>>(), kGoldenRtol, kGoldenAtol,
                        name + " step " + std::to_string(step + 1) + " parameter " + std::to_string(i));
  }
  CHECK(opt->step_count() == static_cast<int64_t>(after.size()));
  return opt;
}

// ---- scalar double-precision reference, from the torch.optim 1.13 formulas ----

struct RefParam {
  std::vector<double> p, m, v, buf;
  int64_t step = 0;  // Adam: this parameter's step count
};

void ref_adam(RefParam& s, std::vector<double> g, const AdamOptions& o, double lr, bool decoupled) {
  if (s.step == 0) s.m.assign(s.p.size(), 0.0), s.v.assign(s.p.size(), 0.0);
  ++s.step;
  double bc1 = 1 - std::pow(o.beta1, s.step), bc2 = 1 - std::pow(o.beta2, s.step);
  for (size_t i = 0; i < s.p.size(); ++i) {
    if (decoupled)
      s.p[i] *= 1 - lr * o.weight_decay;
    else
      g[i] += o.weight_decay * s.p[i];
    s.m[i] = o.beta1 * s.m[i] + (1 - o.beta1) * g[i];
    s.v[i] = o.beta2 * s.v[i] + (1 - o.beta2) * g[i] * g[i];
    s.p[i] -= lr / bc1 * s.m[i] / (std::sqrt(s.v[i]) / std::sqrt(bc2) + o.eps);
  }
}

void ref_sgd(RefParam& s, const std::vector<double>& g, const SgdOptions& o, double lr) {
  const bool first = s.buf.empty();  // torch: the momentum buffer is created from d on a parameter's first step
  if (first && o.momentum != 0) s.buf.assign(s.p.size(), 0.0);
  for (size_t i = 0; i < s.p.size(); ++i) {
    double d = g[i] + o.weight_decay * s.p[i];
    if (o.momentum != 0) {
      s.buf[i] = first ? d : o.momentum * s.buf[i] + d;
      d = o.nesterov ? d + o.momentum * s.buf[i] : s.buf[i];
    }
    s.p[i] -= lr * d;
  }
}

std::vector<double> as_double(const std::vector<float>& f) {
  return std::vector<double>(f.begin(), f.end());
}
std::vector<float> as_float(const std::vector<double>& d) {
  return std::vector<float>(d.begin(), d.end());
}

// The fused f32 kernel against the double reference: f32 rounding of the state and the update, a few ulps per step
// over 6 steps, stays well inside 1e-6 relative; atol for elements near zero (parameters are O(1)).
constexpr double kRefRtol = 1e-6, kRefAtol = 1e-7;

enum class Kind { adamw, adam, sgd };

// Several steps on three parameters (one large enough for many kernel pieces and both threads, one with a vector
// tail), with a parameter lacking a gradient at step 2, a learning-rate change at step 4 and an inv_scale.
void run_against_reference(Kind kind, const AdamOptions& ao, const SgdOptions& so, float inv_scale) {
  Rng rng(42);
  std::vector<int64_t> sizes = {7, 40000, 33};
  std::vector<Tensor> params;
  std::vector<RefParam> ref(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    params.push_back(randn({sizes[i]}, rng).set_requires_grad(true));
    ref[i].p = as_double(params[i].to_vector());
  }
  std::unique_ptr<Optimizer> opt;
  if (kind == Kind::adamw) opt = std::make_unique<AdamW>(params, ao);
  if (kind == Kind::adam) opt = std::make_unique<Adam>(params, ao);
  if (kind == Kind::sgd) opt = std::make_unique<SGD>(params, so);
  double lr = kind == Kind::sgd ? so.lr : ao.lr;
  for (int step = 1; step <= 6; ++step) {
    if (step == 4) {
      lr *= 0.5;
      opt->set_lr(lr);
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (step == 2 && i == 0) {
        params[i].impl().grad.reset();
        continue;
      }
      Tensor g = randn({sizes[i]}, rng, 0.5f);
      params[i].set_grad(g);
      std::vector<double> gd = as_double(g.to_vector());
      for (double& x : gd) x *= static_cast<double>(inv_scale);
      if (kind == Kind::sgd)
        ref_sgd(ref[i], gd, so, lr);
      else
        ref_adam(ref[i], gd, ao, lr, kind == Kind::adamw);
    }
    REQUIRE(opt->step(inv_scale));
    for (size_t i = 0; i < sizes.size(); ++i)
      test::check_close(params[i].to_vector(), as_float(ref[i].p), kRefRtol, kRefAtol,
                        "step " + std::to_string(step) + " parameter " + std::to_string(i));
  }
  // The optimizer's own state against the reference state.
  std::map<std::string, Tensor> state;
  for (auto& [n, t] : opt->state()) state[n] = t;
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::string idx = std::to_string(i);
    // exp_avg and the momentum buffer are running sums of signed gradients (terms ~0.05 and ~0.5 here) that cancel,
    // so their f32 error is a few ulps of the terms, not of the result: absolute 1e-7 and 1e-6. exp_avg_sq sums
    // positive terms and keeps the relative bound.
    if (kind == Kind::sgd) {
      if (so.momentum == 0) {
        CHECK(state.empty());  // no momentum, no buffer (as torch)
        continue;
      }
      REQUIRE(state.count("momentum_buffer." + idx));
      test::check_close(state["momentum_buffer." + idx].to_vector(), as_float(ref[i].buf), kRefRtol, 1e-6,
                        "momentum_buffer." + idx);
    } else {
      REQUIRE(state.count("exp_avg." + idx));
      test::check_close(state["exp_avg." + idx].to_vector(), as_float(ref[i].m), kRefRtol, 1e-7, "exp_avg." + idx);
      test::check_close(state["exp_avg_sq." + idx].to_vector(), as_float(ref[i].v), kRefRtol, 1e-12,
                        "exp_avg_sq." + idx);
      CHECK(state["step." + idx].item() == static_cast<float>(ref[i].step));
    }
  }
}

std::vector<std::vector<float>> snapshot(const std::vector<Tensor>& ts) {
  std::vector<std::vector<float>> out;
  for (const Tensor& t : ts) out.push_back(t.to_vector());
  return out;
}

bool bitwise_equal(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].size() != b[i].size() || std::memcmp(a[i].data(), b[i].data(), a[i].size() * 4) != 0) return false;
  return true;
}

std::vector<std::unique_ptr<Optimizer>> one_of_each(const std::vector<Tensor>& params) {
  std::vector<std::unique_ptr<Optimizer>> out;
  out.push_back(std::make_unique<AdamW>(params));
  out.push_back(std::make_unique<Adam>(params));
  out.push_back(std::make_unique<SGD>(params));
  return out;
}

}  // namespace

TEST_CASE("AdamW matches torch.optim.AdamW golden values after every step") {
  run_golden_case("adamw");
  run_golden_case("adamw_dle_defaults");
}

TEST_CASE("Adam with L2 weight decay matches torch.optim.Adam golden values after every step") {
  run_golden_case("adam_l2");
}

TEST_CASE("SGD with Nesterov momentum matches torch.optim.SGD golden values after every step") {
  run_golden_case("sgd_nesterov");
}

TEST_CASE("SGD with plain momentum matches torch.optim.SGD golden values after every step") {
  run_golden_case("sgd_momentum");
}

TEST_CASE("optimizer state after the golden runs matches torch's state entry by entry") {
  for (const char* name : {"adamw", "adam_l2", "sgd_nesterov", "sgd_momentum"}) {
    CAPTURE(name);
    auto opt = run_golden_case(name);
    const json& expected = golden_case(name)["state"];
    auto state = opt->state();
    CHECK(state.size() == expected.size());
    for (auto& [n, t] : state) {
      CAPTURE(n);
      REQUIRE(expected.contains(n));
      test::check_close(t.to_vector(), expected[n].get<std::vector<float>>(), kGoldenRtol, 1e-9, n);
    }
  }
}

TEST_CASE("AdamW matches the scalar reference of the torch formulas over several steps") {
  AdamOptions o;
  o.lr = 3e-3;
  o.weight_decay = 0.05;
  run_against_reference(Kind::adamw, o, {}, 1.0f);
}

TEST_CASE("Adam adds weight decay to the gradient, matching the scalar reference") {
  AdamOptions o;
  o.lr = 3e-3;
  o.beta1 = 0.8;
  o.beta2 = 0.95;
  o.eps = 1e-4;
  o.weight_decay = 0.05;
  run_against_reference(Kind::adam, o, {}, 1.0f);
}

TEST_CASE("SGD with Nesterov momentum, plain momentum and no momentum matches the scalar reference") {
  SgdOptions nesterov;
  nesterov.weight_decay = 1e-3;
  run_against_reference(Kind::sgd, {}, nesterov, 1.0f);
  SgdOptions plain;
  plain.nesterov = false;
  plain.momentum = 0.9;
  run_against_reference(Kind::sgd, {}, plain, 1.0f);
  SgdOptions none;
  none.nesterov = false;
  none.momentum = 0.0;
  none.lr = 0.1;
  run_against_reference(Kind::sgd, {}, none, 1.0f);
}

TEST_CASE("inv_scale multiplies every gradient before use") {
  // A non-power-of-two factor against the reference (which multiplies in double).
  AdamOptions o;
  o.lr = 1e-2;
  run_against_reference(Kind::adamw, o, {}, 0.37f);
  SgdOptions so;
  run_against_reference(Kind::sgd, {}, so, 0.37f);

  // Loss scaling by 2^k with inv_scale 2^-k is exact, so the result is bitwise that of the unscaled gradients.
  Rng rng(8);
  Tensor init = randn({100}, rng), grad = randn({100}, rng, 1e-3f);
  for (int which = 0; which < 3; ++which) {
    Tensor a = init.clone().set_requires_grad(true), b = init.clone().set_requires_grad(true);
    auto oa = std::move(one_of_each({a})[static_cast<size_t>(which)]);
    auto ob = std::move(one_of_each({b})[static_cast<size_t>(which)]);
    for (int step = 0; step < 3; ++step) {
      a.set_grad(grad.clone());
      Tensor scaled = grad.clone();
      for (int64_t i = 0; i < 100; ++i) scaled.data<float>()[i] *= 65536.f;
      b.set_grad(scaled);
      REQUIRE(oa->step());
      REQUIRE(ob->step(1.f / 65536.f));
    }
    CAPTURE(oa->name());
    CHECK(bitwise_equal(snapshot({a}), snapshot({b})));
    CHECK(std::abs(a.to_vector()[0] - init.to_vector()[0]) > 0.f);  // the steps did move the parameter
  }
}

TEST_CASE("a step with an inf or nan gradient is skipped: parameters, state and step count unchanged") {
  Rng rng(4);
  for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    for (int which = 0; which < 3; ++which) {
      std::vector<Tensor> params = {randn({20}, rng).set_requires_grad(true),
                                    randn({50000}, rng).set_requires_grad(true)};
      auto opt = std::move(one_of_each(params)[static_cast<size_t>(which)]);
      CAPTURE(opt->name());
      CAPTURE(bad);
      // First step with an inf in the second parameter's gradient: nothing may change, and no state appears.
      auto before = snapshot(params);
      params[0].set_grad(randn({20}, rng));
      Tensor g1 = randn({50000}, rng);
      g1.data<float>()[31337] = bad;
      params[1].set_grad(g1);
      CHECK_FALSE(opt->step());
      CHECK(bitwise_equal(snapshot(params), before));
      CHECK(opt->state().empty());
      CHECK(opt->step_count() == 0);
      // A good step, then a bad one: parameters and state stay exactly as after the good step.
      params[1].set_grad(randn({50000}, rng));
      REQUIRE(opt->step());
      auto params_after_good = snapshot(params);
      std::vector<Tensor> state_tensors;
      for (auto& [n, t] : opt->state()) state_tensors.push_back(t.clone());
      params[0].grad().data<float>()[3] = bad;
      CHECK_FALSE(opt->step());
      CHECK(bitwise_equal(snapshot(params), params_after_good));
      std::vector<Tensor> state_now;
      for (auto& [n, t] : opt->state()) state_now.push_back(t);
      CHECK(bitwise_equal(snapshot(state_now), snapshot(state_tensors)));
      CHECK(opt->step_count() == 1);
    }
  }
}

TEST_CASE("a finite gradient that overflows when multiplied by inv_scale skips the step") {
  Tensor p = Tensor::from_vector({3}, {1, 2, 3}).set_requires_grad(true);
  AdamW opt({p});
  p.set_grad(Tensor::from_vector({3}, {1e30f, 1, 1}));
  CHECK_FALSE(opt.step(1e10f));  // 1e40 is not an f32
  CHECK(p.to_vector() == std::vector<float>{1, 2, 3});
  CHECK(opt.step(1e-10f));
}

TEST_CASE("parameters without a gradient are left untouched and take no state") {
  Rng rng(6);
  for (int which = 0; which < 3; ++which) {
    std::vector<Tensor> params = {randn({10}, rng).set_requires_grad(true), randn({10}, rng).set_requires_grad(true)};
    auto opt = std::move(one_of_each(params)[static_cast<size_t>(which)]);
    CAPTURE(opt->name());
    auto before0 = params[0].to_vector(), before1 = params[1].to_vector();
    params[0].set_grad(randn({10}, rng));
    REQUIRE(opt->step());
    CHECK(params[0].to_vector() != before0);
    CHECK(params[1].to_vector() == before1);
    CHECK_FALSE(opt->state().empty());
    for (auto& [n, t] : opt->state()) CHECK(n.substr(n.rfind('.')) == ".0");
  }
}

TEST_CASE("restoring the named state into a fresh optimizer continues exactly like the original") {
  Rng rng(10);
  for (int which = 0; which < 3; ++which) {
    std::vector<Tensor> params = {randn({40}, rng).set_requires_grad(true), randn({7}, rng).set_requires_grad(true)};
    auto opt = std::move(one_of_each(params)[static_cast<size_t>(which)]);
    CAPTURE(opt->name());
    for (int step = 0; step < 3; ++step) {
      for (Tensor& p : params) p.set_grad(randn(p.shape(), rng));
      REQUIRE(opt->step());
    }
    // "Checkpoint": copies of the parameters and of every named state entry, loaded into a new optimizer.
    std::vector<Tensor> copies;
    for (Tensor& p : params) copies.push_back(p.clone().set_requires_grad(true));
    auto restored = std::move(one_of_each(copies)[static_cast<size_t>(which)]);
    for (auto& [n, t] : opt->state()) restored->set_state(n, t.clone());
    restored->set_step_count(opt->step_count());
    REQUIRE(restored->state().size() == opt->state().size());
    for (size_t i = 0; i < params.size(); ++i) {
      Tensor g = randn(params[i].shape(), rng);
      params[i].set_grad(g);
      copies[i].set_grad(g.clone());
    }
    REQUIRE(opt->step());
    REQUIRE(restored->step());
    CHECK(bitwise_equal(snapshot(params), snapshot(copies)));
    CHECK(restored->step_count() == 4);
  }
}

TEST_CASE("set_state rejects unknown names, missing parameters and wrong shapes") {
  Tensor p = Tensor::zeros({4}).set_requires_grad(true);
  AdamW adam({p});
  CHECK_THROWS_WITH_AS(adam.set_state("momentum_buffer.0", Tensor::zeros({4})), doctest::Contains("unknown state"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(adam.set_state("exp_avg.1", Tensor::zeros({4})), doctest::Contains("names no parameter"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(adam.set_state("exp_avg.0", Tensor::zeros({5})), doctest::Contains("expected the shape"),
                       std::invalid_argument);
  SGD sgd({p});
  CHECK_THROWS_WITH_AS(sgd.set_state("step.0", Tensor::zeros({1})), doctest::Contains("unknown state"),
                       std::invalid_argument);
}

TEST_CASE("defaults are DLE's AdamW and MIC-DKFZ's SGD") {
  Tensor p = Tensor::zeros({1}).set_requires_grad(true);
  AdamW adamw({p});
  CHECK(adamw.lr() == 8e-4);
  CHECK(adamw.options().beta1 == 0.9);
  CHECK(adamw.options().beta2 == 0.999);
  CHECK(adamw.options().eps == 1e-8);
  CHECK(adamw.options().weight_decay == 1e-4);
  SGD sgd({p});
  CHECK(sgd.lr() == 1e-2);
  CHECK(sgd.options().momentum == 0.99);
  CHECK(sgd.options().nesterov);
  CHECK(sgd.options().weight_decay == 3e-5);
}

TEST_CASE("zero_grad drops every parameter's gradient") {
  Tensor a = Tensor::zeros({2}).set_requires_grad(true), b = Tensor::zeros({3}).set_requires_grad(true);
  a.set_grad(Tensor::full({2}, 1.f));
  b.set_grad(Tensor::full({3}, 1.f));
  SGD opt({a, b});
  opt.zero_grad();
  CHECK_FALSE(a.grad().defined());
  CHECK_FALSE(b.grad().defined());
  CHECK(opt.step());  // nothing to update: a no-op step
  CHECK(a.to_vector() == std::vector<float>{0, 0});
}

TEST_CASE("optimizer construction and step reject invalid parameters and gradients") {
  Tensor leaf = Tensor::zeros({2}).set_requires_grad(true);
  CHECK_THROWS_WITH_AS(AdamW({Tensor::zeros({2})}), doctest::Contains("not a leaf requiring grad"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(SGD({leaf, leaf}), doctest::Contains("listed twice"), std::invalid_argument);
  AdamW opt({leaf.set_name("conv.weight")});
  leaf.set_grad(Tensor::zeros({3}));
  CHECK_THROWS_WITH_AS(opt.step(), doctest::Contains("'conv.weight'"), std::invalid_argument);
  CHECK_THROWS_AS(opt.set_lr(-1.0), std::invalid_argument);
}
