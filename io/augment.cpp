// The augmentation transforms (io/augment.h): plain loops over one sample, run on the loader's worker threads. Built
// with -ffp-contract=off (CMakeLists.txt), as the batched kernels (kernels/augment.h) are, so that both round alike.
#include "io/augment.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/augment.h"

namespace unet::io {

namespace {

constexpr double kPi = 3.14159265358979323846;

// [Z, Y, X, C] with dims[axis] replaced: the product of the dims before and after axis (C counted after).
void split(const std::array<int64_t, 4>& shape, int axis, int64_t* outer, int64_t* inner) {
  *outer = 1;
  *inner = 1;
  for (int a = 0; a < axis; ++a) *outer *= shape[static_cast<size_t>(a)];
  for (int a = axis + 1; a < 4; ++a) *inner *= shape[static_cast<size_t>(a)];
}

// Per channel: its values' minimum, maximum, mean and standard deviation.
struct ChannelStats {
  double min, max, mean, std;
};

ChannelStats channel_stats(const Sample& s, int64_t c) {
  ChannelStats st{INFINITY, -INFINITY, 0, 0};
  const int64_t n = s.voxels(), C = s.channels;
  double sum = 0, sum2 = 0;
  for (int64_t v = 0; v < n; ++v) {
    const double x = s.image[static_cast<size_t>(v * C + c)];
    st.min = std::min(st.min, x);
    st.max = std::max(st.max, x);
    sum += x;
  }
  st.mean = sum / static_cast<double>(n);
  for (int64_t v = 0; v < n; ++v) {
    const double d = s.image[static_cast<size_t>(v * C + c)] - st.mean;
    sum2 += d * d;
  }
  st.std = std::sqrt(sum2 / static_cast<double>(n));
  return st;
}

// The cubic resize of a whole [Z, Y, X, C] image to `to`, one axis after the other.
std::vector<float> resize_cubic(std::vector<float> v, std::array<int64_t, 4> shape, const std::array<int64_t, 3>& to) {
  for (int a = 0; a < 3; ++a) {
    if (shape[static_cast<size_t>(a)] == to[static_cast<size_t>(a)]) continue;
    v = resize_axis_cubic(v, shape, a, to[static_cast<size_t>(a)]);
    shape[static_cast<size_t>(a)] = to[static_cast<size_t>(a)];
  }
  return v;
}

void check_prob(double p, const char* name) {
  if (!(p >= 0 && p <= 1))
    throw std::invalid_argument(std::string("augmentation: ") + name + " = " + std::to_string(p) +
                                ": expected a probability in [0, 1]");
}

void check_range(double lo, double hi, double min_lo, double max_hi, const char* name) {
  if (!(lo >= min_lo && lo <= hi && hi <= max_hi))
    throw std::invalid_argument(std::string("augmentation: ") + name + " range [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + "]: expected " + std::to_string(min_lo) +
                                " <= low <= high <= " + std::to_string(max_hi));
}

}  // namespace

AugmentOptions AugmentOptions::none() {
  AugmentOptions o;
  o.zoom_prob = o.flip_prob = o.noise_prob = o.blur_prob = o.brightness_prob = o.contrast_prob = 0;
  o.rotation_prob = o.gamma_prob = o.low_resolution_prob = 0;
  return o;
}

void AugmentOptions::check() const {
  check_prob(zoom_prob, "zoom probability");
  check_prob(flip_prob, "flip probability");
  check_prob(noise_prob, "noise probability");
  check_prob(blur_prob, "blur probability");
  check_prob(brightness_prob, "brightness probability");
  check_prob(contrast_prob, "contrast probability");
  check_prob(rotation_prob, "rotation probability");
  check_prob(gamma_prob, "gamma probability");
  check_prob(low_resolution_prob, "low-resolution probability");
  check_range(zoom_min, zoom_max, 0.1, 1, "zoom");
  check_range(0, noise_std_max, 0, 10, "noise standard deviation");
  check_range(blur_sigma_min, blur_sigma_max, 0, 10, "blur sigma");
  check_range(brightness_min, brightness_max, 0, 10, "brightness");
  check_range(contrast_min, contrast_max, 0, 10, "contrast");
  check_range(0, rotation_max_degrees, 0, 180, "rotation");
  check_range(gamma_min, gamma_max, 0.01, 10, "gamma");
  check_range(low_resolution_min, 1, 0.1, 1, "low resolution");
}

