// ops::dropout: inverted dropout (kernels/dropout.h) whose mask is a function of (seed, element index), so backward
// recomputes it and every backend drops the same elements for the same seed.
#include <cmath>
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "kernels/dropout.h"

namespace unet::ops {
namespace {

thread_local int64_t first_sample = 0;  // DropoutSampleOffset's

void run_dropout(DType dt, uint64_t seed, uint64_t first, float p, float scale, const Tensor& x, const Tensor& y) {
  backend::kernels_for(x).dropout.apply(dt, seed, first, p, scale, x.raw(), y.raw(), x.numel(), backend::stream(x));
}

}  // namespace

DropoutSampleOffset::DropoutSampleOffset(int64_t first) : previous_(first_sample) {
  first_sample = first;
}
DropoutSampleOffset::~DropoutSampleOffset() {
  first_sample = previous_;
}

Tensor dropout(const Tensor& x, float p, uint64_t seed) {
  check_arg(x.defined(), "dropout: undefined input");
  check_arg(backend::is_float(x.dtype()), "dropout: expected f32, f16 or bf16, got " + x.describe());
  check_arg(p >= 0.f && p < 1.f, "dropout: probability " + std::to_string(p) + " (expected 0 <= p < 1)");
  const DType dt = x.dtype();
  const float scale = 1.f / (1.f - p);
  Tensor y = Tensor::empty(x.shape(), dt, x.device());
  // Element i of this tensor is element (first_sample samples + i) of the global batch.
  const uint64_t first =
      x.rank() > 0 && x.dim(0) > 0 ? static_cast<uint64_t>(first_sample * (x.numel() / x.dim(0))) : 0;
  run_dropout(dt, seed, first, p, scale, x, y);
  if (autograd::should_record({x})) {
    autograd::record("dropout", {x}, {y}, [dt, seed, first, p, scale](const std::vector<Tensor>& g) {
      Tensor dx = Tensor::empty(g[0].shape(), dt, g[0].device());
      run_dropout(dt, seed, first, p, scale, g[0], dx);
      return std::vector<Tensor>{dx};
    });
  }
  return y;
}

}  // namespace unet::ops
