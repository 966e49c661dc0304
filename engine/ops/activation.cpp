// relu and leaky_relu as differentiable ops (kernels in kernels/cpu/activation.cpp and kernels/cuda/activation.cu), on
// f32, f16 or bf16 tensors (the output and the gradients have the input's type). relu saves its output and leaky_relu
// its input, as PyTorch does, so the gradients match PyTorch's bit for bit.
#include <cmath>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "kernels/activation.h"

namespace unet::ops {

using backend::kernels_for;
using backend::stream;

static void check_activation_input(const Tensor& x, const char* op) {
  check_arg(x.defined(), std::string(op) + ": undefined input");
  check_arg(backend::is_float(x.dtype()), std::string(op) + ": expected f32, f16 or bf16, got " + x.describe());
}

Tensor relu(const Tensor& x) {
  check_activation_input(x, "relu");
  const DType dt = x.dtype();
  Tensor y = Tensor::empty(x.shape(), dt, x.device());
  kernels_for(x).activation.relu_forward(dt, x.raw(), y.raw(), x.numel(), stream(x));
  if (autograd::should_record({x})) {
    Tensor saved_y = y.detach();  // detached: the node must not own its own output's autograd state (a cycle)
    autograd::record("relu", {x}, {y}, [saved_y, dt](const std::vector<Tensor>& g) {
      Tensor dx = Tensor::empty(saved_y.shape(), dt, saved_y.device());
      kernels_for(dx).activation.relu_backward(dt, saved_y.raw(), g[0].raw(), dx.raw(), dx.numel(), stream(dx));
      return std::vector<Tensor>{dx};
    });
  }
  return y;
}

Tensor leaky_relu(const Tensor& x, float negative_slope) {
  check_activation_input(x, "leaky_relu");
  check_arg(std::isfinite(negative_slope),
            "leaky_relu: negative_slope must be finite, got " + std::to_string(negative_slope));
  const DType dt = x.dtype();
  Tensor y = Tensor::empty(x.shape(), dt, x.device());
  kernels_for(x).activation.leaky_relu_forward(dt, x.raw(), negative_slope, y.raw(), x.numel(), stream(x));
  if (autograd::should_record({x})) {
    Tensor saved_x = x.detach();
    autograd::record("leaky_relu", {x}, {y}, [saved_x, negative_slope, dt](const std::vector<Tensor>& g) {
      Tensor dx = Tensor::empty(saved_x.shape(), dt, saved_x.device());
      kernels_for(dx).activation.leaky_relu_backward(dt, saved_x.raw(), g[0].raw(), negative_slope, dx.raw(),
                                                     dx.numel(), stream(dx));
      return std::vector<Tensor>{dx};
    });
  }
  return y;
}

}  // namespace unet::ops
