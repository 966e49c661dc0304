// UNet 3+ against the same network in PyTorch with the same weights and running statistics
// (tests/golden/make_unet3plus_golden.py): the five outputs of a training-mode forward (batch statistics), the
// gradients of every parameter and of the input, the running statistics that step leaves, and the evaluation-mode
// logits after it; checkpoint names (PyTorch's state_dict keys, buffers included); He-normal initialisation; sizes;
// the same training steps on cuda-emu; training and inference through the tools.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "io/safetensors.h"
#include "models/checkpoint.h"
#include "models/trainer.h"
#include "models/unet3plus.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::models;

namespace {
const std::string kGolden = std::string(UNET_TEST_DATA_DIR) + "/unet3plus.safetensors";

template <typename T>
T meta(const io::SafetensorsContent& st, const std::string& key) {
  return nlohmann::json::parse(st.metadata.at(key)).get<T>();
}

UNet3PlusConfig golden_config(const io::SafetensorsContent& st) {
  UNet3PlusConfig c;
  c.in_channels = meta<int>(st, "in_channels");
  c.out_channels = meta<int>(st, "out_channels");
  c.filters = meta<std::vector<int>>(st, "filters");
  c.deep_supervision = meta<bool>(st, "deep_supervision");
  return c;
}
}  // namespace

TEST_CASE("UNet 3+ equals the PyTorch module: five outputs, every gradient, the running statistics, eval logits") {
  const io::SafetensorsContent st = read_weights(kGolden);
  UNet3Plus net(golden_config(st));
  load_weights(st, net, kGolden);
  Tensor x = st.get("__input__").clone();
  x.set_requires_grad(true);
  const std::vector<Tensor> out = net.forward(x, /*training=*/true);
  REQUIRE(out.size() == 5);  // logits, then the heads of levels 1..4
  Tensor total = out[0];
  for (size_t k = 0; k < out.size(); ++k) {
    CAPTURE(k);
    REQUIRE(out[k].shape() == st.get("__output__." + std::to_string(k)).shape());
    test::check_close(out[k], st.get("__output__." + std::to_string(k)), 1e-4, 1e-4, "output " + std::to_string(k));
    if (k > 0) total = ops::add(total, out[k]);
  }
  autograd::backward(total, st.get("__r__"));
  test::check_close(x.grad(), st.get("__grad_input__"), 1e-3, 1e-4, "gradient of the input");
  int checked = 0;
  for (const auto& [name, p] : net.named_parameters()) {
    CAPTURE(name);
    const Tensor expected = from_pytorch_layout(name, st.get("__grad__." + name));
    if (name.ends_with("bias") && name.find(".conv") != std::string::npos) {
      // A convolution's bias before batch norm in training is subtracted again with the batch mean: its gradient is
      // zero but for rounding, in PyTorch as here; both under 1e-5 of the largest gradient of that convolution's
      // weight (measured: up to 1.1e-6 here, 3e-7 in PyTorch).
      const std::string weight = name.substr(0, name.size() - 4) + "weight";
      double scale = 0;
      for (float g : st.get("__grad__." + weight).to_vector()) scale = std::max(scale, double(std::abs(g)));
      for (const std::vector<float>& g : {p.grad().to_vector(), expected.to_vector()})
        for (float v : g) REQUIRE(std::abs(v) <= 1e-5 * scale);
    } else {
      // Batch norm in training divides by the batch's deviation: the gradients' rounding differs by more than the
      // logits'.
      test::check_close(p.grad(), expected, 1e-3, 1e-4, name);
    }
    ++checked;
  }
  // encoder 5 x (2 convs + 2 bns) x 2 tensors; decoder 4 x 6 blocks x (conv + bn) x 2; head and 4 supervision heads.
  CHECK(checked == 5 * 4 * 2 + 4 * 6 * 2 * 2 + 5 * 2);
  int buffers = 0;
  for (const auto& [name, b] : net.named_buffers()) {
    CAPTURE(name);
    test::check_close(b, st.get("__after__." + name), 1e-5, 1e-6, name);
    ++buffers;
  }
  CHECK(buffers == (5 * 2 + 4 * 6) * 2);  // running_mean and running_var of every batch norm
  autograd::NoGradGuard no_grad;          // evaluation-mode batch norm has no backward (inference and validation only)
  test::check_close(net.forward(st.get("__input__"), /*training=*/false)[0], st.get("__eval_output__"), 1e-4, 1e-4,
                    "evaluation logits");
}

