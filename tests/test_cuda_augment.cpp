// The batched augmentation kernels (kernels/augment.h): the CUDA kernels under the device emulator against the CPU
// kernels, bit for bit under every schedule, on odd shapes with samples that transform and samples that do not; the
// identity at zero strength, labels that stay in their label set, the noise's statistics and the gamma's retained
// statistics. (io::augment_batch, which draws the parameters and chains these, is tested in test_augment_batch.cpp.)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include "engine/random.h"
#include "kernels/augment.h"
#include "kernels/cpu/augment.h"
#include "kernels/cuda/augment.cuh"
#include "tests/emu_test_util.h"

using namespace unet;
using test::under_every_schedule;

namespace {

// Three samples of 5 x 7 x 6 voxels, 2 channels: odd sizes, no axis a multiple of a warp.
const kernels::AugmentShape kShape{3, 5, 7, 6, 2};

std::vector<float> random_image(const kernels::AugmentShape& s, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(s.n * s.values()));
  for (float& x : v) x = static_cast<float>(rng.normal() * 2 + 0.5);
  return v;
}

std::vector<int32_t> random_label(const kernels::AugmentShape& s, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> v(static_cast<size_t>(s.n * s.voxels()));
  for (int32_t& x : v) x = static_cast<int32_t>(rng.below(3)) * 2;  // labels 0, 2, 4
  return v;
}

// The per-sample maps of one axis concatenated into the kernels' [n, dim, taps] tables.
struct Tables {
  int taps = 0;
  std::vector<int32_t> index;
  std::vector<double> weight;
};
Tables concat(const std::vector<kernels::AxisMap>& maps) {
  Tables t;
  t.taps = maps.front().taps;
  for (const kernels::AxisMap& m : maps) {
    REQUIRE(m.taps == t.taps);
    t.index.insert(t.index.end(), m.index.begin(), m.index.end());
    t.weight.insert(t.weight.end(), m.weight.begin(), m.weight.end());
  }
  return t;
}

std::vector<float> resample_cpu(int axis, const Tables& t, const std::vector<uint8_t>& active,
                                const std::vector<float>& x) {
  std::vector<float> y(x.size(), -7.f);
  kernels::cpu::augment_resample_axis(kShape, axis, t.taps, t.index.data(), t.weight.data(), active.data(), x.data(),
                                      y.data());
  return y;
}

std::vector<float> resample_cuda(int axis, const Tables& t, const std::vector<uint8_t>& active,
                                 const std::vector<float>& x) {
  return under_every_schedule([&] {
    std::vector<float> y(x.size(), -7.f);
    kernels::cuda::augment_resample_axis(kShape, axis, t.taps, t.index.data(), t.weight.data(), active.data(), x.data(),
                                         y.data(), nullptr);
    return y;
  });
}

std::vector<kernels::AugmentSampleParams> params_of(double noise, double brightness, double contrast, double gamma) {
  std::vector<kernels::AugmentSampleParams> p(static_cast<size_t>(kShape.n));
  // Sample 1 keeps the identity, samples 0 and 2 transform (with their own noise streams).
  for (size_t b : {size_t(0), size_t(2)}) {
    p[b].noise_seed = 1000 + b;
    p[b].noise_std = noise;
    p[b].brightness = brightness;
    p[b].contrast = contrast;
    p[b].gamma = gamma;
  }
  return p;
}

}  // namespace

