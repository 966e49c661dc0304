// The spatial tables of kernels/augment.h, built on the host from io/augment.cpp's formulas (the same positions and
// weights, in the same order) and copied where the kernels run.
#include "kernels/augment.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace unet::kernels {

namespace {

void check_axis(int64_t n, const char* what) {
  if (n < 1 || n > (int64_t(1) << 30))
    throw std::invalid_argument(std::string(what) + ": axis of " + std::to_string(n) + " positions");
}

// Row i of a cubic resize of `len` inputs to n outputs: the input taps (0..len-1) and their weights.
void cubic_row(int64_t i, int64_t n, int64_t len, int64_t tap[4], double w[4]) {
  const double src = (static_cast<double>(i) + 0.5) * static_cast<double>(len) / static_cast<double>(n) - 0.5;
  const double f = std::floor(src), t = src - f;
  for (int k = 0; k < 4; ++k) {
    tap[k] = std::clamp<int64_t>(static_cast<int64_t>(f) - 1 + k, 0, len - 1);
    w[k] = keys_cubic(t + 1 - k);
  }
}

}  // namespace

AxisMap identity_axis_map(int64_t n, int taps) {
  check_axis(n, "identity_axis_map");
  AxisMap m;
  m.taps = taps;
  m.index.resize(static_cast<size_t>(n * taps));
  m.weight.assign(static_cast<size_t>(n * taps), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int k = 0; k < taps; ++k) m.index[static_cast<size_t>(i * taps + k)] = static_cast<int32_t>(i);
    m.weight[static_cast<size_t>(i * taps)] = 1;
  }
  return m;
}

// Four taps per output index i of an axis of n resized from `len` by cubic convolution (cubic_row), tap t of the
// resized axis read at index_of(t).
template <class IndexOf>
AxisMap cubic_map(int64_t n, int64_t len, IndexOf&& index_of) {
  AxisMap m;
  m.taps = 4;
  m.index.resize(static_cast<size_t>(n * 4));
  m.weight.resize(static_cast<size_t>(n * 4));
  for (int64_t i = 0; i < n; ++i) {
    int64_t tap[4];
    double w[4];
    cubic_row(i, n, len, tap, w);
    for (int k = 0; k < 4; ++k) {
      m.index[static_cast<size_t>(i * 4 + k)] = static_cast<int32_t>(index_of(tap[k]));
      m.weight[static_cast<size_t>(i * 4 + k)] = w[k];
    }
  }
  return m;
}

AxisMap cubic_axis_map(int64_t n, int64_t start, int64_t len) {
  check_axis(n, "cubic_axis_map");
  if (len < 1 || start < 0 || start + len > n)
    throw std::invalid_argument("cubic_axis_map: crop [" + std::to_string(start) + ", " + std::to_string(start + len) +
                                ") outside an axis of " + std::to_string(n));
  return cubic_map(n, len, [&](int64_t t) { return start + t; });
}

AxisMap flipped(AxisMap m) {
  const int64_t n = static_cast<int64_t>(m.index.size()) / m.taps;
  for (int64_t i = 0, j = n - 1; i < j; ++i, --j)
    for (int k = 0; k < m.taps; ++k) {
      std::swap(m.index[static_cast<size_t>(i * m.taps + k)], m.index[static_cast<size_t>(j * m.taps + k)]);
      std::swap(m.weight[static_cast<size_t>(i * m.taps + k)], m.weight[static_cast<size_t>(j * m.taps + k)]);
    }
  return m;
}

int gaussian_taps(double sigma) {
  if (!(sigma > 0 && sigma <= 100)) throw std::invalid_argument("gaussian_taps: sigma " + std::to_string(sigma));
  return 2 * static_cast<int>(std::ceil(3 * sigma)) + 1;
}

AxisMap gaussian_axis_map(int64_t n, double sigma, int taps) {
  check_axis(n, "gaussian_axis_map");
  const int own = gaussian_taps(sigma), r = own / 2;
  if (taps < own)
    throw std::invalid_argument("gaussian_axis_map: " + std::to_string(taps) + " taps for sigma " +
                                std::to_string(sigma) + ", which needs " + std::to_string(own));
  std::vector<double> w(static_cast<size_t>(own));
  double total = 0;
  for (int64_t k = -r; k <= r; ++k) total += w[static_cast<size_t>(k + r)] = std::exp(-0.5 * k * k / (sigma * sigma));
  for (double& x : w) x /= total;
  AxisMap m = identity_axis_map(n, taps);
  for (int64_t i = 0; i < n; ++i)
    for (int k = 0; k < own; ++k) {
      m.index[static_cast<size_t>(i * taps + k)] = static_cast<int32_t>(reflect101(i + k - r, n));
      m.weight[static_cast<size_t>(i * taps + k)] = w[static_cast<size_t>(k)];
    }
  return m;
}

AxisMap low_resolution_axis_map(int64_t n, int64_t low) {
  check_axis(n, "low_resolution_axis_map");
  if (low < 1 || low > n)
    throw std::invalid_argument("low_resolution_axis_map: " + std::to_string(low) + " of " + std::to_string(n));
  // Tap t of the low-resolution axis is the nearest full-resolution index to its centre.
  return cubic_map(n, low, [&](int64_t t) {
    return std::min(n - 1, static_cast<int64_t>((static_cast<double>(t) + 0.5) * static_cast<double>(n) /
                                                static_cast<double>(low)));
  });
}

std::vector<int32_t> nearest_axis_index(int64_t n, int64_t start, int64_t len, bool flip) {
  check_axis(n, "nearest_axis_index");
  std::vector<int32_t> from(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    from[static_cast<size_t>(flip ? n - 1 - i : i)] = static_cast<int32_t>(
        start + std::min(len - 1, static_cast<int64_t>((static_cast<double>(i) + 0.5) * static_cast<double>(len) /
                                                       static_cast<double>(n))));
  return from;
}

}  // namespace unet::kernels
