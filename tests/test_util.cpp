// Test helpers (see test_util.h).
#include "tests/test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/ops.h"

namespace unet::test {

double close_ratio(const std::vector<float>& a, const std::vector<float>& b, double rtol, double atol) {
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    double err = std::abs(static_cast<double>(a[i]) - b[i]) / (atol + rtol * std::abs(static_cast<double>(b[i])));
    if (!(err <= worst)) worst = err;  // NaN propagates as a failure
  }
  return worst;
}

void check_close(const std::vector<float>& actual, const std::vector<float>& expected, double rtol, double atol,
                 const std::string& what) {
  REQUIRE_MESSAGE(actual.size() == expected.size(), what << ": sizes " << actual.size() << " vs " << expected.size());
  size_t worst_i = 0;
  double worst = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    double err = std::abs(static_cast<double>(actual[i]) - expected[i]) /
                 (atol + rtol * std::abs(static_cast<double>(expected[i])));
    if (!(err <= worst)) {
      worst = err;
      worst_i = i;
      if (std::isnan(err)) break;
    }
  }
  CHECK_MESSAGE(worst <= 1.0, what << ": element " << worst_i << " is " << (actual.empty() ? 0.f : actual[worst_i])
                                   << ", expected " << (expected.empty() ? 0.f : expected[worst_i]) << " (error ratio "
                                   << worst << ", rtol " << rtol << ", atol " << atol << ")");
}

void check_close(const Tensor& actual, const Tensor& expected, double rtol, double atol, const std::string& what) {
  REQUIRE_MESSAGE(actual.shape() == expected.shape(),
                  what << ": shape " << shape_str(actual.shape()) << " vs " << shape_str(expected.shape()));
  check_close(actual.to_vector(), expected.to_vector(), rtol, atol, what);
}

void check_equal_or_close(const std::vector<float>& actual, const std::vector<float>& expected, double rtol, double atol,
                          const std::string& what) {
  if (rtol == 0 && atol == 0)
    CHECK_MESSAGE(actual == expected, what << " differs from the cpu");
  else
    check_close(actual, expected, rtol, atol, what);
}

void check_op_against_cpu(Device device, const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, double rtol, double atol) {
  auto run = [&](Device d, Tensor* out, std::vector<Tensor>* grads) {
    std::vector<Tensor> xs;
    for (const Tensor& x : inputs) {
      Tensor t = x.clone().to(d);
      if (x.dtype() == DType::f32) t.set_requires_grad(true);
      xs.push_back(t);
    }
    *out = f(xs);
    Rng rng(99);
    Tensor g = randn(out->shape(), rng);
    if (out->dtype() != DType::f32) g = ops::cast(g, out->dtype());
    autograd::backward(*out, g.to(d));
    for (const Tensor& x : xs) grads->push_back(x.requires_grad() ? x.grad() : Tensor());
  };
  Tensor y_cpu, y_dev;
  std::vector<Tensor> g_cpu, g_dev;
  run(Device::cpu, &y_cpu, &g_cpu);
  run(device, &y_dev, &g_dev);
  REQUIRE(y_dev.device() == device);
  check_equal_or_close(y_dev.to_vector(), y_cpu.to_vector(), rtol, atol, "output");
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!g_cpu[i].defined()) continue;
    REQUIRE(g_dev[i].defined());
    CHECK(g_dev[i].device() == device);
    check_equal_or_close(g_dev[i].to_vector(), g_cpu[i].to_vector(), rtol, atol, "gradient " + std::to_string(i));
  }
}

// x rounded to dt and back to f32 (no autograd).
static Tensor round_trip(const Tensor& x, DType dt) {
  autograd::NoGradGuard no_grad;
  return ops::cast(ops::cast(x, dt), DType::f32);
}

