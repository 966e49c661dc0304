// engine/device and the cuda-emu backend: device selection, tensors on the emulated device, every dispatched op against
// the CPU op (forward and backward through autograd), and a few DynUNet training steps on both backends.
// Tolerances, from the kernels' own contracts (tests/test_cuda_*.cpp): elementwise ops, activations, copies, casts,
// argmax and the upsampling adjoint are bitwise equal to the CPU; instance norm and the DiceCE sums are reductions in
// another order (1e-5 relative); the optimizer steps are the same f32 arithmetic per element (bitwise, checked at 1e-7).
// Convolution (kernels/cuda/conv.cu, and conv_thin.cu for 1-4 input channels) and transposed convolution
// (kernels/cuda/conv_transpose.cu) sum in f32 in another order than the CPU (1e-5 relative).
// Training: 3 steps of a 3-level 3D DynUNet; every difference comes from reduction order (conv, norm, loss), amplified by the
// steps, so losses agree to 1e-5 relative and the final weights to 1e-4 relative + 1e-6 absolute.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/common/allocator.h"
#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/sliding_window.h"
#include "io/nifti.h"
#include "io/safetensors.h"
#include "models/nnunet.h"
#include "models/nnunet_plan.h"
#include "models/trainer.h"
#include "tests/test_util.h"

using namespace unet;

namespace {

constexpr Device kEmu = Device::cuda_emu;

Tensor randn(const Shape& shape, uint64_t seed, float stddev = 1.f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = static_cast<float>(stddev * rng.normal());
  return Tensor::from_vector(shape, v);
}

// 30 values that every dtype holds (small integers and halves are exact in f16 / bf16 / i32 / u8 up to truncation).
std::vector<float> test_values() {
  std::vector<float> v;
  for (int i = 0; i < 30; ++i) v.push_back(static_cast<float>(i * 7 % 23) + (i % 2 ? 0.5f : 0.f));
  return v;
}

Tensor labels_for(const Shape& shape, int classes, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = static_cast<float>(rng.below(classes));
  return Tensor::from_vector(shape, v, DType::i32);
}


// f on the cpu and on kEmu (see test::check_op_against_cpu).
void check_op(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
              double rtol, double atol) {
  test::check_op_against_cpu(kEmu, f, inputs, rtol, atol);
}

}  // namespace

TEST_CASE("device auto falls back to the cpu with one line when the CUDA runtime reports no device") {
  std::string why;
  if (device::cuda_device_count(&why) > 0) return;  // a machine with a GPU: nothing to fall back from
  std::ostringstream log;
  CHECK(device::resolve_device("auto", &log) == Device::cpu);
  const std::string line = log.str();
  CHECK(line.find("running on the CPU") != std::string::npos);
  CHECK(line.find(why) != std::string::npos);
  CHECK(std::count(line.begin(), line.end(), '\n') == 1);
  MESSAGE("auto said: " << line);
}

TEST_CASE("device cuda without a usable GPU is a clear error") {
  std::ostringstream log;
  CHECK_THROWS_AS(device::resolve_device("cuda", &log), device::DeviceError);
  CHECK(log.str().empty());
}

TEST_CASE("device cuda-emu selects the emulator, cpu the cpu, and other names are rejected") {
  CHECK(device::resolve_device("cuda-emu", nullptr) == kEmu);
  CHECK(device::resolve_device("cpu", nullptr) == Device::cpu);
  CHECK_THROWS_AS(device::resolve_device("gpu", nullptr), std::invalid_argument);
}

TEST_CASE("the error-check macros throw with the expression, file and line") {
  try {
    UNET_CUDA_CHECK(35);
    FAIL("no throw");
  } catch (const device::DeviceError& e) {
    const std::string m = e.what();
    CHECK(m.find("CUDA error 35") != std::string::npos);
    CHECK(m.find("test_cuda_emu_device.cpp:") != std::string::npos);
  }
  CHECK_THROWS_AS(UNET_DEVICE_CHECK(1 + 1 == 3, "arithmetic"), device::DeviceError);
  CHECK_NOTHROW(UNET_DEVICE_CHECK(true, "fine"));
}

