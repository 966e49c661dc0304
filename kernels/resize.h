// Bilinear resampling of 2D maps, PyTorch's F.interpolate(mode="bilinear", align_corners=...) on [n, h, w, c]
// (channels last): the axis maps both backends share and the table of entry points the engine dispatches through
// (kernels::cpu::resize_kernels in kernels/cpu/resize.h, kernels::cuda::resize_kernels in kernels/cuda/resize.cuh).
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"

namespace unet::kernels {

// Where each output position of one axis reads (computed on the host, then copied where the kernels run), as PyTorch
// computes it in f32: align_corners: src = o (in - 1) / (out - 1) (0 when out is 1); else src = max(0, (o + 0.5)
// in / out - 0.5). i0 = floor(src), i1 = i0 + 1 clamped to in - 1, lambda = src - i0; output o is (1 - lambda) x[i0] +
// lambda x[i1].
// For the backward, the same taps grouped by input: input i is read by taps [start[i], start[i + 1]), tap t being
// output tap_out[t] with weight tap_weight[t], in increasing output order (the i0 tap of an output before its i1 tap).
struct ResizeAxis {
  int64_t in = 0, out = 0;
  std::vector<int32_t> i0, i1;    // [out]
  std::vector<float> lambda;      // [out]
  std::vector<int32_t> start;     // [in + 1]
  std::vector<int32_t> tap_out;   // [2 out]
  std::vector<float> tap_weight;  // [2 out]
  // One i32 buffer [i0 | i1 | start | tap_out] and one f32 buffer [lambda | tap_weight], the kernels' arguments.
  std::vector<int32_t> packed_index() const;
  std::vector<float> packed_weight() const;
};
ResizeAxis bilinear_axis(int64_t in, int64_t out, bool align_corners);

// x [n, h, w, c] -> y [n, oh, ow, c]. ih / iw: the packed_index of the h and w axes; wh / ww: their packed_weight.
struct ResizeShape {
  int64_t n = 1, h = 1, w = 1, c = 1, oh = 1, ow = 1;
};

// Pointers in the backend's memory; the CPU ignores the stream. x, y, dy, dx: f32, f16 or bf16 alike, computed in f32.
struct ResizeKernels {
  // y = (1 - lh) ((1 - lw) x[h0, w0] + lw x[h0, w1]) + lh ((1 - lw) x[h1, w0] + lw x[h1, w1]), in that order.
  void (*bilinear_forward)(const ResizeShape& s, DType dt, const int32_t* ih, const float* wh, const int32_t* iw,
                           const float* ww, const void* x, void* y, cudaStream_t stream);
  // dx[i, j] = sum over the h taps of i (in order) of weight_h * (sum over the w taps of j of weight_w * dy[oh, ow]):
  // a gather per input element, so no atomics and the same bits on every backend.
  void (*bilinear_backward)(const ResizeShape& s, DType dt, const int32_t* ih, const float* wh, const int32_t* iw,
                            const float* ww, const void* dy, void* dx, cudaStream_t stream);
};

}  // namespace unet::kernels
