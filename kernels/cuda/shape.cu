// CUDA shape and type kernels (concat / split along channels, nearest upsampling, casts, argmax over channels), the
// CUDA twin of kernels/cpu/shape.cpp. All of them are gathers: one thread per output element reads a fixed sequence
// of inputs, so there is nothing to synchronise and the results are bitwise the CPU's.
// The kernel environment comes first: under the emulator it must precede every CUDA header.
#include "kernels/cuda/cuda_compat.cuh"
// clang-format off
#include "kernels/cuda/shape.cuh"
#include "kernels/cuda/element.cuh"
#include "kernels/cuda/launch.cuh"
// clang-format on

#include <stdexcept>
#include <string>
#include <type_traits>

namespace unet::kernels::cuda {
namespace {

// Threads per block of every launch below; __launch_bounds__ uses the same constant, so ptxas budgets registers for
// exactly the block size the launchers use.
constexpr int kThreads = 256;

// ---- kernels ----

// dst[r, dst_off + j] = src[r, src_off + j] for r < rows, j < width, in words of type T.
template <class T>
__global__ void __launch_bounds__(kThreads)
    copy_columns(const T* src, int64_t src_stride, int64_t src_off, T* dst, int64_t dst_stride, int64_t dst_off,
                 int64_t rows, int64_t width) {
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, j = i - r * width;
    dst[r * dst_stride + dst_off + j] = src[r * src_stride + src_off + j];
  }
}

// One thread per output word; cw = channel row length in words.
template <class T>
__global__ void __launch_bounds__(kThreads)
    upsample_nearest_forward_k(const T* x, T* y, UpsampleShape s, int64_t cw, int64_t total) {
  const int64_t od = s.d * s.fd, oh = s.h * s.fh, ow = s.w * s.fw;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = i % cw, pix = i / cw;
    const int64_t oq = pix % ow, op = (pix / ow) % oh, oz = (pix / (ow * oh)) % od, n = pix / (ow * oh * od);
    y[i] = x[(((n * s.d + oz / s.fd) * s.h + op / s.fh) * s.w + oq / s.fw) * cw + e];
  }
}

// One thread per input element; the block is summed in f32 in (a, b, e) order from 0.f and rounded to E once, as on
// the CPU.
template <class E>
__global__ void __launch_bounds__(kThreads)
    upsample_nearest_backward_k(const typename E::T* dy, typename E::T* dx, UpsampleShape s, int64_t total) {
  const int64_t oh = s.h * s.fh, ow = s.w * s.fw, C = s.c;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, pix = i / C;
    const int64_t q = pix % s.w, p = (pix / s.w) % s.h, z = (pix / (s.w * s.h)) % s.d, n = pix / (s.w * s.h * s.d);
    float acc = 0.f;
    for (int64_t a = 0; a < s.fd; ++a)
      for (int64_t b = 0; b < s.fh; ++b) {
        const typename E::T* src = dy + (((n * s.d * s.fd + z * s.fd + a) * oh + p * s.fh + b) * ow + q * s.fw) * C + c;
        for (int64_t e = 0; e < s.fw; ++e) acc += E::load(src[e * C]);
      }
    dx[i] = E::store(acc);
  }
}

// The conversions of kernels/common/dtype.h, bit for bit. CUDA's __float2half_rn / __float2bfloat16_rn round the same way
// but return a canonical NaN, where the CPU keeps the payload (quietened, in both directions for f16, as x86's F16C
// instructions do); these keep the CPU's bits.
__device__ uint16_t float_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__device__ float bf16_bits_to_float(uint16_t h) {
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}

__device__ uint16_t float_to_f16_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((a >> 13) & 0x3ffu);  // NaN, quietened
  if (a >= 0x47800000u) return sign | 0x7c00u;                                             // overflow and inf
  if (a >= 0x38800000u) {                                                                  // normal half
    const uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
    return sign | static_cast<uint16_t>((rounded >> 13) - (112u << 10));
  }
  if (a < 0x33000000u) return sign;  // below half the smallest subnormal (a tie at 2^-25 rounds to even 0)
  const uint32_t exp = a >> 23;
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - exp;
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return sign | static_cast<uint16_t>(q);
}

