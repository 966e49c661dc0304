// cudaStream_t exactly as CUDA's driver_types.h declares it, for the host-side entry points of kernels/cuda/*.cuh:
// callers of CUDA kernels include no CUDA header, because under the emulator the kernel environment
// (kernels/cuda/cuda_compat.cuh) must come before every CUDA header of a translation unit.
#pragma once

typedef struct CUstream_st* cudaStream_t;
