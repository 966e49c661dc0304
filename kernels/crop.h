// A box copied out of a volume with zero fill, any element type: UNet2D's centre crop of its skip connections
// (offsets >= 0) and its adjoint, zero padding (offsets <= 0). The table of entry points the engine dispatches
// through, one per backend (kernels::cpu::crop_kernels in kernels/cpu/crop.h, kernels::cuda::crop_kernels in
// kernels/cuda/crop.cuh).
#pragma once
#include <cstdint>

#include "kernels/cuda/stream.h"

namespace unet::kernels {

// x [n, in[0], in[1], in[2], c] -> y [n, out[0], out[1], out[2], c] with
// y[b, z, p, q, :] = x[b, z + offset[0], p + offset[1], q + offset[2], :] where that lies inside x, else 0.
struct CropShape {
  int64_t n = 1, c = 1;
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, offset[3] = {0, 0, 0};
};

struct CropKernels {
  // Elements of elem_size bytes; pointers in the backend's memory; the CPU ignores the stream.
  void (*crop)(const CropShape& s, const void* x, int64_t elem_size, void* y, cudaStream_t stream);
};

}  // namespace unet::kernels
