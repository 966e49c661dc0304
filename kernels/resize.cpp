// The axis maps of bilinear resampling (kernels/resize.h), shared by the CPU and CUDA kernels.
#include "kernels/resize.h"

#include <algorithm>

namespace unet::kernels {

ResizeAxis bilinear_axis(int64_t in, int64_t out, bool align_corners) {
  ResizeAxis a;
  a.in = in;
  a.out = out;
  // PyTorch's area_pixel_compute_scale and area_pixel_compute_source_index, in f32 as its CPU kernel.
  const float scale = align_corners ? (out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.f)
                                    : static_cast<float>(in) / static_cast<float>(out);
  for (int64_t o = 0; o < out; ++o) {
    float src = align_corners ? scale * static_cast<float>(o) : scale * (static_cast<float>(o) + 0.5f) - 0.5f;
    if (src < 0.f) src = 0.f;
    const int64_t i0 = std::min(static_cast<int64_t>(src), in - 1);
    const int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
    a.i0.push_back(static_cast<int32_t>(i0));
    a.i1.push_back(static_cast<int32_t>(i1));
    a.lambda.push_back(src - static_cast<float>(i0));
  }
  // Taps by input (a counting sort in output order).
  a.start.assign(static_cast<size_t>(in + 1), 0);
  for (int64_t o = 0; o < out; ++o) {
    ++a.start[static_cast<size_t>(a.i0[o] + 1)];
    ++a.start[static_cast<size_t>(a.i1[o] + 1)];
  }
  for (int64_t i = 0; i < in; ++i) a.start[static_cast<size_t>(i + 1)] += a.start[static_cast<size_t>(i)];
  std::vector<int32_t> next(a.start.begin(), a.start.end() - 1);
  a.tap_out.assign(static_cast<size_t>(2 * out), 0);
  a.tap_weight.assign(static_cast<size_t>(2 * out), 0.f);
  for (int64_t o = 0; o < out; ++o) {
    const float l = a.lambda[static_cast<size_t>(o)];
    const int32_t t0 = next[static_cast<size_t>(a.i0[o])]++;
    a.tap_out[static_cast<size_t>(t0)] = static_cast<int32_t>(o);
    a.tap_weight[static_cast<size_t>(t0)] = 1.f - l;
    const int32_t t1 = next[static_cast<size_t>(a.i1[o])]++;
    a.tap_out[static_cast<size_t>(t1)] = static_cast<int32_t>(o);
    a.tap_weight[static_cast<size_t>(t1)] = l;
  }
  return a;
}

std::vector<int32_t> ResizeAxis::packed_index() const {
  std::vector<int32_t> p(i0);
  p.insert(p.end(), i1.begin(), i1.end());
  p.insert(p.end(), start.begin(), start.end());
  p.insert(p.end(), tap_out.begin(), tap_out.end());
  return p;
}

std::vector<float> ResizeAxis::packed_weight() const {
  std::vector<float> p(lambda);
  p.insert(p.end(), tap_weight.begin(), tap_weight.end());
  return p;
}

}  // namespace unet::kernels