TEST_CASE("augment resample_axis: zoom, flip, blur and low-resolution maps, CUDA equals the CPU bit for bit") {
  const std::vector<float> x = random_image(kShape, 1);
  const std::vector<uint8_t> active{1, 0, 1};
  for (int axis = 0; axis < 3; ++axis) {
    CAPTURE(axis);
    const int64_t n = kShape.dim(axis);
    // Zoom (a centred crop resized back) with and without a flip; low resolution; a flip alone.
    const int64_t len = std::max<int64_t>(1, n * 7 / 10), start = (n - len) / 2;
    const std::vector<std::vector<kernels::AxisMap>> cubic_cases = {
        {kernels::cubic_axis_map(n, start, len), kernels::identity_axis_map(n, 4),
         kernels::flipped(kernels::cubic_axis_map(n, start, len))},
        {kernels::low_resolution_axis_map(n, std::max<int64_t>(1, n / 2)), kernels::identity_axis_map(n, 4),
         kernels::flipped(kernels::identity_axis_map(n, 4))}};
    for (const auto& maps : cubic_cases) {
      const Tables t = concat(maps);
      const std::vector<float> cpu = resample_cpu(axis, t, active, x);
      CHECK(resample_cuda(axis, t, active, x) == cpu);
      // The inactive sample is copied unchanged.
      const size_t per = static_cast<size_t>(kShape.values());
      CHECK(std::equal(cpu.begin() + per, cpu.begin() + 2 * per, x.begin() + per));
    }
    // Blur: sigma 0.5 (7 taps) and 1.5 (19 taps, longer than the axis: mirrored more than once), padded to 19.
    const int taps = kernels::gaussian_taps(1.5);
    const Tables t = concat({kernels::gaussian_axis_map(n, 0.5, taps), kernels::identity_axis_map(n, taps),
                             kernels::gaussian_axis_map(n, 1.5, taps)});
    CHECK(resample_cuda(axis, t, active, x) == resample_cpu(axis, t, active, x));
  }
}

TEST_CASE("augment resample_axis: identity maps, flips and zoom 1 give the image back exactly") {
  const std::vector<float> x = random_image(kShape, 2);
  const std::vector<uint8_t> active{1, 1, 1};
  for (int axis = 0; axis < 3; ++axis) {
    const int64_t n = kShape.dim(axis);
    const Tables id = concat(
        {kernels::identity_axis_map(n, 4), kernels::cubic_axis_map(n, 0, n), kernels::low_resolution_axis_map(n, n)});
    CHECK(resample_cpu(axis, id, active, x) == x);
    CHECK(resample_cuda(axis, id, active, x) == x);
    // Flipping twice.
    const Tables f = concat(std::vector<kernels::AxisMap>(3, kernels::flipped(kernels::identity_axis_map(n, 1))));
    const std::vector<float> once = resample_cuda(axis, f, active, x);
    CHECK(once != x);
    CHECK(resample_cuda(axis, f, active, once) == x);
  }
}

TEST_CASE("augment gather_label_axis: nearest-neighbour zoom and flips keep the label set; CUDA equals the CPU") {
  const std::vector<int32_t> lab = random_label(kShape, 3);
  const std::vector<uint8_t> active{1, 0, 1};
  const std::set<int32_t> allowed{0, 2, 4};
  for (int axis = 0; axis < 3; ++axis) {
    CAPTURE(axis);
    const int64_t n = kShape.dim(axis);
    const int64_t len = std::max<int64_t>(1, n * 6 / 10), start = (n - len) / 2;
    std::vector<int32_t> index = kernels::nearest_axis_index(n, start, len, false);
    const std::vector<int32_t> same = kernels::nearest_axis_index(n, 0, n, false);
    const std::vector<int32_t> flip = kernels::nearest_axis_index(n, start, len, true);
    index.insert(index.end(), same.begin(), same.end());
    index.insert(index.end(), flip.begin(), flip.end());
    std::vector<int32_t> cpu(lab.size(), -1);
    kernels::cpu::augment_gather_label_axis(kShape, axis, index.data(), active.data(), lab.data(), cpu.data());
    const std::vector<int32_t> cuda = under_every_schedule([&] {
      std::vector<int32_t> y(lab.size(), -1);
      kernels::cuda::augment_gather_label_axis(kShape, axis, index.data(), active.data(), lab.data(), y.data(),
                                               nullptr);
      return y;
    });
    CHECK(cuda == cpu);
    for (int32_t v : cpu) CHECK(allowed.count(v) == 1);
    // Every index stays inside the crop, and zoom 1 without a flip is the identity.
    for (int32_t i : kernels::nearest_axis_index(n, start, len, true)) CHECK((i >= start && i < start + len));
    for (int64_t i = 0; i < n; ++i) CHECK(same[static_cast<size_t>(i)] == i);
  }
}

