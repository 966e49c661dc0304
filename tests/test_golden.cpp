// Ops against golden values computed once by PyTorch (tests/golden/make_golden.py -> ops_golden.json):
// outputs and the gradients of sum(output * r) for convolution (stride 1, stride 2, kernel [1,3,3], 2D),
// transposed convolution (kernel == stride, and any kernel, stride and padding), max pooling, instance norm, leaky
// ReLU, the DiceCE loss, bilinear upsampling, batch norm (training, running statistics, evaluation) and UNet 3+'s
// hybrid loss.
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "io/safetensors.h"
#include "tests/test_util.h"

using namespace unet;
using json = nlohmann::json;

namespace {

const json& golden_case(const std::string& name) {
  static const json all = [] {
    std::ifstream f(std::string(UNET_TEST_DATA_DIR) + "/ops_golden.json");
    REQUIRE_MESSAGE(f.good(), "cannot open " << UNET_TEST_DATA_DIR << "/ops_golden.json");
    return json::parse(f);
  }();
  for (const json& c : all["cases"])
    if (c["name"] == name) return c;
  FAIL("no golden case " << name);
  throw std::logic_error("unreachable");
}

Tensor tensor_of(const json& j, bool requires_grad = false) {
  Tensor t = Tensor::from_vector(j["shape"].get<Shape>(), j["data"].get<std::vector<float>>());
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

Tensor input(const json& c, const std::string& key, bool requires_grad = true) {
  return tensor_of(c["inputs"][key], requires_grad);
}

// Runs backward with the case's r and compares output and every listed gradient.
// Tolerances: PyTorch and the engine both compute in f32 but sum in different orders; 1e-4 relative with a small
// absolute floor covers that for these sizes (at most a few hundred terms per output), and is far below any real bug.
void check_against_golden(const json& c, const Tensor& out, const std::vector<std::pair<std::string, Tensor>>& inputs,
                          double rtol = 1e-4, double atol = 1e-5) {
  test::check_close(out, tensor_of(c["output"]), rtol, atol, c["name"].get<std::string>() + " output");
  Tensor r = c["inputs"].contains("r") ? input(c, "r", false) : Tensor::full(out.shape(), 1.f);
  autograd::backward(out, r);
  for (const auto& [name, t] : inputs)
    test::check_close(t.grad(), tensor_of(c["grads"][name]), rtol, atol,
                      c["name"].get<std::string>() + " gradient of " + name);
}

void conv_golden(const std::string& name) {
  const json& c = golden_case(name);
  Tensor x = input(c, "x"), w = input(c, "w");
  Tensor b = c["inputs"].contains("bias") ? input(c, "bias") : Tensor();
  Tensor y = ops::conv(x, w, b, c["stride"].get<std::vector<int>>(), c["pad"].get<std::vector<int>>());
  std::vector<std::pair<std::string, Tensor>> in{{"x", x}, {"w", w}};
  if (b.defined()) in.emplace_back("bias", b);
  check_against_golden(c, y, in);
}

}  // namespace

TEST_CASE("conv3d with stride 1 matches PyTorch") {
  conv_golden("conv3d_stride1");
}
TEST_CASE("conv3d with stride 2 matches PyTorch") {
  conv_golden("conv3d_stride2");
}
TEST_CASE("conv3d with kernel [1,3,3] and stride [1,2,2] matches PyTorch") {
  conv_golden("conv3d_kernel133");
}
TEST_CASE("conv2d with stride 2 matches PyTorch") {
  conv_golden("conv2d_stride2");
}

TEST_CASE("conv_transpose3d with kernel = stride matches PyTorch") {
  for (const char* name : {"conv_transpose3d", "conv_transpose3d_122"}) {
    const json& c = golden_case(name);
    Tensor x = input(c, "x"), w = input(c, "w"), b = input(c, "bias");
    check_against_golden(c, ops::conv_transpose(x, w, b), {{"x", x}, {"w", w}, {"bias", b}});
  }
}

TEST_CASE("instance_norm matches PyTorch") {
  const json& c = golden_case("instance_norm3d");
  Tensor x = input(c, "x"), g = input(c, "gamma"), b = input(c, "beta");
  check_against_golden(c, ops::instance_norm(x, g, b, c["eps"].get<float>()), {{"x", x}, {"gamma", g}, {"beta", b}});
}

TEST_CASE("leaky_relu matches PyTorch") {
  const json& c = golden_case("leaky_relu");
  Tensor x = input(c, "x");
  check_against_golden(c, ops::leaky_relu(x, c["slope"].get<float>()), {{"x", x}}, 0,
                       1e-30);  // exact: both compute x * slope in f32
}

TEST_CASE("DiceCE loss value, parts and logit gradient match PyTorch (MONAI DiceCELoss formula)") {
  for (const char* name : {"dice_ce3d", "dice_ce2d_absent_class"}) {
    const json& c = golden_case(name);
    Tensor logits = input(c, "logits");
    Tensor labels = Tensor::from_vector(c["labels"]["shape"].get<Shape>(),
                                        c["labels"]["data"].get<std::vector<float>>(), DType::i32);
    float dice = 0, ce = 0;
    Tensor loss = test::dice_ce(logits, labels, &dice, &ce);
    CHECK(dice == doctest::Approx(c["dice"].get<double>()).epsilon(1e-5));
    CHECK(ce == doctest::Approx(c["ce"].get<double>()).epsilon(1e-5));
    check_against_golden(c, loss, {{"logits", logits}}, 1e-4, 1e-7);
  }
}

TEST_CASE(
    "conv_transpose_general matches PyTorch's ConvTranspose: UNet2D's TF 'same' (padding 0, first 2n kept), padded, "
    "anisotropic") {
  for (const char* name : {"conv_transpose2d_tf_same", "conv_transpose3d_k3s2p1op1", "conv_transpose2d_k4s3p1"}) {
    CAPTURE(name);
    const json& c = golden_case(name);
    Tensor x = input(c, "x"), w = input(c, "w"), b = input(c, "bias");
    Tensor y = ops::conv_transpose_general(x, w, b, c["stride"].get<std::vector<int>>(),
                                           c["pad"].get<std::vector<int>>(), c["output_pad"].get<std::vector<int>>());
    if (c.contains("keep")) {
      const auto keep = c["keep"].get<std::vector<int64_t>>();
      y = ops::crop(y, std::vector<int64_t>(keep.size(), 0), keep);
    }
    check_against_golden(c, y, {{"x", x}, {"w", w}, {"bias", b}});
  }
}

TEST_CASE("max_pool matches PyTorch's MaxPool2d / MaxPool3d, ties included") {
  for (const char* name : {"max_pool2d", "max_pool3d_122"}) {
    CAPTURE(name);
    const json& c = golden_case(name);
    Tensor x = input(c, "x");
    check_against_golden(c, ops::max_pool(x, c["window"].get<std::vector<int>>()), {{"x", x}}, 0, 1e-30);  // exact
  }
}

TEST_CASE("upsample_bilinear matches PyTorch's F.interpolate(mode='bilinear'), align_corners true and false") {
  for (const char* name : {"bilinear_x2", "bilinear_x2_align_corners", "bilinear_x8", "bilinear_x16_align_corners",
                           "bilinear_mixed", "bilinear_mixed_align_corners", "bilinear_to_one"}) {
    CAPTURE(name);
    const json& c = golden_case(name);
    Tensor x = input(c, "x");
    // The same f32 source positions and weights as PyTorch, combined in another order: a few ulps.
    check_against_golden(c, ops::upsample_bilinear(x, c["size"].get<std::vector<int64_t>>(), c["align_corners"]),
                         {{"x", x}}, 1e-5, 1e-6);
  }
}

TEST_CASE("batch_norm matches PyTorch's F.batch_norm: training output, gradients, running statistics, evaluation") {
  for (const char* name : {"batch_norm2d", "batch_norm2d_relu_keras", "batch_norm3d"}) {
    CAPTURE(name);
    const json& c = golden_case(name);
    Tensor x = input(c, "x"), g = input(c, "gamma"), b = input(c, "beta");
    Tensor rm = input(c, "running_mean", false), rv = input(c, "running_var", false);
    ops::BatchNormOptions o;
    o.momentum = c["momentum"].get<float>();
    o.eps = c["eps"].get<float>();
    o.relu = c["relu"].get<bool>();
    check_against_golden(c, ops::batch_norm(x, g, b, rm, rv, o), {{"x", x}, {"gamma", g}, {"beta", b}});
    // PyTorch keeps the variance's double-free f32 sums; ours go through rstd: a few ulps apart.
    test::check_close(rm.to_vector(), c["running_mean_after"].get<std::vector<float>>(), 1e-5, 1e-6, "running_mean");
    test::check_close(rv.to_vector(), c["running_var_after"].get<std::vector<float>>(), 1e-5, 1e-6, "running_var");
    autograd::NoGradGuard no_grad;
    o.training = false;
    Tensor y_eval = ops::batch_norm(input(c, "x_eval", false), g, b, rm, rv, o);
    test::check_close(y_eval.to_vector(), c["eval_output"].get<std::vector<float>>(), 1e-5, 1e-5, "evaluation output");
  }
}

TEST_CASE("hybrid_loss matches DLE UNet3P's focal + SSIM + IoU loss (tf.image.ssim) rebuilt in PyTorch") {
  for (const char* name : {"hybrid_loss", "hybrid_loss_11x11"}) {
    CAPTURE(name);
    const json& c = golden_case(name);
    Tensor logits = input(c, "logits");
    const Tensor labels = Tensor::from_vector(c["labels"]["shape"].get<Shape>(),
                                              c["labels"]["data"].get<std::vector<float>>(), DType::i32);
    Tensor parts;
    const Tensor loss = ops::hybrid_loss(logits, labels, &parts);
    const std::vector<float> p = parts.to_vector();
    CHECK(p[0] == doctest::Approx(c["focal"].get<double>()).epsilon(1e-5));
    CHECK(p[1] == doctest::Approx(c["ssim"].get<double>()).epsilon(1e-5));
    CHECK(p[2] == doctest::Approx(c["iou"].get<double>()).epsilon(1e-5));
    // The gradient's smallest elements are sums of terms that cancel: an absolute floor of 1e-6 of its largest (1e-2).
    check_against_golden(c, loss, {{"logits", logits}}, 1e-4, 1e-8);
  }
}

TEST_CASE("hybrid_loss with MS-SSIM matches the paper's focal + MS-SSIM + IoU (tf.image.ssim_multiscale) in PyTorch") {
  // tests/golden/make_ms_ssim_golden.py: 2 x 166 x 161, 2 classes (odd and even sides at the five scales), float64.
  const io::SafetensorsContent g = io::read_safetensors(std::string(UNET_TEST_DATA_DIR) + "/ms_ssim.safetensors");
  const auto meta = [&](const char* key) { return json::parse(g.metadata.at(key)).get<double>(); };
  Tensor logits = g.get("logits").clone().set_requires_grad(true);
  const Tensor labels = g.get("labels");
  Tensor parts;
  ops::HybridLossOptions o;
  o.multiscale = true;
  const Tensor loss = ops::hybrid_loss(logits, labels, &parts, nullptr, o);
  const std::vector<float> p = parts.to_vector();
  CHECK(p[0] == doctest::Approx(meta("focal")).epsilon(1e-5));
  CHECK(p[1] == doctest::Approx(meta("ssim")).epsilon(1e-5));
  CHECK(p[2] == doctest::Approx(meta("iou")).epsilon(1e-5));
  CHECK(loss.to_vector()[0] == doctest::Approx(meta("loss")).epsilon(1e-5));
  autograd::backward(loss, Tensor::full({1}, static_cast<float>(meta("r"))));
  // Elements ~1e-6 (the loss is a mean over 53,452 pixels): 1e-4 relative, a floor of 1e-11.
  test::check_close(logits.grad(), g.get("grad_logits"), 1e-4, 1e-11, "d loss / d logits");
}
