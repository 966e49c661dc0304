// NIfTI I/O against nibabel: values (with scaling), geometry, 4D channels, NIfTI-2; outputs keep the input's header;
// hostile inputs (non-finite or f32-overflowing voxels, damaged header fields) are errors naming the file and field.
#include <doctest/doctest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/image.h"
#include "io/nifti.h"
#include "io/tiff.h"
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

TEST_CASE("a label map keeps the dimension count of an input with one slice (dim[0] 3 with nz 1) or of a 2D image") {
  const std::string dir = temp_dir();
  for (int16_t declared : {int16_t(3), int16_t(2)}) {
    CAPTURE(declared);
    // A 16 x 16 x 1 volume; dim[0] (bytes 40-41) set to what the input declares.
    const std::string in_path = dir + "/one_slice.nii", out_path = dir + "/labels.nii.gz";
    write_nifti(in_path, Tensor::zeros({1, 16, 16}), make_nifti_like({1, 16, 16}, {1, 1, 1}));
    std::fstream(in_path, std::ios::binary | std::ios::in | std::ios::out)
        .seekp(40)
        .write(reinterpret_cast<const char*>(&declared), 2);
    const NiftiVolume in = read_nifti(in_path);
    REQUIRE(in.geometry().dim[0] == declared);
    write_nifti(out_path, Tensor::zeros({1, 16, 16}, DType::u8), in);
    const NiftiVolume back = read_nifti(out_path);
    CHECK(back.geometry().dim[0] == declared);  // nifticlib's dimension update used to make both 2
    CHECK(back.data.shape() == Shape{1, 16, 16, 1});
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
  CHECK_THROWS_WITH_AS(read_nifti(dir + "/truncated.nii"),
                       doctest::Contains("its header declares 240 bytes of voxels (120 voxels), more than the file "
                                         "holds after vox_offset (200 bytes)"),
                       std::runtime_error);
  // A .nii.gz cut short inside its gzip trailer (CRC-32, then length: an interrupted copy) or with a flipped data byte:
  // every voxel may be there, but the check is not, or fails.
  const NiftiVolume whole = read_nifti(kDir + "qform_only.nii");
  write_nifti(dir + "/whole.nii.gz", whole.data, whole);
  std::ifstream g(dir + "/whole.nii.gz", std::ios::binary);
  const std::string gz((std::istreambuf_iterator<char>(g)), {});
  CHECK(read_nifti(dir + "/whole.nii.gz").data.to_vector() == whole.data.to_vector());
  for (size_t cut : {1, 4, 8}) {
    CAPTURE(cut);
    std::ofstream(dir + "/cut.nii.gz", std::ios::binary) << gz.substr(0, gz.size() - cut);
    CHECK_THROWS_WITH_AS(read_nifti(dir + "/cut.nii.gz"),
                         doctest::Contains("cannot read the voxel data (truncated or corrupt file?)"),
                         std::runtime_error);
  }
  std::string crc = gz;
  crc[crc.size() - 6] = static_cast<char>(crc[crc.size() - 6] ^ 0x40);  // the CRC-32 no longer matches
  std::ofstream(dir + "/crc.nii.gz", std::ios::binary) << crc;
  // (zlib finds it while inflating the header of so small a file: an error naming the file either way)
  CHECK_THROWS_WITH_AS(read_nifti(dir + "/crc.nii.gz"), doctest::Contains((dir + "/crc.nii.gz: ").c_str()),
                       std::runtime_error);
  // Damaged deflate data in the header is said as such (it read as a header of zeros: "sizeof_hdr is 0").
  std::string damaged = gz;
  for (size_t i = 12; i < 40; ++i) damaged[i] = static_cast<char>(0xff);
  std::ofstream(dir + "/damaged.nii.gz", std::ios::binary) << damaged;
  CHECK_THROWS_WITH_AS(read_nifti(dir + "/damaged.nii.gz"),
                       doctest::Contains((dir + "/damaged.nii.gz: corrupt gzip data in the header (zlib: ").c_str()),
                       std::runtime_error);
  // Bytes after the gzip data that are not gzip are refused (zlib's gzread ignores them, nibabel refuses them);
  // zero padding is accepted, as by Python's gzip.
  std::ofstream(dir + "/garbage.nii.gz", std::ios::binary) << gz << "GARBAGE";
  CHECK_THROWS_WITH_AS(read_nifti(dir + "/garbage.nii.gz"),
                       (dir + "/garbage.nii.gz: cannot read the voxel data (truncated or corrupt file?): bytes after the "
                              "end of its gzip data are not gzip (trailing garbage; expected the file to end there)")
                           .c_str(),
                       std::runtime_error);
  std::ofstream(dir + "/padded.nii.gz", std::ios::binary) << gz << std::string(300, '\0');
  CHECK(read_nifti(dir + "/padded.nii.gz").data.to_vector() == whole.data.to_vector());
  // A file of two gzip members (legal gzip: `cat a.gz b.gz`) whose second starts inside the voxels.
  write_nifti(dir + "/plain.nii", whole.data, whole);
  std::ifstream p(dir + "/plain.nii", std::ios::binary);
  const std::string plain((std::istreambuf_iterator<char>(p)), {});
  REQUIRE(plain.size() > 400);
  for (const char* mode : {"wb", "ab"}) {
    gzFile out = gzopen((dir + "/members.nii.gz").c_str(), mode);
    REQUIRE(out != nullptr);
    const std::string part = mode[0] == 'w' ? plain.substr(0, 400) : plain.substr(400);
    CHECK(gzwrite(out, part.data(), static_cast<unsigned>(part.size())) == static_cast<int>(part.size()));
    gzclose(out);
  }
  CHECK(read_nifti(dir + "/members.nii.gz").data.to_vector() == whole.data.to_vector());
  // An uncompressed file named .nii.gz is read as it is (as zlib, and nifticlib through it, read it).
  std::filesystem::copy_file(dir + "/plain.nii", dir + "/plain_named_gz.nii.gz");
  CHECK(read_nifti(dir + "/plain_named_gz.nii.gz").data.to_vector() == whole.data.to_vector());
}

TEST_CASE("a write that cannot happen leaves no file behind") {
  NiftiVolume in = read_nifti(kDir + "qform_only.nii");
  std::string dir = temp_dir();
  Tensor wrong = Tensor::zeros({2, 2, 2}, DType::u8);
  CHECK_THROWS_WITH_AS(write_nifti(dir + "/wrong.nii", wrong, in),
                       doctest::Contains("does not match the reference grid"), std::invalid_argument);
  CHECK_FALSE(fs::exists(dir + "/wrong.nii"));
  CHECK_THROWS_WITH_AS(write_nifti(dir + "/no/such/dir/x.nii.gz", Tensor::zeros({4, 5, 6}, DType::u8), in),
                       doctest::Contains("does not exist"), std::runtime_error);
}

// ---- hostile inputs: non-finite voxels and damaged headers ---------------------------------------------------------

namespace {
// Byte offsets of header fields in the NIfTI-1 and NIfTI-2 standards (nifti1.h, nifti2.h).
constexpr std::streamoff kN1Dim = 40, kN1Datatype = 70, kN1Bitpix = 72, kN1Pixdim = 76, kN1VoxOffset = 108,
                         kN1SclSlope = 112, kN1SclInter = 116, kN1Magic = 344;
constexpr std::streamoff kN2Dim = 16, kN2VoxOffset = 168;
constexpr std::streamoff kN1SrowX = 280;      // srow_x, srow_y, srow_z: 4 floats each
constexpr std::streamoff kN1XyztUnits = 123;  // one byte: space unit in bits 0-2, time unit in bits 3-5
constexpr std::streamoff kN2Pixdim = 104;
// xyzt_units codes (nifti1.h)
constexpr char NIFTI_UNITS_UNKNOWN = 0, NIFTI_UNITS_METER = 1, NIFTI_UNITS_MM = 2, NIFTI_UNITS_MICRON = 3,
               NIFTI_UNITS_SEC = 8;

template <class T>
void patch(const std::string& path, std::streamoff offset, T value) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  REQUIRE(f);
  f.seekp(offset);
  f.write(reinterpret_cast<const char*>(&value), sizeof value);
  REQUIRE(f);
}

// Little-endian bytes of `value`, reversed when big_endian.
template <class T>
std::string bytes_of(T value, bool big_endian) {
  std::string b(reinterpret_cast<const char*>(&value), sizeof value);
  if (big_endian) std::reverse(b.begin(), b.end());
  return b;
}

// A single-file NIfTI-1 [X, Y, Z] = [n, 1, 1] volume written byte by byte, for what write_nifti never writes: float64
// or int16 voxels, scaling, big-endian byte order.
template <class T>
std::string write_raw_nifti1(const std::string& path, int16_t datatype, const std::vector<T>& voxels,
                             float scl_slope = 0, float scl_inter = 0, bool big_endian = false) {
  std::string bytes(352, '\0');
  auto put = [&](std::streamoff offset, auto value) {
    std::string b = bytes_of(value, big_endian);
    std::copy(b.begin(), b.end(), bytes.begin() + offset);
  };
  put(0, int32_t{348});
  const int16_t dim[8] = {3, static_cast<int16_t>(voxels.size()), 1, 1, 1, 1, 1, 1};
  for (int i = 0; i < 8; ++i) put(kN1Dim + 2 * i, dim[i]);
  put(kN1Datatype, datatype);
  put(kN1Bitpix, static_cast<int16_t>(8 * sizeof(T)));
  for (int i = 0; i < 4; ++i) put(kN1Pixdim + 4 * i, 1.0f);
  put(kN1VoxOffset, 352.0f);
  put(kN1SclSlope, scl_slope);
  put(kN1SclInter, scl_inter);
  std::memcpy(&bytes[kN1Magic], "n+1", 4);
  for (T v : voxels) bytes += bytes_of(v, big_endian);
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

// A valid uncompressed NIfTI-1 (or, like the fixture, NIfTI-2) file of [Z, Y, X] = [4, 5, 6] zeros to damage.
std::string write_valid(const std::string& path, bool nifti2 = false) {
  if (nifti2) {
    NiftiVolume like = read_nifti(kDir + "nifti2_uint8.nii");
    write_nifti(path, Tensor::zeros(Shape{like.data.dim(0), like.data.dim(1), like.data.dim(2)}), like);
  } else {
    write_nifti(path, Tensor::zeros({4, 5, 6}), make_nifti_like({4, 5, 6}, {1, 1, 1}));
  }
  REQUIRE_NOTHROW(read_nifti(path));
  return path;
}
}  // namespace

TEST_CASE("NaN or infinite voxels are an error naming the file, their count and the first one") {
  std::string dir = temp_dir();
  std::vector<float> v(2 * 3 * 4, 1.f);
  v[5] = std::nanf("");                             // x 1, y 1, z 0
  v[20] = -std::numeric_limits<float>::infinity();  // x 0, y 2, z 1
  for (const char* name : {"/nan.nii", "/nan.nii.gz"}) {
    std::string path = dir + name;
    write_nifti(path, Tensor::from_vector({2, 3, 4}, v), make_nifti_like({2, 3, 4}, {1, 1, 1}));
    CHECK_THROWS_WITH_AS(read_nifti(path),
                         (path + ": 2 voxels are NaN or infinite (first at index 5: x 1, y 1, z 0, channel 0); "
                                 "expected finite values")
                             .c_str(),
                         std::runtime_error);
  }
}

TEST_CASE("float64 voxels beyond the f32 range are an error naming the value") {
  std::string dir = temp_dir();
  // In range: read as they are (this also shows the hand-written file is sound).
  NiftiVolume ok = read_nifti(write_raw_nifti1<double>(dir + "/f64_ok.nii", 64, {1.5, -3e38, 0}));
  CHECK(ok.data.to_vector() == std::vector<float>{1.5f, -3e38f, 0.f});
  std::string path = write_raw_nifti1<double>(dir + "/f64_big.nii", 64, {1.5, 2, 1e39, -1e300});
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": 2 voxels are too large for f32 (first at index 2: x 2, y 0, z 0, channel 0: 1e+39); "
                               "expected magnitudes up to 3.40282e+38, the largest f32")
                           .c_str(),
                       std::runtime_error);
  path = write_raw_nifti1<double>(dir + "/f64_nan.nii", 64, {1.5, std::nan(""), 1e39});
  CHECK_THROWS_WITH_AS(read_nifti(path), doctest::Contains("1 voxel is NaN or infinite (first at index 1:"),
                       std::runtime_error);
}

