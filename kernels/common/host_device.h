// UNET_HOST_DEVICE marks the small pieces of arithmetic that the CPU kernels and the CUDA kernels share (so that both
// backends compute them from one text): __host__ __device__ under nvcc, nothing for the host compiler (which also
// builds kernels/cuda/*.cu against the emulator).
#pragma once

#if defined(__CUDACC__)
#define UNET_HOST_DEVICE __host__ __device__
#else
#define UNET_HOST_DEVICE
#endif
