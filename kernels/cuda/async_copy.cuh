// Hopper (sm_90) asynchronous-copy leaf intrinsics (docs/emulator.md, "mbarrier and asynchronous copies"): the
// mbarrier object and the bulk copies (TMA) that complete on it. Under nvcc each wrapper is one inline PTX instruction
// for sm_90 and later (on older architectures it traps: kernels built from them are dispatched to sm_90 only); under
// the device emulator the emulator keeps the barrier's state and holds each copy in flight until a later scheduling
// point, so a kernel that reads a copy's destination without waiting on its barrier is caught by schedule fuzzing.
//
// Semantics (PTX ISA, "Parallel Synchronization and Communication Instructions: mbarrier"):
//   An mbarrier is a 64-bit object in shared memory (8-byte aligned) with a current phase, a pending arrival count,
//   an expected arrival count and a tx-count (transaction bytes). mbarrier.init(count) starts phase 0 with count
//   arrivals pending (1 <= count <= 2^20 - 1) and tx-count 0. The current phase completes when the pending arrivals
//   and the tx-count are both zero; the barrier then moves to the next phase, with `count` arrivals pending again.
//   - mbarrier.arrive: one arrival (pending - 1); returns an opaque state naming the phase arrived on.
//   - mbarrier.expect_tx(b): tx-count + b (0 <= b <= 2^20 - 1). mbarrier.arrive.expect_tx(b): expect_tx(b), then
//     arrive, in that order, so the arrival cannot complete the phase before the bytes are expected.
//   - complete_tx(b), performed by an asynchronous copy of b bytes when it has written its destination: tx-count - b.
//     The tx-count may go negative (a copy finishing before its bytes are expected); its range is +-(2^20 - 1).
//   - mbarrier.test_wait.parity(p) / try_wait.parity(p): true when the phase of parity p has completed, i.e. the
//     current phase's parity is not p. Right after init (phase 0) waiting for parity 1 succeeds at once: that is how
//     a producer waits on an "empty" barrier before its first use. test_wait never blocks; try_wait may suspend the
//     thread for a system-dependent time before returning false, so it is called in a loop (mbarrier_wait_parity).
//     A thread that has seen the phase complete sees every write of the copies that completed on it.
//   - fence.mbarrier_init.release.cluster: makes the initialisation visible to other threads and to the async proxy
//     (the copy engine); followed by a __syncthreads before other threads use the barrier.
//   - fence.proxy.async.shared::cta: orders this thread's ordinary shared-memory accesses with later async-proxy
//     accesses (needed before a copy reads or overwrites shared memory the thread has touched, and before wgmma
//     reads it); another thread's async operation is ordered after it through a barrier.
//   - bar.sync id, count: named barrier `id` (0..15) completes when `count` threads (a multiple of 32) have arrived;
//     lets a warpgroup synchronise without the rest of the block.
//   - cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes: copies `bytes` (a multiple of 16, both
//     addresses 16-byte aligned) from global to shared memory, then performs complete_tx(bytes) on the barrier.
//
// Emulator specifics:
//   - A copy reads its source and writes its destination when it lands, at a scheduling point (a thread blocking, or
//     nothing being able to run) after its issue, then performs complete_tx. Under the forward schedule it lands at
//     the first point after its issue ("early"); under reverse as late as possible ("late": only when every thread
//     is blocked on something a copy might release, newest copy first; a __syncthreads that every live thread waits
//     at is released first); under random each copy is early or late by a coin flip of the seed.
//   - A block whose threads all exit with copies still in flight is a KernelError (a GPU would be writing into the
//     shared memory of a finished block).
//   - try_wait waits until the phase completes (the ISA leaves the time limit to the system; here it is unbounded), so
//     it returns true. A phase that can never complete (too few arrivals, expect_tx more bytes than the copies bring)
//     is reported as a deadlock naming the barrier's pending arrivals and tx-count.
//   - Errors: an address not 8-byte (barrier) or 16-byte (copy) aligned, a copy size not a multiple of 16, a barrier
//     used before this block initialised it, more arrivals than a phase expects, a tx-count out of range.
//   - A missing fence.mbarrier_init is not caught. fence.proxy.async is modelled on the dynamic shared memory (emu.h,
//     async_proxy_read): it takes effect when the fencing thread next arrives at a barrier (__syncthreads, bar.sync,
//     mbarrier.arrive), and wgmma reading bytes that ordinary stores changed since the async proxy last saw them (a
//     copy landing or an earlier wgmma read), with no fence taking effect in the block since, is an error. Any
//     thread's fence counts, so one warpgroup's fence covers another's missing one; a fence whose barrier comes after
//     a copy landing is seen only under schedules where the copy lands later (reverse, late copies).
//   - The returned state is the number of the phase arrived on (phases completed since init).
#pragma once
#include <cstdint>