TEST_CASE("what f32 cannot hold exactly is recorded, and refused in a label map; exact files record nothing") {
  std::string dir = temp_dir();
  // Exact: float64 whole numbers, int32 below 2^24, int16 with a slope of 2 (1.5 and 0.25 are exact too).
  for (const std::string& p : {write_raw_nifti1<double>(dir + "/f64_exact.nii", 64, {0, 1, 2, 1.5}),
                               write_raw_nifti1<int32_t>(dir + "/i32_exact.nii", 8, {0, 3, 16777216}),
                               write_raw_nifti1<int16_t>(dir + "/i16_scaled.nii", 4, {0, 1, 3}, 2.f, 0.25f)}) {
    CHECK_MESSAGE(read_nifti(p).inexact.empty(), p);
    CHECK_NOTHROW(check_exact_labels(read_image(p)));
  }
  // 1 + 1e-12 becomes 1 in f32; 16777217 becomes 16777216: named, with its value, and refused as labels.
  std::string path = write_raw_nifti1<double>(dir + "/f64_near.nii", 64, {0, 1, 1 + 1e-12, 1});
  NiftiVolume near = read_nifti(path);
  CHECK(near.data.to_vector() == std::vector<float>{0, 1, 1, 1});
  CHECK(near.inexact == "index 2: x 2, y 0, z 0, channel 0 holds 1.000000000001");
  CHECK_THROWS_WITH_AS(check_exact_labels(read_image(path)),
                       (path + ": voxel index 2: x 2, y 0, z 0, channel 0 holds 1.000000000001, which f32 (the "
                               "engine's number type) cannot hold exactly; expected whole class indices")
                           .c_str(),
                       std::runtime_error);
  path = write_raw_nifti1<int32_t>(dir + "/i32_big.nii", 8, {0, 16777217});
  CHECK(read_nifti(path).inexact == "index 1: x 1, y 0, z 0, channel 0 holds 16777217");
}