TEST_CASE("tensors round-trip cpu -> cuda-emu -> cpu bitwise in every dtype") {
  for (DType dt : {DType::f32, DType::f16, DType::bf16, DType::i32, DType::u8}) {
    Tensor a = Tensor::from_vector({2, 3, 5}, test_values(), dt);
    Tensor d = a.to(kEmu);
    CHECK(d.device() == kEmu);
    CHECK(d.raw() != a.raw());
    CHECK(d.to(kEmu).same(d));  // already there: the same tensor
    Tensor back = d.clone().to(Device::cpu);
    CHECK(back.device() == Device::cpu);
    CHECK(std::memcmp(back.raw(), a.raw(), a.nbytes()) == 0);
    CHECK(d.to_vector() == a.to_vector());  // to_vector copies to the cpu first
  }
  Tensor z = Tensor::zeros({7}, DType::f32, kEmu);
  CHECK(z.to_vector() == std::vector<float>(7, 0.f));
}

TEST_CASE("cuda-emu memory is accounted apart from the cpu's") {
  const MemoryStats emu0 = device::memory_stats(kEmu), cpu0 = device::memory_stats(Device::cpu);
  {
    Tensor t = Tensor::empty({1 << 16}, DType::f32, kEmu);
    CHECK(device::memory_stats(kEmu).current_bytes >= emu0.current_bytes + (1u << 18));
    CHECK(device::memory_stats(Device::cpu).current_bytes == cpu0.current_bytes);
  }
  CHECK(device::memory_stats(kEmu).current_bytes == emu0.current_bytes);
  CHECK(device::default_stream(kEmu) == nullptr);
  CHECK_NOTHROW(device::synchronize(kEmu));
}

TEST_CASE("an op refuses tensors on two devices") {
  Tensor a = randn({4}, 1), b = randn({4}, 2).to(kEmu);
  CHECK_THROWS_AS(ops::add(a, b), std::invalid_argument);
}

TEST_CASE("cuda-emu add and scale equal the cpu ops (bitwise)") {
  check_op([](const std::vector<Tensor>& x) { return ops::scale(ops::add(x[0], x[1]), 0.75f); },
           {randn({3, 5, 7}, 1), randn({3, 5, 7}, 2)}, 0, 0);
}

TEST_CASE("cuda-emu relu and leaky_relu equal the cpu ops (bitwise)") {
  check_op([](const std::vector<Tensor>& x) { return ops::relu(x[0]); }, {randn({2, 4, 4, 3}, 3)}, 0, 0);
  check_op([](const std::vector<Tensor>& x) { return ops::leaky_relu(x[0], 0.01f); }, {randn({2, 4, 4, 3}, 4)}, 0, 0);
}

TEST_CASE("cuda-emu instance_norm equals the cpu op within 1e-5") {
  check_op([](const std::vector<Tensor>& x) { return ops::instance_norm(x[0], x[1], x[2]); },
           {randn({2, 4, 5, 6, 3}, 5, 2.f), randn({3}, 6), randn({3}, 7)}, 1e-5, 1e-5);
}

TEST_CASE("cuda-emu batch_norm in training (with ReLU, several 1024-row chunks) equals the cpu op within 1e-5") {
  for (bool relu : {false, true}) {
    CAPTURE(relu);
    // The running statistics live on the op's device: each run makes its own there, and both must agree too.
    std::vector<std::vector<float>> running;
    check_op(
        [&](const std::vector<Tensor>& x) {
          Tensor rm = Tensor::zeros({5}).to(x[0].device()), rv = Tensor::full({5}, 1.f).to(x[0].device());
          ops::BatchNormOptions o;
          o.relu = relu;
          Tensor y = ops::batch_norm(x[0], x[1], x[2], rm, rv, o);
          running.push_back(rm.to_vector());
          running.push_back(rv.to_vector());
          return y;
        },
        {randn({3, 23, 31, 5}, 8, 2.f), randn({5}, 9), randn({5}, 10)}, 1e-5, 1e-5);
    REQUIRE(running.size() == 4);
    test::check_close(running[2], running[0], 1e-5, 1e-6, "running_mean");
    test::check_close(running[3], running[1], 1e-5, 1e-6, "running_var");
  }
}

