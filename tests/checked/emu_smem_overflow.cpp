// A planted bug for the checked build (CMake -DUNET_CHECKED=ON): one thread of block (1,0,0) writes one float past
// the dynamic shared memory its launch asked for. On a GPU that is an out-of-bounds shared access; under the checked
// emulator AddressSanitizer must stop the process with a heap-buffer-overflow report naming that thread.
// tests/test_emu.cpp runs this program and checks the report; it is built only in the checked build.
#include "kernels/cuda/cuda_compat.cuh"

#include <cstdio>

__global__ void overflow_kernel(int n) {
  DYN_SMEM(float, buf);
  buf[threadIdx.x] = 1.0f;
  __syncthreads();
  if (blockIdx.x == 1 && threadIdx.x == 5) buf[n] = 2.0f;  // n == the launch's element count: one past the end
}

int main() {
  constexpr int threads = 32;
  unet::emu::launch(overflow_kernel, dim3(2), dim3(threads), threads * sizeof(float), threads);
  std::puts("no error reported");  // only reached when the overflow went unnoticed
  return 0;
}