TEST_CASE("int16 voxels that scl_slope scales beyond the f32 range are an error naming the scaling") {
  std::string dir = temp_dir();
  NiftiVolume ok = read_nifti(write_raw_nifti1<int16_t>(dir + "/i16_ok.nii", 4, {1, -1000, 7}, 2.f, 1.f));
  CHECK(ok.data.to_vector() == std::vector<float>{3.f, -1999.f, 15.f});
  std::string path = write_raw_nifti1<int16_t>(dir + "/i16_big.nii", 4, {1, 1000, -2, 32767}, 1e36f);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": 2 voxels are too large for f32 after scl_slope 1e+36 and scl_inter 0 (first at "
                               "index 1: x 1, y 0, z 0, channel 0: 1e+39); expected magnitudes up to 3.40282e+38, "
                               "the largest f32")
                           .c_str(),
                       std::runtime_error);
}

TEST_CASE("a scaling that maps every stored value to one f32 value is an error naming both fields") {
  std::string dir = temp_dir();
  // A large intercept that still leaves the values apart reads as scaled (f32 keeps 1000 steps of 2^20 apart).
  NiftiVolume ok = read_nifti(write_raw_nifti1<int16_t>(dir + "/i16_far.nii", 4, {0, 1000}, 1.f, 1e9f));
  CHECK(ok.data.to_vector() == std::vector<float>{1e9f, 1e9f + 1024.f});
  // 3e38 swamps float data up to 1000; a slope of 1e-30 keeps 0 and 1 apart, but the smallest slope (1e-45, the
  // least f32) makes 0.25 less than half the least f32, so 0 too; a constant image is not refused (nothing to keep
  // apart).
  std::string path = write_raw_nifti1<float>(dir + "/swamped.nii", 16, {1.f, -1000.f, 1000.f}, 1.f, 3e38f);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": header fields scl_slope 1 and scl_inter 3e+38 map every stored value (from -1000 to "
                               "1000) to the same f32 value 3e+38; expected a scaling that keeps the values apart")
                           .c_str(),
                       std::runtime_error);
  CHECK(read_nifti(write_raw_nifti1<uint8_t>(dir + "/tiny_ok.nii", 2, {0, 1}, 1e-30f)).data.to_vector() ==
        std::vector<float>{0.f, static_cast<float>(1e-30f * 1.0)});
  path = write_raw_nifti1<float>(dir + "/tiny.nii", 16, {0.f, 0.25f, 0.125f}, 1e-45f);
  CHECK_THROWS_WITH_AS(read_nifti(path), doctest::Contains("to the same f32 value 0; expected a scaling"),
                       std::runtime_error);
  CHECK(read_nifti(write_raw_nifti1<uint8_t>(dir + "/flat.nii", 2, {7, 7}, 1.f, 3e38f)).data.to_vector() ==
        std::vector<float>{3e38f, 3e38f});
}

