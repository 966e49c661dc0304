// Which kernels run a tensor's computation, for engine code (the ops in engine/ops/*.cpp, gradient accumulation in
// autograd, the optimizers): a tensor on Device::cpu runs kernels::cpu::, one on Device::cuda_emu (the default
// build's emulator) or Device::cuda (the GPU build, UNET_CUDA_RUNTIME=ON) runs kernels::cuda:: on the device's
// default stream. Every tensor an op reads must be on one device; its outputs are created there. Below the ops and
// autograd, so that neither includes the other's internals.
#pragma once
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/tensor.h"

#ifndef UNET_HAVE_CUDA_KERNELS
#define UNET_HAVE_CUDA_KERNELS 0
#endif

namespace unet::backend {

inline bool on_cuda(const Tensor& t) { return t.device() != Device::cpu; }
inline cudaStream_t stream(const Tensor& t) { return device::default_stream(t.device()); }

// Throws std::invalid_argument (naming `op` and the tensors) unless every defined tensor is on `d`.
void check_device(const char* op, Device d, const std::vector<Tensor>& ts);

[[noreturn]] void no_cuda_kernels(const char* op);

// out = a + b on their device (same shape and dtype; out may be a). Used by ops::add and gradient accumulation.
void add_into(const Tensor& a, const Tensor& b, const Tensor& out);

// x converted to dt (f32, f16 or bf16; round to nearest even) on x's device, no autograd; x itself when it already is
// dt. Used by ops::cast and by the ops that round their f32 weights to the activations' type (mixed precision).
Tensor converted(const Tensor& x, DType dt);

// Whether t holds floating-point values the ops compute on: f32, or f16 / bf16 under mixed precision.
inline bool is_float(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

}  // namespace unet::backend

// UNET_CUDA_KERNEL(op, call): the kernels::cuda:: call, or, in a build without the CUDA kernels (no toolkit headers),
// an error naming the op (the call text is then not compiled, so nothing refers to the missing kernels).
#if UNET_HAVE_CUDA_KERNELS
#define UNET_CUDA_KERNEL(op, ...) __VA_ARGS__
#else
#define UNET_CUDA_KERNEL(op, ...) ::unet::backend::no_cuda_kernels(op)
#endif
