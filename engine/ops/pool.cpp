// ops::max_pool: max pooling with the window equal to the stride (kernels/pool.h), on f32, f16 or bf16. The argmax
// positions are kept (i32, one per output) for backward, as PyTorch keeps its indices.
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "kernels/pool.h"

namespace unet::ops {

Tensor max_pool(const Tensor& x, const std::vector<int>& window) {
  check_arg(x.defined(), "max_pool: undefined input");
  check_arg(backend::is_float(x.dtype()), "max_pool: expected f32, f16 or bf16, got " + x.describe());
  const int spatial = x.rank() - 2;
  check_arg(spatial == 2 || spatial == 3, "max_pool: expected [N, H, W, C] or [N, D, H, W, C], got " + x.describe());
  check_arg(window.size() == static_cast<size_t>(spatial),
            "max_pool: " + std::to_string(window.size()) + " window sizes for " + x.describe());
  kernels::PoolShape s;
  int64_t* in[3] = {&s.d, &s.h, &s.w};
  int64_t* k[3] = {&s.kd, &s.kh, &s.kw};
  for (int i = 0; i < spatial; ++i) {
    check_arg(window[size_t(i)] >= 1 && window[size_t(i)] <= x.dim(1 + i),
              "max_pool: window " + std::to_string(window[size_t(i)]) + " along axis " + std::to_string(1 + i) +
                  " of " + x.describe() + " (expected 1 to the axis' size)");
    *in[3 - spatial + i] = x.dim(1 + i);
    *k[3 - spatial + i] = window[size_t(i)];
  }
  s.n = x.dim(0);
  s.c = x.dim(-1);
  Shape out_shape = {s.n};
  if (spatial == 3) out_shape.push_back(s.od());
  out_shape.insert(out_shape.end(), {s.oh(), s.ow(), s.c});
  const DType dt = x.dtype();
  Tensor y = Tensor::empty(out_shape, dt, x.device());
  Tensor idx = Tensor::empty(out_shape, DType::i32, x.device());
  backend::kernels_for(x).pool.max_pool_forward(s, dt, x.raw(), y.raw(), idx.data<int32_t>(), backend::stream(x));
  if (autograd::should_record({x})) {
    autograd::record("max_pool", {x}, {y}, [s, dt, idx, x_shape = x.shape()](const std::vector<Tensor>& g) {
      Tensor dx = Tensor::empty(x_shape, dt, g[0].device());
      backend::kernels_for(dx).pool.max_pool_backward(s, dt, g[0].raw(), idx.data<int32_t>(), dx.raw(),
                                                      backend::stream(dx));
      return std::vector<Tensor>{dx};
    });
  }
  return y;
}

}  // namespace unet::ops