TEST_CASE("UNet 3+ checkpoints hold PyTorch's state_dict keys and layouts, running statistics included") {
  const io::SafetensorsContent st = read_weights(kGolden);
  UNet3Plus net(golden_config(st));
  load_weights(st, net, kGolden);
  int64_t count = 0;
  for (const Tensor& p : net.parameters()) count += p.numel();
  CHECK(count == meta<int64_t>(st, "parameters"));
  test::TempDir tmp("unet3plus_ckpt");
  save_weights(tmp.path + "/w.safetensors", net, {});
  const io::SafetensorsContent saved = read_weights(tmp.path + "/w.safetensors");
  std::set<std::string> expected, got;
  for (const auto& [name, t] : st.tensors)
    if (!name.starts_with("__")) expected.insert(name);
  for (const auto& [name, t] : saved.tensors) got.insert(name);
  CHECK(got == expected);
  for (const std::string& name : expected) {
    CAPTURE(name);
    REQUIRE(saved.get(name).shape() == st.get(name).shape());
    CHECK(saved.get(name).to_vector() == st.get(name).to_vector());
  }
  // Loading into a fresh model restores the running statistics too: the evaluation logits are the PyTorch ones'.
  autograd::NoGradGuard no_grad;
  UNet3Plus fresh(golden_config(st));
  fresh.initialize(3);
  load_weights(saved, fresh, tmp.path + "/w.safetensors");
  CHECK(fresh.forward(st.get("__input__"), false)[0].to_vector() ==
        net.forward(st.get("__input__"), false)[0].to_vector());
}

TEST_CASE("DLE's UNet 3+ (filters 64, 3 input slices, 2 classes) has 26,974,658 parameters, the paper's 26.97M") {
  // The PyTorch module of make_unet3plus_golden.py built at these sizes counts 26974658, and 27010378 with deep
  // supervision's four 3x3 heads (three on 320 channels, one on 1024); the golden's count is compared above.
  CHECK(UNet3Plus({3, 2, {64, 128, 256, 512, 1024}, false, 1e-3f, 0.01f}).parameter_count() == 26974658);
  CHECK(UNet3Plus({3, 2, {64, 128, 256, 512, 1024}, true, 1e-3f, 0.01f}).parameter_count() ==
        26974658 + 2 * (320 * 9 + 1) * 3 + (1024 * 9 * 2 + 2));
}

TEST_CASE("UNet 3+ initialisation: he_normal truncated at 2 sigma, zero biases, batch norm 1 / 0 / 0 / 1") {
  UNet3Plus net({1, 2, {8, 16, 16, 32, 32}, true, 1e-3f, 0.01f});
  net.initialize(7);
  for (const auto& [name, p] : net.named_parameters()) {
    CAPTURE(name);
    const std::vector<float> v = p.to_vector();
    if (name.find(".bn") != std::string::npos) {
      for (float b : v) REQUIRE(b == (name.ends_with("weight") ? 1.f : 0.f));
      continue;
    }
    if (name.ends_with("bias")) {
      for (float b : v) REQUIRE(b == 0.f);
      continue;
    }
    const double fan_in = double(p.dim(1)) * double(p.dim(2)) * double(p.dim(3));
    const double sigma = std::sqrt(2.0 / fan_in) / 0.87962566103423978;
    double sum_sq = 0;
    for (float w : v) {
      REQUIRE(std::abs(w) <= 2 * sigma * (1 + 1e-6));
      sum_sq += double(w) * w;
    }
    // The truncated normal's variance is 0.7737 sigma^2 = 2 / fan_in; the mean square within 30% (>= 72 weights).
    CHECK(sum_sq / double(v.size()) == doctest::Approx(2.0 / fan_in).epsilon(0.3));
  }
  for (const auto& [name, b] : net.named_buffers())
    for (float v : b.to_vector()) REQUIRE(v == (name.ends_with("running_var") ? 1.f : 0.f));
  // Another seed, other weights; the same seed, the same.
  UNet3Plus a({1, 2, {8, 16, 16, 32, 32}, false, 1e-3f, 0.01f}), b = a;
  a.initialize(1);
  UNet3Plus c({1, 2, {8, 16, 16, 32, 32}, false, 1e-3f, 0.01f});
  c.initialize(1);
  CHECK(a.named_parameters()[0].second.to_vector() == c.named_parameters()[0].second.to_vector());
  c.initialize(2);
  CHECK(a.named_parameters()[0].second.to_vector() != c.named_parameters()[0].second.to_vector());
}

