// engine/device: the emulated implementation (default build), the real CUDA one (the GPU build, UNET_WITH_CUDA_RUNTIME,
// CMake UNET_CUDA_RUNTIME=ON, which links the CUDA runtime), and device selection, which in the default build asks a
// dlopen'ed CUDA runtime so that `auto` can say why it falls back to the CPU.
//
// The real path uses one non-blocking stream created once per process, not the legacy default stream: the legacy
// stream synchronises implicitly with every other blocking stream (a library or a second loader thread queuing work
// would serialise against us), cannot be captured into a CUDA graph, and hides ordering bugs that an explicit stream
// makes visible. Every call here and every launcher (kernels/cuda/launch.cuh, scratch.cuh) queues on that stream, so
// stream-ordered allocation (cudaMallocAsync / cudaFreeAsync) needs no device-wide synchronisation.
#include "engine/device.h"

#include <dlfcn.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <ostream>

#include "engine/comm.h"
#include "engine/fenced_pool.h"

#ifndef UNET_WITH_CUDA_RUNTIME
#define UNET_WITH_CUDA_RUNTIME 0
#endif
#ifndef UNET_HAVE_CUDA_KERNELS
#define UNET_HAVE_CUDA_KERNELS 0
#endif
#ifndef UNET_CUDA_MIN_ARCH
#define UNET_CUDA_MIN_ARCH 0  // oldest compute capability (x10) the kernels are built for; 0: unknown, not checked
#endif
#if UNET_WITH_CUDA_RUNTIME
#include <cuda_runtime.h>

#include <mutex>
#endif
#define UNET_EMULATOR_BUILT (UNET_HAVE_CUDA_KERNELS && !UNET_WITH_CUDA_RUNTIME)
#if UNET_EMULATOR_BUILT
#include "kernels/emu/device_memory.h"
#endif

