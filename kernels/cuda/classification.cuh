// UNet 3+'s classification-guided module on CUDA: the entry points of kernels/classification.h with device pointers
// and a stream.
#pragma once
#include <cstdint>

#include "kernels/classification.h"

namespace unet::kernels::cuda {

extern const ClassificationKernels classification_kernels;

}  // namespace unet::kernels::cuda
