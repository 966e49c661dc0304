// CPU batched augmentation (kernels/augment.h): the loops of kernels/cuda/augment.cu, one work item per output value
// (or per sample and channel for the statistics), the same arithmetic in the same order. Built with
// -ffp-contract=off (CMakeLists.txt) so that no multiply-add is fused where the GPU rounds twice.
#include "kernels/cpu/augment.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/parallel.h"

namespace unet::kernels::cpu {

namespace {

// The product of the dims before `axis` (outer) and after it, channels included (inner), within one sample.
void split(const AugmentShape& s, int axis, int64_t* outer, int64_t* inner) {
  const int64_t d[3] = {s.z, s.y, s.x};
  *outer = 1;
  *inner = s.c;
  for (int a = 0; a < axis; ++a) *outer *= d[a];
  for (int a = axis + 1; a < 3; ++a) *inner *= d[a];
}

// f(value, sample, index within the sample) over every value of the samples where on(sample).
template <class On, class F>
void for_each_value(const AugmentShape& s, float* x, On on, F f) {
  const int64_t per = s.values();
  for (int64_t b = 0; b < s.n; ++b) {
    if (!on(b)) continue;
    float* v = x + b * per;
    parallel_for(per, 16384, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) v[i] = f(v[i], b, i);
    });
  }
}

}  // namespace

void augment_resample_axis(const AugmentShape& s, int axis, int taps, const int32_t* index, const double* weight,
                           const uint8_t* active, const float* x, float* y, cudaStream_t) {
  int64_t outer, inner;
  split(s, axis, &outer, &inner);
  const int64_t n = s.dim(axis), rows = s.n * outer * n;
  parallel_for(rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t i = r % n, o = r / n % outer, b = r / n / outer;
      float* dst = y + r * inner;
      const float* base = x + (b * outer + o) * n * inner;
      if (!active[b]) {
        std::copy(x + r * inner, x + (r + 1) * inner, dst);
        continue;
      }
      const int32_t* idx = index + (b * n + i) * taps;
      const double* w = weight + (b * n + i) * taps;
      for (int64_t j = 0; j < inner; ++j) {
        double acc = 0;
        for (int k = 0; k < taps; ++k) acc = augment_madd(acc, w[k], base[idx[k] * inner + j]);
        dst[j] = static_cast<float>(acc);
      }
    }
  });
}

void augment_gather_label_axis(const AugmentShape& s, int axis, const int32_t* index, const uint8_t* active,
                               const int32_t* x, int32_t* y, cudaStream_t) {
  int64_t outer, inner;
  split(s, axis, &outer, &inner);
  inner /= s.c;  // labels have no channels
  const int64_t n = s.dim(axis), rows = s.n * outer * n;
  parallel_for(rows, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t i = r % n, o = r / n % outer, b = r / n / outer;
      const int64_t from = active[b] ? ((b * outer + o) * n + index[b * n + i]) * inner : r * inner;
      std::copy(x + from, x + from + inner, y + r * inner);
    }
  });
}

void augment_add_noise(const AugmentShape& s, const AugmentSampleParams* p, float* x, cudaStream_t) {
  for_each_value(
      s, x, [&](int64_t b) { return p[b].noise_std > 0; },
      [&](float v, int64_t b, int64_t i) { return augment_noise(v, p[b], static_cast<uint64_t>(i)); });
}

void augment_brightness(const AugmentShape& s, const AugmentSampleParams* p, float* x, cudaStream_t) {
  for_each_value(
      s, x, [&](int64_t b) { return p[b].brightness != 1; },
      [&](float v, int64_t b, int64_t) { return augment_brightness(v, p[b]); });
}

void augment_channel_stats(const AugmentShape& s, const uint8_t* active, const float* x, double* stats, cudaStream_t) {
  const int64_t V = s.voxels(), C = s.c;
  parallel_for(s.n * C, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t bc = lo; bc < hi; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      if (!active[b]) continue;
      const float* v = x + b * V * C + c;
      double part_min[kStatParts], part_max[kStatParts], part[kStatParts];
      for (int t = 0; t < kStatParts; ++t) {
        double mn = INFINITY, mx = -INFINITY, sum = 0;
        for (int64_t i = t; i < V; i += kStatParts) {
          const double e = v[i * C];
          mn = std::fmin(mn, e);
          mx = std::fmax(mx, e);
          sum += e;
        }
        part_min[t] = mn;
        part_max[t] = mx;
        part[t] = sum;
      }
      double mn = INFINITY, mx = -INFINITY, sum = 0;
      for (int t = 0; t < kStatParts; ++t) {
        mn = std::fmin(mn, part_min[t]);
        mx = std::fmax(mx, part_max[t]);
        sum += part[t];
      }
      const double mean = sum / static_cast<double>(V);
      for (int t = 0; t < kStatParts; ++t) {
        double sum2 = 0;
        for (int64_t i = t; i < V; i += kStatParts) {
          const double d = v[i * C] - mean;
          sum2 = augment_madd(sum2, d, d);
        }
        part[t] = sum2;
      }
      double sum2 = 0;
      for (int t = 0; t < kStatParts; ++t) sum2 += part[t];
      double* out = stats + bc * 4;
      out[kStatMin] = mn;
      out[kStatMax] = mx;
      out[kStatMean] = mean;
      out[kStatStd] = std::sqrt(sum2 / static_cast<double>(V));
    }
  });
}

void augment_contrast(const AugmentShape& s, const AugmentSampleParams* p, const double* stats, float* x,
                      cudaStream_t) {
  const int64_t C = s.c;
  for (int64_t b = 0; b < s.n; ++b) {
    if (p[b].contrast == 1) continue;
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t c = 0; c < C; ++c) {
      lo = std::fmin(lo, stats[(b * C + c) * 4 + kStatMin]);
      hi = std::fmax(hi, stats[(b * C + c) * 4 + kStatMax]);
    }
    float* v = x + b * s.values();
    parallel_for(s.values(), 16384, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        v[i] = augment_contrast(v[i], p[b], static_cast<float>(lo), static_cast<float>(hi));
    });
  }
}

void augment_gamma(const AugmentShape& s, const AugmentSampleParams* p, const double* stats, float* x, cudaStream_t) {
  const int64_t C = s.c;
  for_each_value(
      s, x, [&](int64_t b) { return p[b].gamma != 1; },
      [&](float v, int64_t b, int64_t i) { return augment_gamma(v, p[b], stats + (b * C + i % C) * 4); });
}

void augment_restore_stats(const AugmentShape& s, const AugmentSampleParams* p, const double* before,
                           const double* after, float* x, cudaStream_t) {
  const int64_t C = s.c;
  for_each_value(
      s, x, [&](int64_t b) { return p[b].gamma != 1; },
      [&](float v, int64_t b, int64_t i) {
        return augment_restore(v, before + (b * C + i % C) * 4, after + (b * C + i % C) * 4);
      });
}

const AugmentKernels augment_kernels = {augment_resample_axis, augment_gather_label_axis, augment_add_noise,
                                        augment_brightness,    augment_channel_stats,     augment_contrast,
                                        augment_gamma,         augment_restore_stats};

}  // namespace unet::kernels::cpu