namespace unet::device {

void throw_error(const std::string& what, const char* file, int line) {
  throw DeviceError(what + " (" + file + ":" + std::to_string(line) + ")");
}

namespace {

// The CUDA runtime's device count and error texts: linked in the GPU build; otherwise opened on first use (null
// entries when it is not installed), so the default build can report why there is no device without linking it.
struct Runtime {
  void* lib = nullptr;
  int (*get_device_count)(int*) = nullptr;
  const char* (*get_error_name)(int) = nullptr;
  const char* (*get_error_string)(int) = nullptr;
  Runtime() {
#if UNET_WITH_CUDA_RUNTIME
    get_device_count = [](int* n) { return static_cast<int>(cudaGetDeviceCount(n)); };
    get_error_name = [](int e) { return cudaGetErrorName(static_cast<cudaError_t>(e)); };
    get_error_string = [](int e) { return cudaGetErrorString(static_cast<cudaError_t>(e)); };
#else
    for (const char* name : {"libcudart.so", "libcudart.so.13", "/usr/local/cuda/lib64/libcudart.so"})
      if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
    if (!lib) return;
    get_device_count = reinterpret_cast<int (*)(int*)>(dlsym(lib, "cudaGetDeviceCount"));
    get_error_name = reinterpret_cast<const char* (*)(int)>(dlsym(lib, "cudaGetErrorName"));
    get_error_string = reinterpret_cast<const char* (*)(int)>(dlsym(lib, "cudaGetErrorString"));
#endif
  }
};

const Runtime& runtime() {
  static Runtime r;
  return r;
}

// " cudaErrorX" for an error code, or nothing without a runtime.
std::string error_name(int code) {
  const char* name = runtime().get_error_name ? runtime().get_error_name(code) : nullptr;
  return name ? std::string(" ") + name : std::string();
}

[[noreturn]] void no_cuda_runtime(const char* what) {
  throw DeviceError(std::string(what) +
                    ": device cuda is not available: this build does not link the CUDA runtime "
                    "(build with tools/build_gpu.sh, CMake -DUNET_CUDA_RUNTIME=ON, or use --device cuda-emu to run "
                    "the CUDA kernels under the emulator)");
}

void check_emulator(const char* what) {
  if (emulator_built()) return;
  if (runtime_built())
    throw DeviceError(std::string(what) +
                      ": device cuda-emu is not available: this is the GPU build "
                      "(UNET_CUDA_RUNTIME=ON), which runs the CUDA kernels on the GPU and has no device emulator");
  throw DeviceError(std::string(what) +
                    ": device cuda-emu is not available: this build has no device emulator "
                    "(the CUDA toolkit's headers were not found)");
}

}  // namespace

std::string cuda_error_message(int code, const char* expr, const char* file, int line) {
  std::string m = "CUDA error " + std::to_string(code) + error_name(code);
  const char* text = runtime().get_error_string ? runtime().get_error_string(code) : nullptr;
  if (text) m += std::string(" (") + text + ")";
  return m + " in " + expr + " (" + file + ":" + std::to_string(line) + ")";
}

void throw_cuda_error(int code, const char* expr, const char* file, int line) {
  throw DeviceError(cuda_error_message(code, expr, file, line));
}

bool emulator_built() {
  return UNET_EMULATOR_BUILT;
}
bool runtime_built() {
  return UNET_WITH_CUDA_RUNTIME;
}

int cuda_device_count(std::string* why) {
  const Runtime& rt = runtime();
  if (!rt.get_device_count) {
    if (why) *why = "no CUDA runtime library (libcudart.so) found";
    return 0;
  }
  int n = 0;
  const int err = rt.get_device_count(&n);
  if (err != 0) {
    if (why) *why = "cudaGetDeviceCount returned error " + std::to_string(err) + error_name(err);
    return 0;
  }
  if (n == 0 && why) *why = "the CUDA runtime reports no device";
  return n;
}

#if UNET_EMULATOR_BUILT
namespace {

// Device::cuda_emu's memory: pooled like the CPU's, accounted apart from it, and taken from the emulator's guarded
// memory, which the host cannot read outside kernels, copies and memsets (kernels/emu/device_memory.h).
HostAllocator& emulated_device_memory() {
  static HostAllocator* a = new HostAllocator({emu::device_malloc, emu::device_free});
  return *a;
}

}  // namespace
#endif

#if UNET_WITH_CUDA_RUNTIME

// ---- real GPU: one stream per process, stream-ordered allocations from the device's default pool ----
namespace {

struct CudaState {
  int device = 0;
  cudaMemPool_t pool = nullptr;
  cudaStream_t stream = nullptr;
  std::mutex mutex;  // stats: tensors may be freed on other threads (the data loader)
  MemoryStats stats;
  CudaState() {
    UNET_CUDA_CHECK(cudaGetDevice(&device));
    UNET_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    // Keep freed memory in the pool: by default it is returned to the driver at every synchronisation, which makes
    // each training step pay for cudaMalloc again. The pool stays shared with the kernels' Scratch buffers.
    uint64_t keep_all = UINT64_MAX;
    UNET_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all));
    UNET_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  }
};

CudaState& cuda_state() {
  // Never destroyed: tensors in static objects may be freed at exit, after the runtime has begun to shut down.
  static CudaState* s = new CudaState();
  return *s;
}

// The device's name and compute capability ("NVIDIA H100 80GB HBM3, sm_90"), and whether the kernels can run on it.
std::string describe_device(int dev, bool* usable) {
  cudaDeviceProp prop{};
  UNET_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  const int cc = prop.major * 10 + prop.minor;
  *usable = cc >= UNET_CUDA_MIN_ARCH;
  return std::string(prop.name) + ", sm_" + std::to_string(cc);
}

}  // namespace

