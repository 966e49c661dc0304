// UNet2D against the same network in PyTorch with the same weights (tests/golden/make_unet2d_golden.py): logits and
// the gradients of every parameter and of the input; the sizes of the paper (572 -> 388); checkpoint names and
// layouts; Glorot initialisation; dropout in training only; training and inference through the tools (NIfTI and TIFF).
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "io/dataset.h"
#include "io/nifti.h"
#include "io/safetensors.h"
#include "io/tiff.h"
#include "models/checkpoint.h"
#include "models/unet2d.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::models;

namespace {
const std::string kGolden = std::string(UNET_TEST_DATA_DIR) + "/unet2d.safetensors";

UNet2DConfig golden_config(const io::SafetensorsContent& st) {
  UNet2DConfig c;
  c.in_channels = nlohmann::json::parse(st.metadata.at("in_channels")).get<int>();
  c.out_channels = nlohmann::json::parse(st.metadata.at("out_channels")).get<int>();
  c.filters = nlohmann::json::parse(st.metadata.at("filters")).get<std::vector<int>>();
  return c;
}
}  // namespace

TEST_CASE("UNet2D equals the PyTorch module: logits and every gradient, with its checkpoint names and layouts") {
  const io::SafetensorsContent st = read_weights(kGolden);
  UNet2D net(golden_config(st));
  load_weights(st, net, kGolden);
  Tensor x = st.get("__input__").clone();
  x.set_requires_grad(true);
  Tensor y = net.forward(x, /*training=*/false)[0];
  REQUIRE(y.shape() == st.get("__output__").shape());
  test::check_close(y, st.get("__output__"), 1e-4, 1e-5, "logits");
  autograd::backward(y, st.get("__r__"));
  test::check_close(x.grad(), st.get("__grad_input__"), 1e-4, 1e-5, "gradient of the input");
  int checked = 0;
  for (const auto& [name, p] : net.named_parameters()) {
    CAPTURE(name);
    test::check_close(p.grad(), from_pytorch_layout(name, st.get("__grad__." + name)), 1e-4, 1e-5, name);
    ++checked;
  }
  CHECK(checked == 4 * 2 * 2 + 2 * 2 + 4 * 3 * 2 + 2);  // down: 2 convs x (w, b); bottleneck; up: 3 each; head
}

TEST_CASE("UNet2D sizes: 572 gives 388 as in the paper; inputs that do not fit are refused with the next that does") {
  CHECK(UNet2D::output_size(572) == 388);
  CHECK(UNet2D::output_size(188) == 4);
  CHECK(UNet2D::output_size(573) == 0);
  CHECK(UNet2D::output_size(100) == 0);
  CHECK(UNet2D::valid_input_size(500) == 508);
  CHECK(UNet2D::output_size(508) == 324);
  UNet2D net({1, 2, {2, 2, 2, 2, 2}, 0.5f});
  net.initialize(1);
  CHECK(net.forward(Tensor::zeros({1, 188, 188, 1}), false)[0].shape() == Shape{1, 4, 4, 2});
  CHECK_THROWS_WITH_AS(net.forward(Tensor::zeros({1, 190, 188, 1}), false), doctest::Contains("204 is the next"),
                       std::invalid_argument);
}

TEST_CASE("UNet2D initialisation is Keras' glorot_uniform with zero biases; dropout acts in training only") {
  UNet2D net({1, 2, {8, 16, 16, 32, 32}, 0.5f});
  net.initialize(7);
  for (const auto& [name, p] : net.named_parameters()) {
    CAPTURE(name);
    const std::vector<float> v = p.to_vector();
    if (name.ends_with("bias")) {
      for (float b : v) REQUIRE(b == 0.f);
      continue;
    }
    // [out, k, k, in] or, for an up-convolution, [in, k, k, out]: fan_in + fan_out = k*k*(in + out) either way.
    const double fans = double(p.dim(1)) * double(p.dim(2)) * double(p.dim(0) + p.dim(3));
    const double limit = std::sqrt(6.0 / fans);
    double sum_sq = 0;
    for (float w : v) {
      REQUIRE(std::abs(w) <= limit);
      sum_sq += double(w) * w;
    }
    // U(-l, l) has variance l^2 / 3; the weights' mean square within 30% of it (at least 72 weights per tensor).
    CHECK(sum_sq / double(v.size()) == doctest::Approx(limit * limit / 3).epsilon(0.3));
  }
  Tensor x = Tensor::full({1, 188, 188, 1}, 0.5f);
  const std::vector<float> eval1 = net.forward(x, false)[0].to_vector(),
                           eval2 = net.forward(x, false, 99)[0].to_vector();
  CHECK(eval1 == eval2);
  const std::vector<float> train1 = net.forward(x, true, 1)[0].to_vector(),
                           train2 = net.forward(x, true, 2)[0].to_vector();
  CHECK(train1 != eval1);
  CHECK(train1 != train2);
  CHECK(train1 == net.forward(x, true, 1)[0].to_vector());
}

