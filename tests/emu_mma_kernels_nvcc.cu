// Compile-only check (a ctest entry when nvcc is found): the tensor-core wrappers (kernels/cuda/mma.cuh) and the
// kernels tests/test_emu_mma.cpp runs under the emulator are valid CUDA for sm_80, with their inline PTX.
#include "tests/emu_mma_kernels.cuh"

void launch_every_mma_test_kernel(const __half* h, const __nv_bfloat16* bh, const uint16_t* u16, float* f,
                                  uint32_t* u) {
  using unet::kernels::cuda::launch;
  launch(emu_mma_test::mma_16x8x16<__half>, dim3(1), dim3(32), 0, nullptr, h, h, f, f);
  launch(emu_mma_test::mma_16x8x16<__nv_bfloat16>, dim3(1), dim3(32), 0, nullptr, bh, bh, f, f);
  launch(emu_mma_test::mma_16x8x8_tf32, dim3(1), dim3(32), 0, nullptr, f, f, f, f);
  launch(emu_mma_test::ldmatrix_fragments, dim3(1), dim3(32), 0, nullptr, u16, u, u);
  launch(emu_mma_test::gemm_tiles<__half>, dim3(8), dim3(128), 0, nullptr, h, h, f, 64, 64, 64);
  launch(emu_mma_test::gemm_tiles<__nv_bfloat16>, dim3(8), dim3(128), 0, nullptr, bh, bh, f, 64, 64, 64);
  launch(emu_mma_test::cp_async_copy, dim3(1), dim3(64), 0, nullptr, f, f);
  launch(emu_mma_test::ldmatrix_misaligned, dim3(1), dim3(32), 0, nullptr, u);
}
