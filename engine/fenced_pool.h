// FencedPool: pooled host blocks whose reuse waits for the device. A block handed to an asynchronous copy (the GPU
// build's pinned batches, uploaded with cudaMemcpyAsync) may still be read by the device after its tensor is freed,
// so free() records a fence (a CUDA event on the stream, after the copy) with the block, and allocate() hands a freed
// block out again only once its fence has completed; otherwise it takes a new one. With the loader's few batch sizes
// the pool settles at (prefetch + in-flight steps) blocks per size and stops allocating.
//
// The operations come from the caller (engine/device.cpp: cudaHostAlloc and CUDA events), so the reuse rule is tested
// on the CPU with fences the test completes by hand (tests/test_device.cpp). Thread-safe: workers allocate, the
// training loop frees. Blocks are never returned to the system (the process's pinned memory stays bounded by the
// sizes it has used at once).
#pragma once
#include <algorithm>
#include <cstddef>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "kernels/common/allocator.h"

namespace unet {

class FencedPool {
 public:
  struct Ops {
    std::function<void*(size_t bytes)> allocate;  // a new block; throws on failure
    std::function<void*()> new_fence;             // a fence, created once per block when it is first freed
    std::function<bool(void* fence)> record;      // marks the fence at the end of the device's queue; false: failed
    std::function<bool(void* fence)> done;        // whether the device has passed the fence
  };
  explicit FencedPool(Ops ops) : ops_(std::move(ops)) {}

  void* allocate(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<Block>& list = free_[bytes];
    for (size_t i = 0; i < list.size(); ++i) {
      if (!ops_.done(list[i].fence)) continue;
      void* p = list[i].p;
      list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
      return account(p, bytes);
    }
    return account(ops_.allocate(bytes), bytes);
  }

  // No throw (called from destructors). A block whose fence cannot be recorded is dropped, never handed out again.
  void deallocate(void* p, size_t bytes) noexcept {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.current_bytes -= bytes;
    try {
      void*& fence = fence_[p];
      if (!fence) fence = ops_.new_fence();
      if (fence && ops_.record(fence)) {
        free_[bytes].push_back(Block{p, fence});
        stats_.cached_bytes += bytes;
      }
    } catch (...) {
    }
  }

  MemoryStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

 private:
  struct Block {
    void* p;
    void* fence;
  };
  void* account(void* p, size_t bytes) {
    stats_.current_bytes += bytes;
    stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.current_bytes);
    if (fence_.count(p)) stats_.cached_bytes -= bytes;
    return p;
  }

  Ops ops_;
  mutable std::mutex mutex_;
  std::unordered_map<size_t, std::vector<Block>> free_;  // by size
  std::unordered_map<void*, void*> fence_;               // every block ever freed, with its fence
  MemoryStats stats_;
};

}  // namespace unet
