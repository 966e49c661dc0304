// The emulated device's global memory (Device::cuda_emu "device" memory and the launchers' scratch buffers).
//
// On a GPU, host code that reads device memory through a pointer crashes; under the emulator device memory is host
// memory, so the same bug would pass silently (the first H200 run found one: a checkpoint converted a device tensor
// on the host). To make such bugs fail here as they fail on a GPU, every block comes from one reserved range of the
// address space that is kept inaccessible (PROT_NONE) except while a kernel runs or a copy or memset is under way:
// emu::launch and device_memcpy/device_memset hold a DeviceAccess for their duration. A host access outside them is a
// segmentation fault (reported by AddressSanitizer in the checked build).
//
// Blocks are 256-byte aligned (as cudaMalloc's) and followed by a 256-byte gap; for AddressSanitizer only the bytes
// asked for are addressable, so a kernel that runs past its buffer is still reported in the checked build. Freed blocks are kept for reuse by size;
// the reservation is never returned. Plain C++: no CUDA header, so engine/ can include it.
#pragma once
#include <cstddef>

namespace unet::emu {

void* device_malloc(size_t bytes);        // std::bad_alloc when the reservation is exhausted
void device_free(void* p, size_t bytes);  // bytes: as passed to device_malloc
bool is_device_memory(const void* p);     // inside the reservation

// While one is alive (on any thread), device memory is readable and writable by the host. Nests; thread-safe.
class DeviceAccess {
 public:
  DeviceAccess();
  ~DeviceAccess();
  DeviceAccess(const DeviceAccess&) = delete;
  DeviceAccess& operator=(const DeviceAccess&) = delete;
};

// memcpy / memset under a DeviceAccess: the emulator's cudaMemcpy and cudaMemset.
void device_memcpy(void* dst, const void* src, size_t bytes);
void device_memset(void* p, int value, size_t bytes);

}  // namespace unet::emu
