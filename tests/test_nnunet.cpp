// The DynUNet: parameter count of the DLE BraTS configuration, PyTorch names, and outputs equal to the same
// network built in PyTorch with the same weights (tests/golden/make_dynunet_golden.py).
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "models/checkpoint.h"
#include "models/nnunet.h"
#include "models/nnunet_plan.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::models;

namespace {
// CI regenerates the fixtures with PyTorch into UNET_TORCH_FIXTURES; otherwise the committed ones are used.
std::string fixture(const std::string& name) {
  const char* dir = std::getenv("UNET_TORCH_FIXTURES");
  return std::string(dir && *dir ? dir : UNET_TEST_DATA_DIR) + "/" + name + ".safetensors";
}

DynUNetConfig config_from(const io::Metadata& m) {
  auto j = [&](const char* k) { return nlohmann::json::parse(m.at(k)); };
  DynUNetConfig c;
  c.in_channels = j("cin").get<int>();
  c.out_channels = j("cout").get<int>();
  c.kernels = j("kernels").get<std::vector<std::vector<int>>>();
  c.strides = j("strides").get<std::vector<std::vector<int>>>();
  c.filters = j("filters").get<std::vector<int>>();
  c.deep_supr_num = j("ds").get<int>();
  c.deep_supervision = c.deep_supr_num > 0;
  c.res_block = j("res").get<bool>();
  return c;
}

void check_against_pytorch(const std::string& name) {
  std::string path = fixture(name);
  io::SafetensorsContent st = read_weights(path);
  DynUNet net(config_from(st.metadata));
  load_weights(st, net, path);
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> out = net.forward(st.get("__input__"), /*training=*/true);
  REQUIRE(out.size() == 1 + static_cast<size_t>(net.config().deep_supr_num));
  // f32 everywhere, with instance norms renormalising after each conv: 1e-4 relative covers summation order.
  test::check_close(out[0], st.get("__output__"), 1e-4, 1e-4, name + " output");
  for (size_t i = 1; i < out.size(); ++i)
    test::check_close(out[i], st.get("__ds" + std::to_string(i) + "__"), 1e-4, 1e-4,
                      name + " deep supervision " + std::to_string(i));
}
}  // namespace

TEST_CASE("the DLE BraTS 3D DynUNet has 31,192,868 parameters without deep supervision heads") {
  UNetPlan plan = plan_unet({128, 128, 128}, {1, 1, 1});
  DynUNetConfig c{4, 4, plan.kernels, plan.strides, plan.filters};
  DynUNet net(c);
  CHECK(net.parameter_count() == 31192868);
  c.deep_supervision = true;
  CHECK(DynUNet(c).parameter_count() == 31192868 + (64 + 128) * 4 + 2 * 4);
}

TEST_CASE("parameter names follow MONAI DynUNet") {
  UNetPlan plan = plan_unet({32, 32, 32}, {1, 1, 1});
  DynUNetConfig c{1, 2, plan.kernels, plan.strides, plan.filters};
  c.deep_supervision = true;
  c.res_block = true;
  DynUNet net(c);
  std::vector<std::string> names;
  for (auto& [n, p] : net.named_parameters()) names.push_back(n);
  for (const char* expected : {"input_block.conv1.conv.weight", "input_block.norm1.weight", "input_block.norm2.bias",
                               "input_block.conv3.conv.weight", "downsamples.0.conv1.conv.weight",
                               "bottleneck.norm2.weight", "upsamples.0.transp_conv.conv.weight",
                               "upsamples.0.transp_conv.conv.bias", "upsamples.0.conv_block.conv1.conv.weight",
                               "output_block.conv.conv.bias", "deep_supervision_heads.1.conv.conv.weight"})
    CHECK_MESSAGE(std::find(names.begin(), names.end(), expected) != names.end(), expected);
  // PyTorch layouts: conv [O, I, k...], transposed conv [I, O, k...].
  auto& first = net.named_parameters()[0].second;
  CHECK(to_pytorch_layout("input_block.conv1.conv.weight", first).shape() == Shape{32, 1, 3, 3, 3});
}

TEST_CASE("initialisation is kaiming normal with a = 0.01 and zero biases, and a seed fixes it") {
  UNetPlan plan = plan_unet({32, 32, 32}, {1, 1, 1});
  DynUNet a({1, 2, plan.kernels, plan.strides, plan.filters}), b({1, 2, plan.kernels, plan.strides, plan.filters});
  a.initialize(5);
  b.initialize(5);
  for (size_t i = 0; i < a.named_parameters().size(); ++i)
    CHECK(a.named_parameters()[i].second.to_vector() == b.named_parameters()[i].second.to_vector());
  auto w = a.named_parameters()[0].second.to_vector();  // 32 x 27 x 1: fan_in 27
  double s2 = 0;
  for (float v : w) s2 += double(v) * v;
  double expected_var = 2.0 / (1 + 1e-4) / 27;
  CHECK(s2 / w.size() == doctest::Approx(expected_var).epsilon(0.15));  // 864 samples: sd of the estimate ~5%
}

