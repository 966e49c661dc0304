// DLE UNet_Medical's ISBI 2012 pipeline (io/dle.h).
#include "io/dle.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace unet::io {

std::vector<double> half_pixel_coordinates(int64_t n_in, int64_t n_out) {
  std::vector<double> c(static_cast<size_t>(n_out));
  for (int64_t i = 0; i < n_out; ++i)
    c[static_cast<size_t>(i)] =
        (static_cast<double>(i) + 0.5) * static_cast<double>(n_in) / static_cast<double>(n_out) - 0.5;
  return c;
}

std::vector<float> sample_bilinear(const std::vector<float>& in, const std::array<int64_t, 4>& shape,
                                   const std::vector<double>& src_y, const std::vector<double>& src_x) {
  const int64_t Z = shape[0], Y = shape[1], X = shape[2], C = shape[3];
  const int64_t h = static_cast<int64_t>(src_y.size()), w = static_cast<int64_t>(src_x.size());
  struct Tap {
    int64_t lo, hi;
    double f;
  };
  auto taps = [](const std::vector<double>& src, int64_t n) {
    std::vector<Tap> t;
    for (double s : src) {
      const double c = std::clamp(s, 0.0, static_cast<double>(n - 1));
      const int64_t lo = static_cast<int64_t>(std::floor(c));
      t.push_back({lo, std::min(lo + 1, n - 1), c - static_cast<double>(lo)});
    }
    return t;
  };
  const std::vector<Tap> ty = taps(src_y, Y), tx = taps(src_x, X);
  std::vector<float> out(static_cast<size_t>(Z * h * w * C));
  for (int64_t z = 0; z < Z; ++z)
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j)
        for (int64_t c = 0; c < C; ++c) {
          const Tap& a = ty[static_cast<size_t>(i)];
          const Tap& b = tx[static_cast<size_t>(j)];
          auto at = [&](int64_t y, int64_t x) {
            return static_cast<double>(in[static_cast<size_t>(((z * Y + y) * X + x) * C + c)]);
          };
          const double top = at(a.lo, b.lo) + (at(a.lo, b.hi) - at(a.lo, b.lo)) * b.f;
          const double bottom = at(a.hi, b.lo) + (at(a.hi, b.hi) - at(a.hi, b.lo)) * b.f;
          out[static_cast<size_t>(((z * h + i) * w + j) * C + c)] = static_cast<float>(top + (bottom - top) * a.f);
        }
  return out;
}

namespace {

// Labels [Z, Y, X] sampled at the coordinates: per class the indicator, the largest wins (ties: the higher class).
std::vector<int32_t> sample_labels(const std::vector<int32_t>& labels, const std::array<int64_t, 3>& size,
                                   const std::vector<double>& src_y, const std::vector<double>& src_x, int classes) {
  const int64_t n_out = size[0] * static_cast<int64_t>(src_y.size() * src_x.size());
  std::vector<int32_t> out(static_cast<size_t>(n_out), 0);
  std::vector<float> best(static_cast<size_t>(n_out), -1.f), indicator(labels.size());
  for (int k = 0; k < classes; ++k) {
    for (size_t v = 0; v < labels.size(); ++v) indicator[v] = labels[v] == k ? 1.f : 0.f;
    const std::vector<float> r = sample_bilinear(indicator, {size[0], size[1], size[2], 1}, src_y, src_x);
    for (size_t v = 0; v < r.size(); ++v)
      if (r[v] >= best[v]) {
        best[v] = r[v];
        out[v] = k;
      }
  }
  return out;
}

}  // namespace

Tensor resize_planes(const Tensor& image, int64_t h, int64_t w) {
  const int64_t Z = image.dim(0), Y = image.dim(1), X = image.dim(2), C = image.dim(3);
  const std::vector<float> r =
      sample_bilinear(image.to_vector(), {Z, Y, X, C}, half_pixel_coordinates(Y, h), half_pixel_coordinates(X, w));
  return Tensor::from_vector({Z, h, w, C}, r);
}