__device__ float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f && mant == 0) return __uint_as_float(sign | 0x7f800000u);     // infinity
  if (exp == 0x1f) return __uint_as_float(sign | 0x7fc00000u | (mant << 13));  // NaN: payload kept, quietened
  if (exp == 0) {
    if (mant == 0) return __uint_as_float(sign);
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // mant * 2^-24, exact
    return sign ? -v : v;
  }
  return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

struct F32 {
  using T = float;
  static __device__ float load(float v) { return v; }
  static __device__ float store(float f) { return f; }
};
struct F16 {
  using T = uint16_t;
  static __device__ float load(uint16_t v) { return f16_bits_to_float(v); }
  static __device__ uint16_t store(float f) { return float_to_f16_bits(f); }
};
struct BF16 {
  using T = uint16_t;
  static __device__ float load(uint16_t v) { return bf16_bits_to_float(v); }
  static __device__ uint16_t store(float f) { return float_to_bf16_bits(f); }
};

template <class Src, class Dst>
__global__ void __launch_bounds__(kThreads) cast_k(const typename Src::T* src, typename Dst::T* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = Dst::store(Src::load(src[i]));
}

// One thread per row. NaN is tested as v != v (no isnan overload question between nvcc and the host compiler).
template <class L>
__global__ void __launch_bounds__(kThreads)
    argmax_channels_k(const typename L::T* x, int64_t rows, int64_t c, int32_t* out) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    const typename L::T* v = x + r * c;
    int32_t best = 0;
    float best_v = c > 0 ? L::load(v[0]) : 0.f;
    if (best_v == best_v)
      for (int64_t j = 1; j < c; ++j) {
        const float f = L::load(v[j]);
        if (f != f) {
          best = static_cast<int32_t>(j);
          break;
        }
        if (f > best_v) {  // strict: on ties the first maximum stays
          best_v = f;
          best = static_cast<int32_t>(j);
        }
      }
    out[r] = best;
  }
}

// Column copy in the widest word the element size allows (1, 2, 4 or 8 bytes; other sizes go bytewise).
void copy_columns_bytes(const void* src, int64_t src_stride, int64_t src_off, void* dst, int64_t dst_stride,
                        int64_t dst_off, int64_t rows, int64_t width, int64_t elem_size, cudaStream_t stream) {
  if (rows * width == 0) return;
  const auto go = [&](auto word, int64_t k) {
    using T = decltype(word);
    launch(copy_columns<T>, grid_stride_blocks(rows * width * k, kThreads), dim3(kThreads), 0, stream,
           static_cast<const T*>(src), src_stride * k, src_off * k, static_cast<T*>(dst), dst_stride * k, dst_off * k,
           rows, width * k);
  };
  switch (elem_size) {
    case 8:
      return go(uint64_t{}, 1);
    case 4:
      return go(uint32_t{}, 1);
    case 2:
      return go(uint16_t{}, 1);
    default:
      return go(uint8_t{}, elem_size);
  }
}

bool is_float_type(DType t) {
  return t == DType::f32 || t == DType::f16 || t == DType::bf16;
}

// Launches the Src -> Dst conversion; equal types never get here (they are copied), so they are not instantiated.
template <class Src, class Dst>
void cast_to(const void* src, void* dst, int64_t n, cudaStream_t stream) {
  if constexpr (!std::is_same_v<Src, Dst>)
    launch(cast_k<Src, Dst>, grid_stride_blocks(n, kThreads), dim3(kThreads), 0, stream,
           static_cast<const typename Src::T*>(src), static_cast<typename Dst::T*>(dst), n);
}

template <class Src>
void cast_from(const void* src, DType dst_dtype, void* dst, int64_t n, cudaStream_t stream) {
  switch (dst_dtype) {
    case DType::f32:
      return cast_to<Src, F32>(src, dst, n, stream);
    case DType::f16:
      return cast_to<Src, F16>(src, dst, n, stream);
    default:
      return cast_to<Src, BF16>(src, dst, n, stream);
  }
}

}  // namespace

// ---- launchers ----

void concat_channels(int64_t rows, int count, const void* const* xs, const int64_t* widths, int64_t elem_size,
                     void* out, cudaStream_t stream) {
  int64_t total = 0;
  for (int i = 0; i < count; ++i) total += widths[i];
  int64_t offset = 0;
  for (int i = 0; i < count; offset += widths[i], ++i)
    copy_columns_bytes(xs[i], widths[i], 0, out, total, offset, rows, widths[i], elem_size, stream);
}

