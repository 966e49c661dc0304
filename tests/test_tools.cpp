// The command-line tools end to end, as real processes on real files: unet_synth -> unet_train -> unet_infer ->
// unet_eval, the training loop itself, header preservation of unet_infer, and exit statuses for bad input.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "io/dataset.h"
#include "io/nifti.h"
#include "io/synthetic.h"
#include "io/tiff.h"
#include "models/checkpoint.h"
#include "models/nnunet_plan.h"
#include "models/trainer.h"
#include "tests/test_util.h"

using namespace unet;
namespace fs = std::filesystem;

namespace {
using test::write_text;

// A small model card and weights with random values, for `channels` input channels.
std::string write_random_model(const std::string& dir, int channels, const std::vector<int>& patch) {
  models::ModelCard card;
  models::UNetPlan plan = models::plan_unet(patch, {1, 1, 1}, 2);
  card.net = {channels, 3, plan.kernels, plan.strides, {}};
  for (size_t i = 0; i < plan.kernels.size(); ++i) card.net.filters.push_back(4 << i);
  card.patch = patch;
  card.spacing = {1, 1, 1};
  card.normalization.channels.assign(static_cast<size_t>(channels), io::ChannelNormalization{});
  card.labels = {{0, "background"}, {1, "a"}, {2, "b"}};
  models::DynUNet net(card.net);
  net.initialize(3);
  std::string path = dir + "/model_" + std::to_string(channels) + ".safetensors";
  models::save_weights(path, net, models::card_to_metadata(card));
  return path;
}
}  // namespace

TEST_CASE("a few training steps on one batch lower the loss") {
  io::SynthOptions o;
  o.output = "unused";  // only the in-memory case is made
  o.size = {16, 16, 16};
  io::SynthCase sc = io::make_synthetic_case(o, 0);
  models::UNetPlan plan = models::plan_unet({16, 16, 16}, {1, 1, 1}, 2);
  models::DynUNetConfig cfg{1, 3, plan.kernels, plan.strides, {8, 16, 16}};
  models::DynUNet net(cfg);
  net.initialize(0);
  AdamW opt(net.parameters(), AdamOptions{1e-2, 0.9, 0.999, 1e-8, 0});
  Tensor x = sc.image.clone().reshape({1, 16, 16, 16, 1});
  float* px = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) px[i] = (px[i] - 200.f) / 150.f;
  Tensor y = Tensor::from_vector({1, 16, 16, 16}, sc.label.to_vector(), DType::i32);
  double first = models::train_step(net, opt, x, y).loss(), last = first;
  for (int i = 0; i < 15; ++i) last = models::train_step(net, opt, x, y).loss();
  CHECK(last < 0.7 * first);
}

TEST_CASE("unet_train writes a checkpoint, a JSON-lines log and its configuration; unet_infer and unet_eval use them") {
  test::TempDir tmp("tools_pipeline");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/data --train 5 --test 2 --size 16,16,16 --seed 4") == 0);
  std::string ini = write_text(
      dir + "/train.ini", "[data]\ndataset = " + dir +
                              "/data\npatch_size = 16,16,16\nbatch_size = 2\n"
                              "[model]\nfilters = 4\ndepth = 2\n[train]\nsteps = 4\nlog_every = 2\n[output]\ndir = " +
                              dir + "/run\n");
  std::string out;
  int rc = test::run_tool("unet_train", ini + " --set train.seed=1", &out);
  REQUIRE_MESSAGE(rc == 0, out);
  // Log: a line per 2 steps with the documented fields, then the validation of fold 0 (one of 5 cases).
  std::ifstream log(dir + "/run/log.jsonl");
  std::vector<nlohmann::json> lines;
  for (std::string l; std::getline(log, l);) lines.push_back(nlohmann::json::parse(l));
  REQUIRE(lines.size() == 3);
  for (const char* k : {"step", "loss", "dice_loss", "ce", "lr", "samples_per_s", "peak_memory_mb", "loss_scale",
                        "loss_scale_growth_tracker", "skipped_steps"})
    CHECK(lines[0].contains(k));
  CHECK(lines[0]["loss_scale"] == 1.0);  // fp32 (auto on the cpu): unscaled
  CHECK(lines[1]["step"] == 4);
  CHECK(lines[2].contains("val_mean_dice"));
  // Checkpoint: PyTorch names and layout, model card in the metadata, training state beside it.
  io::SafetensorsContent w = models::read_weights(dir + "/run/model.safetensors");
  CHECK(w.get("input_block.conv1.conv.weight").shape() == Shape{4, 1, 3, 3, 3});
  models::ModelCard card = models::card_from_metadata(w.metadata, "model");
  CHECK(card.patch == std::vector<int>{16, 16, 16});
  CHECK(card.labels.size() == 3);
  io::SafetensorsContent st = io::read_safetensors(dir + "/run/checkpoint.safetensors");
  CHECK(st.metadata.at("step") == "4");
  CHECK(st.metadata.at("global_batch") == "2");
  CHECK(st.get("model.input_block.conv1.conv.weight").shape() == Shape{4, 3, 3, 3, 1});  // the engine's layout
  CHECK(st.get("optimizer.exp_avg.0").shape() == Shape{4, 3, 3, 3, 1});
  CHECK(st.metadata.at("precision") == "fp32");
  CHECK(st.metadata.at("loss_scale") == "1");
  CHECK(st.metadata.at("skipped_steps") == "0");
  CHECK_FALSE(st.tensors.empty());
  CHECK(fs::exists(dir + "/run/config.ini"));
  // The checkpoint given as the model: a wrong argument (exit 2), found before any volume.
  CHECK(test::run_tool("unet_infer",
                       "--model " + dir + "/run/checkpoint.safetensors --input " + dir + "/data/imagesTs --output " +
                           dir + "/wrong",
                       &out) == 2);
  CHECK_MESSAGE(out.find("--model: " + dir + "/run/checkpoint.safetensors: a training checkpoint") != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(dir + "/wrong"));

  rc = test::run_tool("unet_infer",
                      "--model " + dir + "/run/model.safetensors --input " + dir + "/data/imagesTs --output " + dir +
                          "/pred --save-probabilities --tta",
                      &out);
  REQUIRE_MESSAGE(rc == 0, out);
  for (auto& e : fs::directory_iterator(dir + "/data/imagesTs")) {
    io::NiftiVolume in = io::read_nifti(e.path().string());
    io::NiftiVolume pred = io::read_nifti(dir + "/pred/" + e.path().filename().string());
    CHECK(pred.data.shape() == in.data.shape());
    for (float v : pred.data.to_vector()) REQUIRE((v == 0 || v == 1 || v == 2));
    std::string stem = e.path().filename().string();
    stem = stem.substr(0, stem.size() - 7);
    io::NiftiVolume prob = io::read_nifti(dir + "/pred/" + stem + "_probabilities.nii.gz");
    CHECK(prob.data.dim(3) == 3);
  }
  rc = test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/data/labelsTs", &out);
  REQUIRE_MESSAGE(rc == 0, out);
  auto dice = nlohmann::json::parse(std::ifstream(dir + "/pred/dice.json"));
  CHECK(dice["cases"].size() == 2);
  CHECK(dice["mean_dice"].get<double>() >= 0.0);
  CHECK(dice["mean_dice"].get<double>() <= 1.0);
}

