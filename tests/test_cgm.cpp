// UNet 3+'s classification-guided module: its ops (ops::presence_mask, ops::scale_samples, ops::presence_bce_loss)
// against references written here, finite differences, and the CUDA kernels under the emulator; the module in the
// network against PyTorch (tests/golden/make_unet3plus_golden.py, cgm_main); and training through unet_train.
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "models/checkpoint.h"
#include "models/unet3plus.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::models;

TEST_CASE("presence_mask: 1 where 'present' wins the argmax, 0 on ties and where 'absent' wins") {
  const Tensor z = Tensor::from_vector({4, 2}, {0.f, 1.f, 2.f, -1.f, 0.5f, 0.5f, -3.f, -2.9f});
  CHECK(ops::presence_mask(z).to_vector() == std::vector<float>{1, 0, 0, 1});
  CHECK_THROWS_WITH_AS(ops::presence_mask(Tensor::zeros({4, 3})), doctest::Contains("expected f32 logits [N, 2]"),
                       std::invalid_argument);
}

TEST_CASE("scale_samples multiplies each sample by its mask value; the gradient is the mask's too") {
  Rng rng(3);
  const Tensor mask = Tensor::from_vector({3}, {1.f, 0.f, 1.f});
  Tensor x = randn({3, 4, 5, 2}, rng).set_requires_grad(true);
  const std::vector<float> v = x.to_vector(), y = ops::scale_samples(x, mask).to_vector();
  for (size_t i = 0; i < v.size(); ++i) REQUIRE(y[i] == (i / 40 == 1 ? 0.f : v[i]));
  test::check_gradients([&](const std::vector<Tensor>& in) { return ops::scale_samples(in[0], mask); }, {x}, 1e-3, 1e-4,
                        1e-6);
  if (!device::emulator_built()) return;
  // The mask from logits on x's device (present, absent, present), as the network makes it.
  const Tensor z = Tensor::from_vector({3, 2}, {0.f, 1.f, 1.f, 0.f, -1.f, 2.f});
  const auto f = [z](const std::vector<Tensor>& in) {
    return ops::scale_samples(in[0], ops::presence_mask(z.to(in[0].device())));
  };
  test::check_op_against_cpu(Device::cuda_emu, f, {x.detach()}, 0, 0);
  for (DType dt : {DType::f16, DType::bf16}) {
    CAPTURE(std::string(dtype_name(dt)));
    test::check_mixed_precision(Device::cuda_emu, dt, f, {x.detach()}, {test::Role::activation}, 0, 0);
  }
}

namespace {
// The loss from its formula, in double: mean over the 2N logits of softplus(z) - t z, t = {absent, present}.
double reference_bce(const std::vector<float>& z, const std::vector<int>& present) {
  double s = 0;
  for (size_t n = 0; n < present.size(); ++n)
    for (int k = 0; k < 2; ++k) {
      const double zz = z[n * 2 + size_t(k)], t = k == 1 ? present[n] : 1 - present[n];
      s += std::log(1 + std::exp(zz)) - t * zz;
    }
  return s / double(2 * present.size());
}
}  // namespace

TEST_CASE("presence_bce_loss: BCE with logits against 'any label > 0' per sample; gradient; cuda-emu") {
  Rng rng(4);
  // Sample 0 has one foreground pixel (the last), sample 1 none, sample 2 several.
  std::vector<float> l(3 * 6 * 5, 0.f);
  l[29] = 2;
  for (int i = 60; i < 70; ++i) l[size_t(i)] = 1;
  for (DType ldt : {DType::u8, DType::i32}) {
    const Tensor labels = Tensor::from_vector({3, 6, 5}, l, ldt);
    Tensor z = randn({3, 2}, rng, 2.f).set_requires_grad(true);
    const Tensor loss = ops::presence_bce_loss(z, labels);
    CHECK(loss.to_vector()[0] == doctest::Approx(reference_bce(z.to_vector(), {1, 0, 1})).epsilon(1e-6));
    // d loss / dz = (sigmoid(z) - t) / 2N, for an incoming gradient 0.5.
    autograd::backward(loss, Tensor::full({1}, 0.5f));
    const std::vector<float> zv = z.to_vector(), g = z.grad().to_vector();
    const int present[3] = {1, 0, 1};
    for (size_t i = 0; i < zv.size(); ++i) {
      const double t = i % 2 == 1 ? present[i / 2] : 1 - present[i / 2];
      CHECK(g[i] == doctest::Approx(0.5 * (1 / (1 + std::exp(-double(zv[i]))) - t) / 6).epsilon(1e-6));
    }
    if (device::emulator_built())
      test::check_op_against_cpu(
          Device::cuda_emu, [&](const std::vector<Tensor>& in) { return ops::presence_bce_loss(in[0], in[1]); },
          {z.detach(), labels}, 1e-6, 1e-9);
  }
  CHECK_THROWS_WITH_AS(ops::presence_bce_loss(Tensor::zeros({3, 2}), Tensor::zeros({2, 6, 5}, DType::i32)),
                       doctest::Contains("expected i32 or u8 labels [3, ...]"), std::invalid_argument);
}

