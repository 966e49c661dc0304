// The GPU build's self-test of Device::cuda on a real GPU (built only with UNET_CUDA_RUNTIME=ON): device memory and its
// accounting, copies in every direction, stream-ordered memset, the event timer, and every op with a CUDA kernel
// against the CPU op, forward and backward. Without a GPU each case says so and passes, so CI (no GPU) builds and runs
// the file; on a GPU machine `build-gpu/unet_tests --source-file='*test_gpu*'` is the check.
// Tolerances: copies, add, relu, concat, upsampling and casts are exact on any hardware; reductions (instance norm,
// the DiceCE sums) run in another order than on the CPU and nvcc contracts multiply-adds, so 1e-5 relative as under the
// emulator, 1e-6 for the optimizer steps (one fused multiply-add per moment instead of two roundings), and 1e-4 (1e-3
// absolute) for the f32 convolutions (sums of hundreds of products in another order).
// The convolution kernels called directly (production tiles chosen by the kernels themselves, f16 / bf16 / TF32,
// statistics epilogue, norm + leaky ReLU on load) and the training step + checkpoint are the device-generic checks of
// tests/gpu_conv_cases.h and tests/gpu_train_cases.h, whose tolerances are stated there; tests/test_cuda_gpu_cases.cpp
// runs the same checks on the emulator at tiny sizes, so CI exercises this file's logic without a GPU (the
// production-size cases pass there too, in about 4 minutes: call them with Device::cuda_emu to re-check by hand).
// Run time on an H200 (2026-12-04): 5 s, most of it the CPU references (16 host threads); 7 s under compute-sanitizer
// memcheck. The one deliberate out-of-memory request (its own case, below) is reported by the sanitizer as 2 API errors
// (cudaMallocAsync, then the cudaGetLastError that clears it); --test-case-exclude='*deliberate*' leaves it out, and
// every other case gave "ERROR SUMMARY: 0 errors".
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "kernels/cuda/conv.cuh"
#include "tests/gpu_conv_cases.h"
#include "tests/gpu_train_cases.h"
#include "tests/mixed_precision_cases.h"
#include "tests/test_util.h"

using namespace unet;

namespace {

constexpr Device kGpu = Device::cuda;

// True when a GPU can be used; otherwise reports why once per case, which then passes without checking anything.
bool have_gpu() {
  std::string why;
  if (device::cuda_device_count(&why) > 0) return true;
  MESSAGE("no CUDA device (" << why << "): the GPU checks of this case did not run");
  return false;
}

Tensor randn(const Shape& shape, uint64_t seed, float stddev = 1.f) {
  Rng rng(seed);
  return unet::randn(shape, rng, stddev);
}


// f on the cpu and on kGpu (see test::check_op_against_cpu).
void check_op(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
              double rtol, double atol) {
  test::check_op_against_cpu(kGpu, f, inputs, rtol, atol);
}

}  // namespace

TEST_CASE("gpu: device auto and cuda select the GPU") {
  if (!have_gpu()) return;
  std::ostringstream log;
  CHECK(device::resolve_device("auto", &log) == kGpu);
  CHECK(log.str().rfind("unet: running on CUDA device ", 0) == 0);
  CHECK(device::resolve_device("cuda", nullptr) == kGpu);
  CHECK(device::default_stream(kGpu) != nullptr);
}

TEST_CASE("gpu: tensors round-trip cpu -> cuda -> cuda -> cpu bitwise in every dtype") {
  if (!have_gpu()) return;
  std::vector<float> values(105);  // small non-negative halves and integers: every dtype holds them
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i * 7 % 23) + (i % 2 ? 0.5f : 0.f);
  for (DType dt : {DType::f32, DType::f16, DType::bf16, DType::i32, DType::u8}) {
    Tensor a = Tensor::from_vector({3, 5, 7}, values, dt);
    Tensor d = a.to(kGpu);
    CHECK(d.device() == kGpu);
    Tensor back = d.clone().to(Device::cpu);  // clone: a device-to-device copy
    CHECK(std::memcmp(back.raw(), a.raw(), a.nbytes()) == 0);
  }
  CHECK(Tensor::zeros({1000}, DType::f32, kGpu).to_vector() == std::vector<float>(1000, 0.f));
  Tensor ones = Tensor::full({5}, 1.f).to(kGpu);
  device::memset(kGpu, ones.raw(), 0, 2 * sizeof(float));  // stream-ordered; the copy back waits for it
  CHECK(ones.to_vector() == std::vector<float>{0, 0, 1, 1, 1});
}

