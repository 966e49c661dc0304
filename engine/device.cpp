// engine/device: the emulated implementation (always built), the real CUDA one (only with UNET_WITH_CUDA_RUNTIME,
// which no build sets yet), and device selection through a dlopen'ed CUDA runtime.
#include "engine/device.h"

#include <dlfcn.h>

#include <cstring>
#include <ostream>

#ifndef UNET_WITH_CUDA_RUNTIME
#define UNET_WITH_CUDA_RUNTIME 0
#endif
#ifndef UNET_HAVE_CUDA_KERNELS
#define UNET_HAVE_CUDA_KERNELS 0
#endif
#if UNET_WITH_CUDA_RUNTIME
#include <cuda_runtime.h>

#include <mutex>
#endif

namespace unet::device {

void throw_error(const std::string& what, const char* file, int line) {
  throw DeviceError(what + " (" + file + ":" + std::to_string(line) + ")");
}

namespace {

// The CUDA runtime, opened on first use; null handles when it is not installed.
struct Runtime {
  void* lib = nullptr;
  int (*get_device_count)(int*) = nullptr;
  const char* (*get_error_name)(int) = nullptr;
  Runtime() {
    for (const char* name : {"libcudart.so", "libcudart.so.13", "/usr/local/cuda/lib64/libcudart.so"})
      if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
    if (!lib) return;
    get_device_count = reinterpret_cast<int (*)(int*)>(dlsym(lib, "cudaGetDeviceCount"));
    get_error_name = reinterpret_cast<const char* (*)(int)>(dlsym(lib, "cudaGetErrorName"));
  }
};

const Runtime& runtime() {
  static Runtime r;
  return r;
}

constexpr bool kHaveCudaRuntime = UNET_WITH_CUDA_RUNTIME;

[[noreturn]] void no_cuda_runtime(const char* what) {
  throw DeviceError(std::string(what) + ": device cuda is not available: this build does not link the CUDA runtime "
                    "(use --device cuda-emu to run the CUDA kernels under the emulator)");
}

void check_emulator(const char* what) {
  if (!emulator_built())
    throw DeviceError(std::string(what) + ": device cuda-emu is not available: this build has no device emulator "
                      "(the CUDA toolkit's headers were not found)");
}

}  // namespace

void throw_cuda_error(int code, const char* expr, const char* file, int line) {
  const char* name = runtime().get_error_name ? runtime().get_error_name(code) : nullptr;
  throw_error(std::string("CUDA error ") + std::to_string(code) + (name ? std::string(" ") + name : "") + " in " +
                  expr,
              file, line);
}

bool emulator_built() { return UNET_HAVE_CUDA_KERNELS; }

int cuda_device_count(std::string* why) {
  const Runtime& rt = runtime();
  if (!rt.get_device_count) {
    if (why) *why = "no CUDA runtime library (libcudart.so) found";
    return 0;
  }
  int n = 0;
  const int err = rt.get_device_count(&n);
  if (err != 0) {
    if (why) {
      const char* name = rt.get_error_name ? rt.get_error_name(err) : nullptr;
      *why = "cudaGetDeviceCount returned error " + std::to_string(err) + (name ? std::string(" ") + name : "");
    }
    return 0;
  }
  if (n == 0 && why) *why = "the CUDA runtime reports no device";
  return n;
}

Device resolve_device(const std::string& name, std::ostream* log) {
  if (name == "cpu") return Device::cpu;
  if (name == "cuda-emu") {
    check_emulator("--device cuda-emu");
    return Device::cuda_emu;
  }
  if (name != "auto" && name != "cuda")
    throw std::invalid_argument("unknown device '" + name + "' (expected auto, cpu, cuda or cuda-emu)");
  std::string why;
  const int count = cuda_device_count(&why);
  if (count > 0 && kHaveCudaRuntime) return Device::cuda;
  if (count > 0) why = std::to_string(count) + " CUDA device(s) found, but this build does not link the CUDA runtime";
  if (name == "cuda") throw DeviceError("--device cuda: no usable CUDA device: " + why);
  if (log) *log << "unet: no usable CUDA device (" << why << "); running on the CPU\n";
  return Device::cpu;
}

#if UNET_WITH_CUDA_RUNTIME

// ---- real GPU: one stream per process, stream-ordered pool allocations ----
namespace {
struct CudaState {
  cudaStream_t stream = nullptr;
  std::mutex mutex;
  MemoryStats stats;
  CudaState() { UNET_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)); }
};
CudaState& cuda_state() {
  static CudaState* s = new CudaState();  // never destroyed: tensors in static objects may be freed at exit
  return *s;
}
}  // namespace