Sample::Sample(std::array<int64_t, 3> s, int64_t c) : size(s), channels(c) {
  image.assign(static_cast<size_t>(voxels() * c), 0.0f);
  label.assign(static_cast<size_t>(voxels()), 0);
}

std::vector<float> resize_axis_cubic(const std::vector<float>& in, const std::array<int64_t, 4>& shape, int axis,
                                     int64_t n_out) {
  const int64_t n_in = shape[static_cast<size_t>(axis)];
  int64_t outer, inner;
  split(shape, axis, &outer, &inner);
  // Four taps per output index, clamped to the input.
  std::vector<std::array<int64_t, 4>> taps(static_cast<size_t>(n_out));
  std::vector<std::array<double, 4>> weights(static_cast<size_t>(n_out));
  for (int64_t i = 0; i < n_out; ++i) {
    const double src = (static_cast<double>(i) + 0.5) * static_cast<double>(n_in) / static_cast<double>(n_out) - 0.5;
    const double f = std::floor(src), t = src - f;
    for (int k = 0; k < 4; ++k) {
      taps[static_cast<size_t>(i)][static_cast<size_t>(k)] =
          std::clamp<int64_t>(static_cast<int64_t>(f) - 1 + k, 0, n_in - 1);
      weights[static_cast<size_t>(i)][static_cast<size_t>(k)] = kernels::keys_cubic(t + 1 - k);
    }
  }
  std::vector<float> out(static_cast<size_t>(outer * n_out * inner));
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < n_out; ++i) {
      float* dst = out.data() + (o * n_out + i) * inner;
      const auto& tp = taps[static_cast<size_t>(i)];
      const auto& w = weights[static_cast<size_t>(i)];
      for (int64_t j = 0; j < inner; ++j) {
        double acc = 0;
        for (int k = 0; k < 4; ++k)
          acc +=
              w[static_cast<size_t>(k)] * in[static_cast<size_t>((o * n_in + tp[static_cast<size_t>(k)]) * inner + j)];
        dst[j] = static_cast<float>(acc);
      }
    }
  return out;
}

void zoom(Sample& s, double scale, bool in_plane) {
  const int64_t C = s.channels;
  std::array<int64_t, 3> crop{s.size[0], 0, 0}, start{};
  for (int a = in_plane ? 1 : 0; a < 3; ++a) {
    const int64_t n = s.size[static_cast<size_t>(a)];
    crop[static_cast<size_t>(a)] = std::clamp<int64_t>(std::lround(scale * static_cast<double>(n)), 1, n);
    start[static_cast<size_t>(a)] = (n - crop[static_cast<size_t>(a)]) / 2;
  }
  if (crop == s.size) return;
  const int64_t Y = s.size[1], X = s.size[2];
  std::vector<float> cut(static_cast<size_t>(crop[0] * crop[1] * crop[2] * C));
  for (int64_t z = 0; z < crop[0]; ++z)
    for (int64_t y = 0; y < crop[1]; ++y) {
      const float* src = s.image.data() + (((start[0] + z) * Y + start[1] + y) * X + start[2]) * C;
      std::copy(src, src + crop[2] * C, cut.begin() + ((z * crop[1] + y) * crop[2]) * C);
    }
  s.image = resize_cubic(std::move(cut), {crop[0], crop[1], crop[2], C}, s.size);
  // Labels: nearest neighbour, voxel i of the output takes floor((i + 0.5) * c / n) of the crop.
  std::array<std::vector<int64_t>, 3> from;
  for (int a = 0; a < 3; ++a) {
    const int64_t n = s.size[static_cast<size_t>(a)], c = crop[static_cast<size_t>(a)];
    for (int64_t i = 0; i < n; ++i)
      from[static_cast<size_t>(a)].push_back(
          start[static_cast<size_t>(a)] +
          std::min(c - 1, static_cast<int64_t>((static_cast<double>(i) + 0.5) * static_cast<double>(c) /
                                               static_cast<double>(n))));
  }
  std::vector<int32_t> label(s.label.size());
  for (int64_t z = 0; z < s.size[0]; ++z)
    for (int64_t y = 0; y < Y; ++y)
      for (int64_t x = 0; x < X; ++x)
        label[static_cast<size_t>((z * Y + y) * X + x)] =
            s.label[static_cast<size_t>((from[0][static_cast<size_t>(z)] * Y + from[1][static_cast<size_t>(y)]) * X +
                                        from[2][static_cast<size_t>(x)])];
  s.label = std::move(label);
}

