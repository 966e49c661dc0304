// unet_synth: writes a synthetic Medical Segmentation Decathlon style dataset (io/synthetic.h) for the quick start.
// Exit status 0 on success, 2 for bad arguments, 1 for runtime failures (docs/reference.md, "Exit statuses").
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <sstream>

#include "io/synthetic.h"
#include "tools/tool_main.h"

namespace {

// "48,48,48" or "48" (the same for all three axes) -> (z, y, x).
template <class T>
std::array<T, 3> parse_triple(const std::string& text, const std::string& option) {
  std::vector<T> values;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::istringstream is(item);
    T v{};
    if (!(is >> v) || !(is >> std::ws).eof())
      throw unet::io::SynthOptionsError(option + ": '" + text + "' is not a number or a comma-separated z,y,x triple");
    values.push_back(v);
  }
  if (values.size() == 1) values.assign(3, values[0]);
  if (values.size() != 3)
    throw unet::io::SynthOptionsError(option + ": expected one value or three (z,y,x), got '" + text + "'");
  return {values[0], values[1], values[2]};
}

}  // namespace

int main(int argc, char** argv) {
  unet::io::SynthOptions o;
  std::string size = "48,48,48", spacing = "1,1,1";
  CLI::App app{
      "Writes a synthetic 3D segmentation dataset in the Medical Segmentation Decathlon layout:\n"
      "DIR/dataset.json, imagesTr/, labelsTr/, imagesTs/ and labelsTs/ (test labels, for Dice on unseen cases).\n"
      "Class 1 ellipsoids, 2 tubes, 3 boxes (then repeating), each with its own intensity; same seed, same bytes."};
  app.add_option("--output,-o", o.output,
                 "dataset directory to create (new, empty, or an old dataset with --overwrite)")
      ->required();
  app.add_option("--train", o.train, "number of training cases")->capture_default_str();
  app.add_option("--test", o.test, "number of test cases")->capture_default_str();
  app.add_option("--size", size, "volume size in voxels, Z,Y,X (or one number)")->capture_default_str();
  app.add_option("--spacing", spacing, "voxel spacing in mm, z,y,x (or one number); shapes are defined in mm")
      ->capture_default_str();
  app.add_option("--channels", o.channels, "image channels (4D NIfTI when more than 1)")->capture_default_str();
  app.add_option("--classes", o.classes, "label classes including background")->capture_default_str();
  app.add_option("--seed", o.seed, "random seed")->capture_default_str();
  app.add_flag("--overwrite", o.overwrite, "replace an existing dataset in --output");
  if (auto status = unet::tools::parse_command_line(app, argc, argv, "unet_synth")) return *status;
  return unet::tools::run_tool("unet_synth", [&] {
    o.size = parse_triple<int64_t>(size, "--size");
    o.spacing = parse_triple<double>(spacing, "--spacing");
    auto start = std::chrono::steady_clock::now();
    unet::io::write_synthetic_dataset(o);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("unet_synth: wrote %d training and %d test cases to %s in %.1f s\n", o.train, o.test, o.output.c_str(),
                seconds);
    return 0;
  });
}