TEST_CASE("a 3D DynUNet with deep supervision matches PyTorch with the same weights") {
  check_against_pytorch("dynunet3d_ds");
}
TEST_CASE("a 2D residual DynUNet with two heads matches PyTorch with the same weights") {
  check_against_pytorch("dynunet2d_res");
}

TEST_CASE("weights saved in PyTorch layout load back into an identical model") {
  UNetPlan plan = plan_unet({16, 16}, {1, 1});
  DynUNetConfig c{1, 3, plan.kernels, plan.strides, plan.filters};
  DynUNet a(c), b(c);
  a.initialize(1);
  b.initialize(2);
  std::string path = "/tmp/unet_test_weights_" + std::to_string(::getpid()) + ".safetensors";
  save_weights(path, a, {{"note", "x"}});
  auto st = read_weights(path);
  load_weights(st, b, path);
  for (size_t i = 0; i < a.named_parameters().size(); ++i)
    CHECK(a.named_parameters()[i].second.to_vector() == b.named_parameters()[i].second.to_vector());
  DynUNetConfig other = c;
  other.filters[0] = 16;
  DynUNet wrong(other);
  CHECK_THROWS_WITH_AS(load_weights(st, wrong, path), doctest::Contains("input_block.conv1.conv.weight"),
                       std::runtime_error);
}

TEST_CASE("the model card survives the checkpoint metadata round trip") {
  ModelCard card;
  UNetPlan plan = plan_unet({32, 32, 16}, {1, 1, 2});
  card.net = {2, 3, plan.kernels, plan.strides, plan.filters};
  card.net.deep_supervision = true;
  card.patch = {32, 32, 16};
  card.spacing = {1, 1, 2};
  card.normalization.channels = {{true, 40, 80, -100, 300}, {false, 0, 1, 0, 0}};
  card.labels = {{0, "background"}, {1, "liver"}, {2, "tumour"}};
  ModelCard back = card_from_metadata(card_to_metadata(card), "x");
  CHECK(back.net.kernels == card.net.kernels);
  CHECK(back.net.strides == card.net.strides);
  CHECK(back.net.filters == card.net.filters);
  CHECK(back.net.deep_supervision);
  CHECK(back.patch == card.patch);
  REQUIRE(back.normalization.channels.size() == 2);
  CHECK(back.normalization.channels[0].ct);
  CHECK(back.normalization.channels[0].std == 80);
  CHECK(back.normalization.channels[0].upper == 300);
  CHECK_FALSE(back.normalization.channels[1].ct);
  CHECK(back.labels == card.labels);
  CHECK(back.label_scale == 1);
  // label_scale: written and read; absent (older checkpoints) means 1; one that overflows 8 bits is refused.
  card.label_scale = 100;
  io::Metadata scaled = card_to_metadata(card);
  CHECK(card_from_metadata(scaled, "x").label_scale == 100);
  {
    nlohmann::json plan_json = nlohmann::json::parse(scaled.at("plan"));
    plan_json.erase("label_scale");
    scaled["plan"] = plan_json.dump();
    CHECK(card_from_metadata(scaled, "x").label_scale == 1);
    plan_json["label_scale"] = 200;  // class 2 would be 400
    scaled["plan"] = plan_json.dump();
    CHECK_THROWS_WITH_AS(card_from_metadata(scaled, "m.safetensors"),
                         doctest::Contains("m.safetensors: plan.label_scale: 200 x the largest class 2 exceeds "
                                           "255, the largest value of a label map"),
                         std::runtime_error);
  }
  card.label_scale = 1;
  io::Metadata broken = card_to_metadata(card);
  broken.erase("plan");
  CHECK_THROWS_WITH_AS(card_from_metadata(broken, "model.safetensors"),
                       "model.safetensors: not a unet-engine checkpoint (metadata has no 'plan')", std::runtime_error);
  // A run's checkpoint.safetensors (what unet_train writes for --resume) passed as the model: said as such.
  const io::Metadata checkpoint{{"step", "4"}, {"optimizer_steps", "4"}, {"config", "[train]\nsteps = 4\n"}};
  CHECK_THROWS_WITH_AS(card_from_metadata(checkpoint, "run/checkpoint.safetensors"),
                       "run/checkpoint.safetensors: a training checkpoint (unet_train writes it for --resume), not a "
                       "model; expected the run's model.safetensors or model_best.safetensors beside it",
                       NotAModelError);
}