TEST_CASE("unet_infer segments TIFF stacks as it does the same volume in NIfTI, and unet_eval scores TIFF labels") {
  test::TempDir tmp("tools_tiff");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir, 2, {8, 8, 8});
  // A two-channel volume of 5 pages of 11 x 13 (smaller than the patch along z: padded), as NIfTI and as a Deflate
  // TIFF with one sample per channel and a resolution in pixels per centimetre of 10 mm^-1, that is 1 mm.
  Tensor image = Tensor::empty({5, 11, 13, 2});
  for (int64_t i = 0; i < image.numel(); ++i) image.data<float>()[i] = float((i * 37) % 101) - 20.f;
  fs::create_directories(dir + "/in");
  io::write_nifti(dir + "/in/vol.nii.gz", image, io::make_nifti_like(image.shape(), {1, 1, 1}));
  io::TiffWriteOptions o;
  o.bits = 32;
  o.is_float = true;
  o.tags = {true, 10.f, 10.f, 3 /* RESUNIT_CENTIMETER */, ""};
  io::write_tiff(dir + "/in/vol.tif", image, o);
  std::string out;
  REQUIRE_MESSAGE(
      test::run_tool("unet_infer",
                     "--model " + model + " --input " + dir + "/in --output " + dir + "/pred --save-probabilities",
                     &out) == 0,
      out);
  const io::NiftiVolume nii = io::read_nifti(dir + "/pred/vol.nii.gz");
  const io::TiffVolume tif = io::read_tiff(dir + "/pred/vol.tif");
  CHECK(tif.data.shape() == Shape{5, 11, 13, 1});  // the input's pages and size
  CHECK((tif.bits == 8 && tif.compression == io::TiffCompression::deflate && tif.tags.has_resolution));
  CHECK(tif.data.to_vector() == nii.data.to_vector());
  const io::TiffVolume prob = io::read_tiff(dir + "/pred/vol_probabilities.tif");
  CHECK(prob.data.shape() == Shape{5, 11, 13, 3});
  CHECK(prob.data.to_vector() == io::read_nifti(dir + "/pred/vol_probabilities.nii.gz").data.to_vector());
  // unet_eval reads TIFF label maps: the TIFF prediction against itself scores 1 for every class present.
  fs::create_directories(dir + "/ref");
  fs::copy_file(dir + "/pred/vol.tif", dir + "/ref/vol.tif");
  fs::create_directories(dir + "/tifpred");
  fs::copy_file(dir + "/pred/vol.tif", dir + "/tifpred/vol.tif");
  REQUIRE_MESSAGE(
      test::run_tool("unet_eval", "--pred " + dir + "/tifpred --label " + dir + "/ref --classes 3", &out) == 0, out);
  const auto dice = nlohmann::json::parse(std::ifstream(dir + "/tifpred/dice.json"));
  REQUIRE(dice["cases"].size() == 1);
  CHECK(dice["mean_dice"].get<double>() == 1.0);
}

