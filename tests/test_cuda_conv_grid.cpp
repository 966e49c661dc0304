// kernels/cuda/conv.cu's per-column sums (dbias, and the fprop statistics when they are not fused into the epilogue)
// for any number of rows: one block per chunk of 2048 rows along gridDim.y, which CUDA caps at 65535, so from
// 65535 * 2048 = 134M rows on (dbias of N = 9 at 256^3) the kernel loops over the chunks beyond the grid. A test hook
// lowers the cap, so a few thousand rows reach that loop under the emulator: the results must equal the CPU's and,
// bit for bit, those of the uncapped grid (each chunk's sum is the same computation whichever block makes it).
// tests/test_gpu.cpp checks the real size on a GPU.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/common/dtype.h"
#include "engine/random.h"
#include "kernels/cpu/conv.h"
#include "kernels/cuda/conv.cuh"
#include "tests/test_util.h"

using namespace unet;
using kernels::ConvProblem;

namespace {

// The cap for the life of the object; CUDA's afterwards.
struct GridCap {
  explicit GridCap(int64_t most) { kernels::cuda::testing::force_column_sums_max_grid_y(most); }
  ~GridCap() { kernels::cuda::testing::force_column_sums_max_grid_y(0); }
  GridCap(const GridCap&) = delete;
  GridCap& operator=(const GridCap&) = delete;
};

// A 1x1 convolution of n x (h x w) pixels: its GEMM has n * h * w rows of K columns.
ConvProblem pointwise(int64_t n, int64_t h, int64_t w, int64_t c, int64_t k) {
  ConvProblem p;
  p.N = n, p.H = h, p.W = w, p.C = c, p.K = k;
  p.compute_output_size();
  return p;
}

// Values of dt (exact in f32) as raw bytes.
std::vector<unsigned char> bytes_of(const std::vector<float>& v, DType dt) {
  std::vector<unsigned char> b(v.size() * dtype_size(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::f32) {
      std::memcpy(&b[i * 4], &v[i], 4);
    } else {
      const uint16_t h = dt == DType::f16 ? float_to_f16(v[i]) : float_to_bf16(v[i]);
      std::memcpy(&b[i * 2], &h, 2);
    }
  }
  return b;
}
std::vector<float> random_in(int64_t n, DType dt, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) {
    x = static_cast<float>(rng.normal());
    if (dt == DType::f16) x = f16_to_float(float_to_f16(x));
    if (dt == DType::bf16) x = bf16_to_float(float_to_bf16(x));
  }
  return v;
}

}  // namespace

TEST_CASE("cuda conv dbias over more row chunks than the grid has blocks along y equals the cpu and the full grid") {
  // 2 x 4 x 1153 = 9224 rows: 5 chunks of 2048 (the last of 1032 rows); 40 columns: two column tiles, one partial.
  const ConvProblem p = pointwise(2, 4, 1153, 8, 40);
  const int64_t rows = p.N * p.H * p.W;
  REQUIRE((rows + 2047) / 2048 == 5);
  for (DType dt : {DType::f32, DType::bf16}) {
    CAPTURE(dtype_name(dt));
    const std::vector<float> dy = random_in(rows * p.K, dt, 11);
    const std::vector<unsigned char> dy_bytes = bytes_of(dy, dt);
    std::vector<double> ref(static_cast<size_t>(p.K), 0.0), abs_sum(ref.size(), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < p.K; ++k) {
        ref[k] += dy[r * p.K + k];
        abs_sum[k] += std::fabs(dy[r * p.K + k]);
      }
    // Before each run, the same shape on other data with the full grid: the scratch of per-chunk partials is then
    // reused holding that data's sums, so a chunk the capped run left out would show.
    const std::vector<unsigned char> other_bytes = bytes_of(random_in(rows * p.K, dt, 12), dt);
    auto dbias = [&](int64_t cap) {
      std::vector<float> db(static_cast<size_t>(p.K), NAN);
      kernels::cuda::conv_wgrad(p, dt, nullptr, other_bytes.data(), nullptr, db.data(), nullptr);
      const GridCap grid(cap);
      kernels::cuda::conv_wgrad(p, dt, nullptr, dy_bytes.data(), nullptr, db.data(), nullptr);
      return db;
    };
    const std::vector<float> full = dbias(0);
    for (int64_t k = 0; k < p.K; ++k)
      CHECK_MESSAGE(std::fabs(full[k] - ref[k]) <= 1e-6 * abs_sum[k],
                    "column " << k << ": " << full[k] << " vs " << ref[k]);
    for (int64_t cap : {1, 2, 3, 4}) {  // 5 chunks on 1 to 4 blocks along y: 2 to 5 chunks per block
      CAPTURE(cap);
      const std::vector<float> capped = dbias(cap);
      CHECK(std::memcmp(capped.data(), full.data(), full.size() * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("cuda conv fprop statistics in the second pass over y, capped grid: equal the full grid bitwise") {
  // f32 (the SIMT path, whose statistics are always the second pass): 2 samples of 4100 pixels, 3 chunks each
  // (groups along gridDim.z); a 1x1 convolution keeps the emulated GEMM small.
  const ConvProblem p = pointwise(2, 4, 1025, 8, 8);
  const int64_t pixels = p.H * p.W;
  const std::vector<float> x = random_in(p.N * pixels * p.C, DType::f32, 21), w = random_in(p.K * p.C, DType::f32, 22);
  const std::vector<float> other = random_in(p.N * pixels * p.C, DType::f32, 23);
  auto fprop = [&](int64_t cap) {
    std::vector<float> y(static_cast<size_t>(p.N * pixels * p.K), NAN), stats(static_cast<size_t>(p.N * p.K * 2), NAN);
    // Other data first, full grid: its partial sums are what a chunk the capped run left out would read.
    kernels::cuda::conv_fprop(p, DType::f32, other.data(), w.data(), nullptr, y.data(), stats.data(), nullptr);
    const GridCap grid(cap);
    kernels::cuda::conv_fprop(p, DType::f32, x.data(), w.data(), nullptr, y.data(), stats.data(), nullptr);
    y.insert(y.end(), stats.begin(), stats.end());
    return y;
  };
  const std::vector<float> full = fprop(0);
  const float* stats = full.data() + p.N * pixels * p.K;
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t k = 0; k < p.K; ++k) {
      double s1 = 0, s2 = 0, a1 = 0;
      for (int64_t i = 0; i < pixels; ++i) {
        const double v = full[(n * pixels + i) * p.K + k];
        s1 += v, s2 += v * v, a1 += std::fabs(v);
      }
      CHECK(std::fabs(stats[(n * p.K + k) * 2] - s1) <= 1e-6 * a1);
      CHECK(std::fabs(stats[(n * p.K + k) * 2 + 1] - s2) <= 1e-6 * s2);
    }
  for (int64_t cap : {1, 2}) {
    CAPTURE(cap);
    const std::vector<float> capped = fprop(cap);
    CHECK(std::memcmp(capped.data(), full.data(), full.size() * sizeof(float)) == 0);
  }
}