Tensor resize_label_planes(const Tensor& labels, int64_t h, int64_t w, int classes) {
  const std::vector<float> v = labels.to_vector();
  const std::vector<int32_t> l(v.begin(), v.end());
  const std::vector<int32_t> r =
      sample_labels(l, {labels.dim(0), labels.dim(1), labels.dim(2)}, half_pixel_coordinates(labels.dim(1), h),
                    half_pixel_coordinates(labels.dim(2), w), classes);
  return Tensor::from_vector({labels.dim(0), h, w}, std::vector<float>(r.begin(), r.end()), labels.dtype());
}

void dle_normalize(Tensor& image, const std::string& source) {
  float* x = image.data<float>();
  const Shape& s = image.shape();  // [Z, Y, X, C]
  for (int64_t i = 0; i < image.numel(); ++i)
    if (!(x[i] >= 0.f && x[i] <= 255.f)) {
      const int64_t v = i / s[3];
      char value[32];
      std::snprintf(value, sizeof value, "%.9g", static_cast<double>(x[i]));
      throw std::runtime_error(source + ": value " + value + " at page " + std::to_string(v / (s[1] * s[2]) + 1) +
                               ", row " + std::to_string(v / s[2] % s[1]) + ", column " + std::to_string(v % s[2]) +
                               "; DLE's ISBI pipeline (data.pipeline = dle_isbi) scales 8-bit images as x / 127.5 - "
                               "1: expected values 0 to 255 (convert the stack to 8 bits, or use the nnU-Net "
                               "pipeline)");
    }
  for (int64_t i = 0; i < image.numel(); ++i) x[i] = x[i] / 127.5f - 1.f;
}

void dle_isbi_case(Case& c, int64_t out, int classes, const std::string& source) {
  dle_normalize(c.image, source);
  c.image = resize_planes(c.image, out, out);
  c.label = resize_label_planes(c.label, out, out, classes);
}

AugmentRecord dle_isbi_augment(Sample& s, double flip_prob, double crop_prob, double brightness_prob, int classes,
                               Rng& rng) {
  AugmentRecord r;
  r.flip = {false, rng.uniform() < flip_prob, rng.uniform() < flip_prob};  // y (up-down), x (left-right)
  const bool crop = rng.uniform() < crop_prob;
  // tf.image.crop_and_resize's box: top, left in [0, 0.3), bottom, right in (0.7, 1] of the size.
  const double left = rng.uniform() * 0.3, right = 1 - rng.uniform() * 0.3;
  const double top = rng.uniform() * 0.3, bottom = 1 - rng.uniform() * 0.3;
  const bool bright = rng.uniform() < brightness_prob;
  const double delta = rng.uniform(-0.2, 0.2);
  flip(s, r.flip);
  if (crop) {
    // TF samples output i of a crop of c rows at start (n - 1) + i (end - start)(n - 1) / (c - 1); here c = n.
    auto coordinates = [](double start, double end, int64_t n) {
      std::vector<double> c(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) c[static_cast<size_t>(i)] = start * double(n - 1) + double(i) * (end - start);
      return c;
    };
    const std::vector<double> ys = coordinates(top, bottom, s.size[1]), xs = coordinates(left, right, s.size[2]);
    s.image = sample_bilinear(s.image, {s.size[0], s.size[1], s.size[2], s.channels}, ys, xs);
    s.label = sample_labels(s.label, s.size, ys, xs, classes);
    r.zoom = (bottom - top) * (right - left);  // the area kept
  }
  if (bright) {
    r.brightness = 1 + delta;  // recorded as a factor-like value for the logs: 1 + the delta added
    for (float& v : s.image) v = static_cast<float>(v + delta);
  }
  for (float& v : s.image) v = std::clamp(v, -1.f, 1.f);
  return r;
}

}  // namespace unet::io
