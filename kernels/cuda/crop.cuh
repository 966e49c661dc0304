// CUDA box copy with zero fill (crop and pad): the entry point of kernels/crop.h with device pointers and a stream.
#pragma once
#include <cstdint>

#include "kernels/crop.h"

namespace unet::kernels::cuda {

void crop(const CropShape& s, const void* x, int64_t elem_size, void* y, cudaStream_t stream);

extern const CropKernels crop_kernels;

}  // namespace unet::kernels::cuda