#endif

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
  if (count > 0 && runtime_built()) {
#if UNET_WITH_CUDA_RUNTIME
    // Under mpirun or srun, each rank on a machine takes the GPU of its local rank (wrapping around when there are
    // more ranks than GPUs), as torchrun's LOCAL_RANK convention does.
    if (count > 1) UNET_CUDA_CHECK(cudaSetDevice(launcher_local_rank() % count));
    int dev = 0;
    UNET_CUDA_CHECK(cudaGetDevice(&dev));
    bool usable = false;
    const std::string what = "CUDA device " + std::to_string(dev) + " (" + describe_device(dev, &usable) + ")";
    if (usable) {
      if (log) *log << "unet: running on " << what << "\n";
      return Device::cuda;
    }
    why = what + " is older than the oldest architecture this build's kernels target (sm_" +
          std::to_string(UNET_CUDA_MIN_ARCH) + ", CMAKE_CUDA_ARCHITECTURES)";
#endif
  } else if (count > 0) {
    why = std::to_string(count) +
          " CUDA device(s) found, but this build does not link the CUDA runtime "
          "(tools/build_gpu.sh builds one that does)";
  }
  if (name == "cuda") throw DeviceError("no usable CUDA device: " + why);
  if (log) *log << "unet: no usable CUDA device (" << why << "); running on the CPU\n";
  return Device::cpu;
}

void* allocate(Device d, size_t bytes) {
  switch (d) {
    case Device::cpu:
      return HostAllocator::instance().allocate(bytes);
    case Device::cuda_emu:
      check_emulator("allocate");
#if UNET_EMULATOR_BUILT
      return emulated_device_memory().allocate(bytes);
#else
      break;
#endif
    case Device::cuda: {
#if UNET_WITH_CUDA_RUNTIME
      CudaState& s = cuda_state();
      void* p = nullptr;
      const cudaError_t e = cudaMallocAsync(&p, bytes ? bytes : 1, s.stream);
      if (e != cudaSuccess) {
        (void)cudaGetLastError();  // not sticky: clear it, or the next launch would report it as its own
        const MemoryStats now = memory_stats(Device::cuda);
        throw DeviceError("allocate " + std::to_string(bytes) + " bytes on cuda (" + std::to_string(now.current_bytes) +
                          " bytes in use, " + std::to_string(now.cached_bytes) +
                          " cached): " + cuda_error_message(e, "cudaMallocAsync", __FILE__, __LINE__));
      }
      std::lock_guard<std::mutex> lock(s.mutex);
      s.stats.current_bytes += bytes;
      if (s.stats.current_bytes > s.stats.peak_bytes) s.stats.peak_bytes = s.stats.current_bytes;
      return p;
#else
      no_cuda_runtime("allocate");
#endif
    }
  }
  throw DeviceError("allocate: unknown device " + std::to_string(static_cast<int>(d)));
}

void free(Device d, void* p, size_t bytes) {
  if (!p) return;
  switch (d) {
    case Device::cpu:
      HostAllocator::instance().deallocate(p, bytes);
      return;
    case Device::cuda_emu:
#if UNET_EMULATOR_BUILT
      emulated_device_memory().deallocate(p, bytes);
#endif
      return;
    case Device::cuda: {
#if UNET_WITH_CUDA_RUNTIME
      CudaState& s = cuda_state();
      // No throw: called from destructors. A failure that is not sticky (an invalid pointer, the runtime shutting
      // down at exit) is cleared here, so the next launch does not report it as its own.
      if (cudaFreeAsync(p, s.stream) != cudaSuccess) (void)cudaGetLastError();
      std::lock_guard<std::mutex> lock(s.mutex);
      s.stats.current_bytes -= bytes;
#endif
      return;
    }
  }
}

MemoryStats memory_stats(Device d) {
  switch (d) {
    case Device::cpu:
      return HostAllocator::instance().stats();
    case Device::cuda_emu:
#if UNET_EMULATOR_BUILT
      return emulated_device_memory().stats();
#else
      return {};
#endif
    case Device::cuda: {
#if UNET_WITH_CUDA_RUNTIME
      CudaState& s = cuda_state();
      MemoryStats out;
      {
        std::lock_guard<std::mutex> lock(s.mutex);
        out = s.stats;
      }
      // Cached: what the pool holds beyond what is in use (tensors and the kernels' scratch buffers alike).
      uint64_t reserved = 0, used = 0;
      if (cudaMemPoolGetAttribute(s.pool, cudaMemPoolAttrReservedMemCurrent, &reserved) == cudaSuccess &&
          cudaMemPoolGetAttribute(s.pool, cudaMemPoolAttrUsedMemCurrent, &used) == cudaSuccess && reserved > used)
        out.cached_bytes = static_cast<size_t>(reserved - used);
      return out;
#else
      return {};
#endif
    }
  }
  return {};
}

