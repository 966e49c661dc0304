// CPU shape and type kernels (see kernels/shape.h). Everything is parallel over channel rows (pixels); every
// output element is written by one thread from a fixed sequence of inputs, so results are deterministic.
#include "kernels/cpu/shape.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/common/parallel.h"
#include "kernels/cpu/element.h"

namespace unet::kernels::cpu {

void concat_channels(int64_t rows, int count, const void* const* xs, const int64_t* widths, int64_t elem_size,
                     void* out) {
  int64_t total = 0;
  for (int i = 0; i < count; ++i) total += widths[i];
  const int64_t out_row = total * elem_size;
  parallel_for(rows, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      char* dst = static_cast<char*>(out) + r * out_row;
      for (int i = 0; i < count; ++i) {
        const int64_t bytes = widths[i] * elem_size;
        std::memcpy(dst, static_cast<const char*>(xs[i]) + r * bytes, static_cast<size_t>(bytes));
        dst += bytes;
      }
    }
  });
}

void split_channels(int64_t rows, int count, const void* x, const int64_t* widths, int64_t elem_size,
                    void* const* outs) {
  int64_t total = 0;
  for (int i = 0; i < count; ++i) total += widths[i];
  const int64_t in_row = total * elem_size;
  parallel_for(rows, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const char* src = static_cast<const char*>(x) + r * in_row;
      for (int i = 0; i < count; ++i) {
        const int64_t bytes = widths[i] * elem_size;
        if (outs[i]) std::memcpy(static_cast<char*>(outs[i]) + r * bytes, src, static_cast<size_t>(bytes));
        src += bytes;
      }
    }
  });
}

void upsample_nearest_forward(const UpsampleShape& s, const void* x, int64_t elem_size, void* y) {
  const int64_t od = s.d * s.fd, oh = s.h * s.fh, ow = s.w * s.fw, row = s.c * elem_size;
  // One work item per output line (n, z', p'): it reads input line (n, z' / fd, p' / fh) and repeats each pixel fw
  // times.
  parallel_for(s.n * od * oh, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t line = lo; line < hi; ++line) {
      const int64_t op = line % oh, oz = (line / oh) % od, n = line / (oh * od);
      const char* src = static_cast<const char*>(x) + ((n * s.d + oz / s.fd) * s.h + op / s.fh) * s.w * row;
      char* dst = static_cast<char*>(y) + line * ow * row;
      for (int64_t q = 0; q < s.w; ++q)
        for (int64_t e = 0; e < s.fw; ++e)
          std::memcpy(dst + (q * s.fw + e) * row, src + q * row, static_cast<size_t>(row));
    }
  });
}

void upsample_nearest_backward(const UpsampleShape& s, DType dt, const void* dy, void* dx) {
  const int64_t oh = s.h * s.fh, ow = s.w * s.fw, C = s.c;
  element::with_element_type(dt, "upsample_nearest", [&](auto e) {
    using E = decltype(e);
    const auto* g = static_cast<const typename E::T*>(dy);
    auto* out_all = static_cast<typename E::T*>(dx);
    // One work item per input pixel; the block is summed in (a, b, e) order.
    parallel_for(s.n * s.d * s.h * s.w, 256, [&](int64_t lo, int64_t hi) {
      std::vector<float> acc(static_cast<size_t>(C));
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t q = i % s.w, p = (i / s.w) % s.h, z = (i / (s.w * s.h)) % s.d, n = i / (s.w * s.h * s.d);
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t a = 0; a < s.fd; ++a)
          for (int64_t b = 0; b < s.fh; ++b) {
            const auto* src = g + (((n * s.d * s.fd + z * s.fd + a) * oh + p * s.fh + b) * ow + q * s.fw) * C;
            for (int64_t f = 0; f < s.fw; ++f)
              for (int64_t c = 0; c < C; ++c) acc[static_cast<size_t>(c)] += E::load(src[f * C + c]);
          }
        auto* out = out_all + i * C;
        for (int64_t c = 0; c < C; ++c) out[c] = E::store(acc[static_cast<size_t>(c)]);
      }
    });
  });
}

