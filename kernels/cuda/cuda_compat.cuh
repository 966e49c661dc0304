// The one header through which a kernel source (kernels/cuda/*.cu) gets CUDA: under nvcc the real runtime and
// intrinsics, under the host compiler the device emulator (kernels/emu), so the same kernel text runs on a GPU and,
// in CI, on the CPU. The few things CUDA spells differently for the two are macros defined here:
//   DYN_SMEM(T, name)   declares `T* name` pointing at the block's dynamic shared memory (the launch's smem_bytes);
//   UNET_EMULATED       1 under the emulator, 0 under nvcc (for the rare leaf intrinsic that needs two versions).
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define UNET_EMULATED 0
#define DYN_SMEM(T, name)                                         \
  extern __shared__ __align__(16) unsigned char unet_dyn_smem_[]; \
  T* name = reinterpret_cast<T*>(unet_dyn_smem_)
#else
#include "kernels/emu/cuda_emu.h"
#define UNET_EMULATED 1
#endif
