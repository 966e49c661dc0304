// io::augment_batch (io/augment.h): augment()'s transforms for a batch on its own device. The parameters were drawn on
// the host (draw_augment, per sample); here they become per-sample tables (the spatial maps of kernels/augment.h,
// built from io/augment.cpp's formulas) and point-wise parameters, copied to the device, and the backend's kernels
// run: a pass per axis for zoom and flips together, the noise, a pass per axis for the blur, brightness, contrast,
// gamma, a pass per axis for the low resolution. Each transform is skipped when no sample of the batch draws it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "engine/backend.h"
#include "io/augment.h"
#include "kernels/augment.h"

namespace unet::io {

namespace {

// v's bytes in a tensor on d (u8 [bytes]; the device allocation's alignment serves every element type).
template <class T>
Tensor upload(const std::vector<T>& v, Device d) {
  Tensor t = Tensor::empty({static_cast<int64_t>(std::max<size_t>(1, v.size() * sizeof(T)))}, DType::u8);
  if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * sizeof(T));
  return t.to(d);
}

// The crop (or low-resolution size) of n voxels at `scale`: round(scale n), between 1 and n (io/augment.cpp's rule).
int64_t scaled(double scale, int64_t n) {
  return std::clamp<int64_t>(std::lround(scale * static_cast<double>(n)), 1, n);
}

struct Batch {
  kernels::AugmentShape s;
  Device device;
  cudaStream_t stream;
  const kernels::AugmentKernels* k;
  Tensor image, spare;  // spare: the resampling passes' output, swapped with image after each

  // One pass along `axis` with the samples' maps (inactive samples copied).
  void resample(int axis, const std::vector<kernels::AxisMap>& maps, const std::vector<uint8_t>& active) {
    std::vector<int32_t> index;
    std::vector<double> weight;
    for (const kernels::AxisMap& m : maps) {
      index.insert(index.end(), m.index.begin(), m.index.end());
      weight.insert(weight.end(), m.weight.begin(), m.weight.end());
    }
    const Tensor ti = upload(index, device), tw = upload(weight, device), ta = upload(active, device);
    if (!spare.defined()) spare = Tensor::empty(image.shape(), DType::f32, device);
    k->resample_axis(s, axis, maps.front().taps, static_cast<const int32_t*>(ti.raw()),
                     static_cast<const double*>(tw.raw()), static_cast<const uint8_t*>(ta.raw()),
                     static_cast<const float*>(image.raw()), static_cast<float*>(spare.raw()), stream);
    std::swap(image, spare);
  }
};

bool any(const std::vector<uint8_t>& v) {
  return std::any_of(v.begin(), v.end(), [](uint8_t x) { return x != 0; });
}

}  // namespace

