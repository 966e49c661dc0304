#include "kernels/cpu/bias.h"

#include "kernels/common/parallel.h"
#include "kernels/cpu/element.h"

namespace unet::kernels::cpu {

void bias_add(DType dt, int64_t rows, int64_t channels, const float* bias, void* y, cudaStream_t) {
  element::with_element_type(dt, "bias_add", [&](auto e) {
    using E = decltype(e);
    auto* out = static_cast<typename E::T*>(y);
    parallel_for(rows, 256, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r)
        for (int64_t k = 0; k < channels; ++k)
          out[r * channels + k] = E::store(E::load(out[r * channels + k]) + bias[k]);
    });
  });
}

const BiasKernels bias_kernels = {bias_add};

}  // namespace unet::kernels::cpu