TEST_CASE("unet_infer on nnU-Net v2 test images: a case's channel files CASE_XXXX in order, written as CASE") {
  test::TempDir tmp("tools_v2_channels");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir, 2, {8, 8, 8});
  fs::create_directories(dir + "/stacked");
  fs::create_directories(dir + "/v2");
  for (int c = 7; c <= 8; ++c) {
    // The same two-channel volume as one 4D file and as two channel files.
    Tensor image = Tensor::empty({5, 11, 13, 2});
    for (int64_t i = 0; i < image.numel(); ++i) image.data<float>()[i] = float((i * 37 + c) % 101) - 20.f;
    const std::string name = "case_" + std::to_string(c);
    io::write_nifti(dir + "/stacked/" + name + ".nii.gz", image, io::make_nifti_like(image.shape(), {1, 1, 1}));
    for (int k = 0; k < 2; ++k) {
      Tensor one = Tensor::empty({5, 11, 13, 1});
      for (int64_t v = 0; v < one.numel(); ++v) one.data<float>()[v] = image.data<float>()[v * 2 + k];
      io::write_nifti(dir + "/v2/" + name + "_000" + std::to_string(k) + ".nii.gz", one,
                      io::make_nifti_like(one.shape(), {1, 1, 1}));
    }
  }
  std::string out;
  for (const char* in : {"stacked", "v2"})
    REQUIRE_MESSAGE(
        test::run_tool("unet_infer",
                       "--model " + model + " --input " + dir + "/" + in + " --output " + dir + "/pred_" + in,
                       &out) == 0,
        out);
  CHECK(out.find("channels from 2 files") != std::string::npos);
  for (const char* name : {"case_7", "case_8"}) {
    CAPTURE(name);
    const std::string v2 = dir + "/pred_v2/" + name + ".nii.gz";
    REQUIRE(fs::exists(v2));
    CHECK(io::read_nifti(v2).data.to_vector() ==
          io::read_nifti(dir + "/pred_stacked/" + name + ".nii.gz").data.to_vector());
  }
  CHECK(!fs::exists(dir + "/pred_v2/case_7_0000.nii.gz"));
  // A case without its channel 0 is refused before any work, naming it.
  fs::remove(dir + "/v2/case_8_0000.nii.gz");
  CHECK(test::run_tool("unet_infer", "--model " + model + " --input " + dir + "/v2 --output " + dir + "/pred_bad",
                       &out) == 2);
  CHECK(out.find("case_8_0001.nii.gz is channel 1 of case case_8, whose channels 0..0 are not all there") !=
        std::string::npos);
  CHECK(!fs::exists(dir + "/pred_bad"));
  // So is a case without its last channel (the model has two), naming the missing file: it failed only when its turn
  // came, after the cases before it, naming channel 0.
  fs::rename(dir + "/v2/case_8_0001.nii.gz", dir + "/v2/case_8_0000.nii.gz");
  CHECK(test::run_tool("unet_infer", "--model " + model + " --input " + dir + "/v2 --output " + dir + "/pred_bad",
                       &out) == 2);
  CHECK_MESSAGE(out.find("case case_8 has 1 channel file(s), the model expects 2: " + dir +
                         "/v2/case_8_0001.nii.gz is missing") != std::string::npos,
                out);
  CHECK(!fs::exists(dir + "/pred_bad"));
  // And a case with a channel file more than the model takes, naming that file: it failed at its turn, naming
  // channel 0 (red-team corpus 17, L3).
  fs::copy_file(dir + "/v2/case_7_0001.nii.gz", dir + "/v2/case_8_0001.nii.gz");
  fs::copy_file(dir + "/v2/case_7_0001.nii.gz", dir + "/v2/case_8_0002.nii.gz");
  CHECK(test::run_tool("unet_infer", "--model " + model + " --input " + dir + "/v2 --output " + dir + "/pred_bad",
                       &out) == 2);
  CHECK_MESSAGE(out.find(dir + "/v2/case_8_0002.nii.gz is a channel file beyond the model's 2 (nnU-Net v2: "
                               "CASE_0000 .. CASE_0001)") != std::string::npos,
                out);
  CHECK(!fs::exists(dir + "/pred_bad"));
  // Names that merely end in four digits, with no channel 0000 among them, are cases of their own (they were refused
  // as incomplete nnU-Net v2 cases).
  fs::create_directories(dir + "/one");
  fs::create_directories(dir + "/years");
  const std::string one = write_random_model(dir + "/one", 1, {8, 8, 8});
  Tensor single = Tensor::zeros({5, 11, 13, 1});
  for (int64_t i = 0; i < single.numel(); ++i) single.data<float>()[i] = static_cast<float>(i % 17);
  for (const char* name : {"ct_2019", "ct_2020"})
    io::write_nifti(dir + "/years/" + name + ".nii.gz", single, io::make_nifti_like(single.shape(), {1, 1, 1}));
  REQUIRE_MESSAGE(
      test::run_tool("unet_infer", "--model " + one + " --input " + dir + "/years --output " + dir + "/pred_years",
                     &out) == 0,
      out);
  CHECK(fs::exists(dir + "/pred_years/ct_2019.nii.gz"));
  CHECK(fs::exists(dir + "/pred_years/ct_2020.nii.gz"));
}

TEST_CASE("unet_infer writes each label map with its input's header, for every nibabel fixture") {
  test::TempDir tmp("tools_header");
  const std::string& dir = tmp.path;
  std::string fixtures = std::string(UNET_TEST_DATA_DIR) + "/nifti/";
  for (const char* name : {"sform_only.nii.gz", "qform_only.nii", "aniso_int16_scaled.nii.gz", "four_channels.nii.gz",
                           "nifti2_uint8.nii"}) {
    CAPTURE(name);
    io::NiftiVolume in = io::read_nifti(fixtures + name);
    std::string model = write_random_model(dir, static_cast<int>(in.data.dim(3)), {8, 8, 8});
    std::string out_path = dir + "/out_" + name, out;
    int rc = test::run_tool("unet_infer", "--model " + model + " --input " + fixtures + name + " --output " + out_path,
                            &out);
    REQUIRE_MESSAGE(rc == 0, out);
    // The model was "trained" at 1 mm: anisotropic inputs are resampled to 1 mm and the labels back to their grid.
    io::NiftiVolume pred = io::read_nifti(out_path);
    io::NiftiGeometry a = pred.geometry(), b = in.geometry();
    CHECK(a.nifti_type == b.nifti_type);
    for (int i = 1; i <= 3; ++i) CHECK(a.dim[i] == b.dim[i]);
    for (int i = 1; i <= 3; ++i) CHECK(a.pixdim[i] == b.pixdim[i]);
    CHECK(a.qform_code == b.qform_code);
    CHECK(a.sform_code == b.sform_code);
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) CHECK(a.sto_xyz[i][j] == b.sto_xyz[i][j]);
    CHECK(a.xyz_units == b.xyz_units);
    CHECK(pred.datatype == 2);  // uint8 labels
  }
}

