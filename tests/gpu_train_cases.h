// Device-generic check of a DynUNet training step and of saving the trained model, shared by tests/test_gpu.cpp
// (Device::cuda) and tests/test_cuda_gpu_cases.cpp (Device::cuda_emu): the same network, initial weights and batch
// train on the cpu and on the device, and the device model's checkpoint is read back.
// Tolerances: every difference comes from reduction order (conv, norm, loss) on the device, so the losses agree to
// 1e-5 relative (as tests/test_cuda_emu_device.cpp) and the parameters to 1e-4 relative + 1e-6 absolute. One
// exception is allowed for: AdamW's first steps move each weight by about lr * g / (|g| + eps), so a gradient that is
// zero up to rounding noise (|g| ~ 1e-9) may take another sign on the device and move its weight by up to 2 lr a step
// the other way (seen on the emulator: 1 weight of 21582 off by 7e-6); at most max(4, n / 2000) of n weights may differ
// by more than the tolerance, none by more than 2 lr * steps + 1e-6. That normalised update would hide a gradient off
// by a factor, so the first step's gradients are compared too: relative L2 error 1e-3 per parameter tensor.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "engine/tensor.h"
#include "io/safetensors.h"
#include "models/checkpoint.h"
#include "models/nnunet.h"
#include "models/trainer.h"
#include "tests/gpu_conv_cases.h"  // rel_l2
#include "tests/test_util.h"

namespace unet::test::gpu_cases {

// A 3-level 3D DynUNet (kernel 3, strides 1, 2, 2; filters f, 2f, 4f), 2 input channels (the thin first-layer
// kernel), 3 classes, deep supervision at 1/2.
inline models::DynUNetConfig small_dynunet(int filters) {
  models::DynUNetConfig c;
  c.in_channels = 2;
  c.out_channels = 3;
  c.kernels = {{3, 3, 3}, {3, 3, 3}, {3, 3, 3}};
  c.strides = {{1, 1, 1}, {2, 2, 2}, {2, 2, 2}};
  c.filters = {filters, 2 * filters, 4 * filters};
  c.deep_supervision = true;
  c.deep_supr_num = 1;
  return c;
}

// CHECKs got against ref as the file comment says (rtol / atol, a few sign-flip outliers within `flip`); returns the
// number of outliers.
inline size_t check_weights_close(const std::vector<float>& got, const std::vector<float>& ref, double rtol,
                                  double atol, double flip, const std::string& what) {
  REQUIRE_MESSAGE(got.size() == ref.size(), what);
  size_t outliers = 0;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(double(got[i]) - double(ref[i]));
    if (!(e <= atol + rtol * std::fabs(ref[i]))) ++outliers;
    if (!(e <= worst)) worst = e, at = i;
  }
  CHECK_MESSAGE(worst <= flip, what << ": element " << at << " got " << got[at] << " expected " << ref[at]
                                    << " (difference " << worst << ", at most " << flip << ")");
  return outliers;
}

