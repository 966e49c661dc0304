// UNet 3+'s classification-guided module on the CPU: the entry points of kernels/classification.h.
#pragma once
#include <cstdint>

#include "kernels/classification.h"

namespace unet::kernels::cpu {

extern const ClassificationKernels classification_kernels;

}  // namespace unet::kernels::cpu
