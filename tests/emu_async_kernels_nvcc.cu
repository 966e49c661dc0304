// Compile-only check (a ctest entry when nvcc is found): the Hopper asynchronous-copy wrappers
// (kernels/cuda/async_copy.cuh) and the kernels tests/test_emu_async.cpp runs under the emulator are valid CUDA for
// sm_90a, their inline PTX accepted by ptxas.
#include "tests/emu_async_kernels.cuh"

void launch_every_async_test_kernel(const float* in, float* out, uint32_t* log) {
  using unet::kernels::cuda::launch;
  using namespace emu_async_test;
  launch(bulk_copy_then_wait, dim3(1), dim3(128), 0, nullptr, in, out);
  launch(bulk_copy_before_expect_tx, dim3(1), dim3(128), 0, nullptr, in, out);
  launch(bulk_copy_two_producers, dim3(1), dim3(128), 0, nullptr, in, out);
  launch(bulk_copy_read_before_wait, dim3(1), dim3(128), kBytes, nullptr, in, out);
  launch(bulk_copy_expects_too_much, dim3(1), dim3(128), 0, nullptr, in, out);
  launch(bulk_copy_never_waited, dim3(1), dim3(128), 0, nullptr, in);
  launch(mbarrier_phases, dim3(1), dim3(64), 0, nullptr, log);
  launch(mbarrier_over_arrival, dim3(1), dim3(32), 0, nullptr);
  launch(ring_pipeline, dim3(1), dim3(64), 0, nullptr, in, 9, out, false);
}