TEST_CASE("UNet 3+ with the classification-guided module equals PyTorch in evaluation: 'absent' zeroes a sample") {
  const std::string path = std::string(UNET_TEST_DATA_DIR) + "/unet3plus_cgm.safetensors";
  const io::SafetensorsContent st = read_weights(path);
  const auto meta = [&](const char* key) { return nlohmann::json::parse(st.metadata.at(key)); };
  UNet3PlusConfig c;
  c.in_channels = meta("in_channels").get<int>();
  c.out_channels = meta("out_channels").get<int>();
  c.filters = meta("filters").get<std::vector<int>>();
  c.cgm = true;
  UNet3Plus net(c);
  load_weights(st, net, path);
  autograd::NoGradGuard no_grad;
  const std::vector<Tensor> out = net.forward(st.get("__input__"), /*training=*/false);
  REQUIRE(out.size() == 1);
  test::check_close(out[0], st.get("__eval_output__"), 1e-4, 1e-5, "gated logits");
  // One sample is classified absent (all its logits 0), the other present (logits as without the module).
  const std::vector<float> v = out[0].to_vector();
  const size_t half = v.size() / 2;
  const bool first_absent = std::all_of(v.begin(), v.begin() + long(half), [](float x) { return x == 0.f; });
  const bool second_absent = std::all_of(v.begin() + long(half), v.end(), [](float x) { return x == 0.f; });
  CHECK(first_absent != second_absent);
  // The checkpoint names of the module: PyTorch's Conv2d(filters[4], 2, 1).
  CHECK(st.get("cgm.weight").shape() == Shape{2, size_t(c.filters[4]), 1, 1});
}

TEST_CASE("unet_train with model.cgm = true: the module learns which slices hold the organ; unet_infer segments") {
  test::TempDir tmp("unet3plus_cgm");
  // Volumes of 16 slices whose shapes cover only some of them: slices with and without the organ.
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp / "data" +
                                           " --train 6 --test 2 --size 16,32,32 --spacing 1,0.5,0.5 --classes 2 "
                                           "--seed 4") == 0);
  const std::string ini = test::write_text(
      tmp / "t.ini", "[data]\ndataset = " + tmp / "data" +
                         "\npatch_size = 1, 32, 32\nbatch_size = 4\ncache = none\n[model]\nname = unet3plus\n"
                         "filters = 8\ncgm = true\n[train]\nloss = dice_ce\nsteps = 200\nlr = 3e-3\n[output]\ndir = " +
                         tmp / "run" + "\n");
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini, &out) == 0, out);
  const io::SafetensorsContent w = read_weights(tmp / "run/model.safetensors");
  CHECK(card_from_metadata(w.metadata, "model").unet3plus.cgm);
  CHECK(w.get("cgm.weight").shape() == Shape{2, 128, 1, 1});
  REQUIRE_MESSAGE(test::run_tool("unet_infer",
                                 "--model " + tmp / "run/model.safetensors" + " --input " + tmp / "data/imagesTs" +
                                     " --output " + tmp / "pred",
                                 &out) == 0,
                  out);
  REQUIRE_MESSAGE(
      test::run_tool("unet_eval", "--pred " + tmp / "pred" + " --label " + tmp / "data/labelsTs", &out) == 0, out);
  const auto dice = nlohmann::json::parse(std::ifstream(tmp / "pred/dice.json"));
  // Measured: 0.9490 after 300 steps; 200 here.
  CHECK(dice["mean_dice"].get<double>() > 0.8);
  CHECK(test::run_tool("unet_train",
                       ini + " --set model.name=dynunet --set data.patch_size=8,32,32 --set output.dir=" + tmp / "r2",
                       &out) == 2);
  CHECK(out.find("model.cgm = true: the classification-guided module is UNet 3+'s") != std::string::npos);
}
