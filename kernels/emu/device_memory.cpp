// The emulated device's global memory: one reservation, a bump pointer with per-size free lists, and the
// protection switch (see device_memory.h for why).
#include "kernels/emu/device_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <vector>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNET_EMU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define UNET_EMU_ASAN 1
#endif
#ifdef UNET_EMU_ASAN
#include <sanitizer/asan_interface.h>
#define UNET_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNET_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define UNET_POISON(p, n) ((void)(p), (void)(n))
#define UNET_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace unet::emu {
namespace {

constexpr size_t kAlign = 256;  // cudaMalloc's alignment
constexpr size_t kGap = 256;    // poisoned bytes after each block

size_t block_bytes(size_t bytes) { return ((bytes ? bytes : 1) + kAlign - 1) / kAlign * kAlign; }

struct Arena {
  std::mutex mutex;
  char* base = nullptr;
  size_t reserved = 0;
  size_t top = 0;         // bytes of the reservation handed out so far (blocks and gaps)
  size_t open_bytes = 0;  // [base, base + open_bytes) is readable and writable while depth > 0
  int depth = 0;          // live DeviceAccess objects
  size_t page = 4096;
  std::map<size_t, std::vector<char*>> free_blocks;

  Arena() {
    page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    // Address space only (PROT_NONE, no swap reserved): 1 TiB, or less where the limits refuse it.
    for (size_t want = size_t{1} << 40; want >= (size_t{1} << 30); want /= 2) {
      void* p = mmap(nullptr, want, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p != MAP_FAILED) {
        base = static_cast<char*>(p);
        reserved = want;
        return;
      }
    }
    throw std::system_error(errno, std::generic_category(), "emulated device memory: cannot reserve address space");
  }

  void protect(size_t from, size_t to, int prot) {
    if (to > from && mprotect(base + from, to - from, prot) != 0)
      throw std::system_error(errno, std::generic_category(), "emulated device memory: mprotect");
  }

  // The pages that hold blocks, open while depth > 0 (called with the mutex held).
  void grow_open_range() {
    const size_t want = (top + page - 1) / page * page;
    if (depth > 0 && want > open_bytes) protect(open_bytes, want, PROT_READ | PROT_WRITE);
    if (want > open_bytes) open_bytes = want;
  }
};

Arena& arena() {
  static Arena* a = new Arena();  // never destroyed: tensors in static objects may be freed at exit
  return *a;
}

}  // namespace

void* device_malloc(size_t bytes) {
  Arena& a = arena();
  const size_t n = block_bytes(bytes);
  std::lock_guard lock(a.mutex);
  char* p = nullptr;
  auto it = a.free_blocks.find(n);
  if (it != a.free_blocks.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
  } else {
    if (a.top + n + kGap > a.reserved) throw std::bad_alloc();
    p = a.base + a.top;
    a.top += n + kGap;
    a.grow_open_range();
  }
  // Addressable for AddressSanitizer: exactly the bytes asked for; the rounding and the gap after it are poisoned.
  UNET_POISON(p, n + kGap);
  UNET_UNPOISON(p, bytes);
  return p;
}

void device_free(void* p, size_t bytes) {
  if (!p) return;
  Arena& a = arena();
  const size_t n = block_bytes(bytes);
  std::lock_guard lock(a.mutex);
  UNET_POISON(p, n);
  a.free_blocks[n].push_back(static_cast<char*>(p));
}

bool is_device_memory(const void* p) {
  Arena& a = arena();
  const char* c = static_cast<const char*>(p);
  return c >= a.base && c < a.base + a.reserved;
}

DeviceAccess::DeviceAccess() {
  Arena& a = arena();
  std::lock_guard lock(a.mutex);
  if (a.depth++ == 0) a.protect(0, a.open_bytes, PROT_READ | PROT_WRITE);
}

DeviceAccess::~DeviceAccess() {
  Arena& a = arena();
  std::lock_guard lock(a.mutex);
  if (--a.depth == 0) {
    try {
      a.protect(0, a.open_bytes, PROT_NONE);
    } catch (...) {  // a destructor must not throw; the memory merely stays readable
    }
  }
}

void device_memcpy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  DeviceAccess access;
  std::memmove(dst, src, bytes);
}

void device_memset(void* p, int value, size_t bytes) {
  if (bytes == 0) return;
  DeviceAccess access;
  std::memset(p, value, bytes);
}

}  // namespace unet::emu
