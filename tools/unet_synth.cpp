// unet_synth: writes a synthetic dataset (io/synthetic.h) in the MSD, nnU-Net v2 or ISBI 2012 layout for the quick
// start and the tests.
// Exit status 0 on success, 2 for bad arguments, 1 for runtime failures (docs/reference.md, "Exit statuses").
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "io/synthetic.h"
#include "kernels/common/parallel.h"
#include "tools/tool_main.h"

namespace fs = std::filesystem;
using unet::tools::gib;
using unet::tools::gib_text;

namespace {

// "48,48,48" or "48" (the same for all three axes) -> (z, y, x); in 2D (dim 2) "48,48" or "48" -> (slice_z, y, x).
template <class T>
std::array<T, 3> parse_triple(const std::string& text, const std::string& option, int dim, T slice_z) {
  std::vector<T> values;
  if (text.ends_with(","))  // getline would not return the empty last item
    throw unet::io::SynthOptionsError(option + ": '" + text +
                                      "' ends with a comma (an empty item); expected one number or " +
                                      (dim == 2 ? "y,x" : "z,y,x"));
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::istringstream is(item);
    T v{};
    if (!(is >> v) || !(is >> std::ws).eof())
      throw unet::io::SynthOptionsError(option + ": '" + item + "' in '" + text +
                                        "' is not a number (or is out of range); expected one number or " +
                                        (dim == 2 ? "y,x" : "z,y,x"));
    values.push_back(v);
  }
  if (values.size() == 1) values.assign(dim, values[0]);
  if (values.size() != static_cast<size_t>(dim))
    throw unet::io::SynthOptionsError(option + ": expected one value or " +
                                      (dim == 2 ? "two (y,x) with --dim 2" : "three (z,y,x)") + ", got '" + text + "'");
  if (dim == 2) return {slice_z, values[0], values[1]};
  return {values[0], values[1], values[2]};
}