TEST_CASE("a big-endian file reads with its values, and its NaN voxels are found after the byte swap") {
  std::string dir = temp_dir();
  NiftiVolume v = read_nifti(write_raw_nifti1<int16_t>(dir + "/be_i16.nii", 4, {1, -2, 300}, 2.f, 0.f, true));
  CHECK(v.data.to_vector() == std::vector<float>{2.f, -4.f, 600.f});
  v = read_nifti(write_raw_nifti1<double>(dir + "/be_f64.nii", 64, {0.25, -1e30}, 0.f, 0.f, true));
  CHECK(v.data.to_vector() == std::vector<float>{0.25f, -1e30f});
  std::string path = write_raw_nifti1<float>(dir + "/be_nan.nii", 16, {1.f, 2.f, std::nanf("")}, 0.f, 0.f, true);
  CHECK_THROWS_WITH_AS(read_nifti(path), doctest::Contains("1 voxel is NaN or infinite (first at index 2:"),
                       std::runtime_error);
}

TEST_CASE("an extent below 1 in dim[1..dim[0]] is an error naming the header field") {
  std::string dir = temp_dir();
  std::string path = write_valid(dir + "/negative_dim.nii");
  patch<int16_t>(path, kN1Dim + 2 * 2, -5);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": header field dim[2] is -5; every extent dim[1..3] must be at least 1").c_str(),
                       std::runtime_error);
  patch<int16_t>(path, kN1Dim + 2 * 2, 5);
  patch<int16_t>(path, kN1Dim + 2 * 3, 0);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": header field dim[3] is 0; every extent dim[1..3] must be at least 1").c_str(),
                       std::runtime_error);
  path = write_valid(dir + "/negative_dim2.nii", true);
  patch<int64_t>(path, kN2Dim + 8 * 1, -6);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": header field dim[1] is -6; every extent dim[1..3] must be at least 1").c_str(),
                       std::runtime_error);
}

