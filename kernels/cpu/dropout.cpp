#include "kernels/cpu/dropout.h"

#include "kernels/common/parallel.h"
#include "kernels/cpu/element.h"

namespace unet::kernels::cpu {

void dropout_apply(DType dt, uint64_t seed, uint64_t first, float p, float scale, const void* x, void* y, int64_t n,
                   cudaStream_t) {
  element::with_element_type(dt, "dropout", [&](auto e) {
    using E = decltype(e);
    const auto* in = static_cast<const typename E::T*>(x);
    auto* out = static_cast<typename E::T*>(y);
    parallel_for(n, 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i)
        out[i] = E::store(dropout_keeps(seed, first + static_cast<uint64_t>(i), p) ? E::load(in[i]) * scale : 0.f);
    });
  });
}

const DropoutKernels dropout_kernels = {dropout_apply};

}  // namespace unet::kernels::cpu