TEST_CASE("configuration errors exit with status 2 and name the key") {
  test::TempDir tmp("tools_config");
  const std::string& dir = tmp.path;
  std::string out;
  CHECK(test::run_tool("unet_train", write_text(dir + "/a.ini", "[train]\nstpes = 3\n"), &out) == 2);
  CHECK(out.find("unknown key 'train.stpes'; did you mean 'train.steps'?") != std::string::npos);
  CHECK(test::run_tool("unet_train", write_text(dir + "/b.ini", "[train]\nlr = fast\n"), &out) == 2);
  CHECK(out.find("train.lr = 'fast': expected a number") != std::string::npos);
  CHECK(test::run_tool("unet_train", write_text(dir + "/c.ini", "[train]\nsteps = 3\n"), &out) == 2);
  CHECK(out.find("data.dataset: required") != std::string::npos);
  CHECK(test::run_tool("unet_train", dir + "/missing.ini", &out) == 2);
  CHECK(out.find("cannot open config file") != std::string::npos);
  CHECK(test::run_tool("unet_train", write_text(dir + "/d.ini", "[data]\ndataset = " + dir + "/nowhere\n"), &out) == 2);
  CHECK(out.find("data.dataset = " + dir +
                 "/nowhere: no such directory; expected the directory holding "
                 "dataset.json") != std::string::npos);
  CHECK(test::run_tool("unet_train", write_text(dir + "/e.ini", "[data]\ndataset = " + dir + "/e.ini\n"), &out) == 2);
  CHECK(out.find("data.dataset = " + dir + "/e.ini: not a directory") != std::string::npos);
}

TEST_CASE("out-of-range configuration numbers exit with status 2 naming the key and the range, before any work") {
  test::TempDir tmp("tools_config_ranges");
  const std::string& dir = tmp.path;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  // (setting, expected message fragment): values that used to wrap (4294967296 as an int is 0), be NaN, or run away.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"data.batch_size=4294967296", "data.batch_size = 4294967296: expected 1..1024"},
      {"data.folds=0", "data.folds = 0: expected 1..100"},
      {"data.fold=5", "data.fold = 5: expected 0..4"},
      {"train.steps=0", "train.steps = 0: expected 1..1000000000"},
      {"train.lr=nan", "train.lr = nan: expected a value in (0"},
      {"train.lr=1e30", "train.lr = 1e+30: expected a value in (0, 10]"},
      {"train.lr=10.0000001", "train.lr = 10.0000001: expected a value in (0, 10]"},
      {"train.lr=-1e-9", "train.lr = -1e-09: expected a value in (0, 10]"},
      {"train.lr=0", "train.lr = 0: expected a value in (0, 10]"},
      // 0 in the optimizer's f32, or too small to move any weight: the initial weights written as a model.
      {"train.lr=1e-50", "train.lr = 1e-50: expected a value in [1e-10, 10] (a smaller rate moves no f32 weight)"},
      {"train.optimizer=sgd --set train.momentum=0.99999999999",
       "train.momentum = 0.99999999999: expected a value in [0, 1) that stays below 1 in f32"},
      {"train.momentum=1", "train.momentum = 1: expected a value in [0, 1)"},
      {"train.warmup_steps=2000", "train.warmup_steps = 2000: expected 0..1000"},
      {"data.foreground_oversampling=1.5", "data.foreground_oversampling = 1.5: expected a value in [0, 1]"},
      {"validation.overlap=1", "validation.overlap = 1: expected a value in [0, 1)"},
      {"model.depth=0", "model.depth = 0: expected 1..10"},
      // In range, but the first level alone would need hundreds of GiB (it used to pad every case to 1024^3 silently).
      {"data.patch_size=1024,1024,1024", "data.patch_size = 1024, 1024, 1024 with data.batch_size = "},
      {"model.max_filters=8", "model.max_filters = 8: below model.filters = 32; expected at least the first level's"},
      {"runtime.threads=100000", "runtime.threads = 100000: expected 0.." + std::to_string(2 * cores)},
      {"train.precision=fp8", "train.precision = 'fp8': expected one of auto, fp32, tf32, fp16, bf16"},
      {"train.loss_scaling=static", "train.loss_scaling = 'static'"},
      {"train.loss_scale_init=0.5", "train.loss_scale_init = 0.5: expected a value in [1, 1e+30]"},
      {"train.loss_scale_growth_interval=0", "train.loss_scale_growth_interval = 0: expected 1..1000000000"},
      {"data.cache=", "data.cache: got ''; expected auto, none or a directory"},
  };
  const std::string ini =
      write_text(dir + "/t.ini", "[data]\ndataset = " + dir + "/nowhere\n[output]\ndir = " + dir + "/run\n");
  for (const auto& [setting, message] : cases) {
    std::string out;
    CHECK_MESSAGE(test::run_tool("unet_train", ini + " --set " + setting, &out) == 2, setting << ": " << out);
    CHECK_MESSAGE(out.find(message) != std::string::npos, setting << ": " << out);
  }
  CHECK_FALSE(fs::exists(dir + "/run"));  // refused before anything was written
}

