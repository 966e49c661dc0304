// ops::crop: a box of the spatial axes with zero fill outside the input (kernels/crop.h), any dtype. Its gradient is
// the same kernel with the offsets negated: the gradient padded back to the input's shape.
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "kernels/crop.h"

namespace unet::ops {
namespace {

void run_crop(const kernels::CropShape& s, const Tensor& x, const Tensor& y) {
  backend::kernels_for(x).crop.crop(s, x.raw(), static_cast<int64_t>(dtype_size(x.dtype())), y.raw(),
                                    backend::stream(x));
}

}  // namespace

Tensor crop(const Tensor& x, const std::vector<int64_t>& start, const std::vector<int64_t>& size) {
  check_arg(x.defined(), "crop: undefined input");
  const int spatial = x.rank() - 2;
  check_arg(spatial >= 1 && spatial <= 3,
            "crop: expected [N, spatial..., C] with 1 to 3 spatial axes, got " + x.describe());
  check_arg(start.size() == static_cast<size_t>(spatial) && size.size() == static_cast<size_t>(spatial),
            "crop: start and size need " + std::to_string(spatial) + " values each for " + x.describe());
  kernels::CropShape s;
  s.n = x.dim(0);
  s.c = x.dim(-1);
  Shape out_shape = {s.n};
  for (int i = 0; i < spatial; ++i) {
    check_arg(size[size_t(i)] >= 1, "crop: size " + std::to_string(size[size_t(i)]) + " along axis " +
                                        std::to_string(1 + i) + " (expected >= 1)");
    const int a = 3 - spatial + i;
    s.in[a] = x.dim(1 + i);
    s.out[a] = size[size_t(i)];
    s.offset[a] = start[size_t(i)];
    out_shape.push_back(size[size_t(i)]);
  }
  out_shape.push_back(s.c);
  Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
  run_crop(s, x, y);
  if (autograd::should_record({x})) {
    kernels::CropShape back = s;  // y's gradient placed back where y came from, zeros elsewhere
    for (int a = 0; a < 3; ++a) {
      back.in[a] = s.out[a];
      back.out[a] = s.in[a];
      back.offset[a] = -s.offset[a];
    }
    autograd::record("crop", {x}, {y}, [back, x_shape = x.shape(), dt = x.dtype()](const std::vector<Tensor>& g) {
      Tensor dx = Tensor::empty(x_shape, dt, g[0].device());
      run_crop(back, g[0], dx);
      return std::vector<Tensor>{dx};
    });
  }
  return y;
}

}  // namespace unet::ops
