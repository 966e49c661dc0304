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

// How check_mixed_precision treats an input of f.
enum class Role {
  activation,  // cast to the low precision (a tensor flowing through the network); its gradient has that type
  weight,      // stays f32 (a master weight that the op rounds itself); its gradient is f32
  f32,         // stays f32 and is used unrounded (bias, gamma, beta)
};

// Mixed precision against f32: runs f on `device` with the activation inputs cast to dt (f16 or bf16) and backward
// from a fixed random gradient of type dt; and f on the cpu in f32 with the activation and weight inputs rounded to dt
// (and back), backward from the same gradient. The low-precision output and activation gradients must equal the f32
// ones rounded to dt, and the weight and f32 gradients the f32 ones, within rtol / atol (bitwise when both are 0: an
// op whose only rounding is that of its result, on the cpu).
void check_mixed_precision(Device device, DType dt, const std::function<Tensor(const std::vector<Tensor>&)>& f,
                           const std::vector<Tensor>& inputs, const std::vector<Role>& roles, double rtol,
                           double atol);

// Checks the gradient of L = sum(f(inputs) * r) (r a fixed random tensor) with respect to every input that
// requires grad, against central differences (L(x + h e_i) - L(x - h e_i)) / 2h computed with double accumulation.
// At most max_checks elements per input are probed (chosen at random, always including the first and last).
// With `reference` given, the differences are taken of reference instead of f (the gradients of a mixed-precision f
// against the f32 function it approximates).
void check_gradients(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                     double h, double rtol, double atol, int max_checks = 48, uint64_t seed = 1,
                     const std::function<Tensor(const std::vector<Tensor>&)>& reference = nullptr);

// ops::dice_ce_loss with its Dice and CE parts read back into *dice and *ce (either may be null).
Tensor dice_ce(const Tensor& logits, const Tensor& labels, float* dice, float* ce = nullptr);

// Runs a shell command; returns its exit status (-1 when a signal ended it) and puts its standard output and error
// into *output when given.
int shell(const std::string& command, std::string* output = nullptr);
// The path of the program `name` built beside the test binary (the test fails when it is not built).
std::string tool_path(const std::string& name);
// Runs the program `name` built beside the test binary with `args` (a shell fragment), as shell() does.
int run_tool(const std::string& name, const std::string& args, std::string* output = nullptr);
// Writes `text` to `path` and returns the path.
std::string write_text(const std::string& path, const std::string& text);

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