void flip(Sample& s, const std::array<bool, 3>& axes) {
  if (!axes[0] && !axes[1] && !axes[2]) return;
  const int64_t Z = s.size[0], Y = s.size[1], X = s.size[2], C = s.channels;
  std::vector<float> image(s.image.size());
  std::vector<int32_t> label(s.label.size());
  for (int64_t z = 0; z < Z; ++z)
    for (int64_t y = 0; y < Y; ++y)
      for (int64_t x = 0; x < X; ++x) {
        const int64_t sz = axes[0] ? Z - 1 - z : z, sy = axes[1] ? Y - 1 - y : y, sx = axes[2] ? X - 1 - x : x;
        const int64_t d = (z * Y + y) * X + x, src = (sz * Y + sy) * X + sx;
        label[static_cast<size_t>(d)] = s.label[static_cast<size_t>(src)];
        std::copy_n(s.image.begin() + src * C, C, image.begin() + d * C);
      }
  s.image = std::move(image);
  s.label = std::move(label);
}

void add_noise(Sample& s, double stddev, uint64_t seed) {
  kernels::AugmentSampleParams p;
  p.noise_seed = seed;
  p.noise_std = stddev;
  for (size_t i = 0; i < s.image.size(); ++i) s.image[i] = kernels::augment_noise(s.image[i], p, i);
}

void gaussian_blur(Sample& s, double sigma, bool in_plane) {
  if (sigma <= 0) return;
  const int64_t r = static_cast<int64_t>(std::ceil(3 * sigma));
  std::vector<double> w(static_cast<size_t>(2 * r + 1));
  double total = 0;
  for (int64_t k = -r; k <= r; ++k) total += w[static_cast<size_t>(k + r)] = std::exp(-0.5 * k * k / (sigma * sigma));
  for (double& x : w) x /= total;
  std::array<int64_t, 4> shape{s.size[0], s.size[1], s.size[2], s.channels};
  for (int a = in_plane ? 1 : 0; a < 3; ++a) {
    const int64_t n = shape[static_cast<size_t>(a)];
    int64_t outer, inner;
    split(shape, a, &outer, &inner);
    std::vector<float> out(s.image.size());
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < inner; ++j) {
          double acc = 0;
          for (int64_t k = -r; k <= r; ++k)
            acc += w[static_cast<size_t>(k + r)] *
                   s.image[static_cast<size_t>((o * n + kernels::reflect101(i + k, n)) * inner + j)];
          out[static_cast<size_t>((o * n + i) * inner + j)] = static_cast<float>(acc);
        }
    s.image = std::move(out);
  }
}

void scale_brightness(Sample& s, double factor) {
  for (float& x : s.image) x = static_cast<float>(x * factor);
}

void scale_contrast(Sample& s, double factor) {
  if (s.image.empty()) return;
  const auto [lo, hi] = std::minmax_element(s.image.begin(), s.image.end());
  const float mn = *lo, mx = *hi;
  for (float& x : s.image) x = std::clamp(static_cast<float>(x * factor), mn, mx);
}

void gamma_transform(Sample& s, double gamma) {
  const int64_t n = s.voxels(), C = s.channels;
  for (int64_t c = 0; c < C; ++c) {
    const ChannelStats before = channel_stats(s, c);
    const double range = before.max - before.min + 1e-7;
    for (int64_t v = 0; v < n; ++v) {
      float& x = s.image[static_cast<size_t>(v * C + c)];
      x = static_cast<float>(std::pow((x - before.min) / range, gamma) * range + before.min);
    }
    const ChannelStats after = channel_stats(s, c);
    for (int64_t v = 0; v < n; ++v) {
      float& x = s.image[static_cast<size_t>(v * C + c)];
      x = static_cast<float>((x - after.mean) / (after.std + 1e-8) * before.std + before.mean);
    }
  }
}

