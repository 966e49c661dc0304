// A planted bug for the checked build (CMake -DUNET_CHECKED=ON): one thread writes one float past the end of a buffer
// of the emulated device memory (kernels/emu/device_memory.h). On a GPU that is an out-of-bounds global access; under
// the checked emulator AddressSanitizer must stop the process naming the emulated thread. tests/test_emu.cpp runs
// this program and checks the report; it is built only in the checked build.
#include "kernels/cuda/cuda_compat.cuh"

#include <cstdio>

__global__ void global_overflow_kernel(float* buf, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) buf[i] = 1.0f;
  if (blockIdx.x == 1 && threadIdx.x == 3) buf[n] = 2.0f;  // one past the end
}

int main() {
  constexpr int n = 50;  // 200 bytes: the overrun lands inside the block's 256-byte rounding
  float* buf = static_cast<float*>(unet::emu::device_malloc(n * sizeof(float)));
  unet::emu::launch(global_overflow_kernel, dim3(2), dim3(32), 0, buf, n);
  std::puts("no error reported");  // only reached when the overflow went unnoticed
  return 0;
}