TEST_CASE("augment point-wise kernels: noise, brightness, contrast, gamma; CUDA equals the CPU bit for bit") {
  const std::vector<float> x = random_image(kShape, 4);
  const std::vector<kernels::AugmentSampleParams> p = params_of(0.3, 1.2, 0.7, 1.4);
  const std::vector<uint8_t> active{1, 0, 1};
  const size_t stats_n = static_cast<size_t>(kShape.n * kShape.c * 4);
  // The whole chain on one backend: noise, brightness, contrast (with the statistics after brightness), gamma and the
  // statistics restored.
  const auto chain = [&](const kernels::AugmentKernels& k) {
    std::vector<float> v = x;
    std::vector<double> before(stats_n, 0), after(stats_n, 0);
    k.add_noise(kShape, p.data(), v.data(), nullptr);
    k.brightness(kShape, p.data(), v.data(), nullptr);
    k.channel_stats(kShape, active.data(), v.data(), before.data(), nullptr);
    k.contrast(kShape, p.data(), before.data(), v.data(), nullptr);
    k.channel_stats(kShape, active.data(), v.data(), before.data(), nullptr);
    k.gamma(kShape, p.data(), before.data(), v.data(), nullptr);
    k.channel_stats(kShape, active.data(), v.data(), after.data(), nullptr);
    k.restore_stats(kShape, p.data(), before.data(), after.data(), v.data(), nullptr);
    return std::make_pair(v, before);
  };
  const auto [cpu, cpu_stats] = chain(kernels::cpu::augment_kernels);
  std::vector<double> cuda_stats;
  const std::vector<float> cuda = under_every_schedule([&] {
    auto r = chain(kernels::cuda::augment_kernels);
    cuda_stats = r.second;
    return r.first;
  });
  CHECK(cuda == cpu);
  CHECK(cuda_stats == cpu_stats);
  // Sample 1 (identity parameters) is untouched; samples 0 and 2 changed.
  const size_t per = static_cast<size_t>(kShape.values());
  CHECK(std::equal(cpu.begin() + per, cpu.begin() + 2 * per, x.begin() + per));
  CHECK(!std::equal(cpu.begin(), cpu.begin() + per, x.begin()));
}

TEST_CASE("augment point-wise kernels: each at zero strength is the identity") {
  const std::vector<float> x = random_image(kShape, 5);
  const std::vector<kernels::AugmentSampleParams> p(static_cast<size_t>(kShape.n));  // all identities
  const std::vector<uint8_t> active{1, 1, 1};
  for (const kernels::AugmentKernels* k : {&kernels::cpu::augment_kernels, &kernels::cuda::augment_kernels}) {
    std::vector<float> v = x;
    std::vector<double> st(static_cast<size_t>(kShape.n * kShape.c * 4));
    k->channel_stats(kShape, active.data(), v.data(), st.data(), nullptr);
    k->add_noise(kShape, p.data(), v.data(), nullptr);
    k->brightness(kShape, p.data(), v.data(), nullptr);
    k->contrast(kShape, p.data(), st.data(), v.data(), nullptr);
    k->gamma(kShape, p.data(), st.data(), v.data(), nullptr);
    k->restore_stats(kShape, p.data(), st.data(), st.data(), v.data(), nullptr);
    CHECK(v == x);
  }
}

