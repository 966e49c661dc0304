// The backend helpers of engine/backend.h.
#include "engine/backend.h"

#include <stdexcept>

#include "kernels/cuda/elementwise.cuh"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/shape.h"
#include "kernels/cuda/shape.cuh"

namespace unet::backend {

void check_device(const char* op, Device d, const std::vector<Tensor>& ts) {
  for (const Tensor& t : ts)
    if (t.defined() && t.device() != d) {
      std::string all;
      for (const Tensor& u : ts) all += (all.empty() ? "" : ", ") + u.describe();
      throw std::invalid_argument(std::string(op) + ": all tensors must be on one device, got " + all);
    }
}

void no_cuda_kernels(const char* op) {
  throw std::runtime_error(std::string(op) + ": this build has no CUDA kernels (the CUDA toolkit was not found)");
}

void add_into(const Tensor& a, const Tensor& b, const Tensor& out) {
  if (on_cuda(a))
    UNET_CUDA_KERNEL("add", kernels::cuda::add(a.dtype(), a.raw(), b.raw(), out.raw(), a.numel(), stream(a)));
  else
    kernels::cpu::add(a.dtype(), a.raw(), b.raw(), out.raw(), a.numel());
}

Tensor converted(const Tensor& x, DType dt) {
  if (x.dtype() == dt) return x;
  Tensor y = Tensor::empty(x.shape(), dt, x.device());
  if (on_cuda(x))
    UNET_CUDA_KERNEL("cast", kernels::cuda::cast(x.dtype(), x.raw(), dt, y.raw(), x.numel(), stream(x)));
  else
    kernels::cpu::cast(x.dtype(), x.raw(), dt, y.raw(), x.numel());
  return y;
}

}  // namespace unet::backend
