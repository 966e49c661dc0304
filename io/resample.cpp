// Resampling and cropping (io/resample.h).
#include "io/resample.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "kernels/common/parallel.h"

namespace unet::io {

namespace {

// Cubic B-spline coefficients of a line, as scipy.ndimage computes them for mode "nearest": the line extended by
// kPad edge values on each side, then filtered with mirror boundaries (pole sqrt(3) - 2, gain 6).
constexpr int64_t kPad = 12;

void spline_coefficients(const double* s, int64_t n, std::vector<double>& c) {
  const int64_t m = n + 2 * kPad;
  c.resize(static_cast<size_t>(m));
  for (int64_t k = 0; k < m; ++k) c[static_cast<size_t>(k)] = 6 * s[std::clamp<int64_t>(k - kPad, 0, n - 1)];
  if (m == 1) return;
  const double z = std::sqrt(3.0) - 2;
  // Causal initialisation for mirror boundaries (exact sum over the mirrored signal).
  double zn = z, z2n = std::pow(z, static_cast<double>(m - 1)), sum = c[0] + z2n * c[static_cast<size_t>(m - 1)];
  z2n *= z2n / z;
  for (int64_t k = 1; k <= m - 2; ++k) {
    sum += (zn + z2n) * c[static_cast<size_t>(k)];
    zn *= z;
    z2n /= z;
  }
  c[0] = sum / (1 - zn * zn);
  for (int64_t k = 1; k < m; ++k) c[static_cast<size_t>(k)] += z * c[static_cast<size_t>(k - 1)];
  c[static_cast<size_t>(m - 1)] =
      (z / (z * z - 1)) * (c[static_cast<size_t>(m - 1)] + z * c[static_cast<size_t>(m - 2)]);
  for (int64_t k = m - 2; k >= 0; --k)
    c[static_cast<size_t>(k)] = z * (c[static_cast<size_t>(k + 1)] - c[static_cast<size_t>(k)]);
}

// Resizes axis `axis` of a [Z, Y, X, C] array of `dims` to n_out values with interpolation `order`.
std::vector<double> resize_axis(const std::vector<double>& in, const std::array<int64_t, 4>& dims, int axis,
                                int64_t n_out, int order) {
  const int64_t n_in = dims[static_cast<size_t>(axis)];
  int64_t outer = 1, inner = 1;
  for (int a = 0; a < axis; ++a) outer *= dims[static_cast<size_t>(a)];
  for (int a = axis + 1; a < 4; ++a) inner *= dims[static_cast<size_t>(a)];
  std::vector<double> out(static_cast<size_t>(outer * n_out * inner));
  std::vector<double> src(static_cast<size_t>(n_out));
  for (int64_t i = 0; i < n_out; ++i)
    src[static_cast<size_t>(i)] =
        (static_cast<double>(i) + 0.5) * static_cast<double>(n_in) / static_cast<double>(n_out) - 0.5;
  parallel_for(outer * inner, 64, [&](int64_t l0, int64_t l1) {
    std::vector<double> line(static_cast<size_t>(n_in)), coef;
    for (int64_t l = l0; l < l1; ++l) {
      const int64_t o = l / inner, j = l % inner;
      for (int64_t k = 0; k < n_in; ++k)
        line[static_cast<size_t>(k)] = in[static_cast<size_t>((o * n_in + k) * inner + j)];
      if (order == 3) spline_coefficients(line.data(), n_in, coef);
      for (int64_t i = 0; i < n_out; ++i) {
        const double x = src[static_cast<size_t>(i)];
        double v;
        if (order == 0) {
          v = line[static_cast<size_t>(std::clamp<int64_t>(static_cast<int64_t>(std::floor(x + 0.5)), 0, n_in - 1))];
        } else if (order == 1) {
          const double xc = std::clamp(x, 0.0, static_cast<double>(n_in - 1));
          const int64_t f = std::min<int64_t>(static_cast<int64_t>(std::floor(xc)), n_in - 1);
          const double t = xc - static_cast<double>(f);
          v = line[static_cast<size_t>(f)] * (1 - t) + (t > 0 ? line[static_cast<size_t>(f + 1)] * t : 0);
        } else {
          const double xp = x + kPad;
          const int64_t f = static_cast<int64_t>(std::floor(xp));
          const double t = xp - static_cast<double>(f), u = 1 - t;
          const double w[4] = {u * u * u / 6, (4 - 6 * t * t + 3 * t * t * t) / 6,
                               (1 + 3 * t + 3 * t * t - 3 * t * t * t) / 6, t * t * t / 6};
          const int64_t m = static_cast<int64_t>(coef.size());
          v = 0;
          for (int k = 0; k < 4; ++k) v += w[k] * coef[static_cast<size_t>(std::clamp<int64_t>(f - 1 + k, 0, m - 1))];
        }
        out[static_cast<size_t>((o * n_out + i) * inner + j)] = v;
      }
    }
  });
  return out;
}

std::vector<double> resize_all(std::vector<double> v, std::array<int64_t, 4> dims, const std::array<int64_t, 3>& size,
                               const Orders& orders) {
  for (int a = 0; a < 3; ++a) {
    if (dims[static_cast<size_t>(a)] == size[static_cast<size_t>(a)]) continue;
    v = resize_axis(v, dims, a, size[static_cast<size_t>(a)], orders[static_cast<size_t>(a)]);
    dims[static_cast<size_t>(a)] = size[static_cast<size_t>(a)];
  }
  return v;
}

void check_orders(const Orders& orders) {
  for (int o : orders)
    check_arg(o == 0 || o == 1 || o == 3, "resize: interpolation order " + std::to_string(o) + " (expected 0, 1 or 3)");
}

}  // namespace

Tensor resize_image(const Tensor& image, const std::array<int64_t, 3>& size, const Orders& orders) {
  check_arg(image.rank() == 4 && image.dtype() == DType::f32,
            "resize_image: expected f32 [Z, Y, X, C], got " + image.describe());
  check_orders(orders);
  for (int64_t s : size) check_arg(s >= 1, "resize_image: sizes must be >= 1");
  const Tensor& in = image;
  const float* p = in.data<float>();
  std::vector<double> v(p, p + in.numel());
  v = resize_all(std::move(v), {in.dim(0), in.dim(1), in.dim(2), in.dim(3)}, size, orders);
  Tensor out = Tensor::empty({size[0], size[1], size[2], in.dim(3)});
  float* q = out.data<float>();
  for (size_t k = 0; k < v.size(); ++k) q[k] = static_cast<float>(v[k]);
  return out;
}

Tensor resize_label(const Tensor& label, const std::array<int64_t, 3>& size, const Orders& orders) {
  check_arg(label.rank() == 3 && label.dtype() == DType::u8,
            "resize_label: expected u8 [Z, Y, X], got " + label.describe());
  check_orders(orders);
  Orders o = orders;
  for (int& x : o) x = std::min(x, 1);
  const Tensor& in = label;
  const uint8_t* l = in.data<uint8_t>();
  const int64_t n = in.numel();
  std::array<bool, 256> present{};
  for (int64_t k = 0; k < n; ++k) present[l[k]] = true;
  Tensor out = Tensor::zeros({size[0], size[1], size[2]}, DType::u8);
  uint8_t* q = out.data<uint8_t>();
  if (size == std::array<int64_t, 3>{in.dim(0), in.dim(1), in.dim(2)}) {
    std::memcpy(q, l, static_cast<size_t>(n));
    return out;
  }
  for (int c = 1; c < 256; ++c) {  // class 0's mask would only set 0 over 0
    if (!present[static_cast<size_t>(c)]) continue;
    std::vector<double> mask(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) mask[static_cast<size_t>(k)] = l[k] == c ? 1.0 : 0.0;
    mask = resize_all(std::move(mask), {in.dim(0), in.dim(1), in.dim(2), 1}, size, o);
    for (size_t k = 0; k < mask.size(); ++k)
      if (mask[k] >= 0.5) q[k] = static_cast<uint8_t>(c);
  }
  return out;
}

std::array<int64_t, 3> resampled_size(const std::array<int64_t, 3>& size, const std::array<double, 3>& from,
                                      const std::array<double, 3>& to) {
  std::array<int64_t, 3> out{};
  std::array<double, 3> exact{};
  double total = 1;
  bool collapses = false;
  for (size_t a = 0; a < 3; ++a) {
    exact[a] = static_cast<double>(size[a]) * from[a] / to[a];
    collapses = collapses || !(exact[a] >= kMinResampledExtent);
    total *= std::max(1.0, exact[a]);
  }
  if (collapses || !(total <= kMaxResampledVoxels)) {
    char b[400];
    std::snprintf(b, sizeof b,
                  "resampling %lld x %lld x %lld voxels from spacing %g, %g, %g to %g, %g, %g mm (z, y, x) gives "
                  "%.4g x %.4g x %.4g voxels; expected at most 2^31 voxels and no axis under 1%% of a voxel "
                  "(wrong voxel spacing?)",
                  static_cast<long long>(size[0]), static_cast<long long>(size[1]), static_cast<long long>(size[2]),
                  from[0], from[1], from[2], to[0], to[1], to[2], exact[0], exact[1], exact[2]);
    throw std::runtime_error(b);
  }
  for (size_t a = 0; a < 3; ++a) out[a] = std::max<int64_t>(1, std::llround(exact[a]));
  return out;
}

int separate_axis(const std::array<double, 3>& from, const std::array<double, 3>& to) {
  for (const auto* s : {&from, &to}) {
    const auto [lo, hi] = std::minmax_element(s->begin(), s->end());
    if (*hi / *lo >= 3) return static_cast<int>(hi - s->begin());
  }
  return -1;
}

Orders image_orders(int separate) {
  Orders o{3, 3, 3};
  if (separate >= 0) o[static_cast<size_t>(separate)] = 0;
  return o;
}

Orders label_orders(int separate) {
  Orders o{1, 1, 1};
  if (separate >= 0) o[static_cast<size_t>(separate)] = 0;
  return o;
}

std::array<double, 3> target_spacing(const std::vector<std::array<double, 3>>& spacings,
                                     const std::vector<std::array<int64_t, 3>>& sizes) {
  check_arg(!spacings.empty() && spacings.size() == sizes.size(), "target_spacing: one spacing and size per case");
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;  // numpy's median
  };
  std::array<double, 3> target{}, size{};
  for (size_t a = 0; a < 3; ++a) {
    std::vector<double> s, n;
    for (size_t i = 0; i < spacings.size(); ++i) {
      s.push_back(spacings[i][a]);
      n.push_back(static_cast<double>(sizes[i][a]));
    }
    target[a] = median(s);
    size[a] = median(n);
  }
  const size_t worst = static_cast<size_t>(std::max_element(target.begin(), target.end()) - target.begin());
  double other_spacing = 0, other_size = INFINITY;
  for (size_t a = 0; a < 3; ++a)
    if (a != worst) {
      other_spacing = std::max(other_spacing, target[a]);
      // The median size once resampled to the target (nnU-Net compares sizes at the target spacing).
      other_size = std::min(other_size, size[a]);
    }
  if (target[worst] > 3 * other_spacing && size[worst] * 3 < other_size) {
    std::vector<double> s;
    for (const auto& sp : spacings) s.push_back(sp[worst]);
    std::sort(s.begin(), s.end());
    // np.percentile(s, 10), linear interpolation.
    const double pos = 0.1 * static_cast<double>(s.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const double p10 = s[lo] + (s[std::min(lo + 1, s.size() - 1)] - s[lo]) * (pos - static_cast<double>(lo));
    target[worst] = p10 < other_spacing ? std::max(other_spacing, p10) + 1e-5 : p10;
  }
  return target;
}

Box nonzero_box(const Tensor& image) {
  check_arg(image.rank() == 4 && image.dtype() == DType::f32,
            "nonzero_box: expected f32 [Z, Y, X, C], got " + image.describe());
  const Tensor& in = image;
  const int64_t Z = in.dim(0), Y = in.dim(1), X = in.dim(2), C = in.dim(3);
  const float* p = in.data<float>();
  Box b{{Z, Y, X}, {0, 0, 0}};
  for (int64_t z = 0; z < Z; ++z)
    for (int64_t y = 0; y < Y; ++y)
      for (int64_t x = 0; x < X; ++x) {
        const float* v = p + ((z * Y + y) * X + x) * C;
        if (std::all_of(v, v + C, [](float f) { return f == 0; })) continue;
        const int64_t at[3] = {z, y, x};
        for (size_t a = 0; a < 3; ++a) {
          b.begin[a] = std::min(b.begin[a], at[a]);
          b.end[a] = std::max(b.end[a], at[a] + 1);
        }
      }
  if (b.end[0] == 0) b = Box{{0, 0, 0}, {Z, Y, X}};  // nothing non-zero: keep everything
  return b;
}

namespace {
// Copies the [Z, Y, X] grid region `box` of `src` (full size `src_size`) into `dst` (full size `dst_size`) at `at`:
// rows of X values of `inner` bytes each.
void copy_box(const uint8_t* src, const std::array<int64_t, 3>& src_size, const std::array<int64_t, 3>& from,
              uint8_t* dst, const std::array<int64_t, 3>& dst_size, const std::array<int64_t, 3>& to,
              const std::array<int64_t, 3>& extent, int64_t inner) {
  for (int64_t z = 0; z < extent[0]; ++z)
    for (int64_t y = 0; y < extent[1]; ++y)
      std::memcpy(dst + (((to[0] + z) * dst_size[1] + to[1] + y) * dst_size[2] + to[2]) * inner,
                  src + (((from[0] + z) * src_size[1] + from[1] + y) * src_size[2] + from[2]) * inner,
                  static_cast<size_t>(extent[2] * inner));
}
}  // namespace

Tensor crop(const Tensor& t, const Box& box) {
  check_arg(t.rank() >= 3, "crop: expected [Z, Y, X, ...], got " + t.describe());
  const Tensor& in = t;
  const std::array<int64_t, 3> full{in.dim(0), in.dim(1), in.dim(2)}, size = box.size();
  for (size_t a = 0; a < 3; ++a)
    check_arg(box.begin[a] >= 0 && box.end[a] <= full[a] && size[a] >= 1, "crop: box outside " + t.describe());
  Shape shape = in.shape();
  for (size_t a = 0; a < 3; ++a) shape[a] = size[a];
  Tensor out = Tensor::empty(shape, in.dtype());
  const int64_t inner = static_cast<int64_t>(in.nbytes()) / (full[0] * full[1] * full[2]);
  copy_box(static_cast<const uint8_t*>(in.raw()), full, box.begin, static_cast<uint8_t*>(out.raw()), size, {0, 0, 0},
           size, inner);
  return out;
}

Tensor uncrop(const Tensor& t, const Box& box, const std::array<int64_t, 3>& full, float fill) {
  check_arg(t.rank() >= 3, "uncrop: expected [Z, Y, X, ...], got " + t.describe());
  const Tensor& in = t;
  const std::array<int64_t, 3> size = box.size();
  for (size_t a = 0; a < 3; ++a)
    check_arg(in.dim(static_cast<int>(a)) == size[a] && box.begin[a] >= 0 && box.end[a] <= full[a],
              "uncrop: " + t.describe() + " does not fit its box");
  Shape shape = in.shape();
  for (size_t a = 0; a < 3; ++a) shape[a] = full[a];
  check_arg(fill == 0 || in.dtype() == DType::f32, "uncrop: a non-zero fill needs an f32 tensor");
  Tensor out = fill == 0 ? Tensor::zeros(shape, in.dtype()) : Tensor::full(shape, fill);
  const int64_t inner = static_cast<int64_t>(in.nbytes()) / (size[0] * size[1] * size[2]);
  copy_box(static_cast<const uint8_t*>(in.raw()), size, {0, 0, 0}, static_cast<uint8_t*>(out.raw()), full, box.begin,
           size, inner);
  return out;
}

}  // namespace unet::io
