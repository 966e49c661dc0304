// Shape kernels' shared description: nearest upsampling's shape, for the CPU (kernels/cpu/shape.h) and CUDA
// (kernels/cuda/shape.cuh) entry points.
#pragma once
#include <cstdint>

namespace unet::kernels {

// x [n, d, h, w, c] -> y [n, d*fd, h*fh, w*fw, c]; 2D: d = fd = 1.
struct UpsampleShape {
  int64_t n = 1, d = 1, h = 1, w = 1, c = 1;
  int64_t fd = 1, fh = 1, fw = 1;
};

}  // namespace unet::kernels
