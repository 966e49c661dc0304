// The one way host code starts a kernel: launch(kernel, grid, block, smem_bytes, stream, args...). Kernel sources never
// write <<<>>>, which the host compiler cannot parse; under nvcc this is exactly that launch followed by an error
// check, under the emulator it runs the kernel on the CPU and returns when it is done (the stream is ignored).
#pragma once
#include "kernels/cuda/cuda_compat.cuh"

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>

namespace unet::kernels::cuda {

// The grid of a grid-stride loop over n items with `threads` per block: a block per `threads` items, at least 1 and at
// most 4096 (beyond that each thread loops).
inline dim3 grid_stride_blocks(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return dim3(static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 4096 ? 4096 : blocks)));
}

template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream, A&&... args) {
#ifdef __CUDACC__
  kernel<<<grid, block, smem_bytes, stream>>>(std::forward<A>(args)...);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string("kernel launch failed: ") + cudaGetErrorString(e));
#else
  (void)stream;
  ::unet::emu::launch(kernel, grid, block, smem_bytes, std::forward<A>(args)...);
#endif
}

}  // namespace unet::kernels::cuda
