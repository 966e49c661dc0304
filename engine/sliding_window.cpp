// Sliding-window predictor. The padded volume and the accumulation buffers live on options.device, where the blend
// kernels run (kernels/cpu/blend.cpp on the cpu, kernels/cuda/blend.cu on cuda and cuda-emu, through the backend's
// table); windows go through `predict` in batches; the blended result is normalised and cropped on the host.
#include "engine/sliding_window.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "kernels/blend.h"

namespace unet {
namespace {

using kernels::Dims3;

// 2D sizes and offsets as 3D ones: sizes get a leading 1, offsets a leading 0.
Dims3 to3(const std::vector<int64_t>& v, int64_t fill = 1) {
  Dims3 d{fill, fill, fill};
  for (size_t i = 0; i < v.size(); ++i) d[3 - v.size() + i] = v[i];
  return d;
}

}  // namespace

std::vector<int64_t> window_starts(int64_t size, int64_t patch, double overlap) {
  check_arg(patch >= 1 && size >= patch,
            "window_starts: patch " + std::to_string(patch) + " larger than size " + std::to_string(size));
  int64_t step = std::max<int64_t>(1, static_cast<int64_t>(patch * (1.0 - overlap)));
  int64_t count = (size - patch + step - 1) / step + 1;
  std::vector<int64_t> starts;
  for (int64_t i = 0; i < count; ++i) starts.push_back(std::min(i * step, size - patch));
  return starts;
}

Tensor importance_map(const SlidingWindowOptions& o) {
  std::vector<int64_t> p(o.patch.begin(), o.patch.end());
  Tensor map = Tensor::empty(Shape(p.begin(), p.end()));
  backend::kernels_for(map).blend.importance_map(to3(p), o.blend == Blend::gaussian, o.sigma_scale, o.min_weight,
                                                 map.data<float>(), backend::stream(map));
  return map;
}

Tensor softmax_channels(const Tensor& logits) {
  check_arg(logits.dtype() == DType::f32, "softmax_channels: expected f32, got " + logits.describe());
  Tensor p = Tensor::empty(logits.shape());
  int64_t c = logits.dim(-1), n = logits.numel() / c;
  const float* in = logits.data<float>();
  float* out = p.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float* l = in + i * c;
    float m = l[0];
    for (int64_t k = 1; k < c; ++k) m = std::max(m, l[k]);
    double s = 0;
    for (int64_t k = 0; k < c; ++k) s += std::exp(static_cast<double>(l[k] - m));
    for (int64_t k = 0; k < c; ++k) out[i * c + k] = static_cast<float>(std::exp(static_cast<double>(l[k] - m)) / s);
  }
  return p;
}