TEST_CASE("unet_train with model.name = unet2d learns synthetic slices; unet_infer segments NIfTI and TIFF alike") {
  test::TempDir tmp("unet2d_train");
  const std::string& dir = tmp.path;
  // Shapes of about a centimetre in 8 slices of 280 x 280 at 6 x 0.2 x 0.2 mm; one foreground class.
  REQUIRE(test::run_tool("unet_synth", "--output " + dir +
                                           "/data --train 8 --test 2 --size 8,280,280 --spacing "
                                           "6,0.2,0.2 --classes 2 --seed 3") == 0);
  const std::string ini = test::write_text(dir + "/t.ini", "[data]\ndataset = " + dir +
                                                               "/data\npatch_size = 252, 252\nbatch_size = 2\ncache = "
                                                               "none\n[model]\nname = unet2d\nfilters = 8\n[train]\n"
                                                               "steps = 300\nlog_every = 100\nlr = 1e-3\n[validation]\n"
                                                               "overlap = 0.25\n[output]\ndir = " +
                                                               dir + "/run\n");
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini, &out) == 0, out);
  CHECK(out.find("UNet2D, logits 68x68") != std::string::npos);
  const io::SafetensorsContent w = read_weights(dir + "/run/model.safetensors");
  const ModelCard card = card_from_metadata(w.metadata, "model");
  CHECK(card.model == "unet2d");
  CHECK(card.unet2d.filters == std::vector<int>{8, 16, 32, 64, 128});
  CHECK(w.get("up.0.upconv.weight").shape() == Shape{128, 64, 3, 3});  // ConvTranspose2d: [in, out, k, k]
  CHECK(w.get("down.0.conv1.weight").shape() == Shape{8, 1, 3, 3});

  REQUIRE_MESSAGE(test::run_tool("unet_infer",
                                 "--model " + dir + "/run/model.safetensors --input " + dir +
                                     "/data/imagesTs --output " + dir + "/pred",
                                 &out) == 0,
                  out);
  REQUIRE_MESSAGE(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/data/labelsTs", &out) == 0,
                  out);
  const auto dice = nlohmann::json::parse(std::ifstream(dir + "/pred/dice.json"));
  // Measured: 0.9889 (300 steps, seed 0, DLE's loss: train.loss = auto).
  CHECK(dice["mean_dice"].get<double>() > 0.95);

  // The same volume as a TIFF stack carrying its spacing in ImageJ's description: the same labels.
  const io::NiftiVolume vol = io::read_nifti(dir + "/data/imagesTs/case_008.nii.gz");
  io::TiffWriteOptions o;
  o.bits = 32;
  o.is_float = true;
  o.tags = {true, 5.f, 5.f, 1, "ImageJ=1.11a\nimages=8\nslices=8\nunit=mm\nspacing=6\n"};
  std::filesystem::create_directories(dir + "/tif");
  io::write_tiff(dir + "/tif/case_008.tif", vol.data, o);
  REQUIRE_MESSAGE(test::run_tool("unet_infer",
                                 "--model " + dir + "/run/model.safetensors --input " + dir +
                                     "/tif/case_008.tif --output " + dir + "/tif/seg.tif",
                                 &out) == 0,
                  out);
  CHECK(out.find("segmented at 8x280x280") != std::string::npos);  // not resampled: the spacing was read
  CHECK(io::read_tiff(dir + "/tif/seg.tif").data.to_vector() ==
        io::read_nifti(dir + "/pred/case_008.nii.gz").data.to_vector());
}