// Sizes within the per-option ranges can still ask for more memory than the machine has (1024^3 voxels of 16
// channels: about 260 GiB per case), which would end in std::bad_alloc or the kernel's OOM killer after a long wait.
// Refused here with the numbers. So is a dataset over ten times the free disk space uncompressed (gzip shrinks the
// noisy images about threefold: it cannot fit, and would fail only when the disk is full, hours later); one merely
// larger than the free space gets a warning, as gzip may still make it fit.
void check_resources(const unet::io::SynthOptions& o, const std::string& size, const fs::path& target) {
  double voxels = 1;
  for (int64_t d : o.size) voxels *= static_cast<double>(d);
  // Per case in flight: the f64 intensities before noise, the f32 image, its channel-reordered copy for writing (4D
  // only) and the u8 label.
  const double per_case = voxels * ((o.channels > 1 ? 16.0 : 12.0) * o.channels + 1);
  const int at_once = std::max(1, std::min(unet::num_threads(), o.train + o.test));
  const double memory = unet::tools::physical_memory_bytes();
  if (memory > 0 && per_case * at_once > memory)
    throw unet::io::SynthOptionsError("--size " + size + " with --channels " + std::to_string(o.channels) + ": about " +
                                      gib_text(per_case) + " of memory per case (" + std::to_string(at_once) +
                                      " made at once), more than this machine's " + gib_text(memory) +
                                      "; choose a smaller size");
  const double disk = (o.train + o.test) * voxels * (4.0 * o.channels + 1);
  std::error_code ec;
  const fs::space_info space = fs::space(target.parent_path(), ec);
  if (ec || disk <= static_cast<double>(space.available)) return;
  if (disk > 10 * static_cast<double>(space.available))
    throw unet::io::SynthOptionsError("--train " + std::to_string(o.train) + " --test " + std::to_string(o.test) +
                                      " of --size " + size + " with --channels " + std::to_string(o.channels) +
                                      ": about " + gib_text(disk) + " uncompressed, over ten times the " +
                                      gib_text(static_cast<double>(space.available)) + " free in " +
                                      target.parent_path().string() + "; choose fewer or smaller cases");
  std::fprintf(stderr,
               "unet_synth: warning: %d cases of --size %s with --channels %d hold %.1f GiB uncompressed, more than "
               "the %.1f GiB free in %s\n",
               o.train + o.test, size.c_str(), o.channels, gib(disk), gib(static_cast<double>(space.available)),
               target.parent_path().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  unet::io::SynthOptions o;
  std::string size = "48,48,48", spacing = "1,1,1", seed = "0";
  int dim = 3;  // without --dim: 2 for --format isbi, else 3
  CLI::App app{
      "Writes a synthetic 3D (or 2D) segmentation dataset in the Medical Segmentation Decathlon layout:\n"
      "DIR/dataset.json, imagesTr/, labelsTr/, imagesTs/ and labelsTs/ (test labels, for Dice on unseen cases),\n"
      "or nnU-Net v2's raw layout, or ISBI 2012's four TIFF stacks (--format).\n"
      "Class 1 ellipsoids, 2 tubes, 3 boxes (then repeating), each with its own intensity; ISBI: EM-like cells and\n"
      "membranes. Same seed, same bytes."};
  app.add_option("--output,-o", o.output,
                 "dataset directory to create (new, empty, or an old dataset with --overwrite)")
      ->required();
  app.add_option("--train", o.train, "number of training cases, 0..100000")->capture_default_str();
  app.add_option("--test", o.test, "number of test cases, 0..100000")->capture_default_str();
  auto* dim_option =
      app.add_option("--dim", dim,
                     "3 (volumes) or 2 (slices: --size Y,X, the middle plane of 3D shapes; the default and only choice "
                     "for --format isbi)");
  app.add_option("--size", size, "volume size in voxels, Z,Y,X (Y,X with --dim 2; or one number), each 8..1024")
      ->capture_default_str();
  app.add_option(
         "--spacing", spacing,
         "voxel spacing in mm, z,y,x (y,x with --dim 2; or one number); shapes are drawn in mm within the field of "
         "view (size x spacing): only anisotropy changes the voxels")
      ->capture_default_str();
  app.add_option("--channels", o.channels, "image channels, 1..16 (4D NIfTI when more than 1)")->capture_default_str();
  auto* classes =
      app.add_option("--classes", o.classes, "label classes including background, 2..16 (isbi: 2, the default)")
          ->capture_default_str();
  app.add_option("--seed", seed, "random seed, 0..18446744073709551615")->capture_default_str();
  app.add_flag(
      "--scanner-variation", o.scanner_variation,
      "scan each case differently, as in a multi-centre dataset: its own noise level (x0.5..2), blur (gaussian "
      "sigma 0..1.5 voxels) and contrast (gamma 0.7..1.4); not for --format isbi");
  app.add_flag("--overwrite", o.overwrite, "replace an existing dataset in --output");
  app.add_option("--format", o.format,
                 "msd (Medical Segmentation Decathlon), nnunetv2 (nnU-Net v2 raw: one file per channel) or isbi "
                 "(ISBI 2012: EM-like 8-bit TIFF pages of Y x X, labels 0 / 255; --channels 1 --classes 2)")
      ->capture_default_str();
  if (auto status = unet::tools::parse_command_line(app, argc, argv, "unet_synth")) return *status;
  return unet::tools::run_tool("unet_synth", [&] {
    if (dim != 2 && dim != 3) throw unet::io::SynthOptionsError("--dim " + std::to_string(dim) + ": expected 2 or 3");
    o.dim = dim_option->count() > 0 ? dim : (o.format == "isbi" ? 2 : 3);
    if (o.format == "isbi" && classes->count() == 0) o.classes = 2;  // membrane and cell
    if (o.dim == 2 && size == "48,48,48") size = "48,48";  // the 3D defaults, in 2D
    if (o.dim == 2 && spacing == "1,1,1") spacing = "1";
    o.size = parse_triple<int64_t>(size, "--size", o.dim, 1);
    o.spacing = parse_triple<double>(spacing, "--spacing", o.dim, 1.0);
    // Read here rather than by CLI11, which takes -1 for 2^64 - 1: the dataset would record a seed nobody typed.
    const auto [end, parse_error] = std::from_chars(seed.data(), seed.data() + seed.size(), o.seed);
    if (parse_error != std::errc() || end != seed.data() + seed.size())
      throw unet::io::SynthOptionsError("--seed '" + seed + "': expected a whole number 0..18446744073709551615");
    unet::io::validate_synth_options(o);  // the ranges first: the estimates below assume them
    // The dataset is made in a hidden directory beside --output and renamed into place, so that directory must take
    // new files: found now, not after the cases are made. (A missing one is write_synthetic_dataset's error.)
    fs::path target = fs::absolute(o.output).lexically_normal();
    if (target.filename().empty()) target = target.parent_path();  // "dir/" -> "dir"
    std::error_code ec;
    // A link to a dataset: the dataset it points to is the one replaced (renaming over the link would replace the
    // link with a directory and leave the dataset as it was).
    if (fs::is_symlink(target, ec) && fs::is_directory(target, ec)) {
      target = fs::canonical(target, ec);
      o.output = target.string();
    }
    // The dataset is replaced by renaming a new directory into place: a shell inside the old one would be left in a
    // deleted directory, with the new dataset out of its sight.
    if (const fs::path here = fs::current_path(ec); o.overwrite && fs::is_directory(target, ec) && !here.empty()) {
      const fs::path real = fs::weakly_canonical(target, ec);
      if (std::mismatch(real.begin(), real.end(), here.begin(), here.end()).first == real.end())
        throw unet::io::SynthOptionsError("--output " + o.output + ": is the current directory or holds it (" +
                                          here.string() +
                                          "); --overwrite replaces the directory, which would leave this shell "
                                          "in a deleted one; expected to run from outside it");
    }
    if (fs::is_directory(target.parent_path(), ec)) {
      if (std::string why = unet::tools::directory_write_problem(target.parent_path()); !why.empty())
        throw unet::io::SynthOptionsError("--output " + o.output + ": " + why);
    } else if (fs::exists(target.parent_path(), ec)) {
      throw unet::io::SynthOptionsError("--output " + o.output + ": " + target.parent_path().string() +
                                        " is not a directory");
    }
    check_resources(o, size, target);
    auto start = std::chrono::steady_clock::now();
    unet::io::write_synthetic_dataset(o);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("unet_synth: wrote %d training and %d test cases to %s in %.1f s\n", o.train, o.test, o.output.c_str(),
                seconds);
    return 0;
  });
}