#endif

void* allocate(Device d, size_t bytes) {
  switch (d) {
    case Device::cpu: return HostAllocator::instance().allocate(bytes);
    case Device::cuda_emu: check_emulator("allocate"); return HostAllocator::emulated_device().allocate(bytes);
    case Device::cuda: {
#if UNET_WITH_CUDA_RUNTIME
      CudaState& s = cuda_state();
      void* p = nullptr;
      UNET_CUDA_CHECK(cudaMallocAsync(&p, bytes ? bytes : 1, s.stream));
      std::lock_guard<std::mutex> lock(s.mutex);
      s.stats.current_bytes += bytes;
      if (s.stats.current_bytes > s.stats.peak_bytes) s.stats.peak_bytes = s.stats.current_bytes;
      return p;
#else
      no_cuda_runtime("allocate");
#endif
    }
  }
  throw DeviceError("allocate: unknown device");
}

void free(Device d, void* p, size_t bytes) {
  if (!p) return;
  switch (d) {
    case Device::cpu: HostAllocator::instance().deallocate(p, bytes); return;
    case Device::cuda_emu: HostAllocator::emulated_device().deallocate(p, bytes); return;
    case Device::cuda: {
#if UNET_WITH_CUDA_RUNTIME
      CudaState& s = cuda_state();
      cudaFreeAsync(p, s.stream);  // no throw: called from destructors
      std::lock_guard<std::mutex> lock(s.mutex);
      s.stats.current_bytes -= bytes;
#endif
      return;
    }
  }
}

MemoryStats memory_stats(Device d) {
  switch (d) {
    case Device::cpu: return HostAllocator::instance().stats();
    case Device::cuda_emu: return HostAllocator::emulated_device().stats();
    case Device::cuda: {
#if UNET_WITH_CUDA_RUNTIME
      std::lock_guard<std::mutex> lock(cuda_state().mutex);
      return cuda_state().stats;
#else
      return {};
#endif
    }
  }
  return {};
}

void reset_peak(Device d) {
  switch (d) {
    case Device::cpu: HostAllocator::instance().reset_peak(); return;
    case Device::cuda_emu: HostAllocator::emulated_device().reset_peak(); return;
    case Device::cuda: {
#if UNET_WITH_CUDA_RUNTIME
      std::lock_guard<std::mutex> lock(cuda_state().mutex);
      cuda_state().stats.peak_bytes = cuda_state().stats.current_bytes;
#endif
      return;
    }
  }
}

void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  if (dst_device != Device::cuda && src_device != Device::cuda) {  // cpu and emulated memory are both host memory
    std::memcpy(dst, src, bytes);
    return;
  }
#if UNET_WITH_CUDA_RUNTIME
  const cudaMemcpyKind kind = src_device == Device::cuda
                                  ? (dst_device == Device::cuda ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                                  : cudaMemcpyHostToDevice;
  UNET_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, cuda_state().stream));
  UNET_CUDA_CHECK(cudaStreamSynchronize(cuda_state().stream));
#else
  no_cuda_runtime("copy");
#endif
}

void memset(Device d, void* p, int value, size_t bytes) {
  if (bytes == 0) return;
  if (d != Device::cuda) {
    std::memset(p, value, bytes);
    return;
  }
#if UNET_WITH_CUDA_RUNTIME
  UNET_CUDA_CHECK(cudaMemsetAsync(p, value, bytes, cuda_state().stream));
#else
  no_cuda_runtime("memset");
#endif
}

cudaStream_t default_stream(Device d) {
#if UNET_WITH_CUDA_RUNTIME
  if (d == Device::cuda) return cuda_state().stream;
#endif
  if (d == Device::cuda) no_cuda_runtime("default_stream");
  return nullptr;
}

void synchronize(Device d) {
#if UNET_WITH_CUDA_RUNTIME
  if (d == Device::cuda) UNET_CUDA_CHECK(cudaStreamSynchronize(cuda_state().stream));
#else
  (void)d;
#endif
}

}  // namespace unet::device