TEST_CASE("UNet 3+ refuses inputs that are not multiples of 16 and bad configurations, naming them") {
  UNet3Plus net({1, 2, {2, 2, 2, 2, 2}, false, 1e-3f, 0.01f});
  net.initialize(1);
  autograd::NoGradGuard no_grad;
  CHECK(net.forward(Tensor::zeros({1, 16, 32, 1}), false)[0].shape() == Shape{1, 16, 32, 2});
  CHECK_THROWS_WITH_AS(net.forward(Tensor::zeros({1, 24, 32, 1}), false), doctest::Contains("multiples of 16"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(net.forward(Tensor::zeros({1, 16, 16, 3}), false), doctest::Contains("[N, H, W, 1]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(UNet3Plus({1, 2, {2, 2, 2, 2}, false, 1e-3f, 0.01f}), doctest::Contains("expected 5 filter"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(UNet3Plus({1, 2, {2, 2, 0, 2, 2}, false, 1e-3f, 0.01f}), doctest::Contains(">= 1, got 0"),
                       std::invalid_argument);
}

TEST_CASE("two UNet 3+ training steps (hybrid loss) on cuda-emu match the cpu's: losses, weights, running statistics") {
  if (!device::emulator_built()) return;  // the GPU build has no emulator
  // SGD, not Adam: the convolution biases before batch norm have gradients that are rounding noise (see above), which
  // Adam would scale up to steps of lr whose sign is the noise's.
  UNet3PlusConfig c{2, 3, {4, 8, 8, 8, 8}, true, 1e-3f, 0.01f};
  Tensor x = Tensor::empty({2, 32, 32, 2}), y = Tensor::empty({2, 32, 32}, DType::u8);
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = std::sin(0.37f * float(i));
  for (int64_t i = 0; i < y.numel(); ++i) y.data<uint8_t>()[i] = static_cast<uint8_t>((i / 7 + i / 97) % 3);
  struct Run {
    std::vector<double> losses;
    std::vector<std::vector<float>> state;
  };
  auto train = [&](Device d) {
    Run r;
    UNet3Plus net(c);
    net.initialize(5);
    net.to(d);
    SGD opt(net.parameters(), SgdOptions{1e-2, 0.9, 0, false});
    const Tensor xd = x.to(d), yd = y.to(d);
    for (int step = 0; step < 2; ++step) {
      const StepStats s = train_step(net, opt, xd, yd, Precision::fp32, nullptr, nullptr, 0, LossSpec::hybrid_loss());
      REQUIRE(s.stepped);
      r.losses.push_back(s.loss());
    }
    for (const auto& [name, t] : net.named_state()) r.state.push_back(t.to_vector());
    return r;
  };
  const Run cpu = train(Device::cpu), emu = train(Device::cuda_emu);
  for (size_t i = 0; i < cpu.losses.size(); ++i) CHECK(emu.losses[i] == doctest::Approx(cpu.losses[i]).epsilon(1e-5));
  REQUIRE(emu.state.size() == cpu.state.size());
  for (size_t i = 0; i < cpu.state.size(); ++i)
    test::check_close(emu.state[i], cpu.state[i], 1e-4, 1e-5, "state tensor " + std::to_string(i));
}

TEST_CASE("UNet 3+ on adjacent slices (patch 3, H, W): each slice is segmented from itself and its neighbours") {
  // A volume [Z, H, W, 1]; slice z's input is the three slices z - 1, z, z + 1 as channels 0, 1, 2 (zeros beyond the
  // volume), built here by hand, independent of network_input.
  const int64_t Z = 5, H = 32, W = 32;
  UNet3Plus net({3, 2, {4, 4, 8, 8, 8}, false, 1e-3f, 0.01f});
  net.initialize(11);
  std::vector<float> v(static_cast<size_t>(Z * H * W));
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.37f * float(i)) + 0.1f * float(i % 7);
  const Tensor image = Tensor::from_vector({Z, H, W, 1}, v);
  auto stack = [&](int64_t z, bool flip_h, bool flip_w) {
    std::vector<float> s(static_cast<size_t>(H * W * 3), 0.f);
    for (int64_t c = 0; c < 3; ++c) {
      const int64_t zz = z + c - 1;
      if (zz < 0 || zz >= Z) continue;
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x)
          s[size_t((y * W + x) * 3 + c)] =
              v[size_t((zz * H + (flip_h ? H - 1 - y : y)) * W + (flip_w ? W - 1 - x : x))];
    }
    return Tensor::from_vector({1, H, W, 3}, s);
  };
  for (bool tta : {false, true}) {
    CAPTURE(tta);
    SlidingWindowOptions o = window_options(net, {3, int(H), int(W)});
    CHECK(o.patch == std::vector<int>{1, int(H), int(W)});
    CHECK(o.context == std::vector<int>{1, 0, 0});
    o.tta = tta;
    const std::vector<float> got = predict_volume(net, image, o).to_vector();
    REQUIRE(got.size() == size_t(Z * H * W * 2));
    std::vector<float> expected(got.size(), 0.f);
    // TTA flips H and W only (4 passes): a flip in z would reverse the order of the slices the channels hold.
    const int passes = tta ? 4 : 1;
    autograd::NoGradGuard no_grad;
    for (int64_t z = 0; z < Z; ++z)
      for (int f = 0; f < passes; ++f) {
        const bool fh = f & 1, fw = f & 2;
        const std::vector<float> l = forward_in(net, stack(z, fh, fw), false, Precision::fp32)[0].to_vector();
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x)
            for (int64_t k = 0; k < 2; ++k)
              expected[size_t(((z * H + y) * W + x) * 2 + k)] +=
                  l[size_t((((fh ? H - 1 - y : y) * W) + (fw ? W - 1 - x : x)) * 2 + k)] / float(passes);
      }
    test::check_close(got, expected, 1e-5, 1e-5, "blended logits");
  }
}

