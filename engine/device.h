// The host side of the CUDA backend (docs/architecture.md, "Devices and dispatch"): device memory, copies, the
// default stream, synchronisation and device selection, behind one small interface with two implementations:
//   Device::cuda_emu  the device emulator: "device" memory is host memory from its own pooled HostAllocator (current
//                     and peak bytes accounted apart from the CPU's), copies are memcpy, kernels run synchronously on
//                     the CPU (kernels/emu), so the stream is a null handle and synchronize() has nothing to wait for;
//   Device::cuda      a real GPU: one process-wide stream, stream-ordered cudaMallocAsync / cudaFreeAsync from the
//                     device's default memory pool (which keeps freed memory cached), cudaMemcpyAsync + stream
//                     synchronisation. Only in the GPU build (CMake UNET_CUDA_RUNTIME=ON defines
//                     UNET_WITH_CUDA_RUNTIME and links the CUDA runtime); elsewhere Device::cuda is a clear error.
// Device::cpu is accepted too (host memory, memcpy), so callers can copy between any two devices with one call.
#pragma once
#include <chrono>
#include <cstddef>
#include <iosfwd>
#include <stdexcept>
#include <string>

#include "kernels/common/allocator.h"
#include "engine/tensor.h"
#include "kernels/cuda/stream.h"

struct CUevent_st;  // cudaEvent_t is a CUevent_st*, as in CUDA's driver_types.h (no CUDA header here: see stream.h)

namespace unet::device {

// Thrown by the error-check macros below; the message names the failed expression, the file and the line.
struct DeviceError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void throw_error(const std::string& what, const char* file, int line);
[[noreturn]] void throw_cuda_error(int code, const char* expr, const char* file, int line);
// The text throw_cuda_error throws: "CUDA error 2 cudaErrorMemoryAllocation (out of memory) in EXPR (FILE:LINE)";
// the name and description come from the CUDA runtime (linked in the GPU build, else opened with dlopen) and are left
// out when there is none.
std::string cuda_error_message(int code, const char* expr, const char* file, int line);

// The error-check family. UNET_CUDA_CHECK(cudaMalloc(...)) throws DeviceError unless the call returns 0 (cudaSuccess),
// with the error's number and, where the runtime is loaded, its name; UNET_DEVICE_CHECK(cond, message) for anything
// else (a message is a std::string expression).
#define UNET_CUDA_CHECK(expr)                                                                             \
  do {                                                                                                    \
    const int unet_cuda_err_ = static_cast<int>(expr);                                                    \
    if (unet_cuda_err_ != 0) ::unet::device::throw_cuda_error(unet_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)
#define UNET_DEVICE_CHECK(cond, message)                                                \
  do {                                                                                  \
    if (!(cond)) ::unet::device::throw_error(std::string(message), __FILE__, __LINE__); \
  } while (0)

// Memory on `d`. Device memory is stream-ordered on the default stream: free() may return before the kernels that
// use the block have run, and the block is reused only by work queued after them.
void* allocate(Device d, size_t bytes);
void free(Device d, void* p, size_t bytes);
MemoryStats memory_stats(Device d);  // current / peak bytes handed out on d (cached bytes: the emulator's pool only)
void reset_peak(Device d);

// Page-locked ("pinned") host memory for tensors the host fills and then copies to the device (the data loader's
// batches, Tensor::empty_pinned): in the GPU build from cudaHostAlloc, so cudaMemcpyAsync reads it by DMA without
// staging and without making the host wait. Its reuse is stream-ordered like device memory: a block freed right after
// a copy queued from it is handed out again only once the device has passed the copy (engine/fenced_pool.h). The
// first allocation creates the CUDA context: only ask for it when training on Device::cuda. Elsewhere it is ordinary
// pooled host memory (HostAllocator::instance(), accounted there).
void* allocate_pinned(size_t bytes);
void free_pinned(void* p, size_t bytes);
MemoryStats pinned_memory_stats();  // the GPU build's pinned pool (zeros elsewhere: counted in memory_stats(cpu))

// Copies `bytes` from src (on src_device) to dst (on dst_device), in stream order after the work already queued. To
// the host (or host to host) it returns when the copy is done: the host waits for the device. To a device it does not
// wait: src may be freed or reused on return (CUDA stages pageable host memory before returning; a pinned source may
// be freed, its reuse waits for the copy, but not written), and dst is read by work queued later on the same stream.
void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
// Sets `bytes` bytes at p to `value`, in stream order.
void memset(Device d, void* p, int value, size_t bytes);

// The stream every op of this process queues its kernels on (null under the emulator: launches are synchronous).
cudaStream_t default_stream(Device d);
// Waits until everything queued on d has finished; device errors raised by earlier kernels surface here.
void synchronize(Device d);

// How many times this process has waited for a device (copies to the host, synchronize on a device), on cuda and
// cuda-emu alike: the count a training step keeps to one (tests and benchmarks read it; thread-safe).
uint64_t host_waits();

// Times work queued on a device, for benchmarks: on Device::cuda a pair of CUDA events recorded on the device's stream
// (elapsed_ms waits for the stop event, so it measures GPU time without synchronising in between); on the cpu and
// cuda-emu, whose work is done when the call returns, the host's steady clock. Owns its events: not copyable.
//   EventTimer t(d); t.start(); ...queue work...; t.stop(); double ms = t.elapsed_ms();
// start() may be called again to reuse the timer; elapsed_ms() without start() then stop() throws DeviceError.
class EventTimer {
 public:
  explicit EventTimer(Device d);  // DeviceError for Device::cuda in a build without the CUDA runtime
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start();
  void stop();
  double elapsed_ms() const;

 private:
  Device device_;
  CUevent_st* start_event_ = nullptr;  // Device::cuda only
  CUevent_st* stop_event_ = nullptr;
  std::chrono::steady_clock::time_point start_time_, stop_time_;  // the other devices
  enum class State { idle, started, stopped } state_ = State::idle;
};

// True when this build contains the device emulator and the CUDA kernels compiled against it (the default build with
// the CUDA toolkit's headers; not the GPU build). See README "Devices".
bool emulator_built();
// True when this build links the CUDA runtime (the GPU build, UNET_CUDA_RUNTIME=ON), so Device::cuda can work.
bool runtime_built();
// Number of CUDA devices the CUDA runtime reports (the linked one in the GPU build, else loaded with dlopen); 0 with
// *why set to the reason when there is no runtime library or it returns an error (35: the driver is missing or too
// old).
int cuda_device_count(std::string* why = nullptr);

// "auto" | "cpu" | "cuda" | "cuda-emu" to a Device:
//   auto      a CUDA device when the runtime reports one and this build can use it (one line on `log` naming it),
//             otherwise the CPU, with one line on `log` saying why;
//   cuda      a real GPU or a DeviceError that says why there is none (no device, or no CUDA runtime in this build);
//   cuda-emu  the device emulator (DeviceError when the build has no emulator);
//   anything else: std::invalid_argument.
Device resolve_device(const std::string& name, std::ostream* log);

}  // namespace unet::device
