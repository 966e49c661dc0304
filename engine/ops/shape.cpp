// Shape and type ops: concat_channels (decoder skip connections), upsample_nearest (deep supervision),
// cast (mixed precision) and argmax_channels (predictions). Kernels in kernels/cpu/shape.cpp and, by the tensor's
// device, kernels/cuda/shape.cu.
#include "kernels/shape.h"
#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"

namespace unet::ops {

using backend::kernels_for;
using backend::stream;

Tensor concat_channels(const std::vector<Tensor>& xs) {
  check_arg(!xs.empty(), "concat_channels: no inputs");
  std::string args = "concat_channels(";
  for (size_t i = 0; i < xs.size(); ++i) args += (i ? ", " : "") + xs[i].describe();
  args += "): ";
  const Tensor& x0 = xs[0];
  check_arg(x0.defined(), args + "undefined input");
  check_arg(x0.rank() >= 1, args + "inputs need a channel axis");
  Shape lead(x0.shape().begin(), x0.shape().end() - 1);
  std::vector<int64_t> widths;
  std::vector<const void*> ptrs;
  int64_t total = 0;
  for (const Tensor& x : xs) {
    check_arg(x.defined(), args + "undefined input");
    check_arg(x.device() == x0.device(), args + "all inputs must be on one device");
    check_arg(x.dtype() == x0.dtype(), args + "all inputs must have one dtype");
    check_arg(x.rank() == x0.rank() && Shape(x.shape().begin(), x.shape().end() - 1) == lead,
              args + "all axes but the last (channels) must match");
    widths.push_back(x.dim(-1));
    ptrs.push_back(x.raw());
    total += x.dim(-1);
  }
  Shape out_shape = lead;
  out_shape.push_back(total);
  Tensor y = Tensor::empty(out_shape, x0.dtype(), x0.device());
  const int64_t rows = shape_numel(lead);
  const auto elem = static_cast<int64_t>(dtype_size(x0.dtype()));
  const int count = static_cast<int>(xs.size());
  kernels_for(y).shape.concat_channels(rows, count, ptrs.data(), widths.data(), elem, y.raw(), stream(y));

  if (autograd::should_record(xs)) {
    std::vector<Shape> shapes;
    std::vector<bool> need;
    for (const Tensor& x : xs) {
      shapes.push_back(x.shape());
      need.push_back(x.requires_grad());
    }
    DType dtype = x0.dtype();
    autograd::record("concat_channels", xs, {y}, [=](const std::vector<Tensor>& g) {
      std::vector<Tensor> dx(shapes.size());
      std::vector<void*> outs(shapes.size(), nullptr);
      for (size_t i = 0; i < shapes.size(); ++i)
        if (need[i]) {
          dx[i] = Tensor::empty(shapes[i], dtype, g[0].device());
          outs[i] = dx[i].raw();
        }
      kernels_for(g[0]).shape.split_channels(rows, count, g[0].raw(), widths.data(), elem, outs.data(), stream(g[0]));
      return dx;
    });
  }
  return y;
}

Tensor upsample_nearest(const Tensor& x, const std::vector<int>& factor) {
  check_arg(x.defined(), "upsample_nearest: undefined input");
  std::string fs = "[";
  for (size_t i = 0; i < factor.size(); ++i) fs += (i ? ", " : "") + std::to_string(factor[i]);
  fs += "]";
  const std::string args = "upsample_nearest(" + x.describe() + ", factor " + fs + "): ";
  check_arg(x.rank() >= 3 && x.rank() <= 5, args + "x must be [N, spatial..., C] with 1 to 3 spatial axes");
  const int sr = x.rank() - 2;
  check_arg(static_cast<int>(factor.size()) == sr, args + "one factor per spatial axis (" + std::to_string(sr) + ")");
  for (int f : factor) check_arg(f >= 1, args + "factors must be >= 1");

  kernels::UpsampleShape s;
  int64_t in[3] = {1, 1, 1}, f3[3] = {1, 1, 1};
  for (int i = 0; i < sr; ++i) {
    in[3 - sr + i] = x.dim(1 + i);
    f3[3 - sr + i] = factor[static_cast<size_t>(i)];
  }
  s.n = x.dim(0);
  s.d = in[0], s.h = in[1], s.w = in[2];
  s.fd = f3[0], s.fh = f3[1], s.fw = f3[2];
  s.c = x.dim(-1);
  Shape out_shape = x.shape();
  for (int i = 0; i < sr; ++i) out_shape[static_cast<size_t>(1 + i)] *= factor[static_cast<size_t>(i)];
  Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
  const auto elem = static_cast<int64_t>(dtype_size(x.dtype()));
  kernels_for(x).shape.upsample_nearest_forward(s, x.raw(), elem, y.raw(), stream(x));

  if (autograd::should_record({x})) {
    Shape x_shape = x.shape();
    const DType dt = x.dtype();
    autograd::record("upsample_nearest", {x}, {y}, [=](const std::vector<Tensor>& g) {
      Tensor dx = Tensor::empty(x_shape, dt, g[0].device());
      kernels_for(dx).shape.upsample_nearest_backward(s, dt, g[0].raw(), dx.raw(), stream(dx));
      return std::vector<Tensor>{dx};
    });
  }
  return y;
}

Tensor cast(const Tensor& x, DType dtype) {
  check_arg(x.defined(), "cast: undefined input");
  const std::string args = std::string("cast(") + x.describe() + " to " + dtype_name(dtype) + "): ";
  check_arg(backend::is_float(x.dtype()) && backend::is_float(dtype), args + "only f32, f16 and bf16 are supported");
  if (x.dtype() == dtype) return x;  // as torch.Tensor.to: the same tensor (and autograd history), no copy
  Tensor y = backend::converted(x, dtype);
  if (autograd::should_record({x})) {
    const DType src = x.dtype();
    autograd::record("cast", {x}, {y},
                     [src](const std::vector<Tensor>& g) { return std::vector<Tensor>{backend::converted(g[0], src)}; });
  }
  return y;
}

Tensor argmax_channels(const Tensor& x) {
  check_arg(x.defined(), "argmax_channels: undefined input");
  const std::string args = "argmax_channels(" + x.describe() + "): ";
  check_arg(backend::is_float(x.dtype()), args + "expected f32, f16 or bf16");
  check_arg(x.rank() >= 2, args + "expected [N, spatial..., C]");
  check_arg(x.dim(-1) >= 1, args + "no channels to choose from");
  Shape out_shape(x.shape().begin(), x.shape().end() - 1);
  Tensor y = Tensor::empty(out_shape, DType::i32, x.device());
  kernels_for(x).shape.argmax_channels(x.dtype(), x.raw(), y.numel(), x.dim(-1), y.data<int32_t>(), stream(x));
  return y;  // integer output: never recorded
}

}  // namespace unet::ops