void simulate_low_resolution(Sample& s, double zoom_factor, bool in_plane) {
  std::array<int64_t, 3> low{s.size[0], 0, 0};
  for (int a = in_plane ? 1 : 0; a < 3; ++a) {
    const int64_t n = s.size[static_cast<size_t>(a)];
    low[static_cast<size_t>(a)] = std::clamp<int64_t>(std::lround(zoom_factor * static_cast<double>(n)), 1, n);
  }
  if (low == s.size) return;
  const int64_t Y = s.size[1], X = s.size[2], C = s.channels;
  auto nearest = [&](int a, int64_t i) {
    const int64_t n = s.size[static_cast<size_t>(a)], m = low[static_cast<size_t>(a)];
    return std::min(
        n - 1, static_cast<int64_t>((static_cast<double>(i) + 0.5) * static_cast<double>(n) / static_cast<double>(m)));
  };
  std::vector<float> small(static_cast<size_t>(low[0] * low[1] * low[2] * C));
  for (int64_t z = 0; z < low[0]; ++z)
    for (int64_t y = 0; y < low[1]; ++y)
      for (int64_t x = 0; x < low[2]; ++x)
        std::copy_n(s.image.begin() + ((nearest(0, z) * Y + nearest(1, y)) * X + nearest(2, x)) * C, C,
                    small.begin() + ((z * low[1] + y) * low[2] + x) * C);
  s.image = resize_cubic(std::move(small), {low[0], low[1], low[2], C}, s.size);
}

AugmentRecord draw_augment(const AugmentOptions& o, Rng& rng) {
  AugmentRecord r;
  const auto draw = [&](double p, double lo, double hi, double off) {
    const bool on = rng.uniform() < p;
    const double v = rng.uniform(lo, hi);
    return on ? v : off;
  };
  r.zoom = draw(o.zoom_prob, o.zoom_min, o.zoom_max, 1);
  for (int a = 0; a < 3; ++a) r.flip[static_cast<size_t>(a)] = rng.uniform() < o.flip_prob;
  r.noise_std = draw(o.noise_prob, 0, o.noise_std_max, 0);
  r.blur_sigma = draw(o.blur_prob, o.blur_sigma_min, o.blur_sigma_max, 0);
  r.brightness = draw(o.brightness_prob, o.brightness_min, o.brightness_max, 1);
  r.contrast = draw(o.contrast_prob, o.contrast_min, o.contrast_max, 1);
  r.gamma = draw(o.gamma_prob, o.gamma_min, o.gamma_max, 1);
  r.low_resolution = draw(o.low_resolution_prob, o.low_resolution_min, 1, 1);
  r.noise_seed = rng.next();
  if (o.in_plane) r.flip[0] = false;
  return r;
}

AugmentRecord augment(Sample& s, const AugmentOptions& o, Rng& rng) {
  // Every parameter first, in a fixed order and number of draws.
  const AugmentRecord r = draw_augment(o, rng);
  if (r.zoom != 1) zoom(s, r.zoom, o.in_plane);
  flip(s, r.flip);
  if (r.noise_std > 0) add_noise(s, r.noise_std, r.noise_seed);
  if (r.blur_sigma > 0) gaussian_blur(s, r.blur_sigma, o.in_plane);
  if (r.brightness != 1) scale_brightness(s, r.brightness);
  if (r.contrast != 1) scale_contrast(s, r.contrast);
  if (r.gamma != 1) gamma_transform(s, r.gamma);
  if (r.low_resolution != 1) simulate_low_resolution(s, r.low_resolution, o.in_plane);
  return r;
}

std::array<double, 3> draw_rotation(const AugmentOptions& o, Rng& rng) {
  const bool on = rng.uniform() < o.rotation_prob;
  std::array<double, 3> angles{};
  for (double& a : angles) a = rng.uniform(-o.rotation_max_degrees, o.rotation_max_degrees) * kPi / 180;
  if (!on) angles = {0, 0, 0};
  if (o.in_plane) angles[1] = angles[2] = 0;
  return angles;
}

