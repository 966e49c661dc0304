#include "io/image.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <stdexcept>

namespace unet::io {

bool is_image_name(const std::string& path) {
  return !nifti_ending(path).empty() || is_tiff_name(path);
}

std::string image_stem(const std::string& path) {
  const std::string name = std::filesystem::path(path).filename().string();
  if (nifti_ending(name) == ".nii.gz") return name.substr(0, name.size() - 7);
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
  for (size_t ch = 1; ch < paths.size(); ++ch) {
    const Image other = read_image(paths[ch]);
    if (std::string why = grid_mismatch(other, img); !why.empty())
      throw std::runtime_error(paths[ch] + ": " + why + " (channel 0); a case's channel files must share one grid");
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

namespace {
bool close(double a, double b) {
  return std::abs(a - b) <= 1e-4 + 1e-3 * std::abs(b);
}

// Origins (mm) far from the scanner's centre (a CT table at z = -1200 mm) would get 1.2 mm from close()'s relative
// term, two thin slices: theirs is 1e-5 |b| (0.012 mm there, still about a hundred f32 roundings).
bool close_origin(double a, double b) {
  return std::abs(a - b) <= 1e-4 + 1e-5 * std::abs(b);
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::string triple(double a, double b, double c) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "(%g, %g, %g)", a, b, c);
  return buf;
}

// The voxel-to-world transform a reader would use (the sform when its code is set, else the qform), or nullptr.
const std::array<std::array<double, 4>, 4>* world_transform(const NiftiGeometry& g) {
  if (g.sform_code > 0) return &g.sto_xyz;
  if (g.qform_code > 0) return &g.qto_xyz;
  return nullptr;
}
}  // namespace

std::string grid_mismatch(const Image& a, const Image& b) {
  const std::string of_b = " of " + b.path;
  const Shape &sa = a.data.shape(), &sb = b.data.shape();
  if (sa[0] != sb[0] || sa[1] != sb[1] || sa[2] != sb[2])
    return "grid " + shape_str({sa[0], sa[1], sa[2]}) + " (z, y, x) differs from " + shape_str({sb[0], sb[1], sb[2]}) +
           of_b;
  const bool a_spaced = !a.tiff || a.tiff->calibrated, b_spaced = !b.tiff || b.tiff->calibrated;
  if (a_spaced && b_spaced)
    for (int i = 0; i < 3; ++i)
      if (!close(a.spacing[i], b.spacing[i]))
        return "voxel spacing " + triple(a.spacing[0], a.spacing[1], a.spacing[2]) + " mm (z, y, x) differs from " +
               triple(b.spacing[0], b.spacing[1], b.spacing[2]) + of_b;
  if (!a.nifti || !b.nifti) return "";
  const NiftiGeometry ga = a.nifti->geometry(), gb = b.nifti->geometry();
  const auto *ta = world_transform(ga), *tb = world_transform(gb);
  if (!ta || !tb) return "";
  // In millimetres, as the spacing: a label written in meters on its image's grid is on the same grid.
  auto A = *ta, B = *tb;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c)
      A[r][c] *= nifti_space_unit_mm(ga.xyz_units), B[r][c] *= nifti_space_unit_mm(gb.xyz_units);
  for (int axis = 0; axis < 3; ++axis) {  // NIfTI's i, j, k: x, y, z
    const double na = std::hypot(A[0][axis], A[1][axis], A[2][axis]),
                 nb = std::hypot(B[0][axis], B[1][axis], B[2][axis]);
    if (na == 0 || nb == 0) continue;  // a degenerate transform has no direction to compare
    // The transform's own voxel size: an sform may scale an axis that pixdim (the spacing above) does not.
    if (!close(na, nb))
      return std::string("voxel size along the ") + "xyz"[axis] + " axis in the voxel-to-world transform " +
             number(na) + " mm differs from " + number(nb) + of_b;
    const double da[3] = {A[0][axis] / na, A[1][axis] / na, A[2][axis] / na};
    const double db[3] = {B[0][axis] / nb, B[1][axis] / nb, B[2][axis] / nb};
    if (!close(da[0], db[0]) || !close(da[1], db[1]) || !close(da[2], db[2]))
      return std::string("direction of the ") + "xyz"[axis] + " axis " + triple(da[0], da[1], da[2]) +
             " (world x, y, z) differs from " + triple(db[0], db[1], db[2]) + of_b;
  }
  if (!close_origin(A[0][3], B[0][3]) || !close_origin(A[1][3], B[1][3]) || !close_origin(A[2][3], B[2][3]))
    return "origin " + triple(A[0][3], A[1][3], A[2][3]) + " mm (world x, y, z) differs from " +
           triple(B[0][3], B[1][3], B[2][3]) + of_b;
  return "";
}

void check_exact_labels(const Image& labels) {
  if (labels.nifti && !labels.nifti->inexact.empty())
    throw std::runtime_error(
        labels.path + ": voxel " + labels.nifti->inexact +
        ", which f32 (the engine's number type) cannot hold exactly; expected whole class indices");
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
    if (like.tiff) return write_tiff(path, data, tiff_options_like(*like.tiff, data));
    // From NIfTI: its spacing as ImageJ's calibration (TIFF itself has no reliable one).
    TiffVolume t;
    t.compression = TiffCompression::deflate;
    TiffWriteOptions o = tiff_options_like(t, data);
    set_imagej_calibration(o, like.spacing, data.dim(0));
    return write_tiff(path, data, o);
  }
  if (like.nifti) return write_nifti(path, data, *like.nifti);
  write_nifti(path, data, make_nifti_like(data.shape(), like.spacing));
}

}  // namespace unet::io