TEST_CASE(
    "a key the chosen network, optimizer, pipeline or precision does not read is refused when set away from its "
    "default; a value stating what happens anyway is accepted") {
  test::TempDir tmp("tools_config_scope");
  const std::string& dir = tmp.path;
  // (settings, expected message fragment; empty: accepted, so the run goes on to the missing dataset).
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model.name=unet2d --set data.patch_size=64,64 --set model.depth=3",
       "model.depth = 3: no effect in this run: model.name = unet2d has five levels (only dynunet plans its depth); "
       "expected the key left out"},
      {"model.name=unet3plus --set data.patch_size=64,64 --set model.max_filters=64",
       "model.max_filters = 64: no effect in this run: model.name = unet3plus doubles its filters"},
      {"model.name=unet3plus --set data.patch_size=64,64 --set model.res_block=true",
       "model.res_block = true: no effect in this run: model.name = unet3plus has no residual blocks (dynunet's); "
       "expected the key left out or false"},
      {"model.dropout=0.2", "model.dropout = 0.2: no effect in this run: model.name = dynunet has no dropout"},
      {"model.sync_batchnorm=false", ""},  // default true: unet2d and dynunet have no batch norm to synchronise
      {"model.dropout=0", ""},
      {"model.name=unet2d --set data.patch_size=64,64 --set model.deep_supervision=false", ""},
      {"model.depth=5.0", "model.depth = '5.0': expected an integer"},  // the schema's check first
      {"train.momentum=0.9", "train.momentum = 0.9: no effect in this run: train.optimizer = adamw has no momentum"},
      {"train.optimizer=adam --set train.nesterov=false", ""},
      {"train.optimizer=sgd --set train.momentum=0.9", ""},
      {"train.optimizer=sgd --set train.momentum=0",
       "train.nesterov = true with train.momentum = 0: Nesterov momentum needs a momentum; expected train.momentum in "
       "(0, 1) or train.nesterov = false"},
      {"train.optimizer=sgd --set train.momentum=0 --set train.nesterov=false", ""},
      {"train.loss_scale_init=1024",
       "train.loss_scale_init = 1024: no effect in this run: loss scaling is off (train.loss_scaling = auto with "
       "train.precision fp32)"},
      {"train.precision=fp16 --set train.loss_scale_init=1024", ""},
      {"train.loss_scaling=dynamic --set train.loss_scale_growth_interval=100", ""},
      {"model.name=unet2d --set data.patch_size=572,572 --set data.pipeline=dle_isbi --set augment.gamma=0.3",
       "augment.gamma = 0.3: no effect in this run: data.pipeline = dle_isbi augments with flips, augment.zoom and "
       "augment.brightness only"},
      {"model.name=unet2d --set data.patch_size=572,572 --set data.pipeline=dle_isbi --set augment.noise=0", ""},
      {"train.lr=8e-4 --set train.weight_decay=0.0001", ""},  // defaults in another spelling
      {"data.folds=1 --set train.val_every=100",
       "train.val_every = 100: no effect in this run: data.folds = 1 trains on every case and holds none out for "
       "validation"},
      {"data.folds=1 --set validation.blend=constant", "validation.blend = constant: no effect in this run"},
      {"data.folds=2 --set validation.blend=constant --set train.val_every=100", ""},
      {"data.workers=0 --set data.prefetch=4",
       "data.prefetch = 4: no effect in this run: data.workers = 0 prepares each batch when it is needed"},
  };
  const std::string ini =
      write_text(dir + "/t.ini", "[data]\ndataset = " + dir + "/nowhere\n[output]\ndir = " + dir + "/run\n");
  for (const auto& [setting, message] : cases) {
    std::string out;
    CHECK_MESSAGE(test::run_tool("unet_train", ini + " --set " + setting, &out) == 2, setting << ": " << out);
    const std::string expected = message.empty() ? "data.dataset = " + dir + "/nowhere: no such directory" : message;
    CHECK_MESSAGE(out.find(expected) != std::string::npos, setting << ": " << out);
  }
  CHECK_FALSE(fs::exists(dir + "/run"));
}

TEST_CASE("unet_infer rejects bad arguments with status 2 and unreadable models with status 1, writing nothing") {
  test::TempDir tmp("tools_infer_errors");
  const std::string& dir = tmp.path;
  std::string fixture = std::string(UNET_TEST_DATA_DIR) + "/nifti/qform_only.nii", out;
  std::string model = write_random_model(dir, 1, {8, 8, 8});
  CHECK(test::run_tool("unet_infer",
                       "--model " + model + " --input " + fixture + " --output " + dir + "/x.nii --overlap 1.5",
                       &out) == 2);
  CHECK(out.find("--overlap") != std::string::npos);
  CHECK(test::run_tool("unet_infer", "--model " + model + " --input " + dir + "/none.nii --output " + dir + "/x.nii",
                       &out) == 2);
  // A missing model is a usage error like a missing input (exit 2, before any work); an unreadable one is exit 1.
  CHECK(test::run_tool("unet_infer",
                       "--model " + dir + "/none.safetensors --input " + fixture + " --output " + dir + "/x.nii",
                       &out) == 2);
  CHECK(out.find("none.safetensors: no such file or directory") != std::string::npos);
  std::string model3 = write_random_model(dir, 3, {8, 8, 8});
  CHECK(test::run_tool("unet_infer", "--model " + model3 + " --input " + fixture + " --output " + dir + "/x.nii",
                       &out) == 1);
  CHECK(out.find("the model expects 3") != std::string::npos);
  CHECK_FALSE(fs::exists(dir + "/x.nii"));
}