void check_mixed_precision(Device device, DType dt, const std::function<Tensor(const std::vector<Tensor>&)>& f,
                           const std::vector<Tensor>& inputs, const std::vector<Role>& roles, double rtol,
                           double atol) {
  REQUIRE(roles.size() == inputs.size());
  std::vector<Tensor> low, ref;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& x = inputs[i];
    low.push_back((roles[i] == Role::activation ? ops::cast(x, dt) : x.clone()).to(device).set_requires_grad(true));
    ref.push_back((roles[i] == Role::f32 ? x.clone() : round_trip(x, dt)).set_requires_grad(true));
  }
  // One graph at a time: backward consumes the whole tape.
  Tensor y_low = f(low);
  REQUIRE(y_low.dtype() == dt);
  REQUIRE(y_low.device() == device);
  Rng rng(99);
  const Tensor g = round_trip(randn(y_low.shape(), rng), dt);
  autograd::backward(y_low, ops::cast(g, dt).to(device));
  Tensor y_ref = f(ref);
  autograd::backward(y_ref, g);
  const std::string where = std::string(dtype_name(dt)) + " on " + device_name(device);
  check_equal_or_close(y_low.to_vector(), round_trip(y_ref, dt).to_vector(), rtol, atol, "output, " + where);
  for (size_t i = 0; i < inputs.size(); ++i) {
    REQUIRE(low[i].grad().defined());
    const bool activation = roles[i] == Role::activation;
    CHECK(low[i].grad().dtype() == (activation ? dt : DType::f32));
    const Tensor expected = activation ? round_trip(ref[i].grad(), dt) : ref[i].grad();
    check_equal_or_close(low[i].grad().to_vector(), expected.to_vector(), rtol, atol,
                         "gradient " + std::to_string(i) + ", " + where);
  }
}

Tensor dice_ce(const Tensor& logits, const Tensor& labels, float* dice, float* ce) {
  Tensor parts;
  Tensor loss = ops::dice_ce_loss(logits, labels, &parts);
  const std::vector<float> v = parts.to_vector();
  if (dice) *dice = v[0];
  if (ce) *ce = v[1];
  return loss;
}

static double weighted_sum(const Tensor& out, const std::vector<float>& r) {
  std::vector<float> v = out.to_vector();
  double s = 0.0;
  for (size_t i = 0; i < v.size(); ++i) s += static_cast<double>(v[i]) * r[i];
  return s;
}

void check_gradients(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs, double h,
                     double rtol, double atol, int max_checks, uint64_t seed,
                     const std::function<Tensor(const std::vector<Tensor>&)>& reference) {
  const auto& numeric_f = reference ? reference : f;
  Rng rng(seed);
  Tensor out = f(inputs);
  Tensor r = randn(out.shape(), rng);
  std::vector<float> rv = r.to_vector();
  for (Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) t.impl().grad.reset();
  autograd::backward(out, r);

  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor& x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
    REQUIRE_MESSAGE(x.grad().defined(), "input " << k << " received no gradient");
    std::vector<float> analytic = x.grad().to_vector();
    int64_t n = x.numel();
    std::vector<int64_t> probe;
    if (n <= max_checks) {
      for (int64_t i = 0; i < n; ++i) probe.push_back(i);
    } else {
      probe = {0, n - 1};
      while (static_cast<int>(probe.size()) < max_checks) probe.push_back(rng.below(n));
    }
    float* xp = x.data<float>();
    std::vector<float> numeric, picked;
    {
      autograd::NoGradGuard no_grad;
      for (int64_t i : probe) {
        float saved = xp[i];
        float hi = static_cast<float>(saved + h), lo = static_cast<float>(saved - h);  // the steps really taken
        xp[i] = hi;
        double plus = weighted_sum(numeric_f(inputs), rv);
        xp[i] = lo;
        double minus = weighted_sum(numeric_f(inputs), rv);
        xp[i] = saved;
        numeric.push_back(static_cast<float>((plus - minus) / (static_cast<double>(hi) - lo)));
        picked.push_back(analytic[static_cast<size_t>(i)]);
      }
    }
    check_close(picked, numeric, rtol, atol, "gradient of input " + std::to_string(k));
  }
}

int shell(const std::string& command, std::string* output) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) text.append(buf, n);
  const int status = pclose(pipe);
  if (output) *output = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string tool_path(const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path exe = fs::read_symlink("/proc/self/exe").parent_path() / name;
  REQUIRE_MESSAGE(fs::exists(exe), exe.string() << " is not built");
  return exe.string();
}

int run_tool(const std::string& name, const std::string& args, std::string* output) {
  return shell(tool_path(name) + " " + args, output);
}

std::string write_text(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

TempDir::TempDir(const std::string& tag) {
  namespace fs = std::filesystem;
  fs::path d = fs::temp_directory_path() / ("unet_test_" + std::to_string(::getpid()) + "_" + tag);
  fs::remove_all(d);
  fs::create_directories(d);
  path = d.string();
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

std::string TempDir::operator/(const std::string& name) const { return path + "/" + name; }

}  // namespace unet::test
