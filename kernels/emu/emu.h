// The device emulator's runtime interface: launching a kernel on the CPU, the schedule and worker options, the
// error type, and the few entry points the kernel-facing layer (kernels/emu/cuda_emu.h, kernels/cuda/mma.cuh,
// kernels/cuda/async_copy.cuh, tensor_copy.cuh, wgmma.cuh) calls for barriers, warp and warpgroup collectives,
// mbarriers, asynchronous copies and warpgroup MMA. Kernel sources never include this directly: they include
// kernels/cuda/cuda_compat.cuh.
//
// Model (docs/emulator.md): the threads of one block are fibers on one OS thread, run in a plain loop until one of
// them blocks (at __syncthreads or a warp collective); only then does that thread keep its fiber and a new one carries
// on with the next thread. Blocks are spread over a small pool of worker threads; a fiber never changes OS thread, so
// `static thread_local` (what __shared__ becomes) is exactly "one copy per block in flight".
//
// Environment: UNET_EMU_SCHEDULE (forward | reverse | random[:SEED]), UNET_EMU_WORKERS (worker threads),
// UNET_EMU_STACK_KB (stack per emulated thread, 256 by default; the lowest page is a guard).
//
// Checked build (UNET_CHECKED, CMake -DUNET_CHECKED=ON: AddressSanitizer + UBSan): fibers switch through ucontext
// announced to ASan, one worker, __shared__ is a plain static and dynamic shared memory is a heap block of exactly the
// launch's size, so out-of-bounds shared-memory accesses are reported (tools/checked_test.sh).
#pragma once

// Only the host compiler sees this file. The CUDA execution-space keywords must be defined before any CUDA header:
// CUDA 13's crt/host_defines.h keeps a prior definition of __host__, __device__, __global__, __shared__,
// __constant__, __managed__ and __grid_constant__ (it tests `!defined(...)` when __CUDACC__ is not set).
#ifdef __CUDACC__
#error "kernels/emu is the host-compiler stand-in for the device; nvcc must not include it"
#endif
#if defined(__HOST_DEFINES_H__) && !defined(UNET_EMU_KEYWORDS)
#error "include kernels/emu/emu.h (or kernels/cuda/cuda_compat.cuh) before any CUDA header"
#endif
#ifndef UNET_EMU_KEYWORDS
#define UNET_EMU_KEYWORDS
#define __host__
#define __device__
#define __global__
#define __constant__
#define __managed__
#define __grid_constant__
#ifdef UNET_CHECKED
// Checked build (AddressSanitizer): ASan does not instrument thread_local arrays, so shared memory is a plain static,
// which is still one copy per block in flight because that build runs a single worker (see workers()).
#define __shared__ static
#else
// One copy per OS thread = one copy per block in flight (a block's fibers all live on one worker thread).
#define __shared__ static thread_local
#endif
#endif

#include <driver_types.h>  // cudaStream_t (a type only: nothing from the CUDA runtime is linked)
#include <vector_types.h>  // dim3, uint3, float4, ...

#include <cstddef>
#include <cstdint>
#include <functional>
#include <source_location>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace unet::emu {

// The order in which the threads of a block run between two synchronisation points. A race-free kernel gives
// bitwise identical results under every schedule; a kernel that differs has a race (schedule fuzzing, the emulator's
// stand-in for a race checker: docs/emulator.md, "Schedule fuzzing").
struct Schedule {
  enum Kind { forward, reverse, random } kind = forward;
  uint64_t seed = 0;  // random only: the same seed gives the same interleaving, whatever the worker count

  // "forward", "reverse", "random" (seed 1) or "random:SEED"; throws std::invalid_argument otherwise.
  static Schedule parse(const std::string& text);
  // From the environment variable UNET_EMU_SCHEDULE; forward when unset.
  static Schedule from_env();
  std::string str() const;
  bool operator==(const Schedule&) const = default;
};

// The schedule used by later launches. Initially Schedule::from_env().
void set_schedule(Schedule s);
Schedule schedule();

// Worker threads that run blocks (the launching thread is one of them). Initially UNET_EMU_WORKERS, else the number of
// hardware threads, at most 8. Results never depend on it: blocks share nothing but global memory and atomics.
// The checked build records the setting but always runs one worker (its __shared__ is not per thread).
void set_workers(int n);
int workers();