std::array<double, 9> rotation_matrix(const std::array<double, 3>& angles) {
  // Coordinates (z, y, x). About z: the y-x plane turns; about y: z-x; about x: z-y.
  const double cz = std::cos(angles[0]), sz = std::sin(angles[0]);
  const double cy = std::cos(angles[1]), sy = std::sin(angles[1]);
  const double cx = std::cos(angles[2]), sx = std::sin(angles[2]);
  const std::array<double, 9> Rz{1, 0, 0, 0, cz, -sz, 0, sz, cz};
  const std::array<double, 9> Ry{cy, 0, sy, 0, 1, 0, -sy, 0, cy};
  const std::array<double, 9> Rx{cx, -sx, 0, sx, cx, 0, 0, 0, 1};
  const auto mul = [](const std::array<double, 9>& a, const std::array<double, 9>& b) {
    std::array<double, 9> m{};
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        for (int k = 0; k < 3; ++k)
          m[static_cast<size_t>(i * 3 + j)] += a[static_cast<size_t>(i * 3 + k)] * b[static_cast<size_t>(k * 3 + j)];
    return m;
  };
  return mul(mul(Rz, Ry), Rx);
}

std::array<int64_t, 3> rotated_extent(const std::array<double, 9>& R, const std::array<int64_t, 3>& patch) {
  std::array<int64_t, 3> e{};
  for (int a = 0; a < 3; ++a) {
    double span = 0;
    for (int b = 0; b < 3; ++b)
      span += std::abs(R[static_cast<size_t>(a * 3 + b)]) * static_cast<double>(patch[static_cast<size_t>(b)] - 1);
    // Two voxels of margin for the interpolation's neighbours.
    const int64_t p = patch[static_cast<size_t>(a)];
    int64_t n = std::max(p, static_cast<int64_t>(std::ceil(span)) + 3);
    if ((n - p) % 2) ++n;
    e[static_cast<size_t>(a)] = n;
  }
  return e;
}

Sample rotate_crop(const Sample& src, const std::array<double, 9>& R, const std::array<int64_t, 3>& out) {
  Sample dst(out, src.channels);
  const int64_t C = src.channels, SZ = src.size[0], SY = src.size[1], SX = src.size[2];
  const double cs[3] = {(SZ - 1) / 2.0, (SY - 1) / 2.0, (SX - 1) / 2.0};
  const double co[3] = {(out[0] - 1) / 2.0, (out[1] - 1) / 2.0, (out[2] - 1) / 2.0};
  std::vector<double> acc(static_cast<size_t>(C));
  for (int64_t z = 0; z < out[0]; ++z)
    for (int64_t y = 0; y < out[1]; ++y)
      for (int64_t x = 0; x < out[2]; ++x) {
        const double p[3] = {z - co[0], y - co[1], x - co[2]};
        double q[3];
        for (int a = 0; a < 3; ++a)
          q[a] = cs[a] + R[static_cast<size_t>(a * 3)] * p[0] + R[static_cast<size_t>(a * 3 + 1)] * p[1] +
                 R[static_cast<size_t>(a * 3 + 2)] * p[2];
        const int64_t d = (z * out[1] + y) * out[2] + x;
        // Label: nearest voxel, background outside.
        const int64_t nz = std::lround(q[0]), ny = std::lround(q[1]), nx = std::lround(q[2]);
        if (nz >= 0 && nz < SZ && ny >= 0 && ny < SY && nx >= 0 && nx < SX)
          dst.label[static_cast<size_t>(d)] = src.label[static_cast<size_t>((nz * SY + ny) * SX + nx)];
        // Image: trilinear, zero outside.
        const int64_t fz = static_cast<int64_t>(std::floor(q[0])), fy = static_cast<int64_t>(std::floor(q[1])),
                      fx = static_cast<int64_t>(std::floor(q[2]));
        const double tz = q[0] - fz, ty = q[1] - fy, tx = q[2] - fx;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int k = 0; k < 8; ++k) {
          const int64_t iz = fz + (k >> 2), iy = fy + ((k >> 1) & 1), ix = fx + (k & 1);
          if (iz < 0 || iz >= SZ || iy < 0 || iy >= SY || ix < 0 || ix >= SX) continue;
          const double w = ((k >> 2) ? tz : 1 - tz) * (((k >> 1) & 1) ? ty : 1 - ty) * ((k & 1) ? tx : 1 - tx);
          if (w == 0) continue;
          const float* v = src.image.data() + ((iz * SY + iy) * SX + ix) * C;
          for (int64_t c = 0; c < C; ++c) acc[static_cast<size_t>(c)] += w * v[c];
        }
        for (int64_t c = 0; c < C; ++c)
          dst.image[static_cast<size_t>(d * C + c)] = static_cast<float>(acc[static_cast<size_t>(c)]);
      }
  return dst;
}

}  // namespace unet::io
