// relu and leaky_relu as differentiable ops (kernels in kernels/cpu/activation.cpp and kernels/cuda/activation.cu).
// relu saves its output and leaky_relu its input, as PyTorch does, so the gradients match PyTorch's bit for bit.
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/backend.h"
#include "kernels/cpu/activation.h"
#include "kernels/cuda/activation.cuh"

namespace unet::ops {

using backend::on_cuda;
using backend::stream;

static void check_activation_input(const Tensor& x, const char* op) {
  check_arg(x.defined(), std::string(op) + ": undefined input");
  check_arg(x.dtype() == DType::f32, std::string(op) + ": expected f32, got " + x.describe() + " (cast first)");
}

Tensor relu(const Tensor& x) {
  check_activation_input(x, "relu");
  Tensor y = Tensor::empty(x.shape(), DType::f32, x.device());
  if (on_cuda(x))
    UNET_CUDA_KERNEL("relu", kernels::cuda::relu_forward(x.data<float>(), y.data<float>(), x.numel(), stream(x)));
  else
    kernels::cpu::relu_forward(x.data<float>(), y.data<float>(), x.numel());
  if (autograd::should_record({x})) {
    Tensor saved_y = y.detach();  // detached: the node must not own its own output's autograd state (a cycle)
    autograd::record("relu", {x}, {y}, [saved_y](const std::vector<Tensor>& g) {
      Tensor dx = Tensor::empty(saved_y.shape(), DType::f32, saved_y.device());
      if (on_cuda(saved_y))
        UNET_CUDA_KERNEL("relu", kernels::cuda::relu_backward(saved_y.data<float>(), g[0].data<float>(),
                                                              dx.data<float>(), dx.numel(), stream(dx)));
      else
        kernels::cpu::relu_backward(saved_y.data<float>(), g[0].data<float>(), dx.data<float>(), dx.numel());
      return std::vector<Tensor>{dx};
    });
  }
  return y;
}

Tensor leaky_relu(const Tensor& x, float negative_slope) {
  check_activation_input(x, "leaky_relu");
  check_arg(std::isfinite(negative_slope),
            "leaky_relu: negative_slope must be finite, got " + std::to_string(negative_slope));
  Tensor y = Tensor::empty(x.shape(), DType::f32, x.device());
  if (on_cuda(x))
    UNET_CUDA_KERNEL("leaky_relu", kernels::cuda::leaky_relu_forward(x.data<float>(), negative_slope, y.data<float>(),
                                                                     x.numel(), stream(x)));
  else
    kernels::cpu::leaky_relu_forward(x.data<float>(), negative_slope, y.data<float>(), x.numel());
  if (autograd::should_record({x})) {
    Tensor saved_x = x.detach();
    autograd::record("leaky_relu", {x}, {y}, [saved_x, negative_slope](const std::vector<Tensor>& g) {
      Tensor dx = Tensor::empty(saved_x.shape(), DType::f32, saved_x.device());
      if (on_cuda(saved_x))
        UNET_CUDA_KERNEL("leaky_relu",
                         kernels::cuda::leaky_relu_backward(saved_x.data<float>(), g[0].data<float>(), negative_slope,
                                                            dx.data<float>(), dx.numel(), stream(dx)));
      else
        kernels::cpu::leaky_relu_backward(saved_x.data<float>(), g[0].data<float>(), negative_slope, dx.data<float>(),
                                          dx.numel());
      return std::vector<Tensor>{dx};
    });
  }
  return y;
}

}  // namespace unet::ops
