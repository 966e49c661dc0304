// Elementwise kernels (CPU entry points; implementations in kernels/cpu/elementwise.cpp).
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/elementwise.h"

namespace unet::kernels::cpu {

// out = a + b for n elements of dtype (f16/bf16 added in f32 and rounded); out may alias a or b.
void add(DType dtype, const void* a, const void* b, void* out, int64_t n);
// out = alpha * a, f32.
void scale(const float* a, float alpha, float* out, int64_t n);
// Sum of n f32 values, accumulated in double in a fixed order.
double sum(const float* a, int64_t n);

// The table of these entry points that the engine dispatches through (kernels/elementwise.h); the stream is ignored.
extern const ElementwiseKernels elementwise_kernels;

}  // namespace unet::kernels::cpu
