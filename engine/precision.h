// The arithmetic a network runs in (train.precision, unet_infer --precision), as PyTorch's autocast chooses it:
//   fp32  f32 everywhere;
//   tf32  f32 tensors, convolutions on the TF32 tensor cores of a CUDA device (ops::set_conv_allow_tf32; the cpu has no
//         TF32 arithmetic and computes fp32);
//   fp16, bf16  mixed precision: the network's input is cast to f16 / bf16 and every activation and its gradient stays
//         in that type (convolutions on the tensor cores, f32 accumulation); weights, optimizer state, normalisation
//         statistics, the logits and the loss stay f32 (docs/numerics.md, "Mixed precision").
#pragma once
#include <string>

#include "engine/tensor.h"

namespace unet {

enum class Precision { fp32, tf32, fp16, bf16 };

const char* precision_name(Precision p);
// "fp32" | "tf32" | "fp16" | "bf16"; anything else is std::invalid_argument naming the value and the choices.
Precision parse_precision(const std::string& name);
// "auto": bf16 on a CUDA GPU (every GPU the kernels are built for, sm_80 and newer, has it), fp32 elsewhere (the
// cpu and the emulator); otherwise parse_precision.
Precision resolve_precision(const std::string& name, Device device);

// The type of the network's activations: f16 or bf16 for mixed precision, else f32.
DType activation_dtype(Precision p);

}  // namespace unet
