// The augmentation's cost per batch: augment() of each sample on one thread (what a loader worker does per sample),
// and io::augment_batch on the CPU backend and on a device (the kernels a GPU run uses), every transform forced on
// (probability 1) or DLE's defaults. Device timings include the table uploads and end with a synchronisation.
// usage: augment_bench [--patch 128,128,128] [--batch 2] [--channels 1] [--augment all|dle] [--device cpu|cuda]
//                      [--repeats 5]
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "engine/device.h"
#include "io/augment.h"
#include "kernels/common/parallel.h"

using namespace unet;

int main(int argc, char** argv) {
  std::vector<int64_t> patch{128, 128, 128};
  int batch = 2, channels = 1, repeats = 5;
  std::string augment = "all", device_name = "cpu";
  CLI::App app{"Augmentation time per batch: per-sample host transforms and the batched kernels."};
  app.add_option("--patch", patch, "patch size (3 values)")->delimiter(',')->capture_default_str();
  app.add_option("--batch", batch, "samples per batch")->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--channels", channels, "image channels")->check(CLI::Range(1, 16))->capture_default_str();
  app.add_option("--augment", augment, "all (every transform, probability 1) or dle (DLE's defaults)")
      ->check(CLI::IsMember({"all", "dle"}))
      ->capture_default_str();
  app.add_option("--device", device_name, "where augment_batch also runs: cpu, cuda, cuda-emu")->capture_default_str();
  app.add_option("--repeats", repeats, "timed batches")->check(CLI::Range(1, 1000))->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (patch.size() != 3) {
    std::fprintf(stderr, "augment_bench: --patch needs 3 values\n");
    return 2;
  }
  try {
    const Device dev = device::resolve_device(device_name, &std::cerr);
    io::AugmentOptions o;
    if (augment == "all") {
      o.zoom_prob = o.noise_prob = o.blur_prob = o.brightness_prob = o.contrast_prob = 1;
      o.gamma_prob = o.low_resolution_prob = 1;
    }
    const std::array<int64_t, 3> size{patch[0], patch[1], patch[2]};
    Rng rng(1);
    io::Sample base(size, channels);
    for (float& v : base.image) v = static_cast<float>(rng.normal());
    for (int32_t& l : base.label) l = static_cast<int32_t>(rng.below(3));
    using clock = std::chrono::steady_clock;
    const auto ms = [](clock::time_point a) {
      return std::chrono::duration<double, std::milli>(clock::now() - a).count();
    };

    // augment() per sample (plain loops, one thread: a loader worker's share), summed over the batch.
    double host_ms = 0;
    for (int r = 0; r < repeats; ++r)
      for (int b = 0; b < batch; ++b) {
        io::Sample s = base;
        Rng g(100 + r * batch + b);
        const auto t0 = clock::now();
        io::augment(s, o, g);
        host_ms += ms(t0);
      }
    host_ms /= repeats;

    // augment_batch on `where`: the batch assembled once, copied to the device per repeat (not timed).
    const auto batched = [&](Device where) {
      const int64_t B = batch;
      Tensor image = Tensor::empty({B, size[0], size[1], size[2], channels}),
             label = Tensor::empty({B, size[0], size[1], size[2]}, DType::i32);
      for (int64_t b = 0; b < B; ++b) {
        std::memcpy(image.data<float>() + b * base.image.size(), base.image.data(), base.image.size() * 4);
        std::memcpy(label.data<int32_t>() + b * base.label.size(), base.label.data(), base.label.size() * 4);
      }
      double total = 0;
      for (int r = -1; r < repeats; ++r) {  // r = -1: warm-up
        std::vector<io::AugmentRecord> rec;
        for (int64_t b = 0; b < B; ++b) {
          Rng g(100 + (r + 1) * B + b);
          rec.push_back(io::draw_augment(o, g));
        }
        Tensor im = image.clone().to(where), la = label.clone().to(where);
        device::synchronize(where);
        const auto t0 = clock::now();
        io::augment_batch(im, la, rec, false);
        device::synchronize(where);
        if (r >= 0) total += ms(t0);
      }
      return total / repeats;
    };
    const double cpu_ms = batched(Device::cpu);
    std::printf("augment_bench: patch %ldx%ldx%ld, %d channel(s), batch %d, augmentation %s, %d threads\n",
                static_cast<long>(size[0]), static_cast<long>(size[1]), static_cast<long>(size[2]), channels, batch,
                augment.c_str(), num_threads());
    std::printf("  augment() per sample, 1 thread, the batch's samples summed  %10.2f ms\n", host_ms);
    std::printf("  augment_batch on cpu (%2d threads)                          %10.2f ms\n", num_threads(), cpu_ms);
    if (dev != Device::cpu)
      std::printf("  augment_batch on %-8s                                   %10.2f ms\n", device_name.c_str(),
                  batched(dev));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "augment_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
