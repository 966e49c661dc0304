// Pooled, 64-byte aligned host memory with current / peak accounting.
// Freed blocks are kept in per-size free lists and handed out again, so a training loop that allocates
// the same activation sizes every step stops calling malloc after its first step.
#pragma once
#include <cstddef>

namespace unet {

struct MemoryStats {
  size_t current_bytes = 0;  // bytes handed out and not yet returned
  size_t peak_bytes = 0;     // maximum of current_bytes since the last reset_peak
  size_t cached_bytes = 0;   // bytes held in the free lists
};

class HostAllocator {
 public:
  // Where blocks come from when the free lists have none of a size: 64-byte aligned heap memory by default;
  // engine/device gives the emulated device's pool the emulator's guarded memory (kernels/emu/device_memory.h).
  struct Backing {
    void* (*allocate)(size_t bytes);
    void (*free)(void* p, size_t bytes);
  };
  explicit HostAllocator(Backing backing = default_backing());
  static Backing default_backing();
  static HostAllocator& instance();  // the CPU backend's memory
  void* allocate(size_t bytes);
  void deallocate(void* p, size_t bytes);
  MemoryStats stats() const;
  void reset_peak();
  void release_cached();  // return every cached block to the system

 private:
  Backing backing_;
  struct Pool;
  Pool* pool_;  // never destroyed: tensors in static objects may be freed at exit
};

}  // namespace unet
