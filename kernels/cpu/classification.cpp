// UNet 3+'s classification-guided module on the CPU (kernels/classification.h); kernels/cuda/classification.cu is its
// twin, with the same arithmetic in the same order.
#include "kernels/cpu/classification.h"

#include "kernels/common/parallel.h"
#include "kernels/cpu/element.h"

namespace unet::kernels::cpu {
namespace {

void presence_mask(const float* z, int64_t samples, float* mask, cudaStream_t) {
  for (int64_t s = 0; s < samples; ++s) mask[s] = z[s * 2 + 1] > z[s * 2] ? 1.f : 0.f;
}

void scale_samples(DType dt, const void* x, const float* mask, int64_t samples, int64_t inner, void* y, cudaStream_t) {
  element::with_element_type(dt, "scale_samples", [&](auto e) {
    using E = decltype(e);
    const auto* in = static_cast<const typename E::T*>(x);
    auto* out = static_cast<typename E::T*>(y);
    parallel_for(samples * inner, 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) out[i] = E::store(E::load(in[i]) * mask[i / inner]);
    });
  });
}

bool any_positive(const void* labels, DType dt, int64_t begin, int64_t n) {
  for (int64_t i = begin; i < begin + n; ++i)
    if (dt == DType::u8 ? static_cast<const uint8_t*>(labels)[i] > 0 : static_cast<const int32_t*>(labels)[i] > 0)
      return true;
  return false;
}

void presence_bce(const float* z, const void* labels, DType label_dtype, int64_t samples, int64_t inner, float* targets,
                  double* sum, cudaStream_t) {
  double total = 0;
  for (int64_t s = 0; s < samples; ++s) {
    const float t = any_positive(labels, label_dtype, s * inner, inner) ? 1.f : 0.f;
    targets[s * 2] = 1 - t;
    targets[s * 2 + 1] = t;
    for (int k = 0; k < 2; ++k) total += bce_with_logits(z[s * 2 + k], targets[s * 2 + k]);
  }
  sum[0] = total;
}

void finish(const double* sum, double count, float* loss, cudaStream_t) {
  loss[0] = static_cast<float>(sum[0] / count);
}

void presence_bce_backward(const float* z, const float* targets, int64_t samples, const float* g, double scale,
                           float* dz, cudaStream_t) {
  for (int64_t i = 0; i < samples * 2; ++i)
    dz[i] = static_cast<float>(double(g[0]) * scale * bce_with_logits_grad(z[i], targets[i]));
}

}  // namespace

const ClassificationKernels classification_kernels{presence_mask, scale_samples, presence_bce, finish,
                                                   presence_bce_backward};

}  // namespace unet::kernels::cpu