TEST_CASE("unet_train with model.name = unet3plus and deep supervision learns synthetic slices; unet_infer segments") {
  test::TempDir tmp("unet3plus_train");
  const std::string& dir = tmp.path;
  // 64 x 64 slices of 0.5 mm, two foreground classes.
  REQUIRE(test::run_tool("unet_synth", "--output " + dir +
                                           "/data --train 6 --test 2 --dim 2 --size 64,64 --spacing 0.5 --classes 3 "
                                           "--seed 4") == 0);
  const std::string ini = test::write_text(
      dir + "/t.ini",
      "[data]\ndataset = " + dir +
          "/data\npatch_size = 64, 64\nbatch_size = 2\ncache = none\n[model]\nname = unet3plus\n"
          "filters = 8\ndeep_supervision = true\n[train]\nloss = dice_ce\nsteps = 400\nlog_every = 100\n"
          "lr = 3e-3\n"
          "[output]\ndir = " +
          dir + "/run\n");
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini, &out) == 0, out);
  CHECK(out.find("UNet 3+") != std::string::npos);
  const io::SafetensorsContent w = read_weights(dir + "/run/model.safetensors");
  const ModelCard card = card_from_metadata(w.metadata, "model");
  CHECK(card.model == "unet3plus");
  CHECK(card.unet3plus.filters == std::vector<int>{8, 16, 32, 64, 128});
  CHECK(card.unet3plus.deep_supervision);
  CHECK(w.get("ds_heads.3.weight").shape() == Shape{3, 128, 3, 3});  // level 4's head reads the bottom encoder map
  CHECK(w.get("decoder.0.fuse.conv.weight").shape() == Shape{40, 40, 3, 3});
  // Training moved the running statistics away from their initial 0 / 1, and the checkpoint carries them.
  const std::vector<float> var = w.get("encoder.0.bn1.running_var").to_vector();
  CHECK(std::any_of(var.begin(), var.end(), [](float v) { return std::abs(v - 1.f) > 1e-3f; }));

  // Inference builds the network without the supervision heads and ignores their tensors.
  REQUIRE_MESSAGE(test::run_tool("unet_infer",
                                 "--model " + dir + "/run/model.safetensors --input " + dir +
                                     "/data/imagesTs --output " + dir + "/pred",
                                 &out) == 0,
                  out);
  REQUIRE_MESSAGE(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/data/labelsTs", &out) == 0,
                  out);
  const auto dice = nlohmann::json::parse(std::ifstream(dir + "/pred/dice.json"));
  // Measured: 0.9425 (400 steps, about 20 s on 2 cores; the hybrid loss, slower to converge, 0.74 in as many).
  CHECK(dice["mean_dice"].get<double>() > 0.85);

  // A patch that four poolings do not divide is refused, naming the key.
  CHECK(test::run_tool("unet_train", ini + " --set data.patch_size=60,64 --set output.dir=" + dir + "/run2", &out) ==
        2);
  CHECK(out.find("data.patch_size: unet3plus: patch size 60 must be a multiple of 16") != std::string::npos);
  // The hybrid loss's SSIM is 2D: a 3D network with it is refused before any data is read.
  CHECK(test::run_tool("unet_train",
                       ini +
                           " --set model.name=dynunet --set data.patch_size=8,64,64 --set "
                           "train.loss=hybrid --set output.dir=" +
                           dir + "/run3",
                       &out) == 2);
  CHECK(out.find("train.loss = hybrid: the SSIM is 2D") != std::string::npos);
}