TEST_CASE("gpu: memory is accounted apart from the cpu's, peaks reset, and freed memory stays cached") {
  if (!have_gpu()) return;
  device::synchronize(kGpu);
  const MemoryStats before = device::memory_stats(kGpu);
  device::reset_peak(kGpu);
  const size_t bytes = size_t{1} << 24;
  {
    Tensor t = Tensor::empty({static_cast<int64_t>(bytes / 4)}, DType::f32, kGpu);
    CHECK(device::memory_stats(kGpu).current_bytes == before.current_bytes + bytes);
    CHECK(device::memory_stats(kGpu).peak_bytes == before.current_bytes + bytes);
  }
  device::synchronize(kGpu);
  const MemoryStats after = device::memory_stats(kGpu);
  CHECK(after.current_bytes == before.current_bytes);
  CHECK(after.peak_bytes == before.current_bytes + bytes);
  CHECK(after.cached_bytes >= bytes);  // the release threshold keeps it in the pool past the synchronisation
}

TEST_CASE(
    "gpu: a deliberate out-of-memory request (4 PiB) throws DeviceError naming the size, and the GPU stays usable") {
  if (!have_gpu()) return;
  // compute-sanitizer reports this request as 2 API errors ("out of memory" on cudaMallocAsync, and the same error
  // returned by the cudaGetLastError that clears it in engine/device.cpp): expected, and the only ones test_gpu makes.
  MESSAGE(
      "deliberate out-of-memory request: compute-sanitizer reports 2 API errors (cudaMallocAsync, "
      "cudaGetLastError) for it");
  CHECK_THROWS_WITH_AS(Tensor::empty({int64_t{1} << 50}, DType::f32, kGpu), doctest::Contains("bytes on cuda"),
                       device::DeviceError);
  // The error was cleared: the next allocation and kernel do not report it as their own.
  Tensor a = randn({1000}, 3).to(kGpu);
  CHECK(ops::add(a, a).to_vector() == ops::add(randn({1000}, 3), randn({1000}, 3)).to_vector());
}

TEST_CASE("gpu: the event timer measures queued work") {
  if (!have_gpu()) return;
  Tensor a = randn({1 << 22}, 2).to(kGpu);
  device::EventTimer t(kGpu);
  t.start();
  Tensor b = ops::add(a, a);
  t.stop();
  const double ms = t.elapsed_ms();
  CHECK(ms > 0.0);
  CHECK(ms < 1000.0);
  MESSAGE("add of 4M floats: " << ms << " ms");
}

TEST_CASE("gpu: an op refuses tensors on two devices") {
  if (!have_gpu()) return;
  CHECK_THROWS_AS(ops::add(randn({4}, 1), randn({4}, 2).to(kGpu)), std::invalid_argument);
}

TEST_CASE("gpu: add, scale, relu and leaky_relu equal the cpu ops (bitwise)") {
  if (!have_gpu()) return;
  check_op([](const std::vector<Tensor>& x) { return ops::scale(ops::add(x[0], x[1]), 0.75f); },
           {randn({3, 5, 7}, 1), randn({3, 5, 7}, 2)}, 0, 0);
  check_op([](const std::vector<Tensor>& x) { return ops::relu(x[0]); }, {randn({2, 4, 4, 3}, 3)}, 0, 0);
  check_op([](const std::vector<Tensor>& x) { return ops::leaky_relu(x[0], 0.01f); }, {randn({2, 4, 4, 3}, 4)}, 0, 0);
}