// Trains small_dynunet(filters) for `steps` AdamW steps on a [batch, size^3, 2] batch on the cpu and on d, compares
// the losses and every parameter, then saves the device model (models::save_weights) and the cpu model and reads both
// files back: the device model's tensors equal its parameters copied to the cpu in PyTorch layout bitwise, and the
// cpu model's within the parameter tolerance.
inline void check_training_and_checkpoint(Device d, int filters, int64_t size, int64_t batch, int steps) {
  const models::DynUNetConfig c = small_dynunet(filters);
  Rng rng(50);
  std::vector<float> xv(static_cast<size_t>(batch * size * size * size * 2)), lv(xv.size() / 2);
  for (float& v : xv) v = static_cast<float>(rng.normal());
  for (float& v : lv) v = static_cast<float>(rng.below(3));
  const Tensor x = Tensor::from_vector({batch, size, size, size, 2}, xv);
  const Tensor labels = Tensor::from_vector({batch, size, size, size}, lv, DType::i32);
  const AdamOptions adam;  // AdamW's defaults: lr 8e-4, weight decay 1e-4
  test::TempDir tmp("gpu_train_checkpoint");

  struct Run {
    std::vector<models::StepStats> stats;
    std::vector<std::vector<float>> first_grads;  // every parameter's gradient in the first step
    std::vector<std::pair<std::string, std::vector<float>>> params;
    std::string file;
  };
  auto train = [&](Device dev) {
    Run r;
    models::DynUNet net(c);
    net.initialize(7);
    net.to(dev);
    AdamW opt(net.parameters(), adam);
    const Tensor xd = x.to(dev), ld = labels.to(dev);
    for (int step = 0; step < steps; ++step) {
      r.stats.push_back(models::train_step(net, opt, xd, ld));
      REQUIRE(r.stats.back().stepped);
      if (step == 0)  // train_step leaves the gradients it stepped with
        for (const Tensor& p : net.parameters()) r.first_grads.push_back(p.grad().to_vector());
    }
    for (const auto& [name, p] : net.named_parameters()) {
      CHECK_MESSAGE(p.device() == dev, name);
      r.params.emplace_back(name, p.to_vector());
    }
    r.file = tmp / (std::string(device_name(dev)) + ".safetensors");
    models::save_weights(r.file, net, io::Metadata{{"device", device_name(dev)}});
    // The saved tensors are the parameters, copied to the cpu and converted to PyTorch's layout, bit for bit.
    const io::SafetensorsContent saved = io::read_safetensors(r.file);
    const auto named = net.named_parameters();
    CHECK(saved.tensors.size() == named.size());
    CHECK(saved.metadata.at("device") == device_name(dev));
    for (const auto& [name, p] : named) {
      const Tensor expected = models::to_pytorch_layout(name, p.to(Device::cpu));
      const Tensor& got = saved.get(name);
      CHECK_MESSAGE(got.device() == Device::cpu, name);
      CHECK_MESSAGE(got.shape() == expected.shape(), name);
      REQUIRE_MESSAGE(got.dtype() == expected.dtype(), name);
      CHECK_MESSAGE(std::memcmp(got.raw(), expected.raw(), expected.nbytes()) == 0, name << " saved != parameter");
    }
    return r;
  };
  const Run cpu = train(Device::cpu), dev = train(d);

  for (int step = 0; step < steps; ++step) {
    const std::vector<float> c = cpu.stats[step].losses.to_vector(), g = dev.stats[step].losses.to_vector();
    MESSAGE("step " << step << ": loss cpu " << c[0] << ", " << std::string(device_name(d)) << " " << g[0]);
    for (int k = 0; k < 3; ++k) CHECK(g[k] == doctest::Approx(c[k]).epsilon(1e-5));  // loss, Dice, CE
  }
  // The first step's gradients (same weights on both sides), which AdamW's normalised update would hide a scale error
  // of: relative L2 error per tensor 1e-3 (1.9e-5 at most on the emulator at the GPU test's size).
  REQUIRE(dev.first_grads.size() == cpu.first_grads.size());
  double worst_grad = 0;
  for (size_t i = 0; i < cpu.first_grads.size(); ++i) {
    const double e = rel_l2(dev.first_grads[i], cpu.first_grads[i]);
    CHECK_MESSAGE(e <= 1e-3, "gradient of " << cpu.params[i].first << ": relative L2 error " << e);
    worst_grad = std::max(worst_grad, e);
  }
  MESSAGE("first step's gradients: largest relative L2 error of a parameter's " << worst_grad);
  const double flip = 2 * adam.lr * steps + 1e-6;
  REQUIRE(dev.params.size() == cpu.params.size());
  size_t outliers = 0, count = 0;
  for (size_t i = 0; i < cpu.params.size(); ++i) {
    CHECK(dev.params[i].first == cpu.params[i].first);
    outliers += check_weights_close(dev.params[i].second, cpu.params[i].second, 1e-4, 1e-6, flip, cpu.params[i].first);
    count += cpu.params[i].second.size();
  }
  MESSAGE(count << " parameters after " << steps << " AdamW steps: " << outliers
                << " beyond 1e-4 relative + 1e-6 absolute of the cpu's");
  CHECK(outliers <= std::max<size_t>(4, count / 2000));

  // The device model's checkpoint against the cpu model's, tensor by tensor (PyTorch layout on both sides).
  const io::SafetensorsContent a = io::read_safetensors(dev.file), b = io::read_safetensors(cpu.file);
  REQUIRE(a.tensors.size() == b.tensors.size());
  outliers = 0;
  for (const auto& [name, t] : b.tensors) {
    const Tensor& got = a.get(name);
    CHECK_MESSAGE(got.shape() == t.shape(), name);
    outliers += check_weights_close(got.to_vector(), t.to_vector(), 1e-4, 1e-6, flip, "checkpoint " + name);
  }
  CHECK(outliers <= std::max<size_t>(4, count / 2000));
}

}  // namespace unet::test::gpu_cases
