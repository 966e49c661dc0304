// Elementwise ops: add, scale, sum (used by residual blocks, loss weighting and tests).
#include "kernels/cpu/elementwise.h"
#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "kernels/elementwise.h"

namespace unet::ops {

static void check_f32(const Tensor& t, const char* op) {
  check_arg(t.defined(), std::string(op) + ": undefined input");
  check_arg(t.dtype() == DType::f32, std::string(op) + ": expected f32, got " + t.describe());
}

Tensor add(const Tensor& a, const Tensor& b) {
  check_arg(a.defined() && b.defined(), "add: undefined input");
  check_arg(a.shape() == b.shape() && a.dtype() == b.dtype(), "add: " + a.describe() + " + " + b.describe());
  backend::check_device("add", a.device(), {a, b});
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  backend::add_into(a, b, out);
  if (autograd::should_record({a, b}))
    autograd::record("add", {a, b}, {out}, [](const std::vector<Tensor>& g) { return std::vector<Tensor>{g[0], g[0]}; });
  return out;
}

static Tensor scaled(const Tensor& a, float alpha) {
  Tensor out = Tensor::empty(a.shape(), DType::f32, a.device());
  backend::kernels_for(a).elementwise.scale(a.data<float>(), alpha, out.data<float>(), a.numel(), backend::stream(a));
  return out;
}

Tensor scale(const Tensor& a, float alpha) {
  check_f32(a, "scale");
  Tensor out = scaled(a, alpha);
  if (autograd::should_record({a}))
    autograd::record("scale", {a}, {out}, [alpha](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{scaled(g[0], alpha)};
    });
  return out;
}

Tensor sum(const Tensor& a) {
  check_f32(a, "sum");
  check_arg(a.device() == Device::cpu, "sum: " + a.describe() + " is not on the cpu backend (no CUDA kernel yet)");
  Tensor out = Tensor::full({1}, static_cast<float>(kernels::cpu::sum(a.data<float>(), a.numel())));
  if (autograd::should_record({a})) {
    Shape shape = a.shape();
    autograd::record("sum", {a}, {out}, [shape](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{Tensor::full(shape, g[0].item())};
    });
  }
  return out;
}

}  // namespace unet::ops
