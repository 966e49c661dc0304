// The test kernel of the Hopper convolution's operand pipeline (kernels/cuda/conv_sm90.cuh,
// tests/test_emu_conv_sm90.cpp): the real producer (tensor copies into swizzled stages on mbarriers) with a scalar
// consumer that reads the stages through the swizzle and accumulates in f32, so the pipeline, the tile boxes and the
// swizzled layout are checked before the wgmma consumer reads the same stages. Compiled with nvcc for sm_90a by
// tests/emu_async_kernels_nvcc.cu.
#pragma once
#include <cstdint>

#include "kernels/cuda/conv_sm90.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"

namespace emu_conv_sm90_test {

using unet::kernels::cuda::TensorMap;
using unet::kernels::cuda::sm90::ConvGeometry;
using unet::kernels::cuda::sm90::ConvTile;

constexpr int kStages = 3, kConsumers = 128, kMaxBn = 64;

// Bytes of dynamic shared memory for tile t: the stages, plus room to align them to 1024 bytes.
inline size_t smem_bytes(const ConvTile& t) {
  return size_t(kStages) * size_t(t.a_bytes() + t.b_bytes()) + 1024;
}

// Element c of row `row` of a stage of `bk`-value rows, swizzled with the span bk * 2 bytes (the copy's layout).
template <class E>
__device__ __forceinline__ float stage_value(const unsigned char* stage, int row, int c, int bk) {
  const unsigned off = unsigned(row * bk * 2 + c * 2), mask = unsigned(bk * 2 / 16 - 1);
  const unsigned at = off ^ (((off >> 7) & mask) << 4);
  return E::load(*reinterpret_cast<const typename E::T*>(stage + at));
}

// y = conv(x, w) + bias for tiles of 128 output pixels (t.bm() == 128) and t.bn <= 64 output channels: 256 threads,
// warpgroup 0 the producer (its thread 0 issues every copy), warpgroup 1 the consumers, thread m computing row m.
// Grid (M tiles, ceil(K / bn)).
template <class E>
__global__ void conv_fprop_scalar_consumer(const __grid_constant__ TensorMap x_map,
                                           const __grid_constant__ TensorMap w_map, ConvGeometry g, ConvTile t,
                                           const float* bias, typename E::T* y) {
  using namespace unet::kernels::cuda;
  using namespace unet::kernels::cuda::sm90;
  __shared__ StageBarriers<kStages> bars;
  DYN_SMEM(unsigned char, raw);
  const StageBuffers st(raw, t);
  init_stage_barriers(bars, kConsumers);
  __syncthreads();
  const TileOrigin o = tile_origin(g, t, int(blockIdx.x));
  const int k0 = int(blockIdx.y) * t.bn;
  if (threadIdx.x < 128) {
    if (threadIdx.x == 0) produce_fprop_operands<kStages>(x_map, w_map, g, t, o, k0, bars, st);
    return;
  }
  const int m = int(threadIdx.x) - 128;
  float acc[kMaxBn];
  for (int n = 0; n < kMaxBn; ++n) acc[n] = 0.f;
  for (int j = 0; j < g.steps(); ++j) {
    const int stage = j % kStages;
    mbarrier_wait_parity(&bars.full[stage], (j / kStages) & 1);
    const unsigned char* a = st.a(stage);
    const unsigned char* b = st.b(stage);
    for (int n = 0; n < t.bn; ++n)
      for (int c = 0; c < t.bk; ++c) acc[n] += stage_value<E>(a, m, c, t.bk) * stage_value<E>(b, n, c, t.bk);
    mbarrier_arrive(&bars.empty[stage]);
  }
  const int qi = m % t.qt, pi = m / t.qt % t.pt, zi = m / (t.qt * t.pt);
  const int z = o.z0 + zi, p = o.p0 + pi, q = o.q0 + qi;
  if (z >= g.Z || p >= g.P || q >= g.Q) return;
  typename E::T* out = y + ((int64_t(o.n) * g.Z + z) * g.P + p) * int64_t(g.Q) * g.K + int64_t(q) * g.K;
  for (int n = 0; n < t.bn && k0 + n < g.K; ++n) out[k0 + n] = E::store(acc[n] + (bias ? bias[k0 + n] : 0.f));
}

}  // namespace emu_conv_sm90_test
