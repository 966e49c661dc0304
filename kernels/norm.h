// Instance normalisation: the shape shared by the CPU (kernels/cpu/norm.h) and CUDA (kernels/cuda/norm.cuh) entry
// points. Layout channels-last: x is [n, s, c] with s = the product of the spatial sizes; statistics per (n, c) over s.
#pragma once
#include <cstdint>

namespace unet::kernels {

struct NormShape {
  int64_t n = 1;  // batch
  int64_t s = 1;  // spatial positions per sample
  int64_t c = 1;  // channels
};

}  // namespace unet::kernels