TEST_CASE("cuda-emu concat_channels and upsample_nearest equal the cpu ops (bitwise)") {
  check_op([](const std::vector<Tensor>& x) { return ops::concat_channels({x[0], x[1]}); },
           {randn({2, 3, 4, 2}, 8), randn({2, 3, 4, 5}, 9)}, 0, 0);
  check_op([](const std::vector<Tensor>& x) { return ops::upsample_nearest(x[0], {2, 1, 2}); },
           {randn({1, 2, 3, 4, 3}, 10)}, 0, 0);
}

TEST_CASE("cuda-emu cast equals the cpu op (bitwise, both directions through the gradient)") {
  check_op([](const std::vector<Tensor>& x) { return ops::cast(x[0], DType::bf16); }, {randn({4, 9}, 11)}, 0, 0);
  check_op([](const std::vector<Tensor>& x) { return ops::cast(x[0], DType::f16); }, {randn({4, 9}, 12)}, 0, 0);
}

TEST_CASE("cuda-emu argmax_channels equals the cpu op") {
  Tensor x = randn({2, 3, 4, 5}, 13);
  Tensor a = ops::argmax_channels(x), b = ops::argmax_channels(x.to(kEmu));
  CHECK(b.device() == kEmu);
  CHECK(b.dtype() == DType::i32);
  CHECK(b.to_vector() == a.to_vector());
}

TEST_CASE("cuda-emu dice_ce_loss equals the cpu op within 1e-5, forward parts and gradient") {
  Tensor logits = randn({2, 4, 4, 3, 3}, 14, 2.f), labels = labels_for({2, 4, 4, 3}, 3, 15);
  float d_cpu = 0, ce_cpu = 0, d_emu = 0, ce_emu = 0;
  Tensor lc = logits.clone().set_requires_grad(true), le = logits.to(kEmu).set_requires_grad(true);
  Tensor a = test::dice_ce(lc, labels, &d_cpu, &ce_cpu);
  const float a_value = a.item();
  autograd::backward(a);  // one tape per thread: each backward before the next forward
  Tensor b = test::dice_ce(le, labels.to(kEmu), &d_emu, &ce_emu);
  CHECK(b.device() == kEmu);
  CHECK(d_emu == doctest::Approx(d_cpu).epsilon(1e-5));
  CHECK(ce_emu == doctest::Approx(ce_cpu).epsilon(1e-5));
  CHECK(b.item() == doctest::Approx(a_value).epsilon(1e-5));
  autograd::backward(b);
  test::check_close(le.grad().to_vector(), lc.grad().to_vector(), 1e-5, 1e-7, "d logits");
  // A label outside [0, C): an error naming the voxel on the cpu; on a device (which is not waited for) a NaN loss.
  Tensor bad = labels.clone();
  bad.data<int32_t>()[5] = 3;
  CHECK_THROWS_WITH_AS(ops::dice_ce_loss(logits, bad), doctest::Contains("at voxel 5"), std::invalid_argument);
  float d_bad = 0, ce_bad = 0;
  CHECK(std::isnan(test::dice_ce(logits.to(kEmu), bad.to(kEmu), &d_bad, &ce_bad).item()));
  CHECK(std::isnan(d_bad));
  CHECK(std::isnan(ce_bad));
}

TEST_CASE("cuda-emu conv equals the cpu op within 1e-5") {
  SUBCASE("3D, 2 input channels (the thin first-layer path), stride [1, 2, 1]") {
    check_op([](const std::vector<Tensor>& x) { return ops::conv(x[0], x[1], x[2], {1, 2, 1}, {1, 1, 1}); },
             {randn({1, 4, 5, 6, 2}, 16), randn({3, 3, 3, 3, 2}, 17), randn({3}, 18)}, 1e-5, 1e-5);
  }
  SUBCASE("3D implicit GEMM, 6 input channels, batch 2, stride [2, 1, 1]") {
    check_op([](const std::vector<Tensor>& x) { return ops::conv(x[0], x[1], x[2], {2, 1, 1}, {1, 1, 1}); },
             {randn({2, 5, 4, 3, 6}, 60), randn({8, 3, 3, 3, 6}, 61), randn({8}, 62)}, 1e-5, 1e-5);
  }
  SUBCASE("2D implicit GEMM without bias, kernel 1x3") {
    check_op([](const std::vector<Tensor>& x) { return ops::conv(x[0], x[1], Tensor(), {1, 1}, {0, 1}); },
             {randn({1, 5, 7, 8}, 63), randn({5, 1, 3, 8}, 64)}, 1e-5, 1e-5);
  }
}

