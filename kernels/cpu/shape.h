// Shape and type kernels: channel concatenation and its split, nearest upsampling and its block-sum adjoint,
// dtype casts, and argmax over channels (CPU entry points; implementation in kernels/cpu/shape.cpp).
// Concat, split and upsample move bytes, so they serve every dtype.
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/shape.h"

namespace unet::kernels::cpu {

using kernels::UpsampleShape;

// out[row, offset_i + j] = xs[i][row, j] for rows rows; widths[i] elements of elem_size bytes each.
void concat_channels(int64_t rows, int count, const void* const* xs, const int64_t* widths, int64_t elem_size,
                     void* out);
// The inverse: outs[i][row, j] = x[row, offset_i + j]; a null outs[i] is skipped.
void split_channels(int64_t rows, int count, const void* x, const int64_t* widths, int64_t elem_size,
                    void* const* outs);

// y[n, z*fd+a, p*fh+b, q*fw+e, :] = x[n, z, p, q, :], elements of elem_size bytes.
void upsample_nearest_forward(const UpsampleShape& s, const void* x, int64_t elem_size, void* y);
// dx[n, z, p, q, :] = sum over the fd*fh*fw block of dy, dy and dx of type dt (f32, f16 or bf16), summed in f32 in a
// fixed order and rounded to dt once.
void upsample_nearest_backward(const UpsampleShape& s, DType dt, const void* dy, void* dx);

// n values from src_dtype to dst_dtype, each one of f32, f16, bf16 (f16 <-> bf16 goes through f32, which is exact
// for the f16 or bf16 source, then rounds once). Uses the conversions of kernels/common/dtype.h.
void cast(DType src_dtype, const void* src, DType dst_dtype, void* dst, int64_t n);

// out[row] = the first index of the largest of x[row, 0..c) (f32, f16 or bf16). NaN counts as larger than any
// number (as torch.argmax): a row holding NaN gives the index of its first NaN.
void argmax_channels(DType dtype, const void* x, int64_t rows, int64_t c, int32_t* out);

// The table of these entry points that the engine dispatches through (kernels/shape.h); the stream is ignored.
extern const ShapeKernels shape_kernels;

}  // namespace unet::kernels::cpu