#include "kernels/cuda/cuda_compat.cuh"

#if UNET_EMULATED
#include <cstring>
#include <source_location>
#include <string>
#endif

namespace unet::kernels::cuda {

#if !UNET_EMULATED

// Compiled for an architecture before sm_90 (and in nvcc's host pass, where no device code is emitted) the PTX below
// does not exist: the wrappers trap there.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define UNET_SM90_PTX 1
#else
#define UNET_SM90_PTX 0
#endif

__device__ __forceinline__ unsigned smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Phase 0 with `count` arrivals pending (1 <= count <= 2^20 - 1), tx-count 0.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, unsigned count) {
#if UNET_SM90_PTX
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(count) : "memory");
#else
  __trap();
#endif
}

// One arrival; returns the opaque state of the phase arrived on.
__device__ __forceinline__ uint64_t mbarrier_arrive(uint64_t* bar) {
  uint64_t state = 0;
#if UNET_SM90_PTX
  asm volatile("mbarrier.arrive.shared::cta.b64 %0, [%1];\n" : "=l"(state) : "r"(smem_address(bar)) : "memory");
#else
  __trap();
#endif
  return state;
}

// tx-count + bytes, then one arrival; returns the opaque state of the phase arrived on.
__device__ __forceinline__ uint64_t mbarrier_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
  uint64_t state = 0;
#if UNET_SM90_PTX
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 %0, [%1], %2;\n"
               : "=l"(state)
               : "r"(smem_address(bar)), "r"(bytes)
               : "memory");
#else
  __trap();
#endif
  return state;
}

// tx-count + bytes, no arrival.
__device__ __forceinline__ void mbarrier_expect_tx(uint64_t* bar, unsigned bytes) {
#if UNET_SM90_PTX
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(bytes)
               : "memory");
#else
  __trap();
#endif
}

// Whether the phase of parity `parity` has completed; never blocks.
__device__ __forceinline__ bool mbarrier_test_wait_parity(uint64_t* bar, unsigned parity) {
  unsigned done = 0;
#if UNET_SM90_PTX
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.b32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(smem_address(bar)), "r"(parity)
      : "memory");
#else
  __trap();
#endif
  return done != 0;
}

// The same, but may wait a while for it (a system-dependent time limit) before returning false.
__device__ __forceinline__ bool mbarrier_try_wait_parity(uint64_t* bar, unsigned parity) {
  unsigned done = 0;
#if UNET_SM90_PTX
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.b32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(smem_address(bar)), "r"(parity)
      : "memory");
#else
  __trap();
#endif
  return done != 0;
}

// Waits until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbarrier_wait_parity(uint64_t* bar, unsigned parity) {
  while (!mbarrier_try_wait_parity(bar, parity)) {
  }
}

// Makes this thread's mbarrier.init visible to the other threads (after a __syncthreads) and to the copy engine.
__device__ __forceinline__ void fence_mbarrier_init() {
#if UNET_SM90_PTX
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
  __trap();
#endif
}

// Orders this thread's ordinary shared-memory accesses before later asynchronous-copy accesses.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if UNET_SM90_PTX
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
  __trap();
#endif
}

