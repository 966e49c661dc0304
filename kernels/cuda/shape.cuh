// CUDA shape and type kernels: the entry points mirror kernels/cpu/shape.h (CPU) — channel concatenation and its split,
// nearest upsampling and its block-sum adjoint, f32 / f16 / bf16 casts, argmax over channels — with tensor pointers in
// device memory (host memory under the emulator) and a stream. Every output element is written by one thread from a
// fixed sequence of inputs: results are bitwise those of the CPU.
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/cuda/stream.h"
#include "kernels/shape.h"  // UpsampleShape (plain C++, no CUDA)

namespace unet::kernels::cuda {

using kernels::UpsampleShape;

// out[row, offset_i + j] = xs[i][row, j]. The arrays xs and widths are host memory (count entries); the tensors they
// point at are device memory. One launch per input.
void concat_channels(int64_t rows, int count, const void* const* xs, const int64_t* widths, int64_t elem_size,
                     void* out, cudaStream_t stream);
// The inverse: outs[i][row, j] = x[row, offset_i + j]; a null outs[i] is skipped. outs and widths are host arrays.
void split_channels(int64_t rows, int count, const void* x, const int64_t* widths, int64_t elem_size, void* const* outs,
                    cudaStream_t stream);

// y[n, z*fd+a, p*fh+b, q*fw+e, :] = x[n, z, p, q, :], elements of elem_size bytes.
void upsample_nearest_forward(const UpsampleShape& s, const void* x, int64_t elem_size, void* y, cudaStream_t stream);
// dx[n, z, p, q, :] = sum over the fd*fh*fw block of dy, in (a, b, e) order as the CPU, in f32, rounded to dt (f32,
// f16 or bf16, the type of dy and dx) once.
void upsample_nearest_backward(const UpsampleShape& s, DType dt, const void* dy, void* dx, cudaStream_t stream);

// n values between f32, f16 and bf16, rounding to nearest even exactly as kernels/common/dtype.h (NaN payloads included).
void cast(DType src_dtype, const void* src, DType dst_dtype, void* dst, int64_t n, cudaStream_t stream);

// out[row] = the first index of the largest of x[row, 0..c); NaN counts as larger than any number.
void argmax_channels(DType dtype, const void* x, int64_t rows, int64_t c, int32_t* out, cudaStream_t stream);

// The table of these entry points that the engine dispatches through (kernels/shape.h).
extern const ShapeKernels shape_kernels;

}  // namespace unet::kernels::cuda
