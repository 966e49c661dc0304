// Temporary device memory for a launcher's intermediate results (reduction partials, per-channel coefficients),
// released when the launcher returns. Under nvcc it is stream-ordered (cudaMallocAsync / cudaFreeAsync on the
// launch's stream, served from the driver's pool, so no device-wide synchronisation); under the emulator, where
// launches are synchronous, it is the emulator's guarded device memory (kernels/emu/device_memory.h), which host
// code cannot read, as on a GPU.
#pragma once
#include "kernels/cuda/cuda_compat.cuh"

#include <cstddef>
#include <stdexcept>
#include <string>

namespace unet::kernels::cuda {

template <class T>
class Scratch {
 public:
  Scratch(size_t count, cudaStream_t stream) {
#ifdef __CUDACC__
    stream_ = stream;
    const cudaError_t e = cudaMallocAsync(reinterpret_cast<void**>(&ptr_), (count ? count : 1) * sizeof(T), stream);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // not sticky: cleared, or the next launch check would report it as its own
      throw std::runtime_error(std::string("scratch allocation failed: ") + cudaGetErrorString(e));
    }
#else
    (void)stream;
    bytes_ = (count ? count : 1) * sizeof(T);
    ptr_ = static_cast<T*>(emu::device_malloc(bytes_));
#endif
  }
  ~Scratch() {
#ifdef __CUDACC__
    cudaFreeAsync(ptr_, stream_);
#else
    emu::device_free(ptr_, bytes_);
#endif
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const {
    return ptr_;
  }

 private:
  T* ptr_ = nullptr;
#ifdef __CUDACC__
  cudaStream_t stream_ = nullptr;
#else
  size_t bytes_ = 0;
#endif
};

}  // namespace unet::kernels::cuda
