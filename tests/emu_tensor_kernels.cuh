// Kernels for the tensor-copy tests (tests/test_emu_tensor_copy.cpp): plain CUDA over kernels/cuda/tensor_copy.cuh,
// compiled with nvcc for sm_90a by tests/emu_async_kernels_nvcc.cu.
#pragma once
#include <cstdint>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/tensor_copy.cuh"

namespace emu_tensor_test {

using unet::kernels::cuda::TensorMap;

struct Coords {
  int32_t c[5];
};

// One block of 32 threads. The buffer is first filled with 0xAB bytes (so a byte the copy fails to write shows),
// then thread 0 expects `bytes` on the barrier and copies the box of `map` at `at` into it; after the wait every
// thread copies the first `bytes` bytes of the buffer to out.
template <int Rank>
__global__ void tensor_box(const __grid_constant__ TensorMap map, Coords at, unsigned bytes, unsigned char* out) {
  using namespace unet::kernels::cuda;
  __shared__ __align__(1024) unsigned char buf[8192];
  __shared__ __align__(8) uint64_t bar;
  for (unsigned i = threadIdx.x; i < sizeof buf; i += blockDim.x) buf[i] = 0xAB;
  fence_proxy_async_shared();  // the copy engine's writes come after these
  if (threadIdx.x == 0) {
    mbarrier_init(&bar, 1);
    fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t c[Rank];
    for (int d = 0; d < Rank; ++d) c[d] = at.c[d];
    mbarrier_arrive_expect_tx(&bar, bytes);
    cp_async_bulk_tensor_global_to_shared<Rank>(buf, map, c, &bar);
  }
  mbarrier_wait_parity(&bar, 0);
  for (unsigned i = threadIdx.x; i < bytes; i += blockDim.x) out[i] = buf[i];
}

}  // namespace emu_tensor_test
