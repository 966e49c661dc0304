// Box copy with zero fill (crop and pad) on the CPU: the entry point of kernels/crop.h.
#pragma once
#include <cstdint>

#include "kernels/crop.h"

namespace unet::kernels::cpu {

void crop(const CropShape& s, const void* x, int64_t elem_size, void* y, cudaStream_t stream = nullptr);

extern const CropKernels crop_kernels;

}  // namespace unet::kernels::cpu