TEST_CASE("set_conv_allow_tf32 switches cuda-emu f32 convolutions to TF32: close to fp32 but not equal; off restores fp32") {
  Tensor x = randn({1, 4, 5, 6, 8}, 70).to(kEmu), w = randn({8, 3, 3, 3, 8}, 71).to(kEmu);
  const std::vector<float> fp32 = ops::conv(x, w, Tensor(), {1, 1, 1}, {1, 1, 1}).to_vector();
  ops::set_conv_allow_tf32(true);
  const std::vector<float> tf32 = ops::conv(x, w, Tensor(), {1, 1, 1}, {1, 1, 1}).to_vector();
  ops::set_conv_allow_tf32(false);
  CHECK(tf32 != fp32);
  test::check_close(tf32, fp32, 0, 5e-2, "tf32 vs fp32 (sums of 216 products of unit normals, 2^-11 per operand)");
  CHECK(ops::conv(x, w, Tensor(), {1, 1, 1}, {1, 1, 1}).to_vector() == fp32);
}

TEST_CASE("cuda-emu conv with a frozen weight gives dx and dbias as on the cpu (x not saved)") {
  std::vector<float> result[2];
  for (int side = 0; side < 2; ++side) {
    const Device d = side ? kEmu : Device::cpu;
    Tensor x = randn({2, 3, 4, 5, 8}, 65).to(d), w = randn({4, 3, 3, 3, 8}, 66).to(d), b = randn({4}, 67).to(d);
    x.set_requires_grad(true), b.set_requires_grad(true);
    Tensor y = ops::conv(x, w, b, {1, 1, 1}, {1, 1, 1});
    autograd::backward(y, randn(y.shape(), 68).to(d));
    CHECK_FALSE(w.grad().defined());
    for (const Tensor& t : {y, x.grad(), b.grad()}) {
      auto v = t.to_vector();
      result[side].insert(result[side].end(), v.begin(), v.end());
    }
  }
  test::check_equal_or_close(result[1], result[0], 1e-5, 1e-5, "y, dx, dbias");
}

TEST_CASE("cuda-emu conv_transpose equals the cpu op within 1e-5") {
  check_op([](const std::vector<Tensor>& x) { return ops::conv_transpose(x[0], x[1], x[2]); },
           {randn({1, 2, 3, 2, 4}, 19), randn({3, 2, 2, 2, 4}, 20), randn({3}, 21)}, 1e-5, 1e-5);
}

TEST_CASE("cuda-emu Adam and SGD steps equal the cpu steps") {
  for (int kind = 0; kind < 2; ++kind) {
    std::vector<float> result[2];
    for (int side = 0; side < 2; ++side) {
      const Device d = side ? kEmu : Device::cpu;
      Tensor p = randn({37}, 22).to(d), q = randn({5, 3}, 23).to(d);
      p.set_requires_grad(true), q.set_requires_grad(true);
      std::unique_ptr<Optimizer> opt;
      if (kind == 0) opt = std::make_unique<Adam>(std::vector<Tensor>{p, q});
      else opt = std::make_unique<SGD>(std::vector<Tensor>{p, q});
      for (int step = 0; step < 3; ++step) {
        p.set_grad(randn({37}, 30 + step).to(d));
        q.set_grad(randn({5, 3}, 40 + step).to(d));
        REQUIRE(opt->step());
      }
      p.set_grad(Tensor::full({37}, INFINITY).to(d));  // a nonfinite gradient skips the step on both backends
      CHECK_FALSE(opt->step());
      for (const Tensor& t : {p, q}) {
        CHECK(t.device() == d);
        auto v = t.to_vector();
        result[side].insert(result[side].end(), v.begin(), v.end());
      }
      for (auto& [name, s] : opt->state()) CHECK(s.device() == (name.rfind("step.", 0) == 0 ? Device::cpu : d));
    }
    test::check_close(result[1], result[0], 1e-7, 0, kind ? "SGD" : "Adam");
  }
}