void augment_batch(Tensor& image, Tensor& label, const std::vector<AugmentRecord>& records, bool in_plane) {
  if (!(image.defined() && image.rank() == 5 && image.dtype() == DType::f32))
    throw std::invalid_argument("augment_batch: expected an f32 [B, Z, Y, X, C] image, got " +
                                (image.defined() ? image.describe() : std::string("none")));
  if (!(label.defined() && label.rank() == 4 && label.dtype() == DType::i32 && label.device() == image.device()))
    throw std::invalid_argument("augment_batch: expected an i32 [B, Z, Y, X] label beside " + image.describe());
  for (int a = 0; a < 4; ++a)
    if (label.dim(a) != image.dim(a))
      throw std::invalid_argument("augment_batch: label " + label.describe() + " and image " + image.describe() +
                                  " differ");
  if (static_cast<int64_t>(records.size()) != image.dim(0))
    throw std::invalid_argument("augment_batch: " + std::to_string(records.size()) + " records for " +
                                image.describe());
  Batch bt;
  bt.s = {image.dim(0), image.dim(1), image.dim(2), image.dim(3), image.dim(4)};
  if (bt.s.n * bt.s.values() == 0) return;
  bt.device = image.device();
  bt.stream = backend::stream(image);
  bt.k = &backend::kernels_for(bt.device).augment;
  bt.image = image;
  const kernels::AugmentShape& s = bt.s;
  const size_t B = records.size();
  const int first_axis = in_plane ? 1 : 0;  // 2D networks: nothing moves across z

  // Zoom and flips: per axis, the crop resized back (or the identity) with its rows reversed when flipped; the labels
  // by nearest neighbour through the same crop and flip.
  for (int a = 0; a < 3; ++a) {
    const int64_t n = s.dim(a);
    std::vector<kernels::AxisMap> maps;
    std::vector<int32_t> from;
    std::vector<uint8_t> active(B, 0);
    for (size_t b = 0; b < B; ++b) {
      const AugmentRecord& r = records[b];
      const int64_t len = r.zoom != 1 && a >= first_axis ? scaled(r.zoom, n) : n, start = (n - len) / 2;
      const bool flip = r.flip[static_cast<size_t>(a)] && a >= first_axis;
      kernels::AxisMap m = len != n ? kernels::cubic_axis_map(n, start, len) : kernels::identity_axis_map(n, 4);
      maps.push_back(flip ? kernels::flipped(std::move(m)) : std::move(m));
      const std::vector<int32_t> f = kernels::nearest_axis_index(n, start, len, flip);
      from.insert(from.end(), f.begin(), f.end());
      active[b] = len != n || flip;
    }
    if (!any(active)) continue;
    bt.resample(a, maps, active);
    const Tensor tf = upload(from, bt.device), ta = upload(active, bt.device);
    Tensor out = Tensor::empty(label.shape(), DType::i32, bt.device);
    bt.k->gather_label_axis(s, a, static_cast<const int32_t*>(tf.raw()), static_cast<const uint8_t*>(ta.raw()),
                            label.data<int32_t>(), out.data<int32_t>(), bt.stream);
    label = out;
  }

  std::vector<kernels::AugmentSampleParams> params(B);
  std::vector<uint8_t> contrast(B), gamma(B);
  for (size_t b = 0; b < B; ++b) {
    const AugmentRecord& r = records[b];
    params[b].noise_seed = r.noise_seed;
    params[b].noise_std = r.noise_std;
    params[b].brightness = r.brightness;
    params[b].contrast = r.contrast;
    params[b].gamma = r.gamma;
    contrast[b] = r.contrast != 1;
    gamma[b] = r.gamma != 1;
  }
  const Tensor tp = upload(params, bt.device);
  const auto* p = static_cast<const kernels::AugmentSampleParams*>(tp.raw());
  if (std::any_of(records.begin(), records.end(), [](const AugmentRecord& r) { return r.noise_std > 0; }))
    bt.k->add_noise(s, p, bt.image.data<float>(), bt.stream);

  double sigma_max = 0;
  for (const AugmentRecord& r : records) sigma_max = std::max(sigma_max, r.blur_sigma);
  if (sigma_max > 0) {
    const int taps = kernels::gaussian_taps(sigma_max);
    for (int a = first_axis; a < 3; ++a) {
      std::vector<kernels::AxisMap> maps;
      std::vector<uint8_t> active(B, 0);
      for (size_t b = 0; b < B; ++b) {
        const double sigma = records[b].blur_sigma;
        active[b] = sigma > 0;
        maps.push_back(sigma > 0 ? kernels::gaussian_axis_map(s.dim(a), sigma, taps)
                                 : kernels::identity_axis_map(s.dim(a), taps));
      }
      bt.resample(a, maps, active);
    }
  }

  if (std::any_of(records.begin(), records.end(), [](const AugmentRecord& r) { return r.brightness != 1; }))
    bt.k->brightness(s, p, bt.image.data<float>(), bt.stream);

  const int64_t stats_bytes = s.n * s.c * 4 * static_cast<int64_t>(sizeof(double));
  if (any(contrast)) {
    const Tensor ta = upload(contrast, bt.device), st = Tensor::empty({stats_bytes}, DType::u8, bt.device);
    bt.k->channel_stats(s, static_cast<const uint8_t*>(ta.raw()), bt.image.data<float>(),
                        static_cast<double*>(st.raw()), bt.stream);
    bt.k->contrast(s, p, static_cast<const double*>(st.raw()), bt.image.data<float>(), bt.stream);
  }
  if (any(gamma)) {
    const Tensor ta = upload(gamma, bt.device), before = Tensor::empty({stats_bytes}, DType::u8, bt.device),
                 after = Tensor::empty({stats_bytes}, DType::u8, bt.device);
    const auto* on = static_cast<const uint8_t*>(ta.raw());
    bt.k->channel_stats(s, on, bt.image.data<float>(), static_cast<double*>(before.raw()), bt.stream);
    bt.k->gamma(s, p, static_cast<const double*>(before.raw()), bt.image.data<float>(), bt.stream);
    bt.k->channel_stats(s, on, bt.image.data<float>(), static_cast<double*>(after.raw()), bt.stream);
    bt.k->restore_stats(s, p, static_cast<const double*>(before.raw()), static_cast<const double*>(after.raw()),
                        bt.image.data<float>(), bt.stream);
  }

  // Low resolution: per axis, nearest-neighbour downsampling and the cubic resize back in one map.
  for (int a = first_axis; a < 3; ++a) {
    const int64_t n = s.dim(a);
    std::vector<kernels::AxisMap> maps;
    std::vector<uint8_t> active(B, 0);
    for (size_t b = 0; b < B; ++b) {
      const int64_t low = records[b].low_resolution != 1 ? scaled(records[b].low_resolution, n) : n;
      active[b] = low != n;
      maps.push_back(low != n ? kernels::low_resolution_axis_map(n, low) : kernels::identity_axis_map(n, 4));
    }
    if (any(active)) bt.resample(a, maps, active);
  }
  image = bt.image;
}

}  // namespace unet::io