TEST_CASE("augment noise: N(0, s^2) per value, a stream per seed, the same on CUDA as on the CPU") {
  const kernels::AugmentShape s{2, 16, 32, 33, 1};
  std::vector<float> x(static_cast<size_t>(s.n * s.values()), 0.f);
  std::vector<kernels::AugmentSampleParams> p(2);
  p[0].noise_seed = 11;
  p[1].noise_seed = 12;
  p[0].noise_std = p[1].noise_std = 0.25;
  std::vector<float> cpu = x;
  kernels::cpu::augment_add_noise(s, p.data(), cpu.data());
  std::vector<float> cuda = x;
  kernels::cuda::augment_add_noise(s, p.data(), cuda.data(), nullptr);
  CHECK(cuda == cpu);
  const size_t per = static_cast<size_t>(s.values());
  for (size_t b = 0; b < 2; ++b) {
    double sum = 0, sum2 = 0;
    for (size_t i = 0; i < per; ++i) {
      sum += cpu[b * per + i];
      sum2 += double(cpu[b * per + i]) * cpu[b * per + i];
    }
    const double mean = sum / double(per), sd = std::sqrt(sum2 / double(per) - mean * mean);
    // 16896 values: the mean's standard error is 0.0019, the standard deviation's 0.0014.
    CHECK(std::abs(mean) < 0.01);
    CHECK(std::abs(sd - 0.25) < 0.007);
  }
  // Two seeds, two streams (correlation near 0).
  double cross = 0;
  for (size_t i = 0; i < per; ++i) cross += double(cpu[i]) * cpu[per + i];
  CHECK(std::abs(cross / double(per) / (0.25 * 0.25)) < 0.05);
}

TEST_CASE("augment gamma: the channel's mean and standard deviation are restored and its range order kept") {
  const std::vector<float> x = random_image(kShape, 6);
  const std::vector<kernels::AugmentSampleParams> p = params_of(0, 1, 1, 0.7);
  const std::vector<uint8_t> active{1, 1, 1};
  const size_t stats_n = static_cast<size_t>(kShape.n * kShape.c * 4);
  std::vector<float> v = x;
  std::vector<double> before(stats_n), after(stats_n), end(stats_n);
  kernels::cpu::augment_channel_stats(kShape, active.data(), v.data(), before.data());
  kernels::cpu::augment_gamma(kShape, p.data(), before.data(), v.data());
  kernels::cpu::augment_channel_stats(kShape, active.data(), v.data(), after.data());
  kernels::cpu::augment_restore_stats(kShape, p.data(), before.data(), after.data(), v.data());
  kernels::cpu::augment_channel_stats(kShape, active.data(), v.data(), end.data());
  for (size_t bc = 0; bc < static_cast<size_t>(kShape.n * kShape.c); ++bc) {
    CHECK(end[bc * 4 + kernels::kStatMean] == doctest::Approx(before[bc * 4 + kernels::kStatMean]).epsilon(1e-5));
    CHECK(end[bc * 4 + kernels::kStatStd] == doctest::Approx(before[bc * 4 + kernels::kStatStd]).epsilon(1e-5));
  }
  // Monotone: the order of the values in a channel is kept.
  const size_t per = static_cast<size_t>(kShape.values());
  for (size_t i = 2; i < per; i += 2) CHECK(((x[i] < x[i - 2]) == (v[i] < v[i - 2]) || x[i] == x[i - 2]));
  // The statistics kernel on a known channel: 0, 1, ..., V - 1.
  std::vector<float> ramp(static_cast<size_t>(kShape.n * kShape.values()));
  for (size_t i = 0; i < ramp.size(); ++i) ramp[i] = static_cast<float>((i % per) / 2);
  kernels::cpu::augment_channel_stats(kShape, active.data(), ramp.data(), end.data());
  const double V = static_cast<double>(kShape.voxels());
  CHECK(end[kernels::kStatMin] == 0);
  CHECK(end[kernels::kStatMax] == V - 1);
  CHECK(end[kernels::kStatMean] == doctest::Approx((V - 1) / 2));
  CHECK(end[kernels::kStatStd] == doctest::Approx(std::sqrt((V * V - 1) / 12)));
}