// Barrier `id` (0..15) of `count` threads (a multiple of 32): waits until that many have arrived; the threads of a
// warpgroup synchronise on one without the rest of the block (bar.sync id, count).
__device__ __forceinline__ void named_barrier_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// Starts copying `bytes` (a multiple of 16; both addresses 16-byte aligned) from global to shared memory; when done,
// complete_tx(bytes) on `bar`.
__device__ __forceinline__ void cp_async_bulk_global_to_shared(void* smem_dst, const void* gmem_src, unsigned bytes,
                                                               uint64_t* bar) {
#if UNET_SM90_PTX
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               :
               : "r"(smem_address(smem_dst)), "l"(gmem_src), "r"(bytes), "r"(smem_address(bar))
               : "memory");
#else
  __trap();
#endif
}

#undef UNET_SM90_PTX

#else  // the device emulator (see the header comment)

namespace async_emu {
inline void check_aligned(const void* p, uintptr_t alignment, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % alignment != 0)
    ::unet::emu::detail::fail(std::string(what) + ": address " + std::to_string(reinterpret_cast<uintptr_t>(p)) +
                              " is not " + std::to_string(alignment) + "-byte aligned");
}
}  // namespace async_emu

inline void mbarrier_init(uint64_t* bar, unsigned count,
                          const std::source_location& site = std::source_location::current()) {
  ::unet::emu::detail::mbarrier_init(bar, count, site);
}
inline uint64_t mbarrier_arrive(uint64_t* bar, const std::source_location& site = std::source_location::current()) {
  return ::unet::emu::detail::mbarrier_arrive(bar, 1, 0, site);
}
inline uint64_t mbarrier_arrive_expect_tx(uint64_t* bar, unsigned bytes,
                                          const std::source_location& site = std::source_location::current()) {
  return ::unet::emu::detail::mbarrier_arrive(bar, 1, bytes, site);
}
inline void mbarrier_expect_tx(uint64_t* bar, unsigned bytes,
                               const std::source_location& site = std::source_location::current()) {
  ::unet::emu::detail::mbarrier_arrive(bar, 0, bytes, site);
}
inline bool mbarrier_test_wait_parity(uint64_t* bar, unsigned parity,
                                      const std::source_location& site = std::source_location::current()) {
  return ::unet::emu::detail::mbarrier_test_wait_parity(bar, parity, site);
}
inline bool mbarrier_try_wait_parity(uint64_t* bar, unsigned parity,
                                     const std::source_location& site = std::source_location::current()) {
  return ::unet::emu::detail::mbarrier_try_wait_parity(bar, parity, site);
}
inline void mbarrier_wait_parity(uint64_t* bar, unsigned parity,
                                 const std::source_location& site = std::source_location::current()) {
  while (!mbarrier_try_wait_parity(bar, parity, site)) {
  }
}
// Only a compiler barrier here (see the header comment).
inline void fence_mbarrier_init() {
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
}
inline void fence_proxy_async_shared() {
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  ::unet::emu::detail::fence_proxy_async();
}
inline void named_barrier_sync(int id, int count, const std::source_location& site = std::source_location::current()) {
  ::unet::emu::detail::named_barrier(id, count, site);
}

inline void cp_async_bulk_global_to_shared(void* smem_dst, const void* gmem_src, unsigned bytes, uint64_t* bar,
                                           const std::source_location& site = std::source_location::current()) {
  async_emu::check_aligned(smem_dst, 16, "cp.async.bulk destination");
  async_emu::check_aligned(gmem_src, 16, "cp.async.bulk source");
  if (bytes % 16 != 0)
    ::unet::emu::detail::fail("cp.async.bulk: size " + std::to_string(bytes) + " is not a multiple of 16");
  ::unet::emu::detail::async_copy(
      [=] {
        std::memcpy(smem_dst, gmem_src, bytes);
        ::unet::emu::detail::async_proxy_wrote(smem_dst, bytes);
      },
      bar, bytes, site);
}

#endif

}  // namespace unet::kernels::cuda