TEST_CASE("three DynUNet training steps on cuda-emu match the same steps on the cpu") {
  // 3 levels, 16^3 patch, filters 4 / 8 / 16, deep supervision, 3 classes, Adam.
  models::DynUNetConfig c;
  c.in_channels = 2;
  c.out_channels = 3;
  c.kernels = {{3, 3, 3}, {3, 3, 3}, {3, 3, 3}};
  c.strides = {{1, 1, 1}, {2, 2, 2}, {2, 2, 2}};
  c.filters = {4, 8, 16};
  c.deep_supervision = true;
  c.deep_supr_num = 1;
  Tensor x = randn({2, 16, 16, 16, 2}, 50), y = labels_for({2, 16, 16, 16}, 3, 51);

  struct Run {
    std::vector<double> losses;
    std::vector<std::vector<float>> weights;
    double seconds = 0;
  };
  auto train = [&](Device d) {
    Run r;
    models::DynUNet net(c);
    net.initialize(7);
    net.to(d);
    Adam opt(net.parameters(), AdamOptions{1e-2, 0.9, 0.999, 1e-8, 1e-4});
    Tensor xd = x.to(d), yd = y.to(d);
    const auto t0 = std::chrono::steady_clock::now();
    for (int step = 0; step < 3; ++step) {
      models::StepStats s = models::train_step(net, opt, xd, yd);
      REQUIRE(s.stepped);
      r.losses.push_back(s.loss());
      if (step == 0)
        for (const Tensor& p : net.parameters()) {
          CHECK(p.device() == d);
          r.weights.push_back(p.to_vector());
        }
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  };
  const Run cpu = train(Device::cpu), emu = train(kEmu);
  MESSAGE("3 training steps: cpu " << cpu.seconds << " s, cuda-emu " << emu.seconds << " s");
  for (size_t i = 0; i < cpu.losses.size(); ++i) {
    MESSAGE("step " << i << ": loss cpu " << cpu.losses[i] << ", cuda-emu " << emu.losses[i]);
    CHECK(emu.losses[i] == doctest::Approx(cpu.losses[i]).epsilon(i == 0 ? 1e-6 : 1e-4));
  }
  CHECK(cpu.losses.back() < cpu.losses.front());  // it does learn
  REQUIRE(emu.weights.size() == cpu.weights.size());
  // The weights after the first step. Adam moves every weight by about lr (1e-2) per step whatever its gradient's
  // size, so a weight whose gradient is near zero carries the gradients' summation-order differences (about 2e-6 of
  // the largest gradient) into its update at full scale: atol is 1e-3 of the step (measured: 1e-5 at worst). The
  // later steps start from those slightly different weights, and the two runs drift apart (weights by up to 1e-2
  // after three steps, losses by 2e-5): at the same weights the two backends' gradients still agree to 2e-6.
  for (size_t i = 0; i < cpu.weights.size(); ++i)
    test::check_close(emu.weights[i], cpu.weights[i], 1e-4, 1e-5, "parameter " + std::to_string(i));
}

TEST_CASE("a training step waits for the device once (the optimizer's inf/nan flag), in every precision") {
  // Everything else stays queued on the device: the losses, the loss scale's product, the batch copied in. A second
  // wait per step would stall a GPU's queue (issue: at most one host-device synchronisation per step).
  models::DynUNetConfig c;
  c.in_channels = 1;
  c.out_channels = 3;
  c.kernels = {{3, 3, 3}, {3, 3, 3}, {3, 3, 3}, {3, 3, 3}};
  c.strides = {{1, 1, 1}, {2, 2, 2}, {2, 2, 2}, {2, 2, 2}};
  c.filters = {4, 8, 8, 8};
  c.deep_supervision = true;
  const Tensor x = randn({1, 16, 16, 16, 1}, 60), y = labels_for({1, 16, 16, 16}, 3, 61);
  for (Precision p : {Precision::fp32, Precision::bf16, Precision::fp16}) {
    CAPTURE(std::string(precision_name(p)));
    models::DynUNet net(c);
    net.initialize(1);
    net.to(kEmu);
    AdamW opt(net.parameters());
    LossScalerOptions so;
    so.enabled = p == Precision::fp16;
    LossScaler scaler(so);
    for (int step = 0; step < 3; ++step) {
      const uint64_t before = device::host_waits();
      const models::StepStats st = models::train_step(net, opt, x.to(kEmu), y.to(kEmu), p, &scaler);
      CHECK(device::host_waits() - before == 1);
      CHECK(st.losses.device() == kEmu);
      CHECK(std::isfinite(st.loss()));  // reading the losses is a wait of its own, outside the step
    }
  }
}

TEST_CASE("host code that reads cuda-emu memory outside a kernel or a copy crashes, as it would on a GPU") {
  Tensor t = Tensor::from_vector({4}, {1, 2, 3, 4}).to(kEmu);
  CHECK(t.to_vector() == std::vector<float>{1, 2, 3, 4});  // copies may read it
  for (bool write : {false, true}) {
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {  // the host touches device memory through the pointer: must not survive
      volatile float* p = static_cast<volatile float*>(t.raw());
      if (write) p[0] = 5.f;
      else std::printf("%f\n", static_cast<double>(p[0]));
      std::_Exit(0);
    }
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    CHECK_MESSAGE(WIFSIGNALED(status), (write ? "a write" : "a read") << " of cuda-emu memory from host code was allowed");
    if (WIFSIGNALED(status)) CHECK(WTERMSIG(status) == SIGSEGV);
  }
  CHECK(t.to_vector() == std::vector<float>{1, 2, 3, 4});  // and kernels still see it
  CHECK(ops::scale(t, 2.f).to_vector() == std::vector<float>{2, 4, 6, 8});
}

// The tools as a user runs them, on the emulated GPU: training saves a checkpoint (this failed on the first real GPU,
// where the save read device memory from the host), the log holds the device's peak memory, unet_infer on cuda-emu
// gives the cpu's probabilities, and unet_eval scores both alike.
TEST_CASE("unet_train runtime.device = cuda-emu trains and saves, and unet_infer --device cuda-emu segments as on the cpu") {
  test::TempDir tmp("cuda_emu_tools");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 3 --test 1 --size 16,16,16 --seed 4") == 0);
  std::ofstream(dir + "/train.ini") << "[data]\ndataset = " << dir << "/data\npatch_size = 16,16,16\nbatch_size = 1\n"
                                    << "folds = 3\n[model]\nfilters = 4\ndepth = 2\n[train]\nsteps = 2\nval_every = 1\n"
                                    << "log_every = 1\n[runtime]\ndevice = cuda-emu\n[output]\ndir = " << dir << "/run\n";
  std::string out;
  int rc = test::run_tool("unet_train", dir + "/train.ini", &out);
  REQUIRE_MESSAGE(rc == 0, out);
  CHECK(out.find("cuda-emu backend") != std::string::npos);
  // The same training on the cpu: the checkpoints agree to the reduction-order differences of two steps.
  rc = test::run_tool("unet_train", dir + "/train.ini --set runtime.device=cpu --set output.dir=" + dir + "/run-cpu", &out);
  REQUIRE_MESSAGE(rc == 0, out);
  const io::SafetensorsContent emu_weights = io::read_safetensors(dir + "/run/model.safetensors");
  const io::SafetensorsContent cpu_weights = io::read_safetensors(dir + "/run-cpu/model.safetensors");
  REQUIRE(emu_weights.tensors.size() == cpu_weights.tensors.size());
  for (const auto& [name, w] : cpu_weights.tensors)
    test::check_close(emu_weights.get(name).to_vector(), w.to_vector(), 1e-3, 1e-5, name);
  std::ifstream log(dir + "/run/log.jsonl");
  int step_lines = 0;
  for (std::string line; std::getline(log, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    ++step_lines;
    REQUIRE(j.contains("device_peak_memory_mb"));
    CHECK(j["device_peak_memory_mb"].get<double>() > 0.0);  // parameters, moments and activations live there
  }
  CHECK(step_lines == 2);
  for (const char* d : {"cpu", "cuda-emu"}) {
    rc = test::run_tool("unet_infer", "--model " + dir + "/run/model.safetensors --input " + dir + "/data/imagesTs --output " +
                                          dir + "/pred-" + d + " --save-probabilities --device " + d, &out);
    REQUIRE_MESSAGE(rc == 0, out);
  }
  for (auto& e : std::filesystem::directory_iterator(dir + "/pred-cpu")) {
    io::NiftiVolume a = io::read_nifti(e.path().string());
    io::NiftiVolume b = io::read_nifti(dir + "/pred-cuda-emu/" + e.path().filename().string());
    test::check_close(b.data.to_vector(), a.data.to_vector(), 1e-4, 1e-5, e.path().filename().string());
  }
  // --precision tf32 reaches the convolution kernels: probabilities close to fp32's, yet not the same bits.
  rc = test::run_tool("unet_infer", "--model " + dir + "/run/model.safetensors --input " + dir + "/data/imagesTs --output " +
                                        dir + "/pred-tf32 --save-probabilities --precision tf32 --device cuda-emu", &out);
  REQUIRE_MESSAGE(rc == 0, out);
  int probability_maps = 0;
  for (auto& e : std::filesystem::directory_iterator(dir + "/pred-cuda-emu")) {
    if (e.path().filename().string().find("_probabilities") == std::string::npos) continue;
    ++probability_maps;
    const std::vector<float> a = io::read_nifti(e.path().string()).data.to_vector();
    const std::vector<float> b = io::read_nifti(dir + "/pred-tf32/" + e.path().filename().string()).data.to_vector();
    CHECK(a != b);
    test::check_close(b, a, 0, 1e-2, "tf32 probabilities");
  }
  CHECK(probability_maps == 1);
  std::string dice[2];
  for (int i = 0; i < 2; ++i) {
    const std::string pred = dir + (i ? "/pred-cuda-emu" : "/pred-cpu");
    rc = test::run_tool("unet_eval", "--pred " + pred + " --label " + dir + "/data/labelsTs", &out);
    REQUIRE_MESSAGE(rc == 0, out);
    dice[i] = nlohmann::json::parse(std::ifstream(pred + "/dice.json")).dump();
  }
  CHECK(dice[0] == dice[1]);
  rc = test::run_tool("unet_infer", "--model " + dir + "/run/model.safetensors --input " + dir + "/data/imagesTs --output " +
                                        dir + "/pred-x --device cuda", &out);
  CHECK(rc == 2);
  CHECK(out.find("--device cuda") != std::string::npos);
}

TEST_CASE("sliding-window blending on cuda-emu (blend.cu) equals the cpu's, with padding, flips, 2D and 3D") {
  struct Case {
    Shape image;
    std::vector<int> patch;
  };
  for (const Case& c : {Case{{6, 13, 9, 2}, {8, 8, 8}}, Case{{11, 7, 3}, {8, 8}}})
    for (bool tta : {false, true})
      for (Blend blend : {Blend::gaussian, Blend::constant}) {
        const Tensor image = randn(c.image, 21);
        SlidingWindowOptions o;
        o.patch = c.patch;
        o.tta = tta;
        o.blend = blend;
        o.batch_size = 3;
        // A "model" whose output differs per window position and flip: the input scaled, plus itself squared.
        auto model = [](const Tensor& w) { return ops::add(ops::scale(w, 2.f), ops::relu(w)); };
        const Tensor on_cpu = sliding_window_predict(image, model, o);
        o.device = kEmu;
        int calls = 0;
        const Tensor on_emu = sliding_window_predict(
            image,
            [&](const Tensor& w) {
              ++calls;
              REQUIRE(w.device() == kEmu);  // the windows are cut on the device
              return model(w);
            },
            o);
        CHECK(calls > 0);
        CHECK(on_emu.device() == Device::cpu);
        CHECK(on_emu.shape() == on_cpu.shape());
        test::check_close(on_emu.to_vector(), on_cpu.to_vector(), 1e-6, 1e-7, "blended logits");
      }
}