void split_channels(int64_t rows, int count, const void* x, const int64_t* widths, int64_t elem_size, void* const* outs,
                    cudaStream_t stream) {
  int64_t total = 0;
  for (int i = 0; i < count; ++i) total += widths[i];
  int64_t offset = 0;
  for (int i = 0; i < count; offset += widths[i], ++i)
    if (outs[i]) copy_columns_bytes(x, total, offset, outs[i], widths[i], 0, rows, widths[i], elem_size, stream);
}

void upsample_nearest_forward(const UpsampleShape& s, const void* x, int64_t elem_size, void* y, cudaStream_t stream) {
  const int64_t pixels = s.n * s.d * s.fd * s.h * s.fh * s.w * s.fw;
  const auto go = [&](auto word, int64_t cw) {
    using T = decltype(word);
    if (pixels * cw == 0) return;
    launch(upsample_nearest_forward_k<T>, grid_stride_blocks(pixels * cw, kThreads), dim3(kThreads), 0, stream,
           static_cast<const T*>(x), static_cast<T*>(y), s, cw, pixels * cw);
  };
  switch (elem_size) {
    case 8:
      return go(uint64_t{}, s.c);
    case 4:
      return go(uint32_t{}, s.c);
    case 2:
      return go(uint16_t{}, s.c);
    default:
      return go(uint8_t{}, s.c * elem_size);
  }
}

void upsample_nearest_backward(const UpsampleShape& s, DType dt, const void* dy, void* dx, cudaStream_t stream) {
  const int64_t total = s.n * s.d * s.h * s.w * s.c;
  if (total == 0) return;
  element::with_element_type(dt, "upsample_nearest", [&](auto e) {
    using E = decltype(e);
    using T = typename E::T;
    launch(upsample_nearest_backward_k<E>, grid_stride_blocks(total, kThreads), dim3(kThreads), 0, stream,
           static_cast<const T*>(dy), static_cast<T*>(dx), s, total);
  });
}

void cast(DType src_dtype, const void* src, DType dst_dtype, void* dst, int64_t n, cudaStream_t stream) {
  if (!is_float_type(src_dtype) || !is_float_type(dst_dtype))
    throw std::invalid_argument(std::string("cuda cast: unsupported conversion ") + dtype_name(src_dtype) + " -> " +
                                dtype_name(dst_dtype) + " (f32, f16 and bf16 only)");
  if (n <= 0) return;
  if (src_dtype == dst_dtype) {  // a raw copy, as the CPU's memcpy: a conversion round trip would quieten NaNs
    copy_columns_bytes(src, 0, 0, dst, 0, 0, 1, n, static_cast<int64_t>(dtype_size(src_dtype)), stream);
    return;
  }
  switch (src_dtype) {
    case DType::f32:
      return cast_from<F32>(src, dst_dtype, dst, n, stream);
    case DType::f16:
      return cast_from<F16>(src, dst_dtype, dst, n, stream);
    default:
      return cast_from<BF16>(src, dst_dtype, dst, n, stream);
  }
}

void argmax_channels(DType dtype, const void* x, int64_t rows, int64_t c, int32_t* out, cudaStream_t stream) {
  if (!is_float_type(dtype))
    throw std::invalid_argument(std::string("cuda argmax_channels: unsupported dtype ") + dtype_name(dtype));
  if (rows <= 0) return;
  switch (dtype) {
    case DType::f32:
      return launch(argmax_channels_k<F32>, grid_stride_blocks(rows, kThreads), dim3(kThreads), 0, stream,
                    static_cast<const float*>(x), rows, c, out);
    case DType::f16:
      return launch(argmax_channels_k<F16>, grid_stride_blocks(rows, kThreads), dim3(kThreads), 0, stream,
                    static_cast<const uint16_t*>(x), rows, c, out);
    default:
      return launch(argmax_channels_k<BF16>, grid_stride_blocks(rows, kThreads), dim3(kThreads), 0, stream,
                    static_cast<const uint16_t*>(x), rows, c, out);
  }
}

const ShapeKernels shape_kernels{concat_channels,           split_channels, upsample_nearest_forward,
                                 upsample_nearest_backward, cast,           argmax_channels};

}  // namespace unet::kernels::cuda
