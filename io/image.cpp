#include "io/image.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <stdexcept>

namespace unet::io {

namespace {
bool is_nifti_name(const std::string& name) {
  return (name.size() > 4 && name.ends_with(".nii")) || (name.size() > 7 && name.ends_with(".nii.gz"));
}
}  // namespace

bool is_image_name(const std::string& path) {
  return is_nifti_name(std::filesystem::path(path).filename().string()) || is_tiff_name(path);
}

std::string image_stem(const std::string& path) {
  const std::string name = std::filesystem::path(path).filename().string();
  if (name.ends_with(".nii.gz")) return name.substr(0, name.size() - 7);
  return name.substr(0, name.rfind('.'));  // the whole name when it has no dot
}

Image read_image(const std::string& path) {
  Image im;
  im.path = path;
  if (is_tiff_name(path)) {
    im.tiff = read_tiff(path);
    im.data = im.tiff->data;
    im.spacing = im.tiff->spacing;
    im.tiff->data = Tensor();  // held once, in im.data
  } else {
    im.nifti = read_nifti(path);  // refuses names that are neither
    im.data = im.nifti->data;
    im.spacing = im.nifti->spacing();
    im.nifti->data = Tensor();
  }
  check_spacing(im.spacing, path);
  return im;
}

Image read_channel_images(const std::vector<std::string>& paths) {
  if (paths.empty()) throw std::invalid_argument("read_channel_images: no files");
  Image img = read_image(paths[0]);
  if (paths.size() == 1) return img;
  std::vector<Tensor> channels{img.data};
  const auto grid = [](const Tensor& t) {
    return std::to_string(t.dim(0)) + "x" + std::to_string(t.dim(1)) + "x" + std::to_string(t.dim(2));
  };
  for (size_t ch = 1; ch < paths.size(); ++ch) {
    const Image other = read_image(paths[ch]);
    if (other.data.rank() != 4 || other.data.dim(0) != img.data.dim(0) || other.data.dim(1) != img.data.dim(1) ||
        other.data.dim(2) != img.data.dim(2))
      throw std::runtime_error(paths[ch] + ": grid " + grid(other.data) + " differs from " + grid(img.data) + " of " +
                               paths[0] + " (channel 0)");
    channels.push_back(other.data);
  }
  // Stacked on the host: channels last, each file's channels in order.
  int64_t C = 0;
  for (const Tensor& t : channels) C += t.dim(3);
  const int64_t voxels = img.data.dim(0) * img.data.dim(1) * img.data.dim(2);
  Tensor data = Tensor::empty({img.data.dim(0), img.data.dim(1), img.data.dim(2), C});
  float* out = data.data<float>();
  int64_t first = 0;
  for (const Tensor& t : channels) {
    const int64_t c = t.dim(3);
    const float* in = t.data<float>();
    for (int64_t v = 0; v < voxels; ++v)
      for (int64_t k = 0; k < c; ++k) out[v * C + first + k] = in[v * c + k];
    first += c;
  }
  img.data = data;
  return img;
}

std::string nonfinite_problem(const Tensor& data) {
  const float* x = data.data<float>();
  int64_t bad = 0, first = -1;
  for (int64_t i = 0, n = data.numel(); i < n; ++i)
    if (!std::isfinite(x[i]) && bad++ == 0) first = i;
  if (bad == 0) return "";
  const int64_t C = data.rank() == 4 ? data.dim(3) : 1, X = data.dim(2), Y = data.dim(1);
  const int64_t c = first % C, v = first / C;
  return std::to_string(bad) + (bad == 1 ? " value is" : " values are") + " NaN or infinite (first at x " +
         std::to_string(v % X) + ", y " + std::to_string(v / X % Y) + ", z " + std::to_string(v / X / Y) +
         ", channel " + std::to_string(c) + ")";
}

void check_spacing(const std::array<double, 3>& spacing, const std::string& what) {
  for (double s : spacing)
    if (!(std::isfinite(s) && s > 0)) {
      char b[160];
      std::snprintf(b, sizeof b, "%g, %g, %g", spacing[0], spacing[1], spacing[2]);
      throw std::runtime_error(what + ": voxel spacing " + b + " mm (z, y, x); expected finite sizes > 0");
    }
}

void write_image_like(const std::string& path, const Tensor& data, const Image& like) {
  if (is_tiff_name(path)) {
    TiffVolume t;
    if (like.tiff)
      t = *like.tiff;
    else
      t.compression = TiffCompression::deflate;
    write_tiff(path, data, tiff_options_like(t, data));
    return;
  }
  if (like.nifti) return write_nifti(path, data, *like.nifti);
  write_nifti(path, data, make_nifti_like(data.shape(), like.spacing));
}

}  // namespace unet::io