TEST_CASE("extents whose product overflows a 64-bit count are an error naming the header fields") {
  std::string dir = temp_dir();
  std::string path = write_valid(dir + "/overflow1.nii");
  patch<int16_t>(path, kN1Dim, 7);  // NIfTI-1 extents are 16-bit, but seven of them overflow
  for (int i = 1; i <= 7; ++i) patch<int16_t>(path, kN1Dim + 2 * i, 32767);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": header fields dim[1..7] = 32767 x 32767 x 32767 x 32767 x 32767 x 32767 x 32767 "
                               "multiply to more voxels than a 64-bit count holds")
                           .c_str(),
                       std::runtime_error);
  path = write_valid(dir + "/overflow2.nii", true);
  for (int i = 1; i <= 3; ++i) patch<int64_t>(path, kN2Dim + 8 * i, int64_t(1) << 22);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": header fields dim[1..3] = 4194304 x 4194304 x 4194304 multiply to more voxels than "
                               "a 64-bit count holds")
                           .c_str(),
                       std::runtime_error);
}

TEST_CASE("a vox_offset inside the header or its extension flag is an error naming the header field") {
  std::string dir = temp_dir();
  std::string path = write_valid(dir + "/offset1.nii");
  patch<float>(path, kN1VoxOffset, 0.f);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": header field vox_offset is 0; the voxel data of a single-file NIfTI-1 starts after "
                               "its 348-byte header and 4-byte extension flag (expected >= 352)")
                           .c_str(),
                       std::runtime_error);
  // 348..351: nifticlib reads from there, every voxel shifted into the extension flag's bytes (nibabel refuses).
  for (float offset : {347.f, 348.f, 351.f}) {
    patch<float>(path, kN1VoxOffset, offset);
    const std::string want = "header field vox_offset is " + std::to_string(int(offset)) + ";";
    CHECK_THROWS_WITH_AS(read_nifti(path), doctest::Contains(want.c_str()), std::runtime_error);
  }
  patch<float>(path, kN1VoxOffset, 1e10f);  // nifticlib would convert it to a negative int
  CHECK_THROWS_WITH_AS(
      read_nifti(path),
      (path + ": header field vox_offset is 1e+10; a NIfTI-1 file addresses at most 2^31 bytes").c_str(),
      std::runtime_error);
  path = write_valid(dir + "/offset2.nii", true);
  for (int64_t offset : {348, 540, 543}) {
    patch<int64_t>(path, kN2VoxOffset, offset);
    CHECK_THROWS_WITH_AS(read_nifti(path),
                         (path + ": header field vox_offset is " + std::to_string(offset) +
                          "; the voxel data of a single-file NIfTI-2 starts after its 540-byte header and 4-byte "
                          "extension flag (expected >= 544)")
                             .c_str(),
                         std::runtime_error);
  }
}

TEST_CASE("fuzz finding: a 349-byte NIfTI declaring 15 GB of voxels is refused before anything is allocated") {
  // Found by fuzz/nifti_fuzz.cpp: read_nifti allocated what the header declared (15222778200 bytes) before reading.
  // Its magic is damaged too (nifticlib took it for ANALYZE 7.5), which is now found first; the size check behind it
  // is covered by "unreadable inputs are errors naming the file".
  const std::string path = std::string(UNET_TEST_DATA_DIR) + "/fuzz/nifti_oversized_dims.nii";
  CHECK_THROWS_WITH(io::read_nifti(path),
                    (path + ": header magic is \"\\0\\0\\0@\"; expected \"n+1\\0\", a single-file "
                            "NIfTI-1 (.nii or .nii.gz)")
                        .c_str());
}

