// Counter-based random numbers: value i of the stream `seed` is a pure function of (seed, i), so a kernel's thread
// draws its own values without state and every backend (the CPU, a GPU, the emulator) draws the same ones. Used by
// dropout's mask (kernels/dropout.h) and by the augmentation's Gaussian noise (kernels/augment.h).
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/common/host_device.h"

namespace unet::kernels {

// splitmix64's finaliser of seed + (i + 1) * golden ratio: a 64-bit hash with every bit depending on both inputs.
UNET_HOST_DEVICE inline uint64_t counter_hash(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A uniform double in (0, 1): the hash's top 53 bits, offset by half a step so that log() never sees 0.
UNET_HOST_DEVICE inline double counter_uniform(uint64_t seed, uint64_t i) {
  return (static_cast<double>(counter_hash(seed, i) >> 11) + 0.5) * 0x1.0p-53;
}

// A standard normal value: Box-Muller in double from the uniforms 2i and 2i + 1 (its cosine branch). The CPU and the
// emulator give the same bits (one libm); a GPU's log / cos / sqrt may differ in the last bit of the double, which
// the f32 result almost never shows.
UNET_HOST_DEVICE inline double counter_normal(uint64_t seed, uint64_t i) {
  const double u1 = counter_uniform(seed, 2 * i), u2 = counter_uniform(seed, 2 * i + 1);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

}  // namespace unet::kernels
