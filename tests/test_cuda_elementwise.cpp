// CUDA elementwise kernels, run under the device emulator, against the CPU backend: bitwise equal (both round the
// f32 sum once), under every thread schedule.
#include <cstring>

#include "kernels/cuda/elementwise.cuh"
#include "kernels/cpu/elementwise.h"
#include "kernels/emu/emu.h"
#include "tests/test_util.h"

using namespace unet;

namespace {
const char* kSchedules[] = {"forward", "reverse", "random:7"};
}

TEST_CASE("cuda add equals the CPU add bit for bit for f32, f16 and bf16, under every schedule") {
  Rng rng(11);
  for (DType dt : {DType::f32, DType::f16, DType::bf16})
    for (int64_t n : {1, 255, 257, 100003}) {
      Tensor a = Tensor::from_vector({n}, randn({n}, rng).to_vector(), dt);
      Tensor b = Tensor::from_vector({n}, randn({n}, rng).to_vector(), dt);
      Tensor cpu = Tensor::empty({n}, dt), gpu = Tensor::empty({n}, dt);
      kernels::cpu::add(dt, a.raw(), b.raw(), cpu.raw(), n);
      for (const char* s : kSchedules) {
        emu::set_schedule(emu::Schedule::parse(s));
        std::memset(gpu.raw(), 0xff, gpu.nbytes());
        kernels::cuda::add(dt, a.raw(), b.raw(), gpu.raw(), n, nullptr);
        REQUIRE_MESSAGE(std::memcmp(cpu.raw(), gpu.raw(), cpu.nbytes()) == 0, std::string(dtype_name(dt)) << " n " << n << " " << std::string(s));
      }
    }
  emu::set_schedule(emu::Schedule::parse("forward"));
}

TEST_CASE("cuda scale equals the CPU scale") {
  Rng rng(12);
  Tensor a = randn({5000}, rng);
  Tensor cpu = Tensor::empty({5000}), gpu = Tensor::empty({5000});
  kernels::cpu::scale(a.data<float>(), -0.3f, cpu.data<float>(), 5000);
  kernels::cuda::scale(a.data<float>(), -0.3f, gpu.data<float>(), 5000, nullptr);
  CHECK(std::memcmp(cpu.raw(), gpu.raw(), cpu.nbytes()) == 0);
}
