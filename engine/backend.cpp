// The backend helpers of engine/backend.h, and the one place that names each backend's kernel tables.
#include "engine/backend.h"

#include <stdexcept>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/augment.h"
#include "kernels/cpu/bias.h"
#include "kernels/cpu/blend.h"
#include "kernels/cpu/classification.h"
#include "kernels/cpu/conv.h"
#include "kernels/cpu/conv_transpose.h"
#include "kernels/cpu/crop.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/hybrid_loss.h"
#include "kernels/cpu/loss.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/optim.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/resize.h"
#include "kernels/cpu/shape.h"
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/augment.cuh"
#include "kernels/cuda/bias.cuh"
#include "kernels/cuda/blend.cuh"
#include "kernels/cuda/classification.cuh"
#include "kernels/cuda/conv.cuh"
#include "kernels/cuda/conv_transpose.cuh"
#include "kernels/cuda/crop.cuh"
#include "kernels/cuda/dropout.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/hybrid_loss.cuh"
#include "kernels/cuda/loss.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/optim.cuh"
#include "kernels/cuda/pool.cuh"
#include "kernels/cuda/resize.cuh"
#include "kernels/cuda/shape.cuh"

#ifndef UNET_HAVE_CUDA_KERNELS
#define UNET_HAVE_CUDA_KERNELS 0
#endif

namespace unet::backend {
namespace {

const Kernels cpu_kernels{
    kernels::cpu::activation_kernels,     kernels::cpu::blend_kernels,       kernels::cpu::conv_kernels,
    kernels::cpu::conv_transpose_kernels, kernels::cpu::elementwise_kernels, kernels::cpu::loss_kernels,
    kernels::cpu::norm_kernels,           kernels::cpu::optim_kernels,       kernels::cpu::shape_kernels,
    kernels::cpu::bias_kernels,           kernels::cpu::crop_kernels,        kernels::cpu::dropout_kernels,
    kernels::cpu::pool_kernels,           kernels::cpu::resize_kernels,      kernels::cpu::hybrid_loss_kernels,
    kernels::cpu::classification_kernels, kernels::cpu::augment_kernels};

#if UNET_HAVE_CUDA_KERNELS  // kernels/cuda/*.cu built, by nvcc (GPU build) or against the emulator
const Kernels cuda_kernels{
    kernels::cuda::activation_kernels,     kernels::cuda::blend_kernels,       kernels::cuda::conv_kernels,
    kernels::cuda::conv_transpose_kernels, kernels::cuda::elementwise_kernels, kernels::cuda::loss_kernels,
    kernels::cuda::norm_kernels,           kernels::cuda::optim_kernels,       kernels::cuda::shape_kernels,
    kernels::cuda::bias_kernels,           kernels::cuda::crop_kernels,        kernels::cuda::dropout_kernels,
    kernels::cuda::pool_kernels,           kernels::cuda::resize_kernels,      kernels::cuda::hybrid_loss_kernels,
    kernels::cuda::classification_kernels, kernels::cuda::augment_kernels};
#endif

}  // namespace

const Kernels& kernels_for(Device d) {
  if (d == Device::cpu) return cpu_kernels;
#if UNET_HAVE_CUDA_KERNELS
  return cuda_kernels;
#else
  throw std::runtime_error(std::string(device_name(d)) +
                           ": this build has no CUDA kernels (the CUDA toolkit was not found)");
#endif
}

void check_device(const char* op, Device d, const std::vector<Tensor>& ts) {
  for (const Tensor& t : ts)
    if (t.defined() && t.device() != d) {
      std::string all;
      for (const Tensor& u : ts) all += (all.empty() ? "" : ", ") + u.describe();
      throw std::invalid_argument(std::string(op) + ": all tensors must be on one device, got " + all);
    }
}

void add_into(const Tensor& a, const Tensor& b, const Tensor& out) {
  kernels_for(a).elementwise.add(a.dtype(), a.raw(), b.raw(), out.raw(), a.numel(), stream(a));
}

Tensor converted(const Tensor& x, DType dt) {
  if (x.dtype() == dt) return x;
  Tensor y = Tensor::empty(x.shape(), dt, x.device());
  kernels_for(x).shape.cast(x.dtype(), x.raw(), dt, y.raw(), x.numel(), stream(x));
  return y;
}

}  // namespace unet::backend