void reset_peak(Device d) {
  switch (d) {
    case Device::cpu:
      HostAllocator::instance().reset_peak();
      return;
    case Device::cuda_emu:
#if UNET_EMULATOR_BUILT
      emulated_device_memory().reset_peak();
#endif
      return;
    case Device::cuda: {
#if UNET_WITH_CUDA_RUNTIME
      std::lock_guard<std::mutex> lock(cuda_state().mutex);
      cuda_state().stats.peak_bytes = cuda_state().stats.current_bytes;
#endif
      return;
    }
  }
}

#if UNET_WITH_CUDA_RUNTIME
namespace {
// Pinned blocks fenced by CUDA events on the process's stream (engine/fenced_pool.h). The loader's worker threads
// allocate, and the current device is per thread: each call first selects this process's device (or a rank on GPU 3
// would open a context on GPU 0 from its workers); portable memory, as any context may copy from it.
void* pinned_alloc(size_t bytes) {
  UNET_CUDA_CHECK(cudaSetDevice(cuda_state().device));
  void* p = nullptr;
  const cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    throw DeviceError("allocate " + std::to_string(bytes) +
                      " bytes of pinned host memory: " + cuda_error_message(e, "cudaHostAlloc", __FILE__, __LINE__));
  }
  return p;
}

void* pinned_new_fence() {
  cudaEvent_t e = nullptr;
  if (cudaSetDevice(cuda_state().device) != cudaSuccess ||
      cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess)
    (void)cudaGetLastError();
  return e;
}

bool pinned_record(void* fence) {
  if (cudaEventRecord(static_cast<cudaEvent_t>(fence), cuda_state().stream) == cudaSuccess) return true;
  (void)cudaGetLastError();
  return false;
}

bool pinned_done(void* fence) {
  const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(fence));
  if (e != cudaSuccess && e != cudaErrorNotReady) (void)cudaGetLastError();
  return e == cudaSuccess;
}

FencedPool& pinned_pool() {  // never destroyed, as cuda_state()
  static FencedPool* pool = new FencedPool({pinned_alloc, pinned_new_fence, pinned_record, pinned_done});
  return *pool;
}
}  // namespace
#endif

namespace {
// Page-locked memory needs a CUDA device: the GPU build on a machine without one (or without a driver) hands out
// ordinary host memory instead. Decided once, so every block is freed to the pool it came from.
bool pinned_from_cuda() {
#if UNET_WITH_CUDA_RUNTIME
  static const bool yes = cuda_device_count() > 0;
  return yes;
#else
  return false;
#endif
}
}  // namespace

void* allocate_pinned(size_t bytes) {
#if UNET_WITH_CUDA_RUNTIME
  if (pinned_from_cuda()) return pinned_pool().allocate(bytes);
#endif
  return HostAllocator::instance().allocate(bytes);
}

void free_pinned(void* p, size_t bytes) {
#if UNET_WITH_CUDA_RUNTIME
  if (pinned_from_cuda()) return pinned_pool().deallocate(p, bytes);
#endif
  HostAllocator::instance().deallocate(p, bytes);
}

MemoryStats pinned_memory_stats() {
#if UNET_WITH_CUDA_RUNTIME
  if (pinned_from_cuda()) return pinned_pool().stats();
#endif
  return {};
}

namespace {
std::atomic<uint64_t> g_host_waits{0};
}  // namespace

uint64_t host_waits() { return g_host_waits.load(); }

void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  if (dst_device == Device::cpu && src_device == Device::cpu) {
    std::memcpy(dst, src, bytes);
    return;
  }
  if (dst_device == Device::cpu) ++g_host_waits;
