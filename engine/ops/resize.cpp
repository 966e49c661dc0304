// ops::upsample_bilinear: PyTorch's F.interpolate(x, size, mode="bilinear", align_corners) on channels-last 2D maps
// (kernels/resize.h), f32, f16 or bf16. Each axis' source positions are worked out once on the host and copied to the
// tensor's device beside the data; backward gathers through the same maps.
#include <cstring>
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "kernels/resize.h"

namespace unet::ops {

namespace {
// The axis maps on the device: i32 [i0 | i1 | start | tap_out] and f32 [lambda | tap_weight].
struct AxisOnDevice {
  Tensor index, weight;
};
AxisOnDevice to_device(const kernels::ResizeAxis& a, Device d) {
  const std::vector<int32_t> i = a.packed_index();
  const std::vector<float> w = a.packed_weight();
  Tensor ti = Tensor::empty({static_cast<int64_t>(i.size())}, DType::i32);
  Tensor tw = Tensor::empty({static_cast<int64_t>(w.size())}, DType::f32);
  std::memcpy(ti.raw(), i.data(), i.size() * sizeof(int32_t));
  std::memcpy(tw.raw(), w.data(), w.size() * sizeof(float));
  return {ti.to(d), tw.to(d)};
}
}  // namespace

Tensor upsample_bilinear(const Tensor& x, const std::vector<int64_t>& size, bool align_corners) {
  check_arg(x.defined(), "upsample_bilinear: undefined input");
  check_arg(backend::is_float(x.dtype()), "upsample_bilinear: expected f32, f16 or bf16, got " + x.describe());
  check_arg(x.rank() == 4, "upsample_bilinear: expected [N, H, W, C], got " + x.describe());
  check_arg(size.size() == 2 && size[0] >= 1 && size[1] >= 1 && size[0] <= (1 << 20) && size[1] <= (1 << 20),
            "upsample_bilinear: expected an output size H, W of 1 to 2^20 each for " + x.describe());
  kernels::ResizeShape s;
  s.n = x.dim(0);
  s.h = x.dim(1);
  s.w = x.dim(2);
  s.c = x.dim(3);
  s.oh = size[0];
  s.ow = size[1];
  check_arg(s.h >= 1 && s.w >= 1, "upsample_bilinear: empty spatial axes in " + x.describe());
  const Device dev = x.device();
  const AxisOnDevice ah = to_device(kernels::bilinear_axis(s.h, s.oh, align_corners), dev);
  const AxisOnDevice aw = to_device(kernels::bilinear_axis(s.w, s.ow, align_corners), dev);
  const DType dt = x.dtype();
  Tensor y = Tensor::empty({s.n, s.oh, s.ow, s.c}, dt, dev);
  backend::kernels_for(x).resize.bilinear_forward(s, dt, ah.index.data<int32_t>(), ah.weight.data<float>(),
                                                  aw.index.data<int32_t>(), aw.weight.data<float>(), x.raw(), y.raw(),
                                                  backend::stream(x));
  if (autograd::should_record({x})) {
    autograd::record("upsample_bilinear", {x}, {y}, [s, dt, ah, aw, x_shape = x.shape()](const std::vector<Tensor>& g) {
      Tensor dx = Tensor::empty(x_shape, dt, g[0].device());
      backend::kernels_for(dx).resize.bilinear_backward(s, dt, ah.index.data<int32_t>(), ah.weight.data<float>(),
                                                        aw.index.data<int32_t>(), aw.weight.data<float>(), g[0].raw(),
                                                        dx.raw(), backend::stream(dx));
      return std::vector<Tensor>{dx};
    });
  }
  return y;
}

}  // namespace unet::ops