// Everything that goes wrong inside a kernel (a divergent or deadlocked barrier, a warp collective used against its
// rules, an exception thrown by kernel code) reaches the launching thread as a KernelError naming the block and
// thread; the rest of the launch is abandoned.
class KernelError : public std::runtime_error {
 public:
  KernelError(const std::string& what, uint3 block, uint3 thread);
  uint3 block;
  uint3 thread;
};

namespace detail {

// The record behind the threadIdx / blockIdx / blockDim / gridDim macros: one per emulated thread of the block in
// flight, `current` points at the one running now on this OS thread.
struct Thread {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  int linear;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  int lane;    // linear % 32
};
inline constinit thread_local Thread* current = nullptr;

// A kernel with its arguments bound: invoke(args) runs one thread's body.
struct BoundKernel {
  void (*invoke)(const void* args);
  const void* args;
};
void launch(dim3 grid, dim3 block, size_t smem_bytes, BoundKernel kernel);

// Block barrier. Returns the number of live threads that passed a non-zero `pred` (for __syncthreads_count) and
// sets *live to the number of live threads (for __syncthreads_and).
int barrier(int pred, int* live, const std::source_location& site);

// Warp collectives share one rendezvous: each lane deposits up to 8 bytes; when every lane named in the mask has
// arrived, the last one computes every lane's result. Gather ops return the value of lane `src` (computed by the
// caller from the shuffle's rules; own value when src is not a participant).
enum class WarpOp : uint8_t {
  shfl,
  shfl_up,
  shfl_down,
  shfl_xor,
  ballot,
  any,
  all,
  syncwarp,
  reduce_add,
  reduce_min_i,
  reduce_max_i,
  reduce_min_u,
  reduce_max_u,
  reduce_and,
  reduce_or,
  reduce_xor,
  all_gather,  // `value` is a GatherArgs* (see warp_all_gather); nothing is returned
};
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int src, const std::source_location& site);

// All-gather, the building block of the tensor-core leaf intrinsics (kernels/cuda/mma.cuh): every lane in the mask
// offers `bytes` bytes at `mine` and receives, at all + s * bytes, the bytes lane s offered, for every lane s in the
// mask (slots of other lanes are left as they are). The copies are made once every lane has arrived, so `mine` may
// point into shared memory and is read at that moment, as one warp-wide instruction would read it. Every lane must
// offer the same number of bytes.
void warp_all_gather(unsigned mask, const void* mine, void* all, size_t bytes, const std::source_location& site);

// Lanes of the current thread's warp that exist and have not exited (what __activemask() reports here).
unsigned live_lanes();

// This worker's dynamic shared memory (the launch's smem_bytes, refilled with 0xFF bytes, a NaN, for every block).
void* dynamic_smem();

// Throws a KernelError for the current thread.
[[noreturn]] void fail(const std::string& what);

// mbarrier objects and the asynchronous copies that complete on them (kernels/cuda/async_copy.cuh; docs/emulator.md,
// "mbarrier and asynchronous copies"). A barrier's state is kept by the emulator, keyed by its shared-memory address
// and forgotten at the end of the block (the object's 8 bytes are not used), so using a barrier the block has not
// initialised is an error even where the memory still holds an earlier block's bytes.
void mbarrier_init(const void* bar, unsigned count, const std::source_location& site);
// expect-tx(tx) then, when count > 0, arrive-on(count); returns the phase the arrival belongs to (the opaque state).
uint64_t mbarrier_arrive(const void* bar, unsigned count, unsigned tx, const std::source_location& site);
// Whether the phase of parity `parity` has completed, i.e. the current phase's parity differs. test_wait only looks;
// try_wait suspends the thread until it has (the emulator's time limit is unbounded), so it always returns true.
bool mbarrier_test_wait_parity(const void* bar, unsigned parity, const std::source_location& site);
bool mbarrier_try_wait_parity(const void* bar, unsigned parity, const std::source_location& site);
// Issues an asynchronous copy: `land` performs its writes (and its reads of the source) at a later scheduling point
// chosen by the schedule, after which complete-tx(bytes) is performed on `bar`.
void async_copy(std::function<void()> land, const void* bar, unsigned bytes, const std::source_location& site);

