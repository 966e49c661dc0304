// Which kernels run a tensor's computation, for engine code (the ops in engine/ops/*.cpp, gradient accumulation in
// autograd, the optimizers, the sliding window): kernels_for(device) is the one dispatch point. It gives the backend's
// kernel tables (kernels/<op>.h: one struct of entry points per op family, defined by each backend as
// kernels::cpu::<op>_kernels and kernels::cuda::<op>_kernels): a tensor on Device::cpu runs kernels::cpu::, one on
// Device::cuda_emu (the default build's emulator) or Device::cuda (the GPU build, UNET_CUDA_RUNTIME=ON) runs
// kernels::cuda:: on the device's default stream, stream(t). Every tensor an op reads must be on one device; its
// outputs are created there. Below the ops and autograd, so that neither includes the other's internals.
#pragma once
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/tensor.h"

namespace unet::kernels {
struct ActivationKernels;
struct AugmentKernels;
struct BiasKernels;
struct BlendKernels;
struct ConvKernels;
struct ConvTransposeKernels;
struct CropKernels;
struct DropoutKernels;
struct ElementwiseKernels;
struct HybridLossKernels;
struct LossKernels;
struct NormKernels;
struct OptimKernels;
struct PoolKernels;
struct ResizeKernels;
struct ShapeKernels;
struct ClassificationKernels;
}  // namespace unet::kernels

namespace unet::backend {

// One backend's kernel tables; a caller includes kernels/<op>.h for the table it calls.
struct Kernels {
  const kernels::ActivationKernels& activation;
  const kernels::BlendKernels& blend;
  const kernels::ConvKernels& conv;
  const kernels::ConvTransposeKernels& conv_transpose;
  const kernels::ElementwiseKernels& elementwise;
  const kernels::LossKernels& loss;
  const kernels::NormKernels& norm;
  const kernels::OptimKernels& optim;
  const kernels::ShapeKernels& shape;
  const kernels::BiasKernels& bias;
  const kernels::CropKernels& crop;
  const kernels::DropoutKernels& dropout;
  const kernels::PoolKernels& pool;
  const kernels::ResizeKernels& resize;
  const kernels::HybridLossKernels& hybrid_loss;
  const kernels::ClassificationKernels& classification;
  const kernels::AugmentKernels& augment;
};

// The kernels of device d. Throws std::runtime_error for cuda / cuda-emu in a build without the CUDA kernels (no CUDA
// toolkit headers).
const Kernels& kernels_for(Device d);
inline const Kernels& kernels_for(const Tensor& t) {
  return kernels_for(t.device());
}
inline cudaStream_t stream(const Tensor& t) {
  return device::default_stream(t.device());
}

// Throws std::invalid_argument (naming `op` and the tensors) unless every defined tensor is on `d`.
void check_device(const char* op, Device d, const std::vector<Tensor>& ts);

// out = a + b on their device (same shape and dtype; out may be a). Used by ops::add and gradient accumulation.
void add_into(const Tensor& a, const Tensor& b, const Tensor& out);

// x converted to dt (f32, f16 or bf16; round to nearest even) on x's device, no autograd; x itself when it already is
// dt. Used by ops::cast and by the ops that round their f32 weights to the activations' type (mixed precision).
Tensor converted(const Tensor& x, DType dt);

// Whether t holds floating-point values the ops compute on: f32, or f16 / bf16 under mixed precision.
inline bool is_float(DType t) {
  return t == DType::f32 || t == DType::f16 || t == DType::bf16;
}

}  // namespace unet::backend
