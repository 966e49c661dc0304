// GPU self-test (docs/architecture.md, "Verifying the CUDA backend"): every engine op that has a
// CUDA kernel runs on a device (a real GPU, or the emulator) and on the CPU backend from the same inputs; outputs and
// gradients are compared element by element against stated tolerances and reported as a pass/fail table.
// tools/unet_selftest.cpp is the command; tests/test_selftest.cpp runs it on cuda-emu.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace unet::selftest {

// The comparison of one result: pass when the sizes match and every element satisfies
// |actual - expected| <= atol + rtol * |expected| (NaN or infinity where the other side is finite fails; rtol = atol
// = 0 asks for equal values). max_rel is over the elements with |expected| > atol (relative error of a value near 0
// says nothing), worst is the index of the element furthest outside its tolerance (or of the largest error).
struct Comparison {
  bool pass = true;
  double max_abs = 0, max_rel = 0;
  int64_t worst = -1;
  std::string note;  // why it failed when it is not a value (size mismatch, exception)
};
// With `bound` (one value per element, e.g. sum |a * b| of a convolution's products, "B"), element i is allowed
// atol + rtol * |expected| + btol * bound[i] instead.
Comparison compare_results(const std::vector<float>& actual, const std::vector<float>& expected, double rtol,
                           double atol, const std::vector<float>* bound = nullptr, double btol = 0);

struct SelftestRow {
  std::string op;     // "conv3d k3 s1 dgrad"
  std::string shape;  // the main input's shape
  double rtol = 0, atol = 0;
  Comparison result;
  double btol = 0;  // > 0: the tolerance also has btol * B, a per-element bound (compare_results)
};

struct SelftestOptions {
  Device device = Device::cuda_emu;
  bool quick = false;   // fewer cases (the CI run on the emulator)
  std::string perturb;  // testing the self-test: change one device value of the rows whose op contains this text
};

// Runs every case; an exception in a case becomes a failed row that carries the message. Throws only when the
// device itself is unusable.
std::vector<SelftestRow> run_selftest(const SelftestOptions& options);

// The table (op, shape, max abs error, max rel error, tolerance, PASS/FAIL) and a summary line; returns the number
// of failed rows.
int print_selftest_table(FILE* out, const std::vector<SelftestRow>& rows);

// The reference for the convolution's instance-norm statistics: per (n, k) of y [n, pixels, k], the sum and the sum
// of squares (in double, at [(n k + k) 2] and +1), and the bounds a tolerance scales with: sum |y| and sum y^2.
struct ConvStats {
  std::vector<double> sums, bounds;
};
ConvStats conv_stats_reference(const std::vector<float>& y, int64_t n, int64_t pixels, int64_t k);

}  // namespace unet::selftest
