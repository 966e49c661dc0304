// TIFF I/O against tifffile and libtiff's tiffcp (tests/golden/make_tiff_fixtures.py): values of every sample type,
// compression, strips and tiles, planar and contiguous samples, ImageJ channels, spacing; malformed files refused with
// a message naming the file and the fault; our own files written and read back exactly, and read by tifffile when
// Debian's python3-tifffile is installed.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <tuple>

#include "io/image.h"
#include "io/tiff.h"

using namespace unet;
using namespace unet::io;
namespace fs = std::filesystem;

namespace {
const std::string kDir = std::string(UNET_TEST_DATA_DIR) + "/tiff/";

const nlohmann::json& expected() {
  static nlohmann::json j = nlohmann::json::parse(std::ifstream(kDir + "expected.json"));
  return j;
}

fs::path temp_dir() {
  fs::path d = fs::temp_directory_path() / ("unet_tiff_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The entry of `tag` in directory `page` (from 0) of a little-endian classic TIFF: its byte position, or 0 when there
// is none.
size_t find_entry(const std::string& bytes, int tag, int page = 0) {
  const auto u16 = [&](size_t at) {
    return static_cast<uint8_t>(bytes[at]) | static_cast<uint8_t>(bytes[at + 1]) << 8;
  };
  const auto u32 = [&](size_t at) { return u16(at) | static_cast<uint32_t>(u16(at + 2)) << 16; };
  uint32_t ifd = u32(4);
  for (int k = 0; k < page; ++k) ifd = u32(ifd + 2 + 12 * static_cast<size_t>(u16(ifd)));
  for (int k = 0; k < u16(ifd); ++k)
    if (const size_t at = ifd + 2 + 12 * static_cast<size_t>(k); u16(at) == tag) return at;
  return 0;
}

// Writes `value` as `size` little-endian bytes at `at`.
void put_le(std::string& bytes, size_t at, uint32_t value, int size) {
  for (int b = 0; b < size; ++b) bytes[at + b] = static_cast<char>(value >> (8 * b));
}

// Sets the inline value of a SHORT or LONG tag of the first directory of a little-endian classic TIFF; false when the
// directory has no such tag.
bool patch_tag(std::string& bytes, int tag, uint32_t value) {
  const size_t at = find_entry(bytes, tag);
  if (at) put_le(bytes, at + 8, value, static_cast<uint8_t>(bytes[at + 2]) == 3 ? 2 : 4);  // SHORT or LONG
  return at != 0;
}

// Sets the value count of a tag's entry (the first directory, as patch_tag); false when there is no such tag.
bool patch_count(std::string& bytes, int tag, uint32_t count) {
  const size_t at = find_entry(bytes, tag);
  if (at) put_le(bytes, at + 4, count, 4);
  return at != 0;
}

// A [Z, Y, X, C] tensor of dtype dt with value(z, y, x, c) at each element.
Tensor make(const Shape& shape, DType dt, double (*value)(int64_t)) {
  Tensor t = Tensor::empty(shape, dt);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = value(i);
    if (dt == DType::u8) t.data<uint8_t>()[i] = static_cast<uint8_t>(v);
    if (dt == DType::i32) t.data<int32_t>()[i] = static_cast<int32_t>(v);
    if (dt == DType::f32) t.data<float>()[i] = static_cast<float>(v);
  }
  return t;
}
}  // namespace

TEST_CASE("TIFF fixtures read with tifffile's values and the expected spacing") {
  int n = 0;
  for (auto& [name, e] : expected()["good"].items()) {
    CAPTURE(name);
    const TiffVolume v = read_tiff(kDir + name);
    REQUIRE(v.data.shape() == e["shape"].get<Shape>());
    CHECK(v.data.to_vector() == e["values"].get<std::vector<float>>());  // every type here is exact in f32
    const auto spacing = e["spacing"].get<std::vector<double>>();
    for (int a = 0; a < 3; ++a) CHECK(v.spacing[a] == doctest::Approx(spacing[a]).epsilon(1e-6));
    ++n;
  }
  CHECK(n == 15);
  CHECK(read_tiff(kDir + "u8_lzw.tif").compression == TiffCompression::lzw);
  CHECK(read_tiff(kDir + "u16_deflate.tif").compression == TiffCompression::deflate);
  CHECK(read_tiff(kDir + "u8_stack.tif").compression == TiffCompression::none);
  const TiffVolume s = read_tiff(kDir + "i16_stack.tif");
  CHECK((s.bits == 16 && s.is_signed && !s.is_float));
}

TEST_CASE("malformed and unsupported TIFF files are errors naming the file and the fault") {
  for (auto& [name, phrase] : expected()["bad"].items()) {
    CAPTURE(name);
    const std::string what = error_of([&] { read_tiff(kDir + name); });
    CAPTURE(what);
    CHECK(what.find(kDir + name) == 0);
    CHECK(what.find(phrase.get<std::string>()) != std::string::npos);
  }
  const fs::path dir = temp_dir();
  CHECK(error_of([&] { read_tiff(dir.string()); }).find("not a regular file") != std::string::npos);
  fs::copy_file(kDir + "u8_stack.tif", dir / "stack.png", fs::copy_options::overwrite_existing);
  CHECK(error_of([&] { read_tiff((dir / "stack.png").string()); }).find("expected .tif or .tiff") != std::string::npos);
  // A header declaring a page far larger than the file can hold is refused before anything is allocated.
  std::string bytes;
  {
    std::ifstream in(kDir + "u8_stack.tif", std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  // Patch ImageWidth (tag 256, type SHORT or LONG) of the first directory to 60000 pixels.
  const uint32_t ifd = static_cast<uint8_t>(bytes[4]) | static_cast<uint8_t>(bytes[5]) << 8 |
                       static_cast<uint8_t>(bytes[6]) << 16 |
                       static_cast<uint32_t>(static_cast<uint8_t>(bytes[7])) << 24;
  const int entries = static_cast<uint8_t>(bytes[ifd]) | static_cast<uint8_t>(bytes[ifd + 1]) << 8;
  bool patched = false;
  for (int k = 0; k < entries; ++k) {
    const size_t at = ifd + 2 + 12 * static_cast<size_t>(k);
    if ((static_cast<uint8_t>(bytes[at]) | static_cast<uint8_t>(bytes[at + 1]) << 8) == 256) {
      bytes[at + 8] = static_cast<char>(60000 & 0xff);
      bytes[at + 9] = static_cast<char>(60000 >> 8);
      patched = true;
    }
  }
  REQUIRE(patched);
  std::ofstream(dir / "huge.tif", std::ios::binary) << bytes;
  const std::string what = error_of([&] { read_tiff((dir / "huge.tif").string()); });
  CAPTURE(what);
  CHECK(what.find("more than its") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("TIFF written and read back: 8 and 16 bits, floats, channels, every compression, tags kept") {
  const fs::path dir = temp_dir();
  const Tensor labels = make({3, 17, 23}, DType::u8, [](int64_t i) { return double((i * 7) % 5); });
  const Tensor big = make({2, 9, 31}, DType::i32, [](int64_t i) { return double((i * 2654435761u) % 65536); });
  const Tensor probs = make({2, 5, 6, 3}, DType::f32, [](int64_t i) { return std::ldexp(double(i % 97) - 40, -5); });
  for (TiffCompression c : {TiffCompression::none, TiffCompression::lzw, TiffCompression::deflate}) {
    CAPTURE(static_cast<int>(c));
    TiffWriteOptions o;
    o.compression = c;
    write_tiff((dir / "labels.tif").string(), labels, o);
    TiffVolume v = read_tiff((dir / "labels.tif").string());
    CHECK(v.compression == c);
    CHECK(v.data.shape() == Shape{3, 17, 23, 1});
    CHECK(v.data.to_vector() == labels.to_vector());
    o.bits = 16;
    write_tiff((dir / "big.tiff").string(), big, o);
    v = read_tiff((dir / "big.tiff").string());
    CHECK(v.bits == 16);
    CHECK(v.data.to_vector() == big.to_vector());
    o.bits = 32;
    o.is_float = true;
    write_tiff((dir / "probs.tif").string(), probs, o);
    v = read_tiff((dir / "probs.tif").string());
    CHECK(v.data.shape() == Shape{2, 5, 6, 3});
    CHECK(v.data.to_vector() == probs.to_vector());
  }
  // Written like an input: same compression, resolution and description, so the same spacing.
  const TiffVolume ij = read_tiff(kDir + "imagej_spacing.tif");
  const Tensor seg = make({4, 5, 6}, DType::u8, [](int64_t i) { return double(i % 3); });
  const TiffWriteOptions like = tiff_options_like(ij, seg);
  CHECK((like.bits == 8 && !like.is_float));
  write_tiff((dir / "seg.tif").string(), seg, like);
  const TiffVolume back = read_tiff((dir / "seg.tif").string());
  for (int a = 0; a < 3; ++a) CHECK(back.spacing[a] == doctest::Approx(ij.spacing[a]).epsilon(1e-6));
  // More than 255 classes: 16-bit labels, not a wrap to class 1.
  CHECK(tiff_options_like(ij, make({1, 2, 2}, DType::i32, [](int64_t i) { return 254.0 + double(i); })).bits == 16);
  // tifffile's shaped description names the input's shape and layout, not the output's: dropped (the test below reads
  // such an output with tifffile).
  TiffVolume shaped = ij;
  shaped.tags.description = "{\"shape\": [4, 5, 6]}";
  CHECK(tiff_options_like(shaped, seg).tags.description.empty());
  CHECK(tiff_options_like(shaped, Tensor::zeros({4, 5, 6, 3})).tags.description.empty());
  fs::remove_all(dir);
}

TEST_CASE("TIFF writing refuses values the samples cannot hold and leaves no file") {
  const fs::path dir = temp_dir();
  const std::string out = (dir / "x.tif").string();
  TiffWriteOptions o;
  const Tensor over = make({1, 2, 2}, DType::i32, [](int64_t i) { return i == 3 ? 256.0 : 1.0; });
  std::string what = error_of([&] { write_tiff(out, over, o); });
  CHECK(what.find("value 256") != std::string::npos);
  CHECK(what.find("8-bit unsigned") != std::string::npos);
  const Tensor half = make({1, 2, 2}, DType::f32, [](int64_t i) { return i == 1 ? 0.5 : 1.0; });
  CHECK(error_of([&] { write_tiff(out, half, o); }).find("value 0.5") != std::string::npos);
  const Tensor nan = make({1, 2, 2}, DType::f32, [](int64_t i) { return i == 2 ? std::nan("") : 1.0; });
  o.bits = 32;
  o.is_float = true;
  CHECK(error_of([&] { write_tiff(out, nan, o); }).find("cannot be written") != std::string::npos);
  CHECK(error_of([&] { write_tiff((dir / "x.nii").string(), half, o); }).find(".tif or .tiff") != std::string::npos);
  CHECK(fs::is_empty(dir));
  fs::remove_all(dir);
}

TEST_CASE("TIFF files we write read the same in tifffile") {
  if (std::system("/usr/bin/python3 -c 'import tifffile' >/dev/null 2>&1") != 0) {
    MESSAGE("skipped: /usr/bin/python3 has no tifffile (Debian python3-tifffile)");
    return;
  }
  const fs::path dir = temp_dir();
  const Tensor probs = make({3, 5, 6, 2}, DType::f32, [](int64_t i) { return std::ldexp(double(i % 89) - 30, -4); });
  const Tensor labels = make({2, 7, 9}, DType::i32, [](int64_t i) { return double((i * 40503) % 65536); });
  TiffWriteOptions f;
  f.bits = 32;
  f.is_float = true;
  write_tiff((dir / "probs.tif").string(), probs, f);
  TiffWriteOptions l;
  l.bits = 16;
  l.compression = TiffCompression::none;
  write_tiff((dir / "labels.tif").string(), labels, l);
  // A small stack written like an input of tifffile's (a shaped description): tifffile took its pages for one stack
  // cut short and read page 2 from the directories' bytes (red-team corpus 18, M2).
  const Tensor small = make({3, 3, 5}, DType::u8, [](int64_t i) { return double(i % 2); });
  TiffVolume shaped;
  shaped.tags.description = "{\"shape\": [3, 3, 5]}";
  write_tiff((dir / "small.tif").string(), small, tiff_options_like(shaped, small));
  // tifffile's arrays as little-endian f32 in [z, y, x, c] order.
  const std::string py =
      "import sys, numpy as np, tifffile\n"
      "for name in sys.argv[1:]:\n"
      "    a = tifffile.imread(name).astype(np.float32)\n"
      "    a.reshape(-1).astype('<f4').tofile(name + '.f32')\n";
  std::ofstream(dir / "dump.py") << py;
  const std::string cmd = "/usr/bin/python3 " + (dir / "dump.py").string() + " " + (dir / "probs.tif").string() + " " +
                          (dir / "labels.tif").string() + " " + (dir / "small.tif").string();
  REQUIRE(std::system(cmd.c_str()) == 0);
  for (const auto& [name, t] :
       {std::pair{"probs.tif", probs}, std::pair{"labels.tif", labels}, std::pair{"small.tif", small}}) {
    CAPTURE(name);
    std::ifstream in(dir / (std::string(name) + ".f32"), std::ios::binary);
    std::vector<float> got(static_cast<size_t>(t.numel()));
    in.read(reinterpret_cast<char*>(got.data()), static_cast<std::streamsize>(got.size() * sizeof(float)));
    CHECK(in.gcount() == static_cast<std::streamsize>(got.size() * sizeof(float)));
    CHECK(got == t.to_vector());
  }
  fs::remove_all(dir);
}

TEST_CASE("a truncated TIFF file is an error naming the file and the page whose data or directory is cut") {
  const fs::path dir = temp_dir();
  const std::string path = (dir / "cut.tif").string();
  const Tensor stack = make({4, 32, 40}, DType::u8, [](int64_t i) { return double(i % 251); });
  for (TiffCompression c : {TiffCompression::none, TiffCompression::deflate}) {
    TiffWriteOptions o;
    o.compression = c;
    write_tiff(path, stack, o);
    const std::string whole = [&] {
      std::ifstream in(path, std::ios::binary);
      return std::string(std::istreambuf_iterator<char>(in), {});
    }();
    REQUIRE(read_tiff(path).data.shape() == Shape{4, 32, 40, 1});
    // Every length from an eighth of the file to one byte short: never a volume, always the file and a page.
    for (size_t keep = whole.size() - 1; keep > whole.size() / 8; keep -= 7) {
      CAPTURE(static_cast<int>(c));
      CAPTURE(keep);
      std::ofstream(path, std::ios::binary | std::ios::trunc) << whole.substr(0, keep);
      const std::string what = error_of([&] { read_tiff(path); });
      CAPTURE(what);
      CHECK(what.find(path + ": ") == 0);
      CHECK(what.find("page ") != std::string::npos);
    }
  }
  // tifffile writes each directory before its page's data: the last page's strip cut short.
  const std::string whole = [&] {
    std::ifstream in(kDir + "u16_deflate.tif", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  for (size_t cut : {1, 10, 60}) {
    CAPTURE(cut);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << whole.substr(0, whole.size() - cut);
    const std::string what = error_of([&] { read_tiff(path); });
    CHECK(what.find(path + ": page 4: cannot decode the strip at row 0, column 0") == 0);
  }
  fs::remove_all(dir);
}

TEST_CASE("a TIFF that cannot be opened is an error naming the file and the system's reason") {
  const fs::path dir = temp_dir();
  const std::string missing = (dir / "missing.tif").string();
  CHECK(error_of([&] { read_tiff(missing); }) == missing + ": cannot open TIFF: No such file or directory");
  std::ofstream(dir / "file") << "x";
  const std::string under_file = (dir / "file" / "x.tif").string();
  CHECK(error_of([&] { read_tiff(under_file); }) == under_file + ": cannot open TIFF: Not a directory");
  const std::string what = error_of([&] { write_tiff(under_file, Tensor::zeros({1, 2, 2}, DType::u8), {}); });
  CAPTURE(what);
  CHECK(what.find(under_file) != std::string::npos);
  CHECK(what.find("Not a directory") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("an ImageJ channels= that is not an integer 1 to 64 dividing the page count is an error naming it") {
  const fs::path dir = temp_dir();
  const std::string path = (dir / "ij.tif").string();
  const Tensor pages = make({6, 4, 5}, DType::u8, [](int64_t i) { return double(i % 7); });
  const auto with_description = [](const std::string& d) {
    TiffWriteOptions o;
    o.tags.description = d;
    return o;
  };
  const auto write = [&](const std::string& channels) {
    write_tiff(path, pages,
               with_description("ImageJ=1.54f\nimages=6\nchannels=" + channels + "\nslices=2\nhyperstack=true\n"));
  };
  write("3");
  CHECK(read_tiff(path).data.shape() == Shape{2, 4, 5, 3});
  write("1");  // 1 channel x 2 slices is 2 pages, not 6
  CHECK(error_of([&] { read_tiff(path); }) ==
        path + ": ImageJ description has slices=2 (2 pages) but the file has 6 pages; expected them to agree");
  write_tiff(path, pages, with_description("ImageJ=1.54f\nimages=6\nchannels=1\nslices=6\n"));
  CHECK(read_tiff(path).data.shape() == Shape{6, 4, 5, 1});
  // A time series: 3 slices x 2 frames used to be read as one 6-slice volume.
  write_tiff(path, pages,
             with_description("ImageJ=1.54f\nimages=6\nchannels=1\nslices=3\nframes=2\nhyperstack=true\n"));
  CHECK(error_of([&] { read_tiff(path); }) ==
        path +
            ": ImageJ description has frames=2: a time series; expected one volume (save each frame as its own "
            "file)");
  write_tiff(path, pages, with_description("ImageJ=1.54f\nimages=6\nslices=six\n"));
  CHECK(error_of([&] { read_tiff(path); }) ==
        path + ": ImageJ description has slices=\"six\"; expected an integer >= 1");
  write("4");
  CHECK(error_of([&] { read_tiff(path); }) ==
        path +
            ": ImageJ description has channels=4 but the file has 6 pages; expected a channel count that divides "
            "the page count");
  for (const char* bad : {"0", "-2", "65", "2.5", "two", "99999999999999999999"}) {
    CAPTURE(bad);
    write(bad);
    CHECK(error_of([&] { read_tiff(path); }) ==
          path + ": ImageJ description has channels=\"" + bad + "\"; expected an integer 1 to 64");
  }
  fs::remove_all(dir);
}

TEST_CASE("a calibration that is present but not a finite size > 0 is an error, not a silent 1 mm") {
  const fs::path dir = temp_dir();
  const std::string path = (dir / "cal.tif").string();
  const Tensor zeros = Tensor::zeros({3, 4, 5}, DType::u8);
  TiffWriteOptions o;
  o.tags.has_resolution = true;
  o.tags.x_resolution = o.tags.y_resolution = 2;  // 2 pixels per micron
  o.tags.resolution_unit = 1;
  for (const char* bad : {"0", "-1", "nan", "inf", "1e400", "abc", "0.5 um"}) {
    CAPTURE(bad);
    o.tags.description = std::string("ImageJ=1.54f\nimages=3\nslices=3\nunit=micron\nspacing=") + bad + "\n";
    write_tiff(path, zeros, o);
    CHECK(error_of([&] { read_tiff(path); }) ==
          path + ": ImageJ description has spacing=\"" + bad + "\"; expected a finite z voxel size > 0");
  }
  o.tags.description = "ImageJ=1.54f\nimages=3\nslices=3\nunit=micron\nspacing=0.25\n";
  write_tiff(path, zeros, o);
  const TiffVolume ok = read_tiff(path);
  CHECK(ok.calibrated);
  CHECK(ok.spacing[0] == doctest::Approx(2.5e-4));
  CHECK(ok.spacing[2] == doctest::Approx(5e-4));
  o.tags.x_resolution = 0;
  write_tiff(path, zeros, o);
  CHECK(error_of([&] { read_tiff(path); }) ==
        path + ": XResolution is 0 in a calibrated unit; expected a finite number of pixels per unit > 0");
  // The Greek mu as well as the micro sign; an unknown unit is an error, not a silent 1 mm.
  o.tags.x_resolution = 2;
  for (const char* micro : {"\xce\xbcm", "\xc2\xb5m", "micrometer"}) {
    CAPTURE(micro);
    o.tags.description = std::string("ImageJ=1.54f\nimages=3\nslices=3\nunit=") + micro + "\nspacing=0.25\n";
    write_tiff(path, zeros, o);
    CHECK(read_tiff(path).spacing[2] == doctest::Approx(5e-4));
  }
  o.tags.description = "ImageJ=1.54f\nimages=3\nslices=3\nunit=furlong\nspacing=0.25\n";
  write_tiff(path, zeros, o);
  CHECK(error_of([&] { read_tiff(path); }) ==
        path +
            ": ImageJ description has unit=\"furlong\"; expected nm, um (micron, \xc2\xb5m), mm, cm, m, inch or "
            "pixel");
  o.tags.description = "ImageJ=1.54f\nimages=3\nslices=3\nunit=pixel\n";
  write_tiff(path, zeros, o);
  CHECK_FALSE(read_tiff(path).calibrated);
  // Centimetre resolution without ImageJ: the same rule.
  o.tags.description.clear();
  o.tags.resolution_unit = 3;
  o.tags.x_resolution = 10;
  o.tags.y_resolution = 0;
  write_tiff(path, zeros, o);
  CHECK(error_of([&] { read_tiff(path); }).find("YResolution is 0 in a calibrated unit") != std::string::npos);
  // An uncalibrated unit (inches, as image editors write) is not read, so not checked either.
  o.tags.resolution_unit = 2;
  write_tiff(path, zeros, o);
  CHECK_FALSE(read_tiff(path).calibrated);
  fs::remove_all(dir);
}

TEST_CASE("tile sizes off the TIFF rule, or tiles larger than the file can hold, are refused before allocating") {
  const fs::path dir = temp_dir();
  const std::string path = (dir / "tiles.tif").string();
  const std::string good = read_bytes(kDir + "u16_tiled.tif");
  REQUIRE(read_tiff(kDir + "u16_tiled.tif").data.numel() > 0);
  const auto with = [&](uint32_t width, uint32_t length) {
    std::string bytes = good;
    REQUIRE(patch_tag(bytes, 322, width));   // TileWidth
    REQUIRE(patch_tag(bytes, 323, length));  // TileLength
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    return error_of([&] { read_tiff(path); });
  };
  CHECK(with(17, 16) == path +
                            ": page 1 has tiles of 17 x 16 pixels; expected TileWidth and TileLength multiples of "
                            "16 from 16 to 65536");
  CHECK(with(16, 8).find("page 1 has tiles of 16 x 8 pixels; expected") != std::string::npos);
  const std::string zero = with(0, 16);  // libtiff refuses it itself
  CAPTURE(zero);
  CHECK(zero.find(path + ": page 1") == 0);
  // 8 GiB tiles in a 7 kB file: never allocated.
  CHECK(with(65520, 65520) == path +
                                  ": page 1 has tiles of 65520 x 65520 pixels (8585740800 bytes each); expected "
                                  "tiles of at most 256 MiB that the file's " +
                                  std::to_string(good.size()) + " bytes can hold");
  fs::remove_all(dir);
}

TEST_CASE("strip or tile offsets that are missing, too few or inside the header are errors naming the page") {
  // libtiff zero-fills the offsets an entry lacks, and offset 0 decodes the file's header and directory as pixels.
  const fs::path dir = temp_dir();
  const std::string path = (dir / "offsets.tif").string();
  const auto read_patched = [&](const std::string& fixture, const std::function<bool(std::string&)>& patch) {
    std::string bytes = read_bytes(kDir + fixture);
    REQUIRE(patch(bytes));
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    return error_of([&] { read_tiff(path); });
  };
  for (uint32_t offset : {0u, 4u}) {
    CAPTURE(offset);
    CHECK(read_patched("u8_stack.tif", [&](std::string& b) { return patch_tag(b, 273, offset); }) ==
          path + ": page 1: strip 1 of 1 is at byte " + std::to_string(offset) +
              ", inside the file's 8-byte header; expected an offset past the header");
  }
  // Two planes, one offset; no offsets at all.
  CHECK(read_patched("u8_planar_2ch.tif", [](std::string& b) { return patch_count(b, 273, 1); }) ==
        path + ": page 1: StripOffsets has 1 value(s) for the page's 2 strips; expected one per strip");
  CHECK(read_patched("u8_stack.tif", [](std::string& b) { return patch_count(b, 273, 0); }) ==
        path + ": page 1: StripOffsets has 0 value(s) for the page's 1 strips; expected one per strip");
  CHECK(read_patched("u8_planar_2ch.tif", [](std::string& b) { return patch_count(b, 279, 1); }) ==
        path + ": page 1: StripByteCounts has 1 value(s) for the page's 2 strips; expected one per strip");
  // Tiles: 6 in the fixture.
  CHECK(read_patched("u16_tiled.tif", [](std::string& b) { return patch_count(b, 324, 1); }) ==
        path + ": page 1: TileOffsets has 1 value(s) for the page's 6 tiles; expected one per tile");
  CHECK(read_patched("u16_tiled.tif", [](std::string& b) { return patch_count(b, 324, 0); }) ==
        path + ": page 1: TileOffsets has 0 value(s) for the page's 6 tiles; expected one per tile");
  // No StripOffsets entry (renumbered to an unknown tag), and strips past the end of the file: libtiff's own errors.
  for (const auto& [tag, field, value] : {std::tuple{273, 0, 276u}, {273, 8, 100000u}}) {
    CAPTURE(value);
    const std::string what = read_patched("u8_stack.tif", [&](std::string& b) {
      const size_t at = find_entry(b, tag);
      if (at) put_le(b, at + field, value, field == 0 ? 2 : 4);
      return at != 0;
    });
    CAPTURE(what);
    CHECK(what.find(path + ": page 1") == 0);
  }
  fs::remove_all(dir);
}

TEST_CASE("reduced-resolution and mask pages (NewSubfileType bits 0 and 2) are skipped, not read as slices") {
  const fs::path dir = temp_dir();
  const std::string path = (dir / "subfiles.tif").string();
  const Tensor stack = make({4, 3, 5}, DType::u8, [](int64_t i) { return double(i / 15 + 1); });  // page k holds k
  write_tiff(path, stack, {});  // every page has NewSubfileType 2 (a page of a multi-page file)
  const std::string written = read_bytes(path);
  std::string bytes = written;
  REQUIRE(patch_tag(bytes, 254, 2 | 1));  // page 1: reduced resolution
  const size_t mask = find_entry(bytes, 254, 2);
  REQUIRE(mask);
  put_le(bytes, mask + 8, 4, 4);  // page 3: a transparency mask
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  const TiffVolume v = read_tiff(path);
  CHECK(v.data.shape() == Shape{2, 3, 5, 1});
  std::vector<float> pages_2_and_4(15, 2.0f);
  pages_2_and_4.resize(30, 4.0f);
  CHECK(v.data.to_vector() == pages_2_and_4);
  // Page numbers in messages count every page: page 4 (the second image page) cut short is page 4.
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() - 30);
  CHECK(error_of([&] { read_tiff(path); }).find(path + ": page 4") == 0);
  // Only flagged pages: no volume.
  bytes = written;
  for (int page = 0; page < 4; ++page) put_le(bytes, find_entry(bytes, 254, page) + 8, 1, 4);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  CHECK(error_of([&] { read_tiff(path); }) ==
        path +
            ": has only reduced-resolution or mask pages (NewSubfileType bit 0 or 2); expected at least one image "
            "page");
  fs::remove_all(dir);
}

TEST_CASE("OME-TIFF: SizeC, SizeZ, SizeT and DimensionOrder are read; an OME output gets no OME description") {
  const fs::path dir = temp_dir();
  const std::string path = (dir / "ome.tif").string();
  const Tensor pages = make({6, 2, 3}, DType::u8, [](int64_t i) { return double(i / 6); });  // page k holds k
  const auto write = [&](const std::string& pixels, const std::string& more = "") {
    TiffWriteOptions o;
    o.tags.description =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><!-- by a test -->"
        "<OME xmlns=\"http://www.openmicroscopy.org/Schemas/OME/2016-06\"><Image ID=\"Image:0\">"
        "<Pixels ID=\"Pixels:0\" Type=\"uint8\" SizeX=\"3\" SizeY=\"2\" " +
        pixels + "><TiffData/></Pixels></Image>" + more + "</OME>";
    write_tiff(path, pages, o);
  };
  // The channel of page k: k % 2 (XYCZT, channel fastest) or k / 3 (XYZCT).
  for (const auto& [order, page_of] :
       {std::pair<std::string, int64_t (*)(int64_t, int64_t)>{"XYCZT", [](int64_t z, int64_t c) { return z * 2 + c; }},
        {"XYZCT", [](int64_t z, int64_t c) { return c * 3 + z; }}}) {
    CAPTURE(order);
    write("DimensionOrder=\"" + order + "\" SizeC=\"2\" SizeZ=\"3\" SizeT=\"1\"");
    const TiffVolume v = read_tiff(path);
    REQUIRE(v.data.shape() == Shape{3, 2, 3, 2});
    for (int64_t z = 0; z < 3; ++z)
      for (int64_t c = 0; c < 2; ++c) CHECK(v.data.data<float>()[(z * 6) * 2 + c] == float(page_of(z, c)));
    // The label map's description would claim 2 channels x 3 slices of another type.
    CHECK(tiff_options_like(v, Tensor::zeros({3, 2, 3}, DType::u8)).tags.description.empty());
  }
  write("DimensionOrder='XYZCT' SizeC='1' SizeZ='6' SizeT='1'");
  CHECK(read_tiff(path).data.shape() == Shape{6, 2, 3, 1});
  const auto error = [&](const std::string& pixels, const std::string& more = "") {
    write(pixels, more);
    return error_of([&] { read_tiff(path); });
  };
  CHECK(error("DimensionOrder=\"XYCZT\" SizeC=\"1\" SizeZ=\"3\" SizeT=\"2\"") ==
        path +
            ": OME-XML description has SizeT=2: a time series; expected one volume (save each time point as its "
            "own file)");
  CHECK(error("DimensionOrder=\"XYCZT\" SizeC=\"2\" SizeZ=\"2\" SizeT=\"1\"") ==
        path +
            ": OME-XML description has SizeC=2 and SizeZ=2 (4 pages) but the file has 6 pages; expected them to "
            "agree");
  CHECK(error("DimensionOrder=\"XYCZQ\" SizeC=\"2\" SizeZ=\"3\" SizeT=\"1\"") ==
        path +
            ": OME-XML description has DimensionOrder=\"XYCZQ\"; expected XY then C, Z and T in any order "
            "(XYCZT, XYZCT, ...)");
  CHECK(error("DimensionOrder=\"XYCZT\" SizeC=\"two\" SizeZ=\"3\" SizeT=\"1\"") ==
        path + ": OME-XML description has SizeC=\"two\"; expected an integer 1 to 64");
  CHECK(error("DimensionOrder=\"XYCZT\" SizeC=\"1\" SizeZ=\"6\" SizeT=\"1\"",
              "<Image ID=\"Image:1\"><Pixels DimensionOrder=\"XYCZT\" SizeC=\"1\" SizeZ=\"6\" SizeT=\"1\"/></Image>") ==
        path + ": OME-XML description has 2 Pixels elements (images); expected one (save each image as its own file)");
  CHECK(error("DimensionOrder=\"XYCZT\" SizeC=\"1\" SizeZ=\"6\" SizeT=\"1").find("not well-formed") !=
        std::string::npos);
  // An attribute given twice, an element left open, an end tag that ends another element: not well-formed either.
  CHECK(error("DimensionOrder=\"XYCZT\" SizeC=\"1\" SizeC=\"2\" SizeZ=\"6\" SizeT=\"1\"").find("not well-formed") !=
        std::string::npos);
  CHECK(error("DimensionOrder=\"XYCZT\" SizeC=\"1\" SizeZ=\"6\" SizeT=\"1\"", "<Extra>").find("not well-formed") !=
        std::string::npos);
  CHECK(error("DimensionOrder=\"XYCZT\" SizeC=\"1\" SizeZ=\"6\" SizeT=\"1\"", "</Pixels>").find("not well-formed") !=
        std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("OME-TIFF: PhysicalSizeX/Y/Z and their units give the spacing, and an output like it reads back the same") {
  const fs::path dir = temp_dir();
  const std::string path = (dir / "ome.tif").string(), out = (dir / "out.tif").string();
  const Tensor pages = make({6, 2, 3}, DType::u8, [](int64_t i) { return double(i % 7); });
  const auto write = [&](const std::string& sizes) {
    TiffWriteOptions o;
    o.tags.description =
        "<OME xmlns=\"http://www.openmicroscopy.org/Schemas/OME/2016-06\"><Image ID=\"Image:0\">"
        "<Pixels ID=\"Pixels:0\" Type=\"uint8\" SizeX=\"3\" SizeY=\"2\" DimensionOrder=\"XYZCT\" SizeC=\"1\" "
        "SizeZ=\"6\" SizeT=\"1\" " +
        sizes + "><TiffData/></Pixels></Image></OME>";
    o.tags.has_resolution = true;  // 72 dpi from an image editor: OME's sizes win
    o.tags.x_resolution = o.tags.y_resolution = 72;
    o.tags.resolution_unit = 3;
    write_tiff(path, pages, o);
    return read_tiff(path);
  };
  // Micrometres by default; each axis in its own unit; z isotropic with x when not given.
  TiffVolume v = write("PhysicalSizeX=\"0.25\" PhysicalSizeY=\"0.5\" PhysicalSizeZ=\"2\" PhysicalSizeZUnit=\"mm\"");
  CHECK(v.calibrated);
  CHECK(v.spacing[0] == doctest::Approx(2));
  CHECK(v.spacing[1] == doctest::Approx(0.5e-3));
  CHECK(v.spacing[2] == doctest::Approx(0.25e-3));
  v = write("PhysicalSizeX=\"3\" PhysicalSizeXUnit=\"nm\" PhysicalSizeY=\"3\" PhysicalSizeYUnit=\"nm\"");
  CHECK(v.spacing[0] == doctest::Approx(3e-6));
  CHECK(v.spacing[1] == doctest::Approx(3e-6));
  // The label map written like it carries the calibration (ImageJ's form), not OME's description of the input.
  v = write("PhysicalSizeX=\"0.25\" PhysicalSizeY=\"0.5\" PhysicalSizeZ=\"2\" PhysicalSizeZUnit=\"mm\"");
  const Tensor labels = Tensor::zeros({6, 2, 3}, DType::u8);
  write_tiff(out, labels, tiff_options_like(v, labels));
  const TiffVolume back = read_tiff(out);
  CHECK(back.calibrated);
  for (int a = 0; a < 3; ++a) CHECK(back.spacing[a] == doctest::Approx(v.spacing[a]).epsilon(1e-6));
  // Without sizes (or in pixels) the 72 dpi tags in centimetres calibrate as before.
  CHECK(write("PhysicalSizeX=\"1\" PhysicalSizeXUnit=\"pixel\" PhysicalSizeY=\"1\"").spacing[2] ==
        doctest::Approx(10.0 / 72));
  CHECK(error_of([&] { write("PhysicalSizeX=\"-1\" PhysicalSizeY=\"1\""); }) ==
        path + ": OME-XML description has PhysicalSizeX=\"-1\"; expected a finite voxel size > 0");
  CHECK(error_of([&] {
          write("PhysicalSizeX=\"1\" PhysicalSizeXUnit=\"s\" PhysicalSizeY=\"1\"");
        }).find("PhysicalSizeXUnit=\"s\"; expected a length") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("a label map of a NIfTI image written as TIFF carries the image's spacing (ImageJ's calibration)") {
  const fs::path dir = temp_dir();
  const std::string out = (dir / "from_nifti.tif").string();
  Image like;
  like.data = Tensor::zeros({4, 3, 5, 1});
  like.spacing = {5, 0.5, 0.25};  // mm, as a NIfTI header gives it
  const Tensor labels = make({4, 3, 5}, DType::u8, [](int64_t i) { return double(i % 3); });
  write_image_like(out, labels, like);
  const TiffVolume back = read_tiff(out);
  CHECK(back.calibrated);  // it was written without any: read back as 1 mm
  for (int a = 0; a < 3; ++a) CHECK(back.spacing[a] == doctest::Approx(like.spacing[a]).epsilon(1e-6));
  CHECK(back.data.to_vector() == labels.to_vector());
}