TEST_CASE("gpu: instance_norm equals the cpu op within 1e-5") {
  if (!have_gpu()) return;
  check_op([](const std::vector<Tensor>& x) { return ops::instance_norm(x[0], x[1], x[2]); },
           {randn({2, 4, 5, 6, 3}, 5, 2.f), randn({3}, 6), randn({3}, 7)}, 1e-5, 1e-5);
  check_op([](const std::vector<Tensor>& x) { return ops::instance_norm(x[0], x[1], x[2]); },
           {randn({1, 16, 16, 16, 32}, 8, 3.f), randn({32}, 9), randn({32}, 10)}, 1e-5, 1e-5);
}

TEST_CASE("gpu: every op in f16 and bf16 is the f32 op on rounded inputs, rounded once, to one ulp") {
  if (!have_gpu()) return;
  // As on cuda-emu (tests/test_cuda_mixed_precision.cpp): the GPU sums in another order (and nvcc contracts
  // multiply-adds), so a result may round to the neighbouring 16-bit value.
  test::check_every_op_mixed_precision(kGpu, 1.0, 1e-5);
}

TEST_CASE("gpu: conv and conv_transpose forward/backward equal the cpu ops") {
  if (!have_gpu()) return;
  // f32 through the ops (SIMT kernels; C <= 4 takes the thin first-layer kernel): sums of up to 864 products per
  // output and of up to 1024 pixels per weight gradient in another order than the cpu's, so 1e-4 relative with an
  // absolute floor of 1e-3 for gradients that sum over every output position (as the self-test).
  auto conv = [](std::vector<int> stride, std::vector<int> pad) {
    return [=](const std::vector<Tensor>& x) { return ops::conv(x[0], x[1], x[2], stride, pad); };
  };
  check_op(conv({1, 1, 1}, {1, 1, 1}), {randn({2, 5, 6, 7, 3}, 50), randn({4, 3, 3, 3, 3}, 51, 0.3f), randn({4}, 52)},
           1e-4, 1e-3);
  check_op(conv({1, 1, 1}, {1, 1, 1}), {randn({1, 6, 5, 6, 1}, 53), randn({8, 3, 3, 3, 1}, 54, 0.3f), randn({8}, 55)},
           1e-4, 1e-3);
  check_op(conv({1, 2, 2}, {0, 1, 1}), {randn({1, 4, 7, 6, 5}, 56), randn({3, 1, 3, 3, 5}, 57, 0.3f), randn({3}, 58)},
           1e-4, 1e-3);
  check_op(conv({2, 2}, {1, 1}), {randn({2, 9, 7, 8}, 59), randn({16, 3, 3, 8}, 60, 0.2f), randn({16}, 61)}, 1e-4,
           1e-3);
  check_op(conv({2, 2, 2}, {1, 1, 1}),
           {randn({2, 6, 8, 8, 16}, 62), randn({32, 3, 3, 3, 16}, 63, 0.1f), randn({32}, 64)}, 1e-4, 1e-3);
  check_op(conv({1, 1, 1}, {1, 1, 1}),
           {randn({2, 8, 8, 8, 32}, 65), randn({32, 3, 3, 3, 32}, 66, 0.1f), randn({32}, 67)}, 1e-4, 1e-3);
  auto tconv = [](const std::vector<Tensor>& x) { return ops::conv_transpose(x[0], x[1], x[2]); };
  check_op(tconv, {randn({1, 3, 2, 3, 4}, 68), randn({3, 2, 2, 2, 4}, 69), randn({3}, 70)}, 1e-4, 1e-3);
  check_op(tconv, {randn({2, 2, 3, 3, 6}, 71), randn({4, 1, 2, 2, 6}, 72), randn({4}, 73)}, 1e-4, 1e-3);
  check_op(tconv, {randn({2, 4, 4, 4, 64}, 74), randn({32, 2, 2, 2, 64}, 75, 0.2f), randn({32}, 76)}, 1e-4, 1e-3);
}

