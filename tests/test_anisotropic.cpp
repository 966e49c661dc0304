// End to end with anisotropic spacing: unet_train on cases of 3 x 1 x 1 mm, unet_infer on cases of the same anatomy at
// 2 x 1 x 1 mm (cropped, resampled to 3 mm, segmented, the probabilities resampled back), unet_eval at 2 mm against
// their own labels. A wrong resampling either way (axes, sizes, the way back) loses the structures; a right one keeps
// the Dice near that of cases at the training spacing.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/nifti.h"
#include "tests/test_util.h"

using namespace unet;

TEST_CASE("trained at 3x1x1 mm, segmenting 2x1x1 mm volumes at their own resolution") {
  test::TempDir tmp("anisotropic");
  std::string out;
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp / "train" +
                                           " --train 12 --test 3 --size 12,32,32 --spacing 3,1,1 --seed 1") == 0);
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp / "other" +
                                           " --train 1 --test 3 --size 18,32,32 --spacing 2,1,1 --seed 2") == 0);
  const std::string ini =
      test::write_text(tmp / "train.ini", "[data]\ndataset = " + tmp / "train" +
                                              "\nfolds = 1\npatch_size = 12,32,32\n[model]\nfilters = 8\n"
                                              "max_filters = 64\ndepth = 3\n[train]\nsteps = 300\nlr = 3e-3\n"
                                              "scheduler = poly\nlog_every = 100\n[output]\ndir = " +
                                              tmp / "run");
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini, &out) == 0, out);
  CHECK(out.find("target spacing 3, 1, 1 mm") != std::string::npos);
  std::string infer_out;  // the last unet_infer's output
  const auto dice = [&](const std::string& data, const std::string& pred) {
    REQUIRE_MESSAGE(
        test::run_tool("unet_infer",
                       "--model " + tmp / "run/model.safetensors" + " --input " + data + "/imagesTs --output " + pred,
                       &infer_out) == 0,
        infer_out);
    REQUIRE_MESSAGE(test::run_tool("unet_eval", "--pred " + pred + " --label " + data + "/labelsTs", &out) == 0, out);
    return nlohmann::json::parse(std::ifstream(pred + "/dice.json"))["mean_dice"].get<double>();
  };
  const double same = dice(tmp / "train", tmp / "pred3");
  CHECK(infer_out.find("segmented at 12x32x32") !=
        std::string::npos);  // the synthetic images have no zero voxel to crop
  const double other = dice(tmp / "other", tmp / "pred2");
  // 18 slices of 2 mm are 12 of 3 mm.
  CHECK(infer_out.find("case_001.nii.gz (resampled to 12x32x32 at the model's spacing") != std::string::npos);
  MESSAGE("mean Dice at the training spacing " << same << ", at 2x1x1 mm through resampling " << other);
  // The labels come back on each input's own grid.
  const io::NiftiVolume in = io::read_nifti(tmp / "other/imagesTs/case_001.nii.gz");
  const io::NiftiVolume pred = io::read_nifti(tmp / "pred2/case_001.nii.gz");
  CHECK(pred.data.shape()[0] == 18);
  CHECK(pred.spacing() == in.spacing());
  CHECK(same >= 0.8);
  CHECK(other >= 0.7);
  CHECK(other >= same - 0.15);

  // Training cases of another spacing are resampled to the target: one 2 mm case among the 3 mm ones.
  namespace fs = std::filesystem;
  fs::copy_file(tmp / "other/imagesTr/case_000.nii.gz", tmp / "train/imagesTr/case_100.nii.gz");
  fs::copy_file(tmp / "other/labelsTr/case_000.nii.gz", tmp / "train/labelsTr/case_100.nii.gz");
  nlohmann::json j = nlohmann::json::parse(std::ifstream(tmp / "train/dataset.json"));
  j["training"].push_back({{"image", "./imagesTr/case_100.nii.gz"}, {"label", "./labelsTr/case_100.nii.gz"}});
  j["numTraining"] = 13;
  test::write_text(tmp / "train/dataset.json", j.dump(2));
  REQUIRE_MESSAGE(
      test::run_tool("unet_train", ini + " --set train.steps=2 --set output.dir=" + tmp / "run2", &out) == 0, out);
  CHECK(out.find("target spacing 3, 1, 1 mm (z, y, x); 1 of 13 cases resampled") != std::string::npos);
}
