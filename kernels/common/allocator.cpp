// Host allocator: size classes rounded up to 64 bytes (small) or to 1/8 of the power of two (large), so that
// slightly different sizes share blocks without wasting more than 12.5%.
#include "kernels/common/allocator.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <vector>

namespace unet {
namespace {

size_t size_class(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes <= 4096) return (bytes + 63) & ~size_t(63);
  size_t p = 4096;
  while (p * 2 <= bytes) p *= 2;
  size_t step = p / 8;
  return (bytes + step - 1) / step * step;
}

}  // namespace

struct HostAllocator::Pool {
  std::mutex mutex;
  std::map<size_t, std::vector<void*>> free_lists;
  MemoryStats stats;
};

HostAllocator::HostAllocator(Backing backing) : backing_(backing), pool_(new Pool()) {}

HostAllocator::Backing HostAllocator::default_backing() {
  return {[](size_t bytes) { return std::aligned_alloc(64, bytes); }, [](void* p, size_t) { std::free(p); }};
}

HostAllocator& HostAllocator::instance() {
  static HostAllocator* a = new HostAllocator();
  return *a;
}

void* HostAllocator::allocate(size_t bytes) {
  size_t cls = size_class(bytes);
  Pool& p = *pool_;
  {
    std::lock_guard<std::mutex> lock(p.mutex);
    p.stats.current_bytes += cls;
    if (p.stats.current_bytes > p.stats.peak_bytes) p.stats.peak_bytes = p.stats.current_bytes;
    auto it = p.free_lists.find(cls);
    if (it != p.free_lists.end() && !it->second.empty()) {
      void* ptr = it->second.back();
      it->second.pop_back();
      p.stats.cached_bytes -= cls;
      return ptr;
    }
  }
  void* ptr = nullptr;
  try {
    ptr = backing_.allocate(cls);
  } catch (const std::bad_alloc&) {
  }
  if (!ptr) {
    std::lock_guard<std::mutex> lock(p.mutex);
    p.stats.current_bytes -= cls;
    throw std::bad_alloc();
  }
  return ptr;
}

void HostAllocator::deallocate(void* ptr, size_t bytes) {
  if (!ptr) return;
  size_t cls = size_class(bytes);
  Pool& p = *pool_;
  std::lock_guard<std::mutex> lock(p.mutex);
  p.stats.current_bytes -= cls;
  p.stats.cached_bytes += cls;
  p.free_lists[cls].push_back(ptr);
}

MemoryStats HostAllocator::stats() const {
  Pool& p = *pool_;
  std::lock_guard<std::mutex> lock(p.mutex);
  return p.stats;
}

void HostAllocator::reset_peak() {
  Pool& p = *pool_;
  std::lock_guard<std::mutex> lock(p.mutex);
  p.stats.peak_bytes = p.stats.current_bytes;
}

void HostAllocator::release_cached() {
  Pool& p = *pool_;
  std::lock_guard<std::mutex> lock(p.mutex);
  for (auto& [cls, list] : p.free_lists)
    for (void* ptr : list) backing_.free(ptr, cls);
  p.free_lists.clear();
  p.stats.cached_bytes = 0;
}

}  // namespace unet
