// unet_eval: Dice per class of predicted label maps against reference labels (docs/reference.md, "Dice metric").
// usage: unet_eval --pred DIR --label DIR [--classes K] [--json FILE]
// Cases are matched by file name. Prints a table (per case and the mean over cases, x100) and writes JSON.
// Exit status 0 / 2 (usage) / 1 (runtime).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/metrics.h"
#include "io/nifti.h"
#include "io/safetensors.h"
#include "tools/tool_main.h"

using namespace unet;
namespace fs = std::filesystem;

using unet::tools::UsageError;

namespace {
Tensor as_labels(const io::NiftiVolume& v) {
  Tensor t = Tensor::empty({v.data.dim(0), v.data.dim(1), v.data.dim(2)}, DType::i32);
  const float* s = v.data.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    float x = s[i * v.data.dim(3)];
    if (x < 0 || x != static_cast<float>(static_cast<int32_t>(x)))
      throw std::runtime_error(v.path + ": value " + std::to_string(x) + " is not a label (expected non-negative integers)");
    t.data<int32_t>()[i] = static_cast<int32_t>(x);
  }
  return t;
}
}  // namespace

int main(int argc, char** argv) {
  std::string pred_dir, label_dir, json_path;
  int classes = 0;
  CLI::App app{"Dice per class of predicted label maps against reference labels, matched by file name."};
  app.add_option("--pred", pred_dir, "directory of predicted label maps (.nii / .nii.gz)")->required();
  app.add_option("--label", label_dir, "directory of reference label maps")->required();
  app.add_option("--classes", classes, "number of classes including background (default: largest label + 1)");
  app.add_option("--json", json_path, "write the results as JSON to this file (default: PRED/dice.json)");
  if (auto status = unet::tools::parse_command_line(app, argc, argv, "unet_eval")) return *status;
  return unet::tools::run_tool("unet_eval", [&] {
    for (auto* d : {&pred_dir, &label_dir})
      if (!fs::is_directory(*d)) throw UsageError(*d + ": not a directory");
    std::vector<fs::path> preds;
    for (auto& e : fs::directory_iterator(pred_dir)) {
      std::string n = e.path().filename().string();
      if (e.is_regular_file() && (n.ends_with(".nii") || n.ends_with(".nii.gz")) && n.find("_probabilities") == std::string::npos)
        preds.push_back(e.path());
    }
    std::sort(preds.begin(), preds.end());
    if (preds.empty()) throw UsageError(pred_dir + ": no .nii or .nii.gz label maps");
    std::vector<std::pair<std::string, std::pair<Tensor, Tensor>>> pairs;
    int max_label = 0;
    for (auto& p : preds) {
      fs::path ref = fs::path(label_dir) / p.filename();
      if (!fs::exists(ref)) throw std::runtime_error(ref.string() + ": no reference label for prediction " + p.string());
      io::NiftiVolume pv = io::read_nifti(p.string()), lv = io::read_nifti(ref.string());
      if (pv.data.shape() != lv.data.shape())
        throw std::runtime_error(p.string() + ": shape " + shape_str(pv.data.shape()) + " differs from the label's " + shape_str(lv.data.shape()));
      Tensor a = as_labels(pv), b = as_labels(lv);
      for (Tensor* t : {&a, &b})
        for (int64_t i = 0; i < t->numel(); ++i) max_label = std::max(max_label, t->data<int32_t>()[i]);
      pairs.push_back({p.filename().string(), {a, b}});
    }
    if (classes == 0) classes = std::max(2, max_label + 1);
    if (max_label >= classes) throw UsageError("--classes " + std::to_string(classes) + ": label value " + std::to_string(max_label) + " found");

    nlohmann::json result = {{"classes", classes}, {"cases", nlohmann::json::array()}};
    std::vector<double> sum(static_cast<size_t>(classes - 1), 0.0);
    std::printf("%-32s", "case");
    for (int c = 1; c < classes; ++c) std::printf("  class %-3d", c);
    std::printf("  mean\n");
    for (auto& [name, pl] : pairs) {
      DiceCounts d;
      d.add(pl.first, pl.second, classes);
      auto dice = d.dice();
      std::printf("%-32s", name.c_str());
      for (size_t c = 0; c < dice.size(); ++c) std::printf("  %9.2f", 100 * dice[c]), sum[c] += dice[c];
      std::printf("  %6.2f\n", 100 * d.mean_dice());
      result["cases"].push_back({{"case", name}, {"dice", dice}, {"mean_dice", d.mean_dice()}});
    }
    std::vector<double> mean_per_class;
    double overall = 0;
    for (double s : sum) mean_per_class.push_back(s / pairs.size()), overall += s / pairs.size() / sum.size();
    std::printf("%-32s", "mean");
    for (double m : mean_per_class) std::printf("  %9.2f", 100 * m);
    std::printf("  %6.2f\n", 100 * overall);
    result["mean_dice_per_class"] = mean_per_class;
    result["mean_dice"] = overall;
    std::string out = json_path.empty() ? (fs::path(pred_dir) / "dice.json").string() : json_path;
    io::write_file_atomically(out, result.dump(2) + "\n");
    std::printf("mean Dice over %zu cases and %d foreground classes: %.4f\n", pairs.size(), classes - 1, overall);
    return 0;
  });
}
