// Helpers shared by the tests: random tensors, closeness checks, and gradient checks by central differences.
#pragma once
#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/random.h"
#include "engine/tensor.h"

namespace unet::test {

// Largest |a - b| / (atol + rtol * |b|) over all elements; <= 1 means close. Shapes must match.
double close_ratio(const std::vector<float>& a, const std::vector<float>& b, double rtol, double atol);

// CHECKs that `actual` matches `expected` elementwise within atol + rtol * |expected|, reporting the worst element.
void check_close(const Tensor& actual, const Tensor& expected, double rtol, double atol, const std::string& what = "");
void check_close(const std::vector<float>& actual, const std::vector<float>& expected, double rtol, double atol,
                 const std::string& what = "");

// Like check_close, but bitwise equality when rtol and atol are both 0.
void check_equal_or_close(const std::vector<float>& actual, const std::vector<float>& expected, double rtol, double atol,
                          const std::string& what);

// Runs f on CPU copies and on `device` copies of `inputs` (every f32 input requires grad), backward from the output
// with a fixed random gradient, and checks the device's output and input gradients against the CPU's within rtol /
// atol (bitwise when both are 0).
void check_op_against_cpu(Device device, const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, double rtol, double atol);

// Checks the gradient of L = sum(f(inputs) * r) (r a fixed random tensor) with respect to every input that
// requires grad, against central differences (L(x + h e_i) - L(x - h e_i)) / 2h computed with double accumulation.
// At most max_checks elements per input are probed (chosen at random, always including the first and last).
void check_gradients(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                     double h, double rtol, double atol, int max_checks = 48, uint64_t seed = 1);

// Runs the program `name` built beside the test binary with `args` (a shell fragment); returns its exit status and
// puts its standard output and error into *output when given.
int run_tool(const std::string& name, const std::string& args, std::string* output = nullptr);

// A fresh empty directory under the system temp directory, unique to this process and `tag`, removed with
// everything in it when the object goes away.
struct TempDir {
  explicit TempDir(const std::string& tag);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const;  // a path inside
  std::string path;
};

}  // namespace unet::test