TEST_CASE("ISBI 2012 layout: train-volume.tif and train-labels.tif, one case per page, labels 0 / 255; unet2d trains") {
  test::TempDir tmp("isbi");
  const std::string& dir = tmp.path;
  // 4 pages of 40 x 48: the image a ramp, the label 255 where the image is even.
  Tensor image = Tensor::empty({4, 40, 48}, DType::u8), label = Tensor::empty({4, 40, 48}, DType::u8);
  for (int64_t i = 0; i < image.numel(); ++i) {
    image.data<uint8_t>()[i] = static_cast<uint8_t>(i * 7 % 251);
    label.data<uint8_t>()[i] = image.data<uint8_t>()[i] % 2 == 0 ? 255 : 0;
  }
  io::TiffWriteOptions o;
  io::write_tiff(dir + "/train-volume.tif", image, o);
  io::write_tiff(dir + "/train-labels.tif", label, o);
  io::write_tiff(dir + "/test-volume.tif", image, o);
  const io::DatasetInfo info = io::read_dataset(dir);
  CHECK(info.format == "isbi2012");
  REQUIRE(info.training.size() == 4);
  CHECK(info.training[2].id == "train-volume_02");
  CHECK(info.labels == std::vector<std::string>{"membrane", "cell"});
  CHECK(info.test.size() == 1);
  const io::Case c = io::load_case(info, 2);
  REQUIRE(c.image.shape() == Shape{1, 40, 48, 1});
  const int64_t plane = 40 * 48;
  for (int64_t v = 0; v < plane; ++v) {
    REQUIRE(c.image.data<float>()[v] == float(image.data<uint8_t>()[2 * plane + v]));
    REQUIRE(c.label.data<uint8_t>()[v] == (label.data<uint8_t>()[2 * plane + v] == 255 ? 1 : 0));
  }
  // unet_train takes the directory as it is (slices padded to the patch), two folds of two pages; windows of 52 x 52
  // logits, so unet_infer takes one per page.
  const std::string ini = test::write_text(dir + "/t.ini", "[data]\ndataset = " + dir +
                                                               "\npatch_size = 236, 236\nfolds = 2\ncache = none\n"
                                                               "[model]\nname = unet2d\nfilters = 2\n[train]\nsteps = "
                                                               "2\n[output]\ndir = " +
                                                               dir + "/run\n");
  std::string out;
  CHECK_MESSAGE(test::run_tool("unet_train", ini, &out) == 0, out);
  CHECK(out.find("2 training / 2 validation cases") != std::string::npos);
  // The model writes its classes as the dataset stores them (0 / 255), and unet_eval reads both back with
  // --label-scale 255: its Dice is the cell class's, counted here from the two stacks.
  CHECK(card_from_metadata(read_weights(dir + "/run/model.safetensors").metadata, "model").label_scale == 255);
  REQUIRE_MESSAGE(test::run_tool("unet_infer",
                                 "--model " + dir + "/run/model.safetensors --input " + dir +
                                     "/test-volume.tif --output " + dir + "/seg.tif",
                                 &out) == 0,
                  out);
  const Tensor seg = io::read_tiff(dir + "/seg.tif").data;
  REQUIRE(seg.shape() == Shape{4, 40, 48, 1});
  int64_t both = 0, in_seg = 0, in_label = 0;
  for (int64_t v = 0; v < seg.numel(); ++v) {
    const float s = seg.data<float>()[v];
    REQUIRE((s == 0.f || s == 255.f));
    both += s == 255.f && label.data<uint8_t>()[v] == 255;
    in_seg += s == 255.f;
    in_label += label.data<uint8_t>()[v] == 255;
  }
  io::write_tiff(dir + "/test-labels.tif", label, o);
  REQUIRE_MESSAGE(test::run_tool("unet_eval",
                                 "--pred " + dir + "/seg.tif --label " + dir +
                                     "/test-labels.tif --label-scale 255 --json " + dir + "/dice.json",
                                 &out) == 0,
                  out);
  const auto dice = nlohmann::json::parse(std::ifstream(dir + "/dice.json"));
  CHECK(dice["classes"] == 2);
  CHECK(dice["mean_dice"].get<double>() == doctest::Approx(2.0 * both / double(in_seg + in_label)).epsilon(1e-9));
  // A value that is not a multiple of the scale is named; a directory and a file do not pair.
  CHECK(test::run_tool("unet_eval", "--pred " + dir + "/seg.tif --label " + dir + "/test-labels.tif --label-scale 2",
                       &out) == 1);
  CHECK(out.find("value 255 is not a multiple of --label-scale 2") != std::string::npos);
  CHECK(test::run_tool("unet_eval", "--pred " + dir + " --label " + dir + "/test-labels.tif", &out) == 2);
  CHECK(out.find("not a file (--label is a file, so --pred must be one)") != std::string::npos);
  CHECK(test::run_tool("unet_eval", "--pred " + dir + "/sge.tif --label " + dir + "/test-labels.tif", &out) == 2);
  CHECK(out.find("/sge.tif: no such file (--label is a file, so --pred must be one)") != std::string::npos);
  // A label that is neither 0 nor 255 is named.
  label.data<uint8_t>()[plane + 5] = 128;
  io::write_tiff(dir + "/train-labels.tif", label, o);
  try {
    io::load_case(info, 1);
    FAIL("no error");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find("label value 128; ISBI 2012 labels are 0 (membrane) or 255 (cell)") !=
          std::string::npos);
  }
}