TEST_CASE("a header without the NIfTI magic is an error naming the file and the magic found") {
  // nifticlib reads a 348-byte header without the magic as ANALYZE 7.5 and trusts the rest of it.
  std::string dir = temp_dir();
  std::string path = write_valid(dir + "/magic1.nii");
  patch<uint32_t>(path, kN1Magic, 0);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": header magic is \"\\0\\0\\0\\0\"; expected \"n+1\\0\", a single-file NIfTI-1 (.nii "
                               "or .nii.gz)")
                           .c_str(),
                       std::runtime_error);
  std::fstream(path, std::ios::binary | std::ios::in | std::ios::out).seekp(kN1Magic).write("ni1", 4);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       doctest::Contains("header magic is \"ni1\\0\" (the header of a .hdr/.img pair); expected"),
                       std::runtime_error);
  std::fstream(path, std::ios::binary | std::ios::in | std::ios::out).seekp(kN1Magic).write("n\xff\n", 4);
  CHECK_THROWS_WITH_AS(read_nifti(path), doctest::Contains("header magic is \"n\\xff\\x0a\\0\""), std::runtime_error);
  path = write_valid(dir + "/magic2.nii", true);
  std::fstream(path, std::ios::binary | std::ios::in | std::ios::out).seekp(4).write("n+2\0\r\r\032\n", 8);
  CHECK_THROWS_WITH_AS(
      read_nifti(path),
      (path + ": header magic is \"n+2\\0\\x0d\\x0d\\x1a\\x0a\"; expected \"n+2\\0\\x0d\\x0a\\x1a\\x0a\", "
              "a single-file NIfTI-2 (.nii or .nii.gz)")
          .c_str(),
      std::runtime_error);
  // Neither header size: not NIfTI at all.
  path = write_valid(dir + "/size.nii");
  patch<int32_t>(path, 0, 347);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": not a readable NIfTI-1 or NIfTI-2 file: header field sizeof_hdr is 347; expected 348 "
                               "(NIfTI-1) or 540 (NIfTI-2)")
                           .c_str(),
                       std::runtime_error);
  // 348 big-endian in a little-endian header (dim[0] decides the byte order): the fields mix orders.
  path = write_valid(dir + "/swapped_size.nii");
  std::fstream(path, std::ios::binary | std::ios::in | std::ios::out).seekp(0).write("\0\0\x01\x5c", 4);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": header field sizeof_hdr is 1543569408 in the byte order of dim[0]; expected 348 (a "
                               "header that mixes byte orders?)")
                           .c_str(),
                       std::runtime_error);
}

TEST_CASE("a NaN or infinite qform or sform that its code declares is an error naming the field") {
  std::string dir = temp_dir();
  // NIfTI-1 offsets: qform_code 252, sform_code 254, qoffset_x 268, srow_y 296.
  std::string path = write_valid(dir + "/qoffset.nii");
  patch<int16_t>(path, 252, 1);
  patch<float>(path, 268, std::numeric_limits<float>::infinity());
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": header field qoffset_x is inf with qform_code 1; expected a finite number (or "
                               "qform_code 0)")
                           .c_str(),
                       std::runtime_error);
  patch<int16_t>(path, 252, 0);  // not declared: ignored, as nifticlib ignores it
  CHECK_NOTHROW(read_nifti(path));
  path = write_valid(dir + "/sform.nii");
  patch<int16_t>(path, 254, 2);
  patch<float>(path, 296 + 4, std::numeric_limits<float>::quiet_NaN());
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       doctest::Contains("header field srow_y[1] is nan with sform_code 2; expected a finite number"),
                       std::runtime_error);
}

TEST_CASE("a datatype read_nifti does not convert, or a bitpix that disagrees with it, is an error naming both") {
  std::string dir = temp_dir();
  std::string path = write_valid(dir + "/datatype.nii");  // float32, bitpix 32
  patch<int16_t>(path, kN1Datatype, 128);
  patch<int16_t>(path, kN1Bitpix, 24);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": header field datatype is 128 (rgb24); expected uint8 (2), int8 (256), int16 (4), "
                               "uint16 (512), int32 (8), float32 (16) or float64 (64)")
                           .c_str(),
                       std::runtime_error);
  patch<int16_t>(path, kN1Datatype, 1234);
  CHECK_THROWS_WITH_AS(read_nifti(path), doctest::Contains("header field datatype is 1234 (unknown)"),
                       std::runtime_error);
  // A float32 header with 8-bit voxels (nifticlib goes by datatype alone and would read 4 voxels per float).
  patch<int16_t>(path, kN1Datatype, 16);
  patch<int16_t>(path, kN1Bitpix, 8);
  CHECK_THROWS_WITH_AS(read_nifti(path),
                       (path + ": header field bitpix is 8 with datatype 16 (float32); expected 32").c_str(),
                       std::runtime_error);
}