Tensor sliding_window_predict(const Tensor& image, const PredictFn& predict, const SlidingWindowOptions& o) {
  int dims = image.rank() - 1;
  check_arg(dims == 2 || dims == 3,
            "sliding window: expected an image [spatial..., C] with 2 or 3 spatial axes, got " + image.describe());
  check_arg(static_cast<int>(o.patch.size()) == dims, "sliding window: patch has " + std::to_string(o.patch.size()) +
                                                          " axes for an image with " + std::to_string(dims));
  check_arg(o.overlap >= 0 && o.overlap < 1, "sliding window: overlap must be in [0, 1)");
  check_arg(image.dtype() == DType::f32, "sliding window: expected an f32 image, got " + image.describe());
  check_arg(image.device() == Device::cpu, "sliding window: expected an image on the cpu, got " + image.describe());
  check_arg(o.context.empty() || static_cast<int>(o.context.size()) == dims,
            "sliding window: context has " + std::to_string(o.context.size()) + " axes for an image with " +
                std::to_string(dims));
  for (int c : o.context) check_arg(c >= 0, "sliding window: context must be >= 0");
  const Device dev = o.device;
  const kernels::BlendKernels& k = backend::kernels_for(dev).blend;
  const cudaStream_t stream = device::default_stream(dev);
  autograd::NoGradGuard no_grad;
  int64_t cin = image.dim(-1);

  // Zero-pad axes smaller than the patch: half before, the rest after. The windows are placed on this grid (`padded`);
  // their inputs come from it zero-padded by the context on each side (`input`).
  std::vector<int64_t> orig(image.shape().begin(), image.shape().end() - 1), padded = orig, before(dims, 0);
  for (int a = 0; a < dims; ++a)
    if (orig[a] < o.patch[a]) padded[a] = o.patch[a], before[a] = (o.patch[a] - orig[a]) / 2;
  std::vector<int64_t> input = padded, input_before = before, context(dims, 0);
  for (int a = 0; a < dims && !o.context.empty(); ++a) {
    context[a] = o.context[a];
    input[a] += 2 * context[a];
    input_before[a] += context[a];
  }
  Tensor vol = image;
  if (input != orig) {
    Shape ps(input.begin(), input.end());
    ps.push_back(cin);
    vol = Tensor::zeros(ps);
    Dims3 o3 = to3(orig), p3 = to3(input), b3 = to3(input_before, 0);
    const float* src = image.data<float>();
    float* dst = vol.data<float>();
    for (int64_t z = 0; z < o3[0]; ++z)
      for (int64_t y = 0; y < o3[1]; ++y)
        std::memcpy(dst + (((z + b3[0]) * p3[1] + y + b3[1]) * p3[2] + b3[2]) * cin,
                    src + ((z * o3[1] + y) * o3[2]) * cin, static_cast<size_t>(o3[2] * cin) * sizeof(float));
  }

  Dims3 size = to3(padded), patch = to3(std::vector<int64_t>(o.patch.begin(), o.patch.end()));
  Dims3 input_size = to3(input), window_in = patch;  // a window's input: patch + 2 context
  for (int a = 0; a < dims; ++a) window_in[3 - dims + a] += 2 * context[a];
  std::array<std::vector<int64_t>, 3> starts;
  for (int a = 0; a < 3; ++a)
    starts[a] = (3 - a > dims) ? std::vector<int64_t>{0} : window_starts(size[a], patch[a], o.overlap);
  std::vector<Dims3> windows;
  for (int64_t z : starts[0])
    for (int64_t y : starts[1])
      for (int64_t x : starts[2]) windows.push_back({z, y, x});

  std::vector<std::array<bool, 3>> flips{{false, false, false}};
  if (o.tta)
    for (int mask = 1, axes = o.tta_axes > 0 ? std::min(o.tta_axes, dims) : dims; mask < (1 << axes); ++mask) {
      std::array<bool, 3> f{false, false, false};
      for (int a = 0; a < axes; ++a) f[3 - axes + a] = (mask >> a) & 1;
      flips.push_back(f);
    }

  vol = vol.to(dev);
  Tensor weight = Tensor::empty(Shape(patch.end() - dims, patch.end()), DType::f32, dev);
  k.importance_map(patch, o.blend == Blend::gaussian, o.sigma_scale, o.min_weight, weight.data<float>(), stream);
  Shape window_shape{0};
  for (int a = 0; a < dims; ++a) window_shape.push_back(window_in[3 - dims + a]);
  window_shape.push_back(cin);
  const int64_t window_voxels = patch[0] * patch[1] * patch[2],
                window_in_voxels = window_in[0] * window_in[1] * window_in[2];

  Tensor out, norm = Tensor::zeros(Shape(padded.begin(), padded.end()), DType::f32, dev);
  int64_t cout = 0;
  float flip_scale = 1.0f / static_cast<float>(flips.size());
  // Work items: (window, flip); batches of them go through predict together.
  int64_t items = static_cast<int64_t>(windows.size() * flips.size());
  int64_t bs = std::max(1, o.batch_size);
  for (int64_t first = 0; first < items; first += bs) {
    int64_t count = std::min(bs, items - first);
    window_shape[0] = count;
    Tensor batch = Tensor::empty(window_shape, DType::f32, dev);
    for (int64_t b = 0; b < count; ++b) {
      int64_t item = first + b;
      const Dims3& w = windows[item / flips.size()];
      // The window at w on the padded grid has its input at w on the input grid (shifted by the context).
      k.extract_window(vol.data<float>(), input_size, cin, w, window_in, flips[item % flips.size()],
                       batch.data<float>() + b * window_in_voxels * cin, stream);
    }
    Tensor pred = predict(batch);
    check_arg(pred.rank() == batch.rank() && pred.dim(0) == count && pred.dtype() == DType::f32 && pred.device() == dev,
              "sliding window: the model returned " + pred.describe() + " for windows " + batch.describe());
    for (int a = 1; a <= dims; ++a)
      check_arg(pred.dim(a) == o.patch[size_t(a - 1)],
                "sliding window: the model returned " + pred.describe() + " for windows " + batch.describe() +
                    (o.context.empty() ? "" : " with context") + "; expected the patch size");
    if (!out.defined()) {
      cout = pred.dim(-1);
      Shape os(padded.begin(), padded.end());
      os.push_back(cout);
      out = Tensor::zeros(os, DType::f32, dev);
    }
    for (int64_t b = 0; b < count; ++b) {
      int64_t item = first + b;
      const auto& flip = flips[item % flips.size()];
      bool first_flip = item % flips.size() == 0;  // each window's weight enters norm once
      k.accumulate_window(pred.data<float>() + b * window_voxels * cout, weight.data<float>(), patch, cout,
                          windows[item / flips.size()], size, flip, flip_scale, out.data<float>(),
                          first_flip ? norm.data<float>() : nullptr, stream);
    }
  }
  out = out.to(Device::cpu);
  norm = norm.to(Device::cpu);

  // Normalise, and crop the padding away.
  Dims3 o3 = to3(orig), b3 = to3(before, 0);
  Shape result_shape(orig.begin(), orig.end());
  result_shape.push_back(cout);
  Tensor result = Tensor::empty(result_shape);
  const float* acc = out.data<float>();
  const float* nrm = norm.data<float>();
  float* r = result.data<float>();
  for (int64_t z = 0; z < o3[0]; ++z)
    for (int64_t y = 0; y < o3[1]; ++y)
      for (int64_t x = 0; x < o3[2]; ++x) {
        int64_t src = ((z + b3[0]) * size[1] + y + b3[1]) * size[2] + x + b3[2];
        int64_t dst = (z * o3[1] + y) * o3[2] + x;
        float inv = 1.0f / nrm[src];
        for (int64_t k = 0; k < cout; ++k) r[dst * cout + k] = acc[src * cout + k] * inv;
      }
  return result;
}

}  // namespace unet
