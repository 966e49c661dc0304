// io::augment_batch (io/augment.h): the batch augmentation a GPU run applies on the device. On the CPU it is the host
// transforms of io/augment.cpp sample by sample (to within rounding; labels exactly) for the same draws; on cuda-emu
// it gives the CPU's bits; its noise has the drawn standard deviation; nothing drawn is the identity; and the
// sampler with augment.on_device draws what augment() draws and leaves the patch as cut, the same for any number
// of loader workers.
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/device.h"
#include "io/augment.h"
#include "io/loader.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::io;

namespace {

// B random samples of one size.
std::vector<Sample> random_samples(int64_t B, std::array<int64_t, 3> size, int64_t channels, uint64_t seed) {
  Rng rng(seed);
  std::vector<Sample> out;
  for (int64_t b = 0; b < B; ++b) {
    Sample s(size, channels);
    for (float& v : s.image) v = static_cast<float>(rng.normal() * 1.5 + 0.3);
    for (int32_t& l : s.label) l = static_cast<int32_t>(rng.below(3));
    out.push_back(std::move(s));
  }
  return out;
}

// The samples as a batch: image f32 [B, Z, Y, X, C], label i32 [B, Z, Y, X].
void to_batch(const std::vector<Sample>& ss, Tensor* image, Tensor* label) {
  const Sample& f = ss.front();
  const int64_t B = static_cast<int64_t>(ss.size());
  *image = Tensor::empty({B, f.size[0], f.size[1], f.size[2], f.channels});
  *label = Tensor::empty({B, f.size[0], f.size[1], f.size[2]}, DType::i32);
  for (size_t b = 0; b < ss.size(); ++b) {
    std::memcpy(image->data<float>() + b * ss[b].image.size(), ss[b].image.data(), ss[b].image.size() * 4);
    std::memcpy(label->data<int32_t>() + b * ss[b].label.size(), ss[b].label.data(), ss[b].label.size() * 4);
  }
}

// Every transform often: probability 0.7 each (rotation aside: it is the sampler's).
AugmentOptions often() {
  AugmentOptions o;
  o.zoom_prob = o.noise_prob = o.blur_prob = o.brightness_prob = o.contrast_prob = 0.7;
  o.gamma_prob = o.low_resolution_prob = 0.7;
  o.flip_prob = 0.5;
  return o;
}

std::vector<AugmentRecord> draws(const AugmentOptions& o, size_t B, uint64_t seed) {
  std::vector<AugmentRecord> r;
  for (size_t b = 0; b < B; ++b) {
    Rng rng(seed + b);
    r.push_back(draw_augment(o, rng));
  }
  return r;
}

}  // namespace

TEST_CASE(
    "augment_batch on the CPU is augment() of each sample, noise included, to within rounding, for the same draws") {
  for (bool in_plane : {false, true}) {
    CAPTURE(in_plane);
    AugmentOptions o = often();
    o.in_plane = in_plane;
    const std::vector<Sample> samples = random_samples(6, {7, 10, 9}, 2, 5);
    const std::vector<AugmentRecord> r = draws(o, samples.size(), 100);
    Tensor image, label;
    to_batch(samples, &image, &label);
    augment_batch(image, label, r, in_plane);
    const std::vector<float> got = image.to_vector(), got_label = label.to_vector();
    int transformed = 0;
    for (size_t b = 0; b < samples.size(); ++b) {
      CAPTURE(b);
      Sample want = samples[b];
      Rng rng(100 + b);
      const AugmentRecord done = augment(want, o, rng);
      CHECK(done.zoom == r[b].zoom);
      CHECK(done.gamma == r[b].gamma);
      CHECK(done.noise_seed == r[b].noise_seed);
      transformed += want.image != samples[b].image;
      const size_t per = want.image.size(), pv = want.label.size();
      test::check_close(std::vector<float>(got.begin() + b * per, got.begin() + (b + 1) * per), want.image, 1e-5, 1e-5,
                        "image");
      CHECK(std::vector<float>(got_label.begin() + b * pv, got_label.begin() + (b + 1) * pv) ==
            std::vector<float>(want.label.begin(), want.label.end()));
    }
    CHECK(transformed >= 4);
  }
}