TEST_CASE("unet_infer never writes over its input, and skips hidden files (half-written outputs) in a directory") {
  test::TempDir tmp("tools_infer_inputs");
  const std::string& dir = tmp.path;
  const std::string model = write_random_model(dir, 1, {8, 8, 8});
  fs::create_directories(dir + "/images");
  const std::string image = dir + "/images/a.nii";
  fs::copy_file(std::string(UNET_TEST_DATA_DIR) + "/nifti/qform_only.nii", image);
  const auto bytes = [](const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  const std::string before = bytes(image);
  std::string out;
  CHECK(test::run_tool("unet_infer", "--model " + model + " --input " + image + " --output " + image, &out) == 2);
  CHECK(out.find("would overwrite the input " + image) != std::string::npos);
  CHECK(test::run_tool("unet_infer", "--model " + model + " --input " + dir + "/images --output " + dir + "/images",
                       &out) == 2);
  CHECK(bytes(image) == before);
  // A leftover temporary of an interrupted write (io::AtomicFile's ".tmpPID.NAME") is not taken for an input.
  std::ofstream(dir + "/images/.tmp123.b.nii.gz") << "half a file";
  REQUIRE_MESSAGE(
      test::run_tool("unet_infer", "--model " + model + " --input " + dir + "/images --output " + dir + "/pred",
                     &out) == 0,
      out);
  CHECK(fs::exists(dir + "/pred/a.nii"));
  CHECK_FALSE(fs::exists(dir + "/pred/.tmp123.b.nii.gz"));
}

namespace {
// A label map [4, 4, 4] with `ones` voxels of class 1 (from the first), the rest 0, and `stray` (if >= 0) written at
// the last voxel.
void write_labels(const std::string& path, int ones, int stray = -1) {
  std::vector<float> v(64, 0.f);
  for (int i = 0; i < ones; ++i) v[static_cast<size_t>(i)] = 1.f;
  if (stray >= 0) v[63] = static_cast<float>(stray);
  io::write_nifti(path, Tensor::from_vector({4, 4, 4}, v, DType::u8), io::make_nifti_like({4, 4, 4}, {1, 1, 1}));
}
}  // namespace

TEST_CASE("unet_eval takes the classes from the dataset or the references, never from a stray predicted label") {
  test::TempDir tmp("eval_classes");
  const std::string& dir = tmp.path;
  fs::create_directories(dir + "/ds/labelsTs");
  fs::create_directories(dir + "/pred");
  write_labels(dir + "/ds/labelsTs/a.nii.gz", 8);
  write_labels(dir + "/pred/a.nii.gz", 4);  // Dice of class 1: 2*4 / (4 + 8) = 2/3
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs", &out) == 0,
                  out);
  CHECK(nlohmann::json::parse(std::ifstream(dir + "/pred/dice.json"))["mean_dice"].get<double>() ==
        doctest::Approx(2.0 / 3.0));
  // A stray voxel labelled 7 used to add classes 2..7, which scored 1 or 0 and moved the mean; it is an error now,
  // naming the file and the value, and no dice.json is written.
  fs::remove(dir + "/pred/dice.json");
  write_labels(dir + "/pred/a.nii.gz", 4, 7);
  CHECK(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs", &out) == 1);
  CHECK(out.find("a.nii.gz: label value 7 outside the 2 classes") != std::string::npos);
  CHECK_FALSE(fs::exists(dir + "/pred/dice.json"));
  // With a dataset.json beside the labels, its labels set the class count (here 3: class 2 is absent from both, 1).
  std::ofstream(dir + "/ds/dataset.json") << R"({"labels": {"0": "background", "1": "a", "2": "b"}})";
  write_labels(dir + "/pred/a.nii.gz", 4);
  REQUIRE_MESSAGE(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs", &out) == 0,
                  out);
  auto j = nlohmann::json::parse(std::ifstream(dir + "/pred/dice.json"));
  CHECK(j["classes"] == 3);
  CHECK(j["mean_dice"].get<double>() == doctest::Approx((2.0 / 3.0 + 1.0) / 2));
  write_labels(dir + "/pred/a.nii.gz", 4, 3);
  CHECK(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs", &out) == 1);
  CHECK(out.find("outside the 3 classes of " + dir + "/ds/dataset.json") != std::string::npos);
  // --classes is bounded, and --json cannot name a label map.
  CHECK(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs --classes 20000000",
                       &out) == 2);
  CHECK(out.find("--classes 20000000: expected 2..1000") != std::string::npos);
  CHECK(test::run_tool("unet_eval",
                       "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs --json " + dir + "/pred/a.nii.gz",
                       &out) == 2);
  CHECK(io::read_nifti(dir + "/pred/a.nii.gz").data.to_vector()[63] == 3.f);  // untouched
  // Classes inferred from a reference of 0 / 255 with one stray voxel of 1: 253 of the 255 classes in no map would
  // each score Dice 1 (an empty prediction scored 0.99). Refused when the absent classes outnumber the scored ones.
  fs::remove(dir + "/ds/dataset.json");
  fs::remove(dir + "/pred/dice.json");
  fs::create_directories(dir + "/ref255");
  std::vector<float> v(64, 0.f);
  for (int i = 0; i < 20; ++i) v[static_cast<size_t>(i)] = 255.f;
  v[63] = 1.f;
  io::write_nifti(dir + "/ref255/a.nii.gz", Tensor::from_vector({4, 4, 4}, v, DType::u8),
                  io::make_nifti_like({4, 4, 4}, {1, 1, 1}));
  write_labels(dir + "/pred/a.nii.gz", 0);
  CHECK(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ref255", &out) == 2);
  CHECK_MESSAGE(out.find("253 of the 255 foreground classes implied by the largest label in " + dir +
                         "/ref255 (255) are in no reference and no prediction") != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(dir + "/pred/dice.json"));
  // References of background only: no class to infer (it was "the largest label (1)", a class no map holds).
  fs::create_directories(dir + "/ref0");
  write_labels(dir + "/ref0/a.nii.gz", 0);
  CHECK(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ref0", &out) == 2);
  CHECK_MESSAGE(out.find("every reference label map in " + dir +
                         "/ref0 holds background (0) only, so the classes cannot be inferred; expected --classes N") !=
                    std::string::npos,
                out);
  CHECK(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ref0 --classes 2", &out) == 0);
}

TEST_CASE("unet_eval fails on a reference without a prediction, or scores it 0 with --missing-as-zero") {
  test::TempDir tmp("eval_missing");
  const std::string& dir = tmp.path;
  fs::create_directories(dir + "/labels");
  fs::create_directories(dir + "/pred");
  write_labels(dir + "/labels/a.nii.gz", 8);
  write_labels(dir + "/labels/b.nii.gz", 8);
  write_labels(dir + "/pred/a.nii.gz", 8);  // perfect
  std::string out;
  CHECK(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/labels", &out) == 1);
  CHECK(out.find("no prediction for 1 of 2 reference(s): b.nii.gz") != std::string::npos);
  CHECK_FALSE(fs::exists(dir + "/pred/dice.json"));
  REQUIRE_MESSAGE(
      test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/labels --missing-as-zero", &out) == 0,
      out);
  CHECK(out.find("warning: no prediction for b.nii.gz") != std::string::npos);
  auto j = nlohmann::json::parse(std::ifstream(dir + "/pred/dice.json"));
  CHECK(j["mean_dice"].get<double>() == doctest::Approx(0.5));  // (1 + 0) / 2, not 1 over the one case found
  CHECK(j["missing_predictions"] == nlohmann::json::array({"b.nii.gz"}));
  // A hidden reference is a reference (it was left out: the mean of the others, without a word); the temporary of
  // an interrupted write is not, and is named as skipped.
  fs::remove(dir + "/pred/dice.json");
  write_labels(dir + "/pred/b.nii.gz", 8);
  write_labels(dir + "/labels/.c.nii.gz", 8);
  write_labels(dir + "/labels/.tmp123.d.nii.gz", 8);
  CHECK(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/labels", &out) == 1);
  CHECK_MESSAGE(out.find("no prediction for 1 of 3 reference(s): .c.nii.gz") != std::string::npos, out);
  CHECK_MESSAGE(
      out.find("unet_eval: skipping .tmp123.d.nii.gz: the temporary file of an interrupted write") != std::string::npos,
      out);
  // Every prediction missing: with --missing-as-zero, every reference scores 0 (it was a usage error).
  fs::create_directories(dir + "/none");
  REQUIRE_MESSAGE(
      test::run_tool("unet_eval", "--pred " + dir + "/none --label " + dir + "/labels --missing-as-zero", &out) == 0,
      out);
  j = nlohmann::json::parse(std::ifstream(dir + "/none/dice.json"));
  CHECK(j["mean_dice"].get<double>() == 0.0);
  CHECK(j["cases"].size() == 3);
  // Endings match in any case: a prediction .c.NII.GZ is .c.nii.gz's (it was "no prediction").
  write_labels(dir + "/pred/.c.NII.GZ", 8);
  REQUIRE_MESSAGE(test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/labels", &out) == 0, out);
  j = nlohmann::json::parse(std::ifstream(dir + "/pred/dice.json"));
  CHECK(j["mean_dice"].get<double>() == 1.0);
}

TEST_CASE("unet_eval scores every reference whatever its name, reads dataset.json as training does, names bad values") {
  test::TempDir tmp("eval_hostile");
  const std::string& dir = tmp.path;
  fs::create_directories(dir + "/ds/labelsTs");
  fs::create_directories(dir + "/pred");
  const std::string run = "--pred " + dir + "/pred --label " + dir + "/ds/labelsTs";
  // A reference named like a probabilities map beside its label map is a reference like any other: both are scored
  // (it used to be skipped, and the mean was that of x alone).
  write_labels(dir + "/ds/labelsTs/x.nii.gz", 8);
  write_labels(dir + "/ds/labelsTs/x_probabilities.nii.gz", 8);
  write_labels(dir + "/pred/x.nii.gz", 8);
  write_labels(dir + "/pred/x_probabilities.nii.gz", 4);
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_eval", run, &out) == 0, out);
  auto j = nlohmann::json::parse(std::ifstream(dir + "/pred/dice.json"));
  CHECK(j["cases"].size() == 2);
  CHECK(j["mean_dice"].get<double>() == doctest::Approx((1.0 + 2.0 / 3.0) / 2));
  fs::remove(dir + "/pred/dice.json");
  // A dangling prediction is an error naming it, even with --missing-as-zero (not a missing case scored 0).
  fs::remove(dir + "/pred/x_probabilities.nii.gz");
  fs::create_symlink(dir + "/gone.nii.gz", dir + "/pred/x_probabilities.nii.gz");
  CHECK(test::run_tool("unet_eval", run + " --missing-as-zero", &out) == 2);
  CHECK_MESSAGE(out.find(dir + "/pred/x_probabilities.nii.gz: a dangling symbolic link") != std::string::npos, out);
  fs::remove(dir + "/pred/x_probabilities.nii.gz");
  fs::remove(dir + "/ds/labelsTs/x_probabilities.nii.gz");
  // dataset.json: a FIFO is an error (it was ignored), "01" is refused as training refuses it, at most 1000 classes.
  REQUIRE(::mkfifo((dir + "/ds/dataset.json").c_str(), 0600) == 0);
  CHECK(test::run_tool("unet_eval", run, &out) == 2);
  CHECK_MESSAGE(out.find(dir + "/ds/dataset.json: not a regular file (a FIFO (named pipe))") != std::string::npos, out);
  fs::remove(dir + "/ds/dataset.json");
  std::ofstream(dir + "/ds/dataset.json") << R"({"labels": {"0": "background", "01": "a"}})";
  CHECK(test::run_tool("unet_eval", run, &out) == 1);
  CHECK_MESSAGE(out.find("labels: '01'") != std::string::npos, out);
  nlohmann::json many;
  for (int c = 0; c < 1001; ++c) many["labels"][std::to_string(c)] = "c" + std::to_string(c);
  std::ofstream(dir + "/ds/dataset.json") << many.dump();
  CHECK(test::run_tool("unet_eval", run, &out) == 1);
  CHECK_MESSAGE(out.find("labels: 1001 classes; at most 1000") != std::string::npos, out);
  fs::remove(dir + "/ds/dataset.json");
  // A value that is not a label is shown with all its digits (1.00000012, not 1.000000).
  std::vector<float> v(64, 0.f);
  v[5] = 1.0000001f;
  io::write_nifti(dir + "/pred/x.nii.gz", Tensor::from_vector({4, 4, 4}, v), io::make_nifti_like({4, 4, 4}, {1, 1, 1}));
  CHECK(test::run_tool("unet_eval", run, &out) == 1);
  CHECK_MESSAGE(out.find("value 1.00000012 is not a label") != std::string::npos, out);
  // A value f32 cannot hold is refused as the file holds it, not scored as its rounding (16777216).
  Tensor wide = Tensor::zeros({4, 4, 4}, DType::i32);
  wide.data<int32_t>()[5] = 16777217;
  io::write_nifti(dir + "/pred/x.nii.gz", wide, io::make_nifti_like({4, 4, 4}, {1, 1, 1}));
  CHECK(test::run_tool("unet_eval", run, &out) == 1);
  CHECK_MESSAGE(
      out.find(dir + "/pred/x.nii.gz: voxel index 5: x 1, y 1, z 0, channel 0 holds 16777217") != std::string::npos,
      out);
}

TEST_CASE("unet_infer --precision fp16 and bf16 give the fp32 probabilities to 16-bit accuracy; a bad name exits 2") {
  test::TempDir tmp("tools_infer_precision");
  const std::string& dir = tmp.path;
  const std::string fixture = std::string(UNET_TEST_DATA_DIR) + "/nifti/qform_only.nii";
  const std::string model = write_random_model(dir, 1, {8, 8, 8});
  std::string out;
  std::vector<std::vector<float>> probs;
  for (const char* p : {"fp32", "bf16", "fp16"}) {
    const std::string pred = dir + "/" + p + ".nii.gz";
    REQUIRE_MESSAGE(test::run_tool("unet_infer",
                                   "--model " + model + " --input " + fixture + " --output " + pred +
                                       " --save-probabilities --precision " + p,
                                   &out) == 0,
                    out);
    CHECK(out.find(std::string("in ") + p) != std::string::npos);
    probs.push_back(io::read_nifti(dir + "/" + p + "_probabilities.nii.gz").data.to_vector());
  }
  // Softmax of logits computed with 16-bit activations: bf16 (8 significant bits) to within a few hundredths, f16
  // (11 bits) to within a few thousandths; identical inputs would make these 0, garbage would make them ~0.5.
  test::check_close(probs[1], probs[0], 0, 0.03, "bf16 probabilities");
  test::check_close(probs[2], probs[0], 0, 0.004, "fp16 probabilities");
  CHECK(probs[1] != probs[0]);  // the 16-bit path really ran
  CHECK(test::run_tool("unet_infer",
                       "--model " + model + " --input " + fixture + " --output " + dir + "/x.nii --precision fp8",
                       &out) == 2);
  CHECK(out.find("--precision: precision 'fp8': expected auto, fp32, tf32, fp16 or bf16") != std::string::npos);
  CHECK_FALSE(fs::exists(dir + "/x.nii"));
}

TEST_CASE("validation scores as unet_eval scores unet_infer's maps: per-case Dice averaged, padding not scored") {
  // Four 16^3 cases, two of them validated: the sampler pads each to the 32^3 patch, and validation must score the
  // case, not the padding (whose predicted foreground counted as false positives); each class's Dice is the mean of
  // the cases' Dice (it was pooled over the cases).
  test::TempDir tmp("tools_validation_as_eval");
  const std::string& dir = tmp.path;
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/ds --train 4 --test 0 --size 16,16,16 --seed 3") == 0);
  const std::string ini = write_text(dir + "/train.ini", "[data]\ndataset = " + dir +
                                                             "/ds\nfolds = 2\npatch_size = 32,32,32\ncache = none\n"
                                                             "[model]\nfilters = 4\ndepth = 2\n[train]\nsteps = 6\n"
                                                             "[output]\ndir = " +
                                                             dir + "/run\n");
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini, &out) == 0, out);
  const double val = nlohmann::json::parse(std::ifstream(dir + "/run/validation.json"))["val_mean_dice"];
  // The validation cases (the trainer's split of dataset.json's list), segmented and scored by the tools.
  const io::DatasetInfo info = io::read_msd_dataset(dir + "/ds");
  const io::FoldSplit split = io::kfold_split(info.training.size(), 0, 2);
  REQUIRE(split.val.size() == 2);
  for (const char* sub : {"/in", "/ref", "/pred"}) fs::create_directories(dir + sub);
  for (size_t i : split.val) {
    const fs::path image = info.training[i].image_paths.at(0), label = info.training[i].label_path;
    fs::copy_file(image, dir + "/in/" + image.filename().string());
    fs::copy_file(label, dir + "/ref/" + image.filename().string());
  }
  REQUIRE_MESSAGE(test::run_tool("unet_infer", "--model " + dir + "/run/model.safetensors --input " + dir +
                                                   "/in --output " + dir + "/pred",
                                 &out) == 0,
                  out);
  REQUIRE_MESSAGE(
      test::run_tool("unet_eval", "--pred " + dir + "/pred --label " + dir + "/ref --classes 3", &out) == 0, out);
  const double eval = nlohmann::json::parse(std::ifstream(dir + "/pred/dice.json"))["mean_dice"];
  CHECK(val == doctest::Approx(eval).epsilon(1e-12));
}
