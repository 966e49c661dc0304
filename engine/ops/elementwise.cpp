// Elementwise ops: add, scale, sum (used by residual blocks, loss weighting and tests).
#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/elementwise.h"

namespace unet::ops {

static void check_cpu_f32(const Tensor& t, const char* op) {
  check_arg(t.defined(), std::string(op) + ": undefined input");
  check_arg(t.device() == Device::cpu, std::string(op) + ": " + t.describe() + " is not on the cpu backend");
  check_arg(t.dtype() == DType::f32, std::string(op) + ": expected f32, got " + t.describe());
}

Tensor add(const Tensor& a, const Tensor& b) {
  check_arg(a.defined() && b.defined(), "add: undefined input");
  check_arg(a.shape() == b.shape() && a.dtype() == b.dtype(), "add: " + a.describe() + " + " + b.describe());
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  kernels::cpu::add(a.dtype(), a.raw(), b.raw(), out.raw(), a.numel());
  if (autograd::should_record({a, b}))
    autograd::record("add", {a, b}, {out}, [](const std::vector<Tensor>& g) { return std::vector<Tensor>{g[0], g[0]}; });
  return out;
}

Tensor scale(const Tensor& a, float alpha) {
  check_cpu_f32(a, "scale");
  Tensor out = Tensor::empty(a.shape());
  kernels::cpu::scale(a.data<float>(), alpha, out.data<float>(), a.numel());
  if (autograd::should_record({a}))
    autograd::record("scale", {a}, {out}, [alpha](const std::vector<Tensor>& g) {
      Tensor d = Tensor::empty(g[0].shape());
      kernels::cpu::scale(g[0].data<float>(), alpha, d.data<float>(), d.numel());
      return std::vector<Tensor>{d};
    });
  return out;
}

Tensor sum(const Tensor& a) {
  check_cpu_f32(a, "sum");
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
