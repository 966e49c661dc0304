// Schedule fuzzing for the emulated CUDA kernel tests (docs/emulator.md): a kernel run under the forward, reverse and
// seeded random thread orders must give bitwise identical results, the emulator's stand-in for a race checker.
#pragma once
#include <doctest/doctest.h>

#include <cstring>
#include <iterator>
#include <string>

#include "kernels/emu/emu.h"

namespace unet::test {

inline const char* const kSchedules[] = {"forward", "reverse", "random:7"};

// Runs `run` (which returns a std::vector of results) under every schedule, requires bitwise identical results, and
// returns them; the forward schedule is restored afterwards.
template <class F>
auto under_every_schedule(F&& run) {
  emu::set_schedule(emu::Schedule::parse(kSchedules[0]));
  auto first = run();
  for (size_t k = 1; k < std::size(kSchedules); ++k) {
    emu::set_schedule(emu::Schedule::parse(kSchedules[k]));
    auto again = run();
    REQUIRE(again.size() == first.size());
    REQUIRE_MESSAGE(std::memcmp(again.data(), first.data(), first.size() * sizeof(first[0])) == 0,
                    "schedule " << std::string(kSchedules[k]) << " changed the result");
  }
  emu::set_schedule(emu::Schedule::parse(kSchedules[0]));
  return first;
}

}  // namespace unet::test
