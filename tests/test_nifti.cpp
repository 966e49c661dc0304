// NIfTI I/O against nibabel: values (with scaling), geometry, 4D channels, NIfTI-2; outputs keep the input's header.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/nifti.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::io;
namespace fs = std::filesystem;

namespace {
const std::string kDir = std::string(UNET_TEST_DATA_DIR) + "/nifti/";

const nlohmann::json& expected() {
  static nlohmann::json j = nlohmann::json::parse(std::ifstream(kDir + "expected.json"));
  return j;
}

std::string temp_dir() {
  fs::path d = fs::temp_directory_path() / ("unet_nifti_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d.string();
}

void check_same_geometry(const NiftiGeometry& a, const NiftiGeometry& b) {
  CHECK(a.nifti_type == b.nifti_type);
  for (int i = 1; i <= 3; ++i) CHECK(a.dim[i] == b.dim[i]);
  for (int i = 0; i <= 3; ++i) CHECK(a.pixdim[i] == b.pixdim[i]);
  CHECK(a.qform_code == b.qform_code);
  CHECK(a.sform_code == b.sform_code);
  CHECK(a.qfac == b.qfac);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      CHECK(a.qto_xyz[i][j] == doctest::Approx(b.qto_xyz[i][j]).epsilon(1e-6));
      CHECK(a.sto_xyz[i][j] == doctest::Approx(b.sto_xyz[i][j]).epsilon(1e-6));
    }
  CHECK(a.xyz_units == b.xyz_units);
  CHECK(a.time_units == b.time_units);
}
}  // namespace

TEST_CASE("NIfTI fixtures read with the values, spacing and transforms nibabel reports") {
  for (auto& [name, e] : expected().items()) {
    CAPTURE(name);
    NiftiVolume v = read_nifti(kDir + name);
    CHECK(v.data.shape() == e["shape"].get<Shape>());
    // nibabel computes in double; int16 * 0.5 - 10 and float32 values are exact in f32.
    test::check_close(v.data.to_vector(), e["data"].get<std::vector<float>>(), 1e-7, 1e-30, name);
    auto pixdim = e["pixdim"].get<std::vector<double>>();
    auto s = v.spacing();
    CHECK(s[0] == doctest::Approx(pixdim[3]));
    CHECK(s[2] == doctest::Approx(pixdim[1]));
    NiftiGeometry g = v.geometry();
    CHECK(g.qform_code == e["qform_code"].get<int>());
    CHECK(g.sform_code == e["sform_code"].get<int>());
    CHECK((g.nifti_type == 4) == e["nifti2"].get<bool>());
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) {
        if (g.qform_code > 0) CHECK(g.qto_xyz[i][j] == doctest::Approx(e["qform"][i][j].get<double>()).epsilon(1e-5));
        if (g.sform_code > 0) CHECK(g.sto_xyz[i][j] == doctest::Approx(e["sform"][i][j].get<double>()).epsilon(1e-5));
      }
  }
}

TEST_CASE("a label map written with an input's header keeps its grid, transforms, units and NIfTI version") {
  std::string out_dir = temp_dir();
  for (auto& [name, e] : expected().items()) {
    CAPTURE(name);
    NiftiVolume in = read_nifti(kDir + name);
    int64_t z = in.data.dim(0), y = in.data.dim(1), x = in.data.dim(2), c = in.data.dim(3);
    std::vector<float> labels(static_cast<size_t>(z * y * x));
    auto src = in.data.to_vector();
    for (size_t i = 0; i < labels.size(); ++i) labels[i] = src[i * c] > 0 ? 2.f : 0.f;
    Tensor label_map = Tensor::from_vector({z, y, x}, labels, DType::u8);
    std::string out = out_dir + "/labels_" + name;
    write_nifti(out, label_map, in);
    NiftiVolume back = read_nifti(out);
    CHECK(back.datatype == 2);  // DT_UINT8
    CHECK(back.data.to_vector() == labels);
    check_same_geometry(back.geometry(), in.geometry());
    CHECK(back.geometry().dim[0] == 3);
  }
}

TEST_CASE("a 4D multi-channel volume written and read again keeps its channel order") {
  NiftiVolume in = read_nifti(kDir + "four_channels.nii.gz");
  std::string out = temp_dir() + "/probabilities.nii.gz";
  write_nifti(out, in.data, in);
  NiftiVolume back = read_nifti(out);
  CHECK(back.data.shape() == in.data.shape());
  CHECK(back.data.to_vector() == in.data.to_vector());
}

TEST_CASE("unreadable inputs are errors naming the file") {
  std::string dir = temp_dir();
  CHECK_THROWS_WITH_AS(read_nifti(dir + "/missing.nii.gz"), (dir + "/missing.nii.gz: no such file").c_str(),
                       std::runtime_error);
  std::ofstream(dir + "/garbage.nii") << "this is not a nifti header";
  CHECK_THROWS_WITH_AS(read_nifti(dir + "/garbage.nii"), doctest::Contains("not a readable NIfTI-1 or NIfTI-2 file"),
                       std::runtime_error);
  // Truncated data: a valid header whose voxels are cut short.
  std::ifstream f(kDir + "qform_only.nii", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), {});
  std::ofstream(dir + "/truncated.nii", std::ios::binary) << bytes.substr(0, bytes.size() - 40);
  CHECK_THROWS_WITH_AS(read_nifti(dir + "/truncated.nii"), doctest::Contains("cannot read the voxel data"),
                       std::runtime_error);
}

TEST_CASE("a write that cannot happen leaves no file behind") {
  NiftiVolume in = read_nifti(kDir + "qform_only.nii");
  std::string dir = temp_dir();
  Tensor wrong = Tensor::zeros({2, 2, 2}, DType::u8);
  CHECK_THROWS_WITH_AS(write_nifti(dir + "/wrong.nii", wrong, in), doctest::Contains("does not match the reference grid"),
                       std::invalid_argument);
  CHECK_FALSE(fs::exists(dir + "/wrong.nii"));
  CHECK_THROWS_WITH_AS(write_nifti(dir + "/no/such/dir/x.nii.gz", Tensor::zeros({4, 5, 6}, DType::u8), in),
                       doctest::Contains("does not exist"), std::runtime_error);
}
