// Kernels whose nvcc output (kernel_report_sample.ptxas.txt, kernel_report_sample.o) tests/test_kernel_report.cpp
// parses: launch bounds or none, static shared memory, a template in a namespace, and one kernel that spills.
// Regenerate (not part of the build): nvcc -std=c++20 -O3 -gencode arch=compute_80,code=sm_80
//   -gencode arch=compute_90,code=sm_90 -Xptxas -v -c kernel_report_sample.cu -o kernel_report_sample.o
//   > kernel_report_sample.ptxas.txt 2>&1
__global__ void __launch_bounds__(256) staged_copy(float* a) {
  __shared__ float s[300];
  s[threadIdx.x] = a[threadIdx.x];
  __syncthreads();
  a[threadIdx.x] = s[(threadIdx.x + 1) % 256];
}

namespace sample {
template <int N>
__global__ void scale(float* a, int n) {
  for (int i = 0; i < n; ++i) a[i] *= N;
}
template __global__ void scale<3>(float*, int);
}  // namespace sample

// 64 live accumulators under a 32-register cap (1024 threads, 2 blocks per SM): ptxas must spill.
__global__ void __launch_bounds__(1024, 2) pressure(const float* in, float* out, int n) {
  float acc[64];
#pragma unroll
  for (int j = 0; j < 64; ++j) acc[j] = in[j * n + threadIdx.x];
  for (int i = 1; i < n; ++i) {
#pragma unroll
    for (int j = 0; j < 64; ++j) acc[j] = acc[j] * in[i] + acc[(j + 7) % 64];
  }
  float s = 0;
#pragma unroll
  for (int j = 0; j < 64; ++j) s += acc[j] * (j + 1);
  out[threadIdx.x] = s;
}