namespace {
bool is_float_type(DType t) {
  return t == DType::f32 || t == DType::f16 || t == DType::bf16;
}

// Element i of a float-typed buffer as float.
inline float load_float(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::f16:
      return f16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::bf16:
      return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}
}  // namespace

void cast(DType src_dtype, const void* src, DType dst_dtype, void* dst, int64_t n) {
  if (!is_float_type(src_dtype) || !is_float_type(dst_dtype))
    throw std::invalid_argument(std::string("cast: unsupported conversion ") + dtype_name(src_dtype) + " -> " +
                                dtype_name(dst_dtype) + " (f32, f16 and bf16 only)");
  if (src_dtype == dst_dtype) {
    std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(src_dtype));
    return;
  }
  // Nested trait dispatch: each of the six conversions is its own loop, which the compiler can vectorise.
  element::with_element_type(src_dtype, "cast", [&](auto from) {
    element::with_element_type(dst_dtype, "cast", [&](auto to) {
      using From = decltype(from);
      using To = decltype(to);
      const auto* in = static_cast<const typename From::T*>(src);
      auto* out = static_cast<typename To::T*>(dst);
      parallel_for(n, 1 << 15, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) out[i] = To::store(From::load(in[i]));
      });
    });
  });
}

void argmax_channels(DType dtype, const void* x, int64_t rows, int64_t c, int32_t* out) {
  if (!is_float_type(dtype))
    throw std::invalid_argument(std::string("argmax_channels: unsupported dtype ") + dtype_name(dtype));
  parallel_for(rows, 1024, [&](int64_t lo, int64_t hi) {
    std::vector<float> row(static_cast<size_t>(c));
    for (int64_t r = lo; r < hi; ++r) {
      const float* v;
      if (dtype == DType::f32) {
        v = static_cast<const float*>(x) + r * c;
      } else {
        for (int64_t j = 0; j < c; ++j) row[static_cast<size_t>(j)] = load_float(dtype, x, r * c + j);
        v = row.data();
      }
      int32_t best = 0;
      float best_v = c > 0 ? v[0] : 0.f;
      if (!std::isnan(best_v))
        for (int64_t j = 1; j < c; ++j) {
          if (std::isnan(v[j])) {
            best = static_cast<int32_t>(j);
            break;
          }
          if (v[j] > best_v) {  // strict: on ties the first maximum stays
            best_v = v[j];
            best = static_cast<int32_t>(j);
          }
        }
      out[r] = best;
    }
  });
}

const ShapeKernels shape_kernels{
    .concat_channels = [](int64_t rows, int count, const void* const* xs, const int64_t* widths, int64_t elem_size,
                          void* out, cudaStream_t) { concat_channels(rows, count, xs, widths, elem_size, out); },
    .split_channels = [](int64_t rows, int count, const void* x, const int64_t* widths, int64_t elem_size,
                         void* const* outs, cudaStream_t) { split_channels(rows, count, x, widths, elem_size, outs); },
    .upsample_nearest_forward = [](const UpsampleShape& s, const void* x, int64_t elem_size, void* y,
                                   cudaStream_t) { upsample_nearest_forward(s, x, elem_size, y); },
    .upsample_nearest_backward = [](const UpsampleShape& s, DType dt, const void* dy, void* dx,
                                    cudaStream_t) { upsample_nearest_backward(s, dt, dy, dx); },
    .cast = [](DType src_dtype, const void* src, DType dst_dtype, void* dst, int64_t n,
               cudaStream_t) { cast(src_dtype, src, dst_dtype, dst, n); },
    .argmax_channels = [](DType dtype, const void* x, int64_t rows, int64_t c, int32_t* out,
                          cudaStream_t) { argmax_channels(dtype, x, rows, c, out); },
};

}  // namespace unet::kernels::cpu