TEST_CASE("gpu: concat_channels, upsample_nearest and cast equal the cpu ops (bitwise)") {
  if (!have_gpu()) return;
  check_op(
      [](const std::vector<Tensor>& x) {
        return ops::concat_channels({x[0], x[1]});
      },
      {randn({2, 3, 4, 2}, 8), randn({2, 3, 4, 5}, 9)}, 0, 0);
  check_op(
      [](const std::vector<Tensor>& x) {
        return ops::upsample_nearest(x[0], {2, 1, 2});
      },
      {randn({1, 2, 3, 4, 3}, 10)}, 0, 0);
  check_op([](const std::vector<Tensor>& x) { return ops::cast(x[0], DType::bf16); }, {randn({4, 9}, 11)}, 0, 0);
  check_op([](const std::vector<Tensor>& x) { return ops::cast(x[0], DType::f16); }, {randn({4, 9}, 12)}, 0, 0);
}

TEST_CASE("gpu: argmax_channels equals the cpu op") {
  if (!have_gpu()) return;
  Tensor x = randn({2, 3, 4, 5}, 13);
  Tensor a = ops::argmax_channels(x), b = ops::argmax_channels(x.to(kGpu));
  CHECK(b.device() == kGpu);
  CHECK(b.to_vector() == a.to_vector());
}

TEST_CASE("gpu: dice_ce_loss equals the cpu op within 1e-5, forward parts and gradient") {
  if (!have_gpu()) return;
  Rng rng(15);
  std::vector<float> lv(2 * 4 * 4 * 3);
  for (float& v : lv) v = static_cast<float>(rng.below(3));
  Tensor logits = randn({2, 4, 4, 3, 3}, 14, 2.f), labels = Tensor::from_vector({2, 4, 4, 3}, lv, DType::i32);
  float d_cpu = 0, ce_cpu = 0, d_gpu = 0, ce_gpu = 0;
  Tensor lc = logits.clone().set_requires_grad(true), lg = logits.to(kGpu).set_requires_grad(true);
  Tensor a = test::dice_ce(lc, labels, &d_cpu, &ce_cpu);
  const float a_value = a.item();
  autograd::backward(a);
  Tensor b = test::dice_ce(lg, labels.to(kGpu), &d_gpu, &ce_gpu);
  CHECK(d_gpu == doctest::Approx(d_cpu).epsilon(1e-5));
  CHECK(ce_gpu == doctest::Approx(ce_cpu).epsilon(1e-5));
  CHECK(b.item() == doctest::Approx(a_value).epsilon(1e-5));
  autograd::backward(b);
  test::check_close(lg.grad().to_vector(), lc.grad().to_vector(), 1e-5, 1e-7, "d logits");
  Tensor bad = labels.clone();  // a label outside [0, C) on a device: a NaN loss (the host does not wait to check)
  bad.data<int32_t>()[5] = 3;
  CHECK(std::isnan(ops::dice_ce_loss(logits.to(kGpu), bad.to(kGpu)).item()));
}

TEST_CASE("gpu: Adam and SGD steps equal the cpu steps, and a nonfinite gradient skips the step") {
  if (!have_gpu()) return;
  for (int kind = 0; kind < 2; ++kind) {
    std::vector<float> result[2];
    for (int side = 0; side < 2; ++side) {
      const Device d = side ? kGpu : Device::cpu;
      Tensor p = randn({37}, 22).to(d), q = randn({5, 3}, 23).to(d);
      p.set_requires_grad(true), q.set_requires_grad(true);
      std::unique_ptr<Optimizer> opt;
      if (kind == 0)
        opt = std::make_unique<Adam>(std::vector<Tensor>{p, q});
      else
        opt = std::make_unique<SGD>(std::vector<Tensor>{p, q});
      for (int step = 0; step < 3; ++step) {
        p.set_grad(randn({37}, 30 + step).to(d));
        q.set_grad(randn({5, 3}, 40 + step).to(d));
        REQUIRE(opt->step());
      }
      p.set_grad(Tensor::full({37}, INFINITY).to(d));
      CHECK_FALSE(opt->step());
      for (const Tensor& t : {p, q}) {
        auto v = t.to_vector();
        result[side].insert(result[side].end(), v.begin(), v.end());
      }
    }
    test::check_close(result[1], result[0], 1e-6, 1e-7, kind ? "SGD" : "Adam");
  }
}

