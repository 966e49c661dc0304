// CUDA batched augmentation: the entry points of kernels/augment.h with device pointers and a stream; the twin of
// kernels/cpu/augment.cpp, bit for bit under the emulator.
#pragma once
#include <cstdint>

#include "kernels/augment.h"

namespace unet::kernels::cuda {

void augment_resample_axis(const AugmentShape& s, int axis, int taps, const int32_t* index, const double* weight,
                           const uint8_t* active, const float* x, float* y, cudaStream_t stream);
void augment_gather_label_axis(const AugmentShape& s, int axis, const int32_t* index, const uint8_t* active,
                               const int32_t* x, int32_t* y, cudaStream_t stream);
void augment_add_noise(const AugmentShape& s, const AugmentSampleParams* p, float* x, cudaStream_t stream);
void augment_brightness(const AugmentShape& s, const AugmentSampleParams* p, float* x, cudaStream_t stream);
void augment_channel_stats(const AugmentShape& s, const uint8_t* active, const float* x, double* stats,
                           cudaStream_t stream);
void augment_contrast(const AugmentShape& s, const AugmentSampleParams* p, const double* stats, float* x,
                      cudaStream_t stream);
void augment_gamma(const AugmentShape& s, const AugmentSampleParams* p, const double* stats, float* x,
                   cudaStream_t stream);
void augment_restore_stats(const AugmentShape& s, const AugmentSampleParams* p, const double* before,
                           const double* after, float* x, cudaStream_t stream);

extern const AugmentKernels augment_kernels;

}  // namespace unet::kernels::cuda