TEST_CASE("a voxel size that is NaN, infinite, zero or negative on an axis the volume has is an error naming it") {
  std::string dir = temp_dir();
  std::string path = write_valid(dir + "/pixdim.nii");  // x, y, z = 6, 5, 4 voxels of 1 mm
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity(), 0.f, -1.5f}) {
    CAPTURE(bad);
    patch<float>(path, kN1Pixdim + 4 * 2, bad);
    CHECK_THROWS_WITH_AS(read_nifti(path),
                         (path + ": header field pixdim[2] (the voxel size along y) is " +
                          (std::isnan(bad)   ? std::string("nan")
                           : std::isinf(bad) ? "inf"
                           : bad == 0        ? "0"
                                             : "-1.5") +
                          "; expected a finite size > 0")
                             .c_str(),
                         std::runtime_error);
  }
  patch<float>(path, kN1Pixdim + 4 * 2, 0.5f);
  CHECK(read_nifti(path).spacing() == std::array<double, 3>{1, 0.5, 1});
  // A 2D image has no z voxel size to check: 1 mm.
  patch<int16_t>(path, kN1Dim, 2);
  patch<float>(path, kN1Pixdim + 4 * 3, 0.f);
  patch<int16_t>(path, kN1Dim + 2 * 3, 1);
  CHECK(read_nifti(path).spacing() == std::array<double, 3>{1, 0.5, 1});
  path = write_valid(dir + "/pixdim2.nii", true);
  patch<double>(path, kN2Pixdim + 8 * 3, -2.0);
  CHECK_THROWS_WITH_AS(read_nifti(path), doctest::Contains("header field pixdim[3] (the voxel size along z) is -2;"),
                       std::runtime_error);
}

TEST_CASE("spacing and origin are read in millimetres whatever the header's unit, and grids compare in millimetres") {
  CHECK(nifti_space_unit_mm(NIFTI_UNITS_METER) == 1000.0);
  CHECK(nifti_space_unit_mm(NIFTI_UNITS_MM) == 1.0);
  CHECK(nifti_space_unit_mm(NIFTI_UNITS_MICRON) == 1e-3);
  CHECK(nifti_space_unit_mm(NIFTI_UNITS_MM | NIFTI_UNITS_SEC) == 1.0);
  CHECK(nifti_space_unit_mm(NIFTI_UNITS_UNKNOWN) == 1.0);  // assumed millimetres
  const std::string dir = temp_dir();
  // One physical grid, (z, y, x) = (3, 1, 2) mm with its origin at x = 0.5 mm, written in three units.
  const auto write = [&](const std::string& name, double unit_mm, char code) {
    const std::string path = dir + "/" + name;
    write_nifti(path, Tensor::zeros({4, 5, 6}), make_nifti_like({4, 5, 6}, {3 / unit_mm, 1 / unit_mm, 2 / unit_mm}));
    patch<char>(path, kN1XyztUnits, code);
    patch<float>(path, kN1SrowX + 12, static_cast<float>(0.5 / unit_mm));
    return path;
  };
  const Image mm = read_image(write("mm.nii", 1, NIFTI_UNITS_MM));
  const Image m = read_image(write("m.nii", 1000, NIFTI_UNITS_METER));
  const Image um = read_image(write("um.nii", 1e-3, NIFTI_UNITS_MICRON));
  const Image unknown = read_image(write("unknown.nii", 1, NIFTI_UNITS_UNKNOWN));
  for (const Image* im : {&m, &um, &unknown}) {
    CAPTURE(im->path);
    for (int a = 0; a < 3; ++a) CHECK(im->spacing[a] == doctest::Approx(mm.spacing[a]).epsilon(1e-6));
    CHECK(grid_mismatch(*im, mm) == "");
    CHECK(grid_mismatch(mm, *im) == "");
  }
  // Millimetre values in a header that says meters: a grid 1000 times larger, not the same one.
  const std::string wrong = write("wrong.nii", 1, NIFTI_UNITS_METER);
  CHECK(grid_mismatch(read_image(wrong), mm) ==
        "voxel spacing (3000, 1000, 2000) mm (z, y, x) differs from (3, 1, 2) of " + dir + "/mm.nii");
  // An output written like the meters file keeps its unit (the header is copied), so it reads on the same grid.
  write_nifti(dir + "/label.nii", Tensor::zeros({4, 5, 6}, DType::u8), *m.nifti);
  const Image label = read_image(dir + "/label.nii");
  CHECK(label.nifti->geometry().xyz_units == NIFTI_UNITS_METER);
  CHECK(grid_mismatch(label, mm) == "");
  fs::remove_all(dir);
}

// ---- grids that must coincide ---------------------------------------------------------------------------------------