// ---- the convolution kernels called directly (kernels/cuda/conv.cuh) at the sizes where the kernels themselves
// choose each production tile, and the training step + checkpoint (tests/gpu_conv_cases.h, gpu_train_cases.h; the
// cases are there so that they can be run on the emulator too) ----

namespace gc = test::gpu_cases;

TEST_CASE(
    "gpu: conv tile 128x64 (fprop and dgrad with 64 channels, >= 8192 rows) equals the cpu in f16, bf16, tf32, f32") {
  if (!have_gpu()) return;
  gc::conv_tile_128x64_case(kGpu);
}

TEST_CASE("gpu: conv tile 128x32 (32 channels) equals the cpu in f16, bf16, tf32, the strided down layer too") {
  if (!have_gpu()) return;
  gc::conv_tile_128x32_case(kGpu);
}

TEST_CASE("gpu: conv tile 64x64 (fewer than 8192 rows) equals the cpu in f16, bf16, tf32") {
  if (!have_gpu()) return;
  gc::conv_tile_64x64_case(kGpu);
}

TEST_CASE("gpu: conv wgrad tile 128x128 (128 x 8640 weight gradient) equals the cpu in f16, bf16, tf32") {
  if (!have_gpu()) return;
  gc::conv_wgrad_tile_128x128_case(kGpu);
}

TEST_CASE("gpu: conv fprop statistics (fused epilogue and second pass) and norm + leaky ReLU on load equal the cpu") {
  if (!have_gpu()) return;
  gc::conv_statistics_case(kGpu);
}

TEST_CASE("gpu: conv dbias over more than 65535 chunks of 2048 rows (N = 9 at 256^3) is the exact sum") {
  if (!have_gpu()) return;
  // 9 * 256^3 = 151M rows: 73728 row chunks, past CUDA's 65535 blocks along y (kernels/cuda/conv.cu loops over the
  // chunks beyond). One output channel of a constant bf16 value (bytes 0x3F3F = 0.74609375 = 191/256): every partial
  // sum is exact in double, so dbias is the exact sum rounded once to f32 (112656384, exact in f32 too).
  const kernels::ConvProblem p = gc::problem(9, 256, 256, 256, 8, 1, 1, 1, 1, 0);
  const int64_t rows = p.N * p.Z * p.P * p.Q;
  REQUIRE(rows / 2048 > 65535);
  Tensor dy = Tensor::empty({rows}, DType::bf16, kGpu);
  device::memset(kGpu, dy.raw(), 0x3F, dy.nbytes());
  Tensor db = gc::poisoned(1, DType::f32, kGpu);
  kernels::cuda::conv_wgrad(p, DType::bf16, nullptr, dy.raw(), nullptr, db.data<float>(), device::default_stream(kGpu));
  device::synchronize(kGpu);
  CHECK(db.to_vector()[0] == static_cast<float>(static_cast<double>(rows) * 0.74609375));
}

TEST_CASE(
    "gpu: two AdamW steps of a DynUNet on cuda equal the cpu's, and the cuda model's checkpoint holds its weights") {
  if (!have_gpu()) return;
  // filters 8 / 16 / 32, 32^3 patch, batch 2 (the first layer's 2 channels take the thin kernel). Before the checkpoint
  // save copied parameters to the cpu, save_weights of a cuda model threw "permute_copy ... host memory only".
  gc::check_training_and_checkpoint(kGpu, 8, 32, 2, 2);
}