TEST_CASE("augment_batch on cuda-emu equals the CPU bit for bit, every transform, odd shapes") {
  if (!device::emulator_built()) return;  // the GPU build has no emulator
  for (bool in_plane : {false, true}) {
    CAPTURE(in_plane);
    AugmentOptions o = often();
    o.in_plane = in_plane;
    const std::vector<Sample> samples = random_samples(5, {5, 11, 7}, 3, 7);
    const std::vector<AugmentRecord> r = draws(o, samples.size(), 200);
    Tensor image, label;
    to_batch(samples, &image, &label);
    Tensor emu_image = image.to(Device::cuda_emu), emu_label = label.to(Device::cuda_emu);
    augment_batch(image, label, r, in_plane);
    augment_batch(emu_image, emu_label, r, in_plane);
    CHECK(emu_image.device() == Device::cuda_emu);
    const std::vector<float> cpu = image.to_vector(), emu = emu_image.to_vector();
    REQUIRE(cpu.size() == emu.size());
    CHECK(std::memcmp(cpu.data(), emu.data(), cpu.size() * 4) == 0);
    CHECK(emu_label.to_vector() == label.to_vector());
  }
}

TEST_CASE("augment_batch: nothing drawn is the identity; the noise has the drawn standard deviation") {
  const std::vector<Sample> samples = random_samples(3, {8, 16, 16}, 1, 9);
  Tensor image, label;
  to_batch(samples, &image, &label);
  const std::vector<float> before = image.to_vector(), before_label = label.to_vector();
  std::vector<AugmentRecord> r = draws(AugmentOptions::none(), 3, 300);
  augment_batch(image, label, r, false);
  CHECK(image.to_vector() == before);
  CHECK(label.to_vector() == before_label);
  // Noise alone on samples 0 and 2.
  r[0].noise_std = 0.2;
  r[2].noise_std = 0.05;
  augment_batch(image, label, r, false);
  const std::vector<float> after = image.to_vector();
  const size_t per = samples[0].image.size();
  for (size_t b = 0; b < 3; ++b) {
    double sum = 0, sum2 = 0;
    for (size_t i = b * per; i < (b + 1) * per; ++i) {
      const double d = after[i] - before[i];
      sum += d;
      sum2 += d * d;
    }
    const double mean = sum / double(per), sd = std::sqrt(sum2 / double(per) - mean * mean);
    CAPTURE(b);
    CHECK(std::abs(mean) < 0.01);
    CHECK(sd == doctest::Approx(r[b].noise_std).epsilon(0.03));
  }
  CHECK(label.to_vector() == before_label);
}

TEST_CASE("the sampler with augment.on_device draws augment()'s parameters, cuts the patch unaugmented, any workers") {
  std::vector<Case> cases;
  Rng rng(3);
  for (int i = 0; i < 2; ++i) {
    Case c;
    c.id = "case" + std::to_string(i);
    c.image = randn({13 + i, 17, 15, 1}, rng);
    c.label = Tensor::zeros({13 + i, 17, 15}, DType::u8);
    uint8_t* l = c.label.data<uint8_t>();
    for (int64_t v = 0; v < c.label.numel(); ++v) l[v] = static_cast<uint8_t>(rng.below(5) == 0);
    c.spacing = {1, 1, 1};
    cases.push_back(c);
  }
  PatchSamplerOptions o;
  o.patch = {10, 12, 12};
  o.batch = 3;
  o.seed = 4;
  o.augment = often();
  const PatchSampler host(cases, {}, o);
  o.augment.on_device = true;
  const PatchSampler device(cases, {}, o);
  o.augment = AugmentOptions::none();
  const PatchSampler plain(cases, {}, o);
  int zoomed = 0;
  for (int64_t step = 0; step < 4; ++step) {
    const PatchBatch h = host.batch(step), d = device.batch(step), p = plain.batch(step);
    CHECK(d.origin == h.origin);
    CHECK(d.case_index == h.case_index);
    CHECK(d.image.to_vector() == p.image.to_vector());  // as cut
    for (size_t b = 0; b < 3; ++b) {
      CHECK(d.augment[b].zoom == h.augment[b].zoom);
      CHECK(d.augment[b].flip == h.augment[b].flip);
      CHECK(d.augment[b].blur_sigma == h.augment[b].blur_sigma);
      CHECK(d.augment[b].low_resolution == h.augment[b].low_resolution);
      zoomed += d.augment[b].zoom != 1;
    }
    // The noise seeds differ per sample and per step.
    CHECK(d.augment[0].noise_seed != d.augment[1].noise_seed);
  }
  CHECK(zoomed > 0);
  // The loader's workers do not change the draws, the noise seeds included.
  for (int workers : {0, 2}) {
    BatchLoader loader(device, 0, workers, 2);
    for (int64_t step = 0; step < 3; ++step) {
      const PatchBatch a = loader.next(), b = device.batch(step);
      CHECK(a.image.to_vector() == b.image.to_vector());
      for (size_t i = 0; i < 3; ++i) CHECK(a.augment[i].noise_seed == b.augment[i].noise_seed);
    }
  }
}
