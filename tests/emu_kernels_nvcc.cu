// Compile-only check (a ctest entry when nvcc is found): the emulator's test kernels, the compat header and the launch
// helper are valid CUDA, so what tests/test_emu.cpp runs on the CPU is the same text a GPU would run.
#include "tests/emu_kernels.cuh"

void launch_every_test_kernel(int* i, float* f, double* d, unsigned* u, unsigned long long* ull) {
  using unet::kernels::cuda::launch;
  launch(emu_test::write_2d_coords, dim3(1), dim3(32), 0, nullptr, i, 1, 1);
  launch(emu_test::write_3d_coords, dim3(1), dim3(32), 0, nullptr, i);
  launch(emu_test::reverse_blocks_static, dim3(1), dim3(128), 0, nullptr, f, f);
  launch(emu_test::reverse_blocks_dynamic, dim3(1), dim3(32), 128, nullptr, f, f);
  launch(emu_test::read_fresh_dynamic_smem, dim3(1), dim3(32), 128, nullptr, u);
  launch(emu_test::block_sum, dim3(1), dim3(32), 0, nullptr, f, f, 1);
  launch(emu_test::warp0_sum, dim3(1), dim3(64), 0, nullptr, f, f);
  launch(emu_test::barrier_votes, dim3(1), dim3(32), 0, nullptr, i);
  launch(emu_test::shuffle, dim3(1), dim3(32), 0, nullptr, i, 0, 1, 32);
  launch(emu_test::warp_inclusive_scan, dim3(1), dim3(32), 0, nullptr, d, d);
  launch(emu_test::votes, dim3(1), dim3(32), 0, nullptr, u);
  launch(emu_test::warp_reduces, dim3(1), dim3(32), 0, nullptr, i);
  launch(emu_test::atomic_sums, dim3(1), dim3(32), 0, nullptr, 1, i, ull, f, d);
  launch(emu_test::atomic_extremes, dim3(1), dim3(32), 0, nullptr, 1, i);
  launch(emu_test::half_and_bf16, dim3(1), dim3(4), 0, nullptr, f, f);
  launch(emu_test::neighbour_read, dim3(1), dim3(32), 0, nullptr, i, true);
  launch(emu_test::half_warp_syncs, dim3(1), dim3(32), 0, nullptr, i);
  launch(emu_test::partial_warp, dim3(1), dim3(40), 0, nullptr, u);
}