TEST_CASE("unet_train on three adjacent slices (data.patch_size = 3, H, W, DLE's LiTS input); unet_infer segments") {
  test::TempDir tmp("unet3plus_slices");
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp / "data" +
                                           " --train 6 --test 2 --size 10,32,32 --spacing 1,0.5,0.5 --classes 2 "
                                           "--seed 4") == 0);
  const std::string ini = test::write_text(
      tmp / "t.ini", "[data]\ndataset = " + tmp / "data" +
                         "\npatch_size = 3, 32, 32\nbatch_size = 2\ncache = none\n[model]\nname = unet3plus\n"
                         "filters = 8\n[train]\nloss = dice_ce\nsteps = 300\nlr = 3e-3\n[output]\ndir = " +
                         tmp / "run" + "\n");
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini, &out) == 0, out);
  const ModelCard card = card_from_metadata(read_weights(tmp / "run/model.safetensors").metadata, "model");
  CHECK(card.patch == std::vector<int>{3, 32, 32});
  CHECK(card.unet3plus.in_channels == 3);  // one image channel x three slices
  CHECK(card.slices() == 3);
  CHECK(card.image_channels() == 1);
  // unet_infer takes the one-channel volumes and segments every slice (the first and last with zeros beyond).
  REQUIRE_MESSAGE(test::run_tool("unet_infer",
                                 "--model " + tmp / "run/model.safetensors" + " --input " + tmp / "data/imagesTs" +
                                     " --output " + tmp / "pred",
                                 &out) == 0,
                  out);
  REQUIRE_MESSAGE(
      test::run_tool("unet_eval", "--pred " + tmp / "pred" + " --label " + tmp / "data/labelsTs", &out) == 0, out);
  const auto dice = nlohmann::json::parse(std::ifstream(tmp / "pred/dice.json"));
  // Measured: 0.7710 (300 steps, about 15 s on 2 cores).
  CHECK(dice["mean_dice"].get<double>() > 0.6);
  // An even slice count has no centre slice; unet2d takes single slices only.
  CHECK(test::run_tool("unet_train", ini + " --set data.patch_size=2,32,32 --set output.dir=" + tmp / "r2", &out) == 2);
  CHECK(out.find("odd count of adjacent slices up to 15 (DLE: 3), got 2") != std::string::npos);
  CHECK(test::run_tool("unet_train",
                       ini + " --set model.name=unet2d --set data.patch_size=3,44,44 --set output.dir=" + tmp / "r3",
                       &out) == 2);
  CHECK(out.find("unet2d trains on slices, so the z size must be 1, got 3") != std::string::npos);
}