TEST_CASE(
    "grid_mismatch: extent, spacing, direction and origin must agree; f32 header noise and uncalibrated TIFF pass") {
  const std::string dir = temp_dir();
  // [Z, Y, X] = [4, 5, 6] at (z, y, x) = (3, 1, 2) mm: the sform is diag(2, 1, 3) with origin 0.
  const auto write = [&](const std::string& name, Shape shape = {4, 5, 6}, std::array<double, 3> spacing = {3, 1, 2}) {
    const std::string path = dir + "/" + name;
    write_nifti(path, Tensor::zeros(shape), make_nifti_like(shape, spacing));
    return path;
  };
  const Image ref = read_image(write("ref.nii"));
  CHECK(grid_mismatch(read_image(write("same.nii")), ref) == "");

  const std::string noisy = write("noisy.nii");  // what another tool's f32 arithmetic leaves: passes
  patch<float>(noisy, kN1SrowX, 2.0f + 2e-6f);
  patch<float>(noisy, kN1SrowX + 12, 3e-5f);
  CHECK(grid_mismatch(read_image(noisy), ref) == "");

  const std::string shifted = write("shifted.nii");  // a quarter of a voxel along x
  patch<float>(shifted, kN1SrowX + 12, 0.5f);
  CHECK(grid_mismatch(read_image(shifted), ref) ==
        "origin (0.5, 0, 0) mm (world x, y, z) differs from (0, 0, 0) of " + dir + "/ref.nii");
  // A CT table's origin (z = -1200 mm): f32 noise passes, a shift by a third of a slice (1 mm) does not (a tolerance
  // relative to the origin used to allow 1.2 mm there).
  const std::string table = write("table.nii"), table_noisy = write("table_noisy.nii"), table_shifted = write("t1.nii");
  patch<float>(table, kN1SrowX + 32 + 12, -1200.0f);
  patch<float>(table_noisy, kN1SrowX + 32 + 12, -1200.0001f);
  patch<float>(table_shifted, kN1SrowX + 32 + 12, -1199.0f);
  CHECK(grid_mismatch(read_image(table_noisy), read_image(table)) == "");
  CHECK(grid_mismatch(read_image(table_shifted), read_image(table)) ==
        "origin (0, 0, -1199) mm (world x, y, z) differs from (0, 0, -1200) of " + table);

  const std::string flipped = write("flipped.nii");  // x runs right to left
  patch<float>(flipped, kN1SrowX, -2.0f);
  CHECK(grid_mismatch(read_image(flipped), ref) ==
        "direction of the x axis (-1, 0, 0) (world x, y, z) differs from (1, 0, 0) of " + dir + "/ref.nii");
  // A scale in the sform alone (pixdim, the spacing, unchanged), as tools that rewrite only the sform leave it.
  const std::string stretched = write("stretched.nii");
  patch<float>(stretched, kN1SrowX + 32 + 8, 6.0f);
  CHECK(read_image(stretched).spacing == ref.spacing);
  CHECK(grid_mismatch(read_image(stretched), ref) ==
        "voxel size along the z axis in the voxel-to-world transform 6 mm differs from 3 of " + dir + "/ref.nii");
  CHECK(grid_mismatch(read_image(write("coarse.nii", {4, 5, 6}, {3, 3, 2})), ref) ==
        "voxel spacing (3, 3, 2) mm (z, y, x) differs from (3, 1, 2) of " + dir + "/ref.nii");
  CHECK(grid_mismatch(read_image(write("small.nii", {4, 5, 5})), ref) ==
        "grid [4, 5, 5] (z, y, x) differs from [4, 5, 6] of " + dir + "/ref.nii");

  // TIFF: no origin or direction; a spacing only when calibrated.
  const Tensor zeros = Tensor::zeros({4, 5, 6}, DType::u8);
  write_tiff(dir + "/plain.tif", zeros, TiffWriteOptions{});
  const Image plain = read_image(dir + "/plain.tif");
  CHECK_FALSE(plain.tiff->calibrated);
  CHECK(grid_mismatch(plain, ref) == "");
  CHECK(grid_mismatch(ref, plain) == "");
  TiffWriteOptions mm;
  mm.tags.has_resolution = true;
  mm.tags.x_resolution = mm.tags.y_resolution = 1;  // 1 pixel per mm
  mm.tags.description = "ImageJ=1.54f\nimages=4\nslices=4\nunit=mm\nspacing=1\n";
  write_tiff(dir + "/mm.tif", zeros, mm);
  const Image calibrated = read_image(dir + "/mm.tif");
  CHECK(calibrated.tiff->calibrated);
  CHECK(grid_mismatch(calibrated, ref) ==
        "voxel spacing (1, 1, 1) mm (z, y, x) differs from (3, 1, 2) of " + dir + "/ref.nii");
  fs::remove_all(dir);
}
