// Compile-only check (a ctest entry when nvcc is found): the Hopper asynchronous-copy and warpgroup MMA wrappers
// (kernels/cuda/async_copy.cuh, tensor_copy.cuh, wgmma.cuh) and the kernels tests/test_emu_async.cpp,
// tests/test_emu_tensor_copy.cpp and tests/test_emu_wgmma.cpp run under the emulator are valid CUDA for sm_90a, their
// inline PTX accepted by ptxas (and, with -warn-spills and -Werror, no kernel spills registers).
#include "tests/emu_async_kernels.cuh"
#include "tests/emu_conv_sm90_kernels.cuh"
#include "tests/emu_tensor_kernels.cuh"
#include "tests/emu_wgmma_kernels.cuh"

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

void launch_every_tensor_test_kernel(const unet::kernels::cuda::TensorMap& map, unsigned char* out) {
  using unet::kernels::cuda::launch;
  using namespace emu_tensor_test;
  const Coords at{{0, 0, 0, 0, 0}};
  launch(tensor_box<1>, dim3(1), dim3(32), 0, nullptr, map, at, 128u, out);
  launch(tensor_box<2>, dim3(1), dim3(32), 0, nullptr, map, at, 128u, out);
  launch(tensor_box<3>, dim3(1), dim3(32), 0, nullptr, map, at, 128u, out);
  launch(tensor_box<4>, dim3(1), dim3(32), 0, nullptr, map, at, 128u, out);
  launch(tensor_box<5>, dim3(1), dim3(32), 0, nullptr, map, at, 128u, out);
}

// The host side: the map through the driver entry point (not called here; this only has to compile and link-free).
unet::kernels::cuda::TensorMap make_example_map(const float* global) {
  const uint64_t dims[2] = {64, 64}, strides[1] = {256};
  const uint32_t box[2] = {32, 8}, element_strides[2] = {1, 1};
  return unet::kernels::cuda::make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, global, dims, strides, box,
                                              element_strides, CU_TENSOR_MAP_SWIZZLE_128B);
}

// The Hopper convolution's operand pipeline with its scalar test consumer (tests/test_emu_conv_sm90.cpp).
void launch_conv_sm90_pipeline_kernels(const unet::kernels::cuda::TensorMap& x_map,
                                       const unet::kernels::cuda::TensorMap& w_map,
                                       const unet::kernels::cuda::sm90::ConvGeometry& g,
                                       const unet::kernels::cuda::sm90::ConvTile& t, const float* bias, uint16_t* y) {
  using unet::kernels::cuda::launch;
  using namespace emu_conv_sm90_test;
  launch(conv_fprop_scalar_consumer<unet::kernels::cuda::element::BF16>, dim3(1), dim3(256), smem_bytes(t), nullptr,
         x_map, w_map, g, t, bias, y);
  launch(conv_fprop_scalar_consumer<unet::kernels::cuda::element::F16>, dim3(1), dim3(256), smem_bytes(t), nullptr,
         x_map, w_map, g, t, bias, y);
}

// Every instantiation tests/test_emu_wgmma.cpp launches.
void launch_every_wgmma_test_kernel(const unet::kernels::cuda::TensorMap& map, const emu_wgmma_test::GemmPlan& plan,
                                    const void* a_bits, float* out) {
  using unet::kernels::cuda::launch;
  using namespace emu_wgmma_test;
  launch(wgmma_gemm<__half, 64, 0, 0>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_gemm<__half, 64, 1, 0>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_gemm<__half, 64, 0, 1>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_gemm<__half, 64, 1, 1>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_gemm<__nv_bfloat16, 128, 0, 0>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_gemm<__nv_bfloat16, 128, 1, 0>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_gemm<__nv_bfloat16, 128, 0, 1>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_gemm<__nv_bfloat16, 128, 1, 1>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_gemm<__half, 256, 0, 0>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_gemm<__nv_bfloat16, 8, 1, 1>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_gemm<float, 64, 0, 0>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_gemm<__nv_bfloat16, 64, 0, 1, -1, 1>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_gemm<float, 64, 0, 0, -1, -1>, dim3(1), dim3(128), 0, nullptr, map, map, plan, a_bits, out);
  launch(wgmma_pipeline, dim3(1), dim3(256), 0, nullptr, map, map, 4, false, out);
  launch(wgmma_misuse, dim3(1), dim3(128), 4096, nullptr, Misuse::missing_wait);
}