// Named barriers (bar.sync id, count; kernels/cuda/async_copy.cuh): barrier `id` (0..15) releases when `count`
// threads (a multiple of 32, every arrival naming the same count) have arrived at it; __syncthreads does not use them.
void named_barrier(int id, int count, const std::source_location& site);

// The async proxy's view of the dynamic shared memory (docs/emulator.md, "Proxies"): what the copy engine and wgmma
// see of bytes that ordinary stores wrote. fence_proxy_async records this thread's fence.proxy.async; it takes effect
// (every ordinary store before it becomes visible to the async proxy) when the thread next arrives at a barrier
// (__syncthreads, bar.sync, mbarrier.arrive), the synchronisation that orders it before another thread's async
// operation. async_proxy_wrote records bytes an asynchronous copy wrote; async_proxy_read is an async-proxy read
// (wgmma's shared operands, at issue): an error naming `op` if ordinary stores changed those bytes since the async
// proxy last saw them and no fence has taken effect since. Addresses outside the dynamic shared memory are ignored.
void fence_proxy_async();
void async_proxy_wrote(const void* p, size_t bytes);
void async_proxy_read(const void* p, size_t bytes, const char* op);

// Warpgroup collectives (kernels/cuda/wgmma.cuh; docs/emulator.md, "Warpgroup MMA"). A warpgroup is 4 consecutive
// warps, threads 128g .. 128g + 127 of the block; all 128 must exist and call the same operation `op` at the same
// site. Each offers `mine`; the last to arrive calls complete(all), all[i] being what thread 128g + i offered, before
// any of them continues (so pointers into the others' stacks stay valid during complete).
void warpgroup_collective(const char* op, const void* mine, const std::function<void(const void* const* all)>& complete,
                          const std::source_location& site);
// The asynchronous half of wgmma, kept per warpgroup; each is called from a warpgroup collective's complete, so once
// per warpgroup. wgmma_fence records a wgmma.fence. wgmma_issue queues an operation of wgmma.mma_async as not yet
// committed (an error before the warpgroup's first wgmma.fence). wgmma_commit closes the uncommitted operations into a
// group (an empty one if there are none). wgmma_wait runs the operations of the oldest groups, in issue order, until
// at most `pending` groups remain: that is when an operation reads its shared-memory operands and writes its
// accumulators. A thread that exits while its warpgroup has operations not yet run is an error.
void wgmma_fence();
void wgmma_issue(std::function<void()> op);
void wgmma_commit();
void wgmma_wait(int pending);

// The emulated shared-memory address space that wgmma's matrix descriptors encode (14 bits of a 16-byte-aligned
// address: 256 KiB). Shared memory lives at host addresses, so the emulator maps windows of it into that space:
// the launch's dynamic shared memory at address 0, then a window per other region (a static __shared__ variable)
// when a descriptor is first made for an address in it, as long as there is space (49 KiB each, enough for the
// 48 KiB static limit from any start in a 1024-byte line). Windows start at 1024-byte boundaries in both spaces,
// so an address and its host address agree in their low 10 bits, which is what the swizzles read. The windows are
// forgotten at the end of the block.
uint32_t shared_window_address(const void* p);
// The host address of `bytes` bytes at emulated shared address `address`; an error unless they lie in one window
// (for dynamic shared memory: within the launch's smem_bytes).
void* shared_window_pointer(uint32_t address, uint32_t bytes);

}  // namespace detail

// Runs kernel<<<grid, block, smem_bytes>>>(args...) on the CPU and returns when every block is done (the emulator is
// synchronous: streams are ignored). Arguments are converted to the kernel's parameter types once, as a CUDA launch
// copies them, and every thread gets its own copy.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem_bytes, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "launch: wrong number of kernel arguments");
  struct Bound {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> args;
  } bound{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  auto invoke = [](const void* p) {
    const Bound& b = *static_cast<const Bound*>(p);
    std::apply(b.kernel, b.args);
  };
  detail::launch(grid, block, smem_bytes, detail::BoundKernel{+invoke, &bound});
}

}  // namespace unet::emu