TEST_CASE(
    "train.loss = hybrid_ms puts MS-SSIM in SSIM's place (same first-step focal and IoU); small outputs refused") {
  test::TempDir tmp("unet3plus_ms_ssim");
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp / "data" +
                                           " --train 4 --test 1 --dim 2 --size 176,176 --spacing 0.2 --seed 2") == 0);
  const std::string ini = test::write_text(
      tmp / "t.ini", "[data]\ndataset = " + tmp / "data" +
                         "\npatch_size = 176, 176\nbatch_size = 1\ncache = none\nfolds = 1\n[model]\nname = "
                         "unet3plus\nfilters = 2\ndeep_supervision = false\n[train]\nloss = hybrid_ms\nsteps = 1\n"
                         "log_every = 1\n[runtime]\nthreads = 1\n");
  std::string out;
  std::map<std::string, nlohmann::json> first;
  for (const char* loss : {"hybrid_ms", "hybrid"}) {
    REQUIRE_MESSAGE(
        test::run_tool("unet_train", ini + " --set train.loss=" + std::string(loss) + " --set output.dir=" + tmp / loss,
                       &out) == 0,
        out);
    std::ifstream log(tmp / loss + "/log.jsonl");
    std::string line;
    REQUIRE(std::getline(log, line));
    first[loss] = nlohmann::json::parse(line);
  }
  // The same weights and batch: focal and IoU agree, the structural term does not.
  CHECK(first["hybrid_ms"]["focal"] == first["hybrid"]["focal"]);
  CHECK(first["hybrid_ms"]["iou_loss"] == first["hybrid"]["iou_loss"]);
  CHECK(first["hybrid_ms"]["ssim_loss"] != first["hybrid"]["ssim_loss"]);
  CHECK(test::run_tool("unet_train", ini + " --set data.patch_size=160,160 --set output.dir=" + tmp / "small", &out) ==
        2);
  CHECK(out.find("train.loss = hybrid_ms: the network's output is 160 pixels across, the MS-SSIM needs at least 161") !=
        std::string::npos);
}

TEST_CASE(
    "unet_train on unet3plus killed with SIGKILL and resumed ends bitwise as a whole run, running stats included") {
  test::TempDir tmp("unet3plus_resume");
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp / "data" + " --train 4 --test 1 --dim 2 --size 32,32") == 0);
  const std::string ini = test::write_text(tmp / "t.ini", "[data]\ndataset = " + tmp / "data" +
                                                              "\npatch_size = 32,32\nbatch_size = 2\nfolds = 2\n"
                                                              "[model]\nname = unet3plus\nfilters = 2\n[train]\n"
                                                              "steps = 60\nval_every = 20\nsave_every = 1\nseed = 3\n"
                                                              "[runtime]\nthreads = 1\n");
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini + " --set output.dir=" + tmp / "whole", &out) == 0, out);
  const std::string run = tmp / "killed";
  const int rc = test::shell("(" + test::tool_path("unet_train") + " " + ini + " --set output.dir=" + run + " > " +
                             tmp / "log.txt" + " 2>&1 & p=$!; while [ ! -f " + run +
                             "/checkpoint.safetensors ]; do sleep 0.01; done; sleep 0.2; kill -9 $p; wait $p)");
  CHECK(rc == 137);
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini + " --resume " + run, &out) == 0, out);
  CHECK(out.find("resuming " + run + " at step") != std::string::npos);
  // train.loss = auto is the hybrid loss for unet3plus: the log names its parts.
  std::ifstream log(run + "/log.jsonl");
  std::string first;
  REQUIRE(std::getline(log, first));
  const auto line = nlohmann::json::parse(first);
  CHECK(line.contains("focal"));
  CHECK(line.contains("ssim_loss"));
  CHECK(line.contains("iou_loss"));
  CHECK(!line.contains("ce"));
  for (const char* file : {"model.safetensors", "checkpoint.safetensors"}) {
    CAPTURE(file);
    const io::SafetensorsContent a = io::read_safetensors(tmp / "whole/" + file),
                                 b = io::read_safetensors(run + "/" + file);
    REQUIRE(a.tensors.size() == b.tensors.size());
    int buffers = 0;
    for (const auto& [name, t] : a.tensors) {
      CAPTURE(name);
      CHECK(t.to_vector() == b.get(name).to_vector());
      buffers += name.ends_with("running_var");
    }
    CHECK(buffers == 34);
  }
}