#if UNET_EMULATOR_BUILT
  if (dst_device != Device::cuda && src_device != Device::cuda) {  // emulated device memory is guarded host memory
    emu::device_memcpy(dst, src, bytes);
    return;
  }
#endif
#if UNET_WITH_CUDA_RUNTIME
  // Queued after the kernels that produce src, then waited for: the caller may read dst (or free src) on return.
  const cudaMemcpyKind kind = src_device == Device::cuda
                                  ? (dst_device == Device::cuda ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                                  : cudaMemcpyHostToDevice;
  UNET_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, cuda_state().stream));
  // Only the host reading dst must wait. A copy to the device is ordered before the work queued after it, and its
  // pageable source has been staged when cudaMemcpyAsync returns (CUDA's API synchronization rules); a pinned source
  // is read later, by DMA, and its block is not reused before that (free_pinned's fence).
  if (dst_device == Device::cpu) UNET_CUDA_CHECK(cudaStreamSynchronize(cuda_state().stream));
#else
  no_cuda_runtime("copy");
#endif
}

void memset(Device d, void* p, int value, size_t bytes) {
  if (bytes == 0) return;
  if (d == Device::cpu) {
    std::memset(p, value, bytes);
    return;
  }
#if UNET_EMULATOR_BUILT
  if (d == Device::cuda_emu) {
    emu::device_memset(p, value, bytes);
    return;
  }
#endif
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
  if (d != Device::cpu) ++g_host_waits;
#if UNET_WITH_CUDA_RUNTIME
  if (d == Device::cuda) UNET_CUDA_CHECK(cudaStreamSynchronize(cuda_state().stream));
#else
  (void)d;
#endif
}

// ---- EventTimer ----

EventTimer::EventTimer(Device d) : device_(d) {
  if (d != Device::cuda) return;
#if UNET_WITH_CUDA_RUNTIME
  cuda_state();  // the events belong to the device the stream is on
  UNET_CUDA_CHECK(cudaEventCreate(&start_event_));
  const cudaError_t e = cudaEventCreate(&stop_event_);
  if (e != cudaSuccess) {
    cudaEventDestroy(start_event_);
    throw_cuda_error(e, "cudaEventCreate(&stop_event_)", __FILE__, __LINE__);
  }
#else
  no_cuda_runtime("EventTimer");
#endif
}

EventTimer::~EventTimer() {
#if UNET_WITH_CUDA_RUNTIME
  if (start_event_) cudaEventDestroy(start_event_);
  if (stop_event_) cudaEventDestroy(stop_event_);
#endif
}

void EventTimer::start() {
#if UNET_WITH_CUDA_RUNTIME
  if (device_ == Device::cuda) UNET_CUDA_CHECK(cudaEventRecord(start_event_, cuda_state().stream));
#endif
  start_time_ = std::chrono::steady_clock::now();
  state_ = State::started;
}

void EventTimer::stop() {
  UNET_DEVICE_CHECK(state_ == State::started, "EventTimer::stop() without a start() before it");
#if UNET_WITH_CUDA_RUNTIME
  if (device_ == Device::cuda) UNET_CUDA_CHECK(cudaEventRecord(stop_event_, cuda_state().stream));
#endif
  stop_time_ = std::chrono::steady_clock::now();
  state_ = State::stopped;
}

double EventTimer::elapsed_ms() const {
  UNET_DEVICE_CHECK(state_ == State::stopped,
                    std::string("EventTimer::elapsed_ms() needs start() then stop(), ") +
                        (state_ == State::idle ? "start() was not called" : "stop() was not called"));
#if UNET_WITH_CUDA_RUNTIME
  if (device_ == Device::cuda) {
    UNET_CUDA_CHECK(cudaEventSynchronize(stop_event_));
    float ms = 0.f;
    UNET_CUDA_CHECK(cudaEventElapsedTime(&ms, start_event_, stop_event_));
    return ms;
  }
#endif
  return std::chrono::duration<double, std::milli>(stop_time_ - start_time_).count();
}

}  // namespace unet::device
