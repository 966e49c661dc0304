#include "io/tiff.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <tiffio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <stdexcept>
#include <vector>

#include "io/atomic_file.h"

namespace unet::io {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// libtiff reports through handlers; ours keep the first error for the exception and drop warnings (unknown tags and
// the like say nothing the user can act on).
int keep_first_error(TIFF*, void* user, const char* module, const char* fmt, va_list ap) {
  auto* first = static_cast<std::string*>(user);
  if (first->empty()) {
    char buf[512];
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    *first = (module && *module ? std::string(module) + ": " : std::string()) + buf;
  }
  return 1;  // handled: libtiff prints nothing
}
int ignore_warning(TIFF*, void*, const char*, const char*, va_list) {
  return 1;
}

// An open TIFF* with its first error message; closed on destruction.
class TiffFile {
 public:
  // `failure`: what a failed open means ("" for the default: not TIFF, or the errno of a write); `name`: the file
  // messages name (a write opens a temporary file, named for the output it becomes).
  TiffFile(const std::string& path, const char* mode, const std::string& failure = "", const std::string& name = "")
      : path_(name.empty() ? path : name) {
    TIFFOpenOptions* o = TIFFOpenOptionsAlloc();
    TIFFOpenOptionsSetErrorHandlerExtR(o, keep_first_error, &error_);
    TIFFOpenOptionsSetWarningHandlerExtR(o, ignore_warning, nullptr);
    TIFFOpenOptionsSetMaxSingleMemAlloc(o, tmsize_t(1) << 32);  // no strip or tile buffer above 4 GiB
    errno = 0;
    tif_ = TIFFOpenExt(path.c_str(), mode, o);
    const int err = errno;
    TIFFOpenOptionsFree(o);
    if (!tif_)
      fail(path_, (!failure.empty() ? failure
                   : mode[0] == 'r' ? std::string("not a readable TIFF file")
                                    : "cannot create TIFF" + (err ? ": " + std::string(std::strerror(err)) : "")) +
                      because());
  }
  ~TiffFile() { close(); }
  TiffFile(const TiffFile&) = delete;
  TiffFile& operator=(const TiffFile&) = delete;
  TIFF* get() const { return tif_; }
  void check(bool ok, const std::string& what) const {
    if (!ok) fail(path_, what + because() + (errno == EFBIG || errno == ENOSPC ? ": " + write_failure_reason() : ""));
  }
  void close() {
    if (tif_) TIFFClose(tif_);
    tif_ = nullptr;
  }
  std::string because() const { return error_.empty() ? "" : " (libtiff: " + error_ + ")"; }

 private:
  std::string path_, error_;
  TIFF* tif_ = nullptr;
};

// What a page holds, from its tags.
struct Page {
  uint32_t width = 0, height = 0;
  uint16_t spp = 1, bits = 1, format = SAMPLEFORMAT_UINT, planar = PLANARCONFIG_CONTIG, compression = 1;
  bool tiled = false;
  uint32_t tile_w = 0, tile_h = 0, rows_per_strip = 0;
  int64_t directory = 0;  // its index in the file (page numbers in messages count every page)

  bool same_samples(const Page& o) const {
    return width == o.width && height == o.height && spp == o.spp && bits == o.bits && format == o.format;
  }
  int64_t bytes() const { return int64_t(width) * height * spp * (bits / 8); }
};

int64_t max_expansion(uint16_t compression);
constexpr int64_t kMaxTileBytes = int64_t(256) << 20;

std::string page_name(int64_t z) {
  return "page " + std::to_string(z + 1);
}

Page read_page_tags(const TiffFile& t, int64_t z, const std::string& path, int64_t file_size) {
  TIFF* tif = t.get();
  Page p;
  const std::string at = page_name(z);
  if (!TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &p.width) || !TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &p.height))
    fail(path, at + " has no ImageWidth or ImageLength");
  if (p.width < 1 || p.height < 1 || p.width > (1u << 20) || p.height > (1u << 20))
    fail(path, at + " is " + std::to_string(p.width) + " x " + std::to_string(p.height) +
                   " pixels; expected 1 to 2^20 in each direction");
  TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &p.spp);
  TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &p.bits);
  TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLEFORMAT, &p.format);
  TIFFGetFieldDefaulted(tif, TIFFTAG_PLANARCONFIG, &p.planar);
  TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &p.compression);
  if (p.spp < 1 || p.spp > 64)
    fail(path, at + " has " + std::to_string(p.spp) + " samples per pixel; expected 1 to 64 (the channels)");
  if (p.format == SAMPLEFORMAT_VOID) p.format = SAMPLEFORMAT_UINT;
  const bool integer_ok =
      (p.format == SAMPLEFORMAT_UINT || p.format == SAMPLEFORMAT_INT) && (p.bits == 8 || p.bits == 16 || p.bits == 32);
  const bool float_ok = p.format == SAMPLEFORMAT_IEEEFP && (p.bits == 32 || p.bits == 64);
  if (!integer_ok && !float_ok) {
    const char* kind = p.format == SAMPLEFORMAT_UINT     ? "unsigned integer"
                       : p.format == SAMPLEFORMAT_INT    ? "signed integer"
                       : p.format == SAMPLEFORMAT_IEEEFP ? "floating-point"
                                                         : "complex or unknown";
    fail(path, at + " has " + std::to_string(p.bits) + "-bit " + kind +
                   " samples; expected 8-, 16- or 32-bit integers or 32- or 64-bit floats");
  }
  uint16_t photometric = PHOTOMETRIC_MINISBLACK;
  if (TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photometric) && photometric != PHOTOMETRIC_MINISBLACK &&
      photometric != PHOTOMETRIC_MINISWHITE && photometric != PHOTOMETRIC_RGB && photometric != PHOTOMETRIC_SEPARATED)
    fail(path, at + " has photometric interpretation " + std::to_string(photometric) +
                   (photometric == PHOTOMETRIC_PALETTE ? " (a palette image)" : "") +
                   "; expected grey-level (0 or 1), RGB (2) or separated (5) samples");
  // Rows and columns are read in stored order: a page stored flipped or rotated (Orientation other than 1, top-left)
  // would pair with its label map, or be scored against its reference, pixel for pixel in the wrong place.
  uint16_t orientation = ORIENTATION_TOPLEFT;
  if (TIFFGetField(tif, TIFFTAG_ORIENTATION, &orientation) && orientation != ORIENTATION_TOPLEFT)
    fail(path, at + " has Orientation " + std::to_string(orientation) +
                   "; expected 1 (rows top to bottom, columns left to right: store the pixels in that order)");
  if (p.planar != PLANARCONFIG_CONTIG && p.planar != PLANARCONFIG_SEPARATE)
    fail(path, at + " has PlanarConfiguration " + std::to_string(p.planar) + "; expected 1 or 2");
  p.tiled = TIFFIsTiled(tif);
  if (p.tiled) {
    if (!TIFFGetField(tif, TIFFTAG_TILEWIDTH, &p.tile_w) || !TIFFGetField(tif, TIFFTAG_TILELENGTH, &p.tile_h))
      fail(path, at + " is tiled without TileWidth and TileLength");
    // One tile is decoded at a time into a buffer of its size: bounded before it is allocated, by the TIFF rule
    // (multiples of 16), a size, and what the file can decode to (each tile is stored whole).
    const std::string tiles =
        at + " has tiles of " + std::to_string(p.tile_w) + " x " + std::to_string(p.tile_h) + " pixels";
    if (p.tile_w < 16 || p.tile_h < 16 || p.tile_w % 16 != 0 || p.tile_h % 16 != 0 || p.tile_w > (1u << 16) ||
        p.tile_h > (1u << 16))
      fail(path, tiles + "; expected TileWidth and TileLength multiples of 16 from 16 to 65536");
    const int64_t tile_bytes =
        int64_t(p.tile_w) * p.tile_h * (p.planar == PLANARCONFIG_SEPARATE ? 1 : p.spp) * (p.bits / 8);
    if (tile_bytes > kMaxTileBytes || tile_bytes / max_expansion(p.compression) > file_size)
      fail(path, tiles + " (" + std::to_string(tile_bytes) + " bytes each); expected tiles of at most " +
                     std::to_string(kMaxTileBytes >> 20) + " MiB that the file's " + std::to_string(file_size) +
                     " bytes can hold");
  } else {
    TIFFGetFieldDefaulted(tif, TIFFTAG_ROWSPERSTRIP, &p.rows_per_strip);
    p.rows_per_strip = std::clamp<uint32_t>(p.rows_per_strip, 1, p.height);
  }
  return p;
}

// The current directory as the file stores it, read here because libtiff hides what this reader must check: where it
// ends (its entry count, entries and next-directory offset; classic TIFF: 2 + 12 n + 4 bytes, BigTIFF: 8 + 20 n + 8;
// INT64_MAX when its entry count cannot be read), and how many values its offsets and byte counts entries hold.
// libtiff sizes those arrays to the page's strip or tile count whatever the entry says, zero-filling what is missing
// (all of it for an entry of count 0), and TIFFGetField gives the array without the entry's count: an offset of 0
// then decodes the file's header and first directory as pixels. The file has already been read this far by libtiff,
// so the entries are there; one pread of them is the simplest reliable count.
struct RawDirectory {
  int64_t end = std::numeric_limits<int64_t>::max();
  uint64_t offsets = 0, byte_counts = 0;  // values of Strip/TileOffsets and Strip/TileByteCounts (0: no entry)
};

RawDirectory raw_directory(const TiffFile& t, bool tiled) {
  TIFF* tif = t.get();
  RawDirectory d;
  const bool big = TIFFIsBigTIFF(tif), swap = TIFFIsByteSwapped(tif);
  const int fd = TIFFFileno(tif);
  const auto at = static_cast<off_t>(TIFFCurrentDirOffset(tif));
  const size_t count_bytes = big ? 8 : 2, entry_bytes = big ? 20 : 12;
  uint64_t n = 0;
  if (big) {
    if (::pread(fd, &n, 8, at) != 8) return d;
    if (swap) n = __builtin_bswap64(n);
  } else {
    uint16_t n16 = 0;
    if (::pread(fd, &n16, 2, at) != 2) return d;
    n = swap ? __builtin_bswap16(n16) : n16;
  }
  if (n > (1u << 16)) return d;
  d.end = static_cast<int64_t>(at) + static_cast<int64_t>(count_bytes + entry_bytes * n + (big ? 8 : 4));
  std::vector<uint8_t> entries(entry_bytes * n);
  if (::pread(fd, entries.data(), entries.size(), at + static_cast<off_t>(count_bytes)) !=
      static_cast<ssize_t>(entries.size()))
    return d;
  const uint16_t offsets_tag = tiled ? TIFFTAG_TILEOFFSETS : TIFFTAG_STRIPOFFSETS;
  const uint16_t byte_counts_tag = tiled ? TIFFTAG_TILEBYTECOUNTS : TIFFTAG_STRIPBYTECOUNTS;
  for (size_t k = 0; k < n; ++k) {
    const uint8_t* e = entries.data() + k * entry_bytes;
    uint16_t tag = 0;
    std::memcpy(&tag, e, 2);
    uint64_t count = 0;
    if (big) {
      std::memcpy(&count, e + 4, 8);
      if (swap) count = __builtin_bswap64(count);
    } else {
      uint32_t c32 = 0;
      std::memcpy(&c32, e + 4, 4);
      count = swap ? __builtin_bswap32(c32) : c32;
    }
    if (swap) tag = __builtin_bswap16(tag);
    if (tag == offsets_tag) d.offsets = count;
    if (tag == byte_counts_tag) d.byte_counts = count;
  }
  return d;
}

// Every strip or tile of the current page has its own offset and byte count, past the file's header: see
// raw_directory for what libtiff does otherwise. (Data past the end of the file fails when it is decoded.)
void check_striles(const TiffFile& t, const Page& p, const std::string& path, const std::string& at) {
  TIFF* tif = t.get();
  const uint32_t n = p.tiled ? TIFFNumberOfTiles(tif) : TIFFNumberOfStrips(tif);
  const std::string kind = p.tiled ? "tile" : "strip", tag = p.tiled ? "Tile" : "Strip";  // TileOffsets...
  const RawDirectory d = raw_directory(t, p.tiled);
  for (const auto& [name, count] : {std::pair{"Offsets", d.offsets}, {"ByteCounts", d.byte_counts}})
    if (count != n)
      fail(path, at + ": " + tag + name + " has " + std::to_string(count) + " value(s) for the page's " +
                     std::to_string(n) + " " + kind + "s; expected one per " + kind);
  const uint64_t header = TIFFIsBigTIFF(tif) ? 16 : 8;
  for (uint32_t i = 0; i < n; ++i)
    if (const uint64_t offset = TIFFGetStrileOffset(tif, i); offset < header)
      fail(path, at + ": " + kind + " " + std::to_string(i + 1) + " of " + std::to_string(n) + " is at byte " +
                     std::to_string(offset) + ", inside the file's " + std::to_string(header) +
                     "-byte header; expected an offset past the header");
}

// How many bytes each stored byte can become at most, by codec: what a file of a given size can hold, so that a
// header cannot make the reader allocate more than the file could ever decode to. (LZW: strings of at most 4096 bytes
// per 9-bit code; Deflate: 1032:1; PackBits: 128 bytes per 2.)
int64_t max_expansion(uint16_t compression) {
  switch (compression) {
    case COMPRESSION_NONE:
      return 1;
    case COMPRESSION_PACKBITS:
      return 64;
    case COMPRESSION_ADOBE_DEFLATE:
    case COMPRESSION_DEFLATE:
      return 1032;
    case COMPRESSION_LZW:
      return 4096;
    default:
      return 16384;  // other codecs: a generous bound
  }
}

template <class T>
void put_samples(const uint8_t* src, int64_t pixels, int src_samples, float* dst, int dst_samples) {
  for (int64_t i = 0; i < pixels; ++i)
    for (int c = 0; c < src_samples; ++c) {
      T v;
      std::memcpy(&v, src + (i * src_samples + c) * int64_t(sizeof(T)), sizeof(T));
      dst[i * dst_samples + c] = static_cast<float>(v);
    }
}

// Converts `pixels` pixels of `src_samples` samples each (the page's sample type, native byte order) to f32, written
// every dst_samples floats from dst.
void put_row(const Page& p, const uint8_t* src, int64_t pixels, int src_samples, float* dst) {
  const int n = p.spp;
  if (p.format == SAMPLEFORMAT_IEEEFP) {
    if (p.bits == 32) return put_samples<float>(src, pixels, src_samples, dst, n);
    return put_samples<double>(src, pixels, src_samples, dst, n);
  }
  const bool s = p.format == SAMPLEFORMAT_INT;
  switch (p.bits) {
    case 8:
      return s ? put_samples<int8_t>(src, pixels, src_samples, dst, n)
               : put_samples<uint8_t>(src, pixels, src_samples, dst, n);
    case 16:
      return s ? put_samples<int16_t>(src, pixels, src_samples, dst, n)
               : put_samples<uint16_t>(src, pixels, src_samples, dst, n);
    default:
      return s ? put_samples<int32_t>(src, pixels, src_samples, dst, n)
               : put_samples<uint32_t>(src, pixels, src_samples, dst, n);
  }
}

// Decodes the current page into out ([Y, X, spp] f32): strips or tiles, contiguous or planar.
void read_page(const TiffFile& t, const Page& p, int64_t z, float* out) {
  TIFF* tif = t.get();
  const int64_t bps = p.bits / 8;
  const int planes = p.planar == PLANARCONFIG_SEPARATE ? p.spp : 1;
  const int samples = p.planar == PLANARCONFIG_SEPARATE ? 1 : p.spp;  // per pixel in one block
  const int64_t block_w = p.tiled ? p.tile_w : p.width, block_h = p.tiled ? p.tile_h : p.rows_per_strip;
  std::vector<uint8_t> buf(static_cast<size_t>(block_w * block_h * samples * bps));
  for (int plane = 0; plane < planes; ++plane)
    for (int64_t y0 = 0; y0 < p.height; y0 += block_h)
      for (int64_t x0 = 0; x0 < p.width; x0 += block_w) {
        const int64_t rows = std::min<int64_t>(block_h, p.height - y0), cols = std::min<int64_t>(block_w, p.width - x0);
        tmsize_t got;
        int64_t need;  // bytes the block must hold for the pixels inside the image
        if (p.tiled) {
          const uint32_t tile = TIFFComputeTile(tif, uint32_t(x0), uint32_t(y0), 0, uint16_t(plane));
          got = TIFFReadEncodedTile(tif, tile, buf.data(), tmsize_t(buf.size()));
          need = int64_t(buf.size());
        } else {
          const uint32_t strip = TIFFComputeStrip(tif, uint32_t(y0), uint16_t(plane));
          got = TIFFReadEncodedStrip(tif, strip, buf.data(), tmsize_t(buf.size()));
          need = rows * block_w * samples * bps;
        }
        t.check(got >= 0 && got >= need, page_name(z) + ": cannot decode the " + (p.tiled ? "tile" : "strip") +
                                             " at row " + std::to_string(y0) + ", column " + std::to_string(x0));
        for (int64_t r = 0; r < rows; ++r)
          put_row(p, buf.data() + r * block_w * samples * bps, cols, samples,
                  out + ((y0 + r) * p.width + x0) * p.spp + plane);
      }
}

// ImageJ's unit names (ImageJ writes "micron"; tifffile and others "um" or "\u00B5m") in millimetres; 0 = unknown.
double unit_in_mm(std::string unit) {
  unit = lower(unit);
  // The micro sign (U+00B5) and the Greek mu (U+03BC), raw or as tifffile's escape.
  if (unit == "micron" || unit == "microns" || unit == "um" || unit == "micrometer" || unit == "micrometre" ||
      unit == "\\u00b5m" || unit == "\xc2\xb5m" || unit == "\\u03bcm" || unit == "\xce\xbcm")
    return 1e-3;
  if (unit == "nm" || unit == "nanometer" || unit == "nanometre") return 1e-6;
  if (unit == "mm" || unit == "millimeter" || unit == "millimetre") return 1;
  if (unit == "cm" || unit == "centimeter" || unit == "centimetre") return 10;
  if (unit == "m" || unit == "meter" || unit == "metre") return 1000;
  if (unit == "inch" || unit == "in") return 25.4;
  return 0;
}

// The value of "key=" on its own line of an ImageJ description, or "".
std::string imagej_value(const std::string& desc, const std::string& key) {
  size_t at = 0;
  while (at < desc.size()) {
    size_t end = desc.find('\n', at);
    if (end == std::string::npos) end = desc.size();
    if (desc.compare(at, key.size() + 1, key + "=") == 0)
      return desc.substr(at + key.size() + 1, end - at - key.size() - 1);
    at = end + 1;
  }
  return "";
}

// An ImageJ description's value as it appears, shortened for a message.
std::string shown(const std::string& value) {
  return "\"" + (value.size() > 40 ? value.substr(0, 40) + "..." : value) + "\"";
}

// The description and resolution tags of the current page.
TiffTags read_calibration_tags(TIFF* tif) {
  TiffTags tags;
  char* desc = nullptr;
  if (TIFFGetField(tif, TIFFTAG_IMAGEDESCRIPTION, &desc) && desc) tags.description = desc;
  float xr = 0, yr = 0;
  uint16_t unit = RESUNIT_INCH;
  if (TIFFGetField(tif, TIFFTAG_XRESOLUTION, &xr) && TIFFGetField(tif, TIFFTAG_YRESOLUTION, &yr)) {
    TIFFGetFieldDefaulted(tif, TIFFTAG_RESOLUTIONUNIT, &unit);
    tags = {true, xr, yr, unit, tags.description};
  }
  return tags;
}

// The spacing the tags calibrate (see io/tiff.h), or 1 mm. A calibration that is there but unusable (an ImageJ
// "spacing=" that is not a finite number > 0, a resolution of zero, NaN or infinity in a calibrated unit) is an error
// naming it: a silent 1 mm would resample the volume wrongly.
std::array<double, 3> spacing_from_tags(const std::string& path, const TiffTags& tags, bool* calibrated) {
  std::array<double, 3> s{1, 1, 1};
  double unit = 0;  // millimetres per resolution unit
  double z_units = 0;
  if (tags.description.starts_with("ImageJ=")) {
    const std::string name = imagej_value(tags.description, "unit");
    unit = unit_in_mm(name);
    // ImageJ writes "pixel" (or nothing) for an uncalibrated image; any other unit we do not know would silently
    // become 1 mm and resample the volume wrongly.
    if (unit == 0 && tags.has_resolution && !name.empty() && lower(name) != "pixel" && lower(name) != "pixels")
      fail(path, "ImageJ description has unit=" + shown(name) +
                     "; expected nm, um (micron, \xc2\xb5m), mm, cm, m, inch or pixel");
    const std::string z = imagej_value(tags.description, "spacing");
    if (!z.empty()) {
      char* end = nullptr;
      z_units = std::strtod(z.c_str(), &end);
      while (end && (*end == ' ' || *end == '\r' || *end == '\t')) ++end;
      if (end == z.c_str() || *end != '\0' || !(std::isfinite(z_units) && z_units > 0))
        fail(path, "ImageJ description has spacing=" + shown(z) + "; expected a finite z voxel size > 0");
    }
  } else if (tags.resolution_unit == RESUNIT_CENTIMETER) {
    unit = 10;
  }
  if (unit <= 0 || !tags.has_resolution) return s;
  for (const auto& [name, r] : {std::pair{"XResolution", tags.x_resolution}, {"YResolution", tags.y_resolution}})
    if (!(std::isfinite(r) && r > 0)) {
      char b[32];
      std::snprintf(b, sizeof b, "%g", static_cast<double>(r));
      fail(path, std::string(name) + " is " + b + " in a calibrated unit; expected a finite number of pixels per " +
                     "unit > 0");
    }
  s[2] = unit / tags.x_resolution;
  s[1] = unit / tags.y_resolution;
  s[0] = z_units > 0 ? unit * z_units : s[2];  // no z spacing given: isotropic
  for (double v : s)
    if (!(std::isfinite(v) && v > 0)) {
      char b[200];
      std::snprintf(b, sizeof b, "%g, %g, %g", s[0], s[1], s[2]);
      fail(path, std::string("calibrated voxel spacing ") + b + " mm (z, y, x); expected finite sizes > 0");
    }
  if (calibrated) *calibrated = true;
  return s;
}

// The channel count of an ImageJ hyperstack ("channels=" in its description; 1 without it): an integer 1 to 64 that
// divides the page count when the pages are single-sample, since the pages then become its channels.
int64_t imagej_channels(const std::string& path, const TiffTags& tags, int64_t pages, int64_t samples) {
  if (!tags.description.starts_with("ImageJ=")) return 1;
  const std::string v = imagej_value(tags.description, "channels");
  long long c = 1;
  if (!v.empty()) {
    char* end = nullptr;
    errno = 0;
    c = std::strtoll(v.c_str(), &end, 10);
    if (end == v.c_str() || *end != '\0' || errno == ERANGE || c < 1 || c > 64)
      fail(path, "ImageJ description has channels=" + shown(v) + "; expected an integer 1 to 64");
  }
  if (samples == 1 && pages % c != 0)
    fail(path, "ImageJ description has channels=" + v + " but the file has " + std::to_string(pages) +
                   " pages; expected a channel count that divides the page count");
  // A hyperstack's pages are channels x slices x frames: a time series is not one volume, and a slices= that does not
  // fit the pages means they are not what we would read them as.
  const auto count = [&](const char* key) -> long long {
    const std::string s = imagej_value(tags.description, key);
    if (s.empty()) return 0;
    char* e = nullptr;
    errno = 0;
    const long long n = std::strtoll(s.c_str(), &e, 10);
    if (e == s.c_str() || *e != '\0' || errno == ERANGE || n < 1 || n > (1ll << 31))
      fail(path, std::string("ImageJ description has ") + key + "=" + shown(s) + "; expected an integer >= 1");
    return n;
  };
  if (const long long frames = count("frames"); frames > 1)
    fail(path, "ImageJ description has frames=" + std::to_string(frames) +
                   ": a time series; expected one volume (save each frame as its own file)");
  const long long slices = count("slices"), per_slice = samples > 1 ? 1 : c;
  if (slices > 0 && slices * per_slice != pages)
    fail(path, "ImageJ description has slices=" + std::to_string(slices) +
                   (per_slice > 1 ? " and channels=" + v : std::string()) + " (" + std::to_string(slices * per_slice) +
                   " pages) but the file has " + std::to_string(pages) + " pages; expected them to agree");
  return samples > 1 ? 1 : c;  // samples per pixel are the channels; the description counts them (ImageJ's RGB)
}

// An XML start tag: its name without a namespace prefix, and its attributes.
struct XmlTag {
  std::string name;
  std::vector<std::pair<std::string, std::string>> attributes;
  std::string operator[](const std::string& key) const {
    for (const auto& [k, v] : attributes)
      if (k == key) return v;
    return "";
  }
};

// The start tags of an XML text, in order; comments, processing instructions, declarations and CDATA are skipped and
// entities are not decoded (what is read from OME-XML here is names and integers). *complete is true when the text is
// well-formed as far as this reads it: it stops with *complete false at the first malformed tag, an attribute given
// twice or an end tag that does not end the innermost open element, and *complete is false when an element is left
// open.
std::vector<XmlTag> xml_start_tags(const std::string& xml, bool* complete) {
  std::vector<XmlTag> tags;
  std::vector<std::string> open;  // the elements started and not yet ended, innermost last
  *complete = false;
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  size_t i = 0;
  while ((i = xml.find('<', i)) != std::string::npos) {
    const auto skip_to = [&](const char* end) {
      const size_t e = xml.find(end, i);
      i = e == std::string::npos ? xml.size() : e + std::strlen(end);
      return e != std::string::npos;
    };
    if (xml.compare(i, 4, "<!--") == 0) {
      if (!skip_to("-->")) return tags;
    } else if (xml.compare(i, 9, "<![CDATA[") == 0) {
      if (!skip_to("]]>")) return tags;
    } else if (xml.compare(i, 2, "<?") == 0) {
      if (!skip_to("?>")) return tags;
    } else if (xml.compare(i, 2, "</") == 0) {  // an end tag: it must end the innermost open element
      const size_t start = i + 2;
      if (!skip_to(">")) return tags;
      std::string name = xml.substr(start, i - 1 - start);
      while (!name.empty() && space(name.back())) name.pop_back();
      if (open.empty() || open.back() != name) return tags;
      open.pop_back();
    } else if (xml.compare(i, 2, "<!") == 0) {
      if (!skip_to(">")) return tags;
    } else {
      XmlTag tag;
      size_t j = i + 1;
      while (j < xml.size() && !space(xml[j]) && xml[j] != '/' && xml[j] != '>') ++j;
      tag.name = xml.substr(i + 1, j - i - 1);
      const std::string qualified = tag.name;
      if (const size_t colon = tag.name.rfind(':'); colon != std::string::npos) tag.name.erase(0, colon + 1);
      if (tag.name.empty()) return tags;
      for (;;) {
        while (j < xml.size() && space(xml[j])) ++j;
        if (j >= xml.size()) return tags;
        if (xml[j] == '>') {
          open.push_back(qualified);
          break;
        }
        if (xml.compare(j, 2, "/>") == 0) break;
        const size_t key = j;
        while (j < xml.size() && !space(xml[j]) && xml[j] != '=' && xml[j] != '>') ++j;
        std::string name = xml.substr(key, j - key);
        while (j < xml.size() && space(xml[j])) ++j;
        if (j >= xml.size() || xml[j] != '=') return tags;
        ++j;
        while (j < xml.size() && space(xml[j])) ++j;
        if (j >= xml.size() || (xml[j] != '"' && xml[j] != '\'')) return tags;
        const size_t end = xml.find(xml[j], j + 1);
        if (end == std::string::npos) return tags;
        for (const auto& [k, v] : tag.attributes)
          if (k == name) return tags;  // an attribute given twice
        tag.attributes.emplace_back(std::move(name), xml.substr(j + 1, end - j - 1));
        j = end + 1;
      }
      tags.push_back(std::move(tag));
      i = j;
    }
  }
  *complete = open.empty();
  return tags;
}

// Whether a description is OME-XML: its first element is OME (any namespace prefix).
bool is_ome(const std::string& description) {
  const size_t first = description.find_first_not_of(" \t\r\n");
  if (first == std::string::npos || description[first] != '<') return false;
  bool complete = false;
  const std::vector<XmlTag> tags = xml_start_tags(description, &complete);
  return !tags.empty() && tags[0].name == "OME";
}

// How a stack's pages are its channels and slices: `channels` pages per slice (1: the pages are the slices), the
// channel varying fastest (ImageJ's hyperstacks, OME's XYCZT) or the slice fastest (OME's XYZCT).
struct PageLayout {
  int64_t channels = 1;
  bool channel_fastest = true;
};

// The layout an OME-XML description gives (Bio-Formats, tifffile, Fiji's OME export): its one Pixels element's SizeC,
// SizeZ and SizeT, whose product must be the page count (SizeC the samples per pixel instead, for RGB pages), and its
// DimensionOrder. A time series (SizeT > 1) and several images in one file are refused; TiffData's mapping of pages
// to planes is not read, the pages being taken in DimensionOrder as its default says.
PageLayout ome_layout(const std::string& path, const std::string& description, int64_t pages, int64_t samples) {
  bool complete = false;
  const std::vector<XmlTag> tags = xml_start_tags(description, &complete);
  if (!complete) fail(path, "OME-XML description is not well-formed XML; expected OME-XML or no description");
  std::vector<const XmlTag*> pixels;
  for (const XmlTag& tag : tags)
    if (tag.name == "Pixels") pixels.push_back(&tag);
  if (pixels.size() != 1)
    fail(path, "OME-XML description has " + std::to_string(pixels.size()) +
                   " Pixels elements (images); expected one (save each image as its own file)");
  const XmlTag& p = *pixels[0];
  const auto size = [&](const char* key, long long max) {
    const std::string v = p[key];
    char* end = nullptr;
    errno = 0;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || end == v.c_str() || *end != '\0' || errno == ERANGE || n < 1 || n > max)
      fail(path, std::string("OME-XML description has ") + key + "=" + shown(v) + "; expected an integer 1 to " +
                     std::to_string(max));
    return n;
  };
  const long long c = size("SizeC", 64), z = size("SizeZ", 1ll << 31), frames = size("SizeT", 1ll << 31);
  if (frames > 1)
    fail(path, "OME-XML description has SizeT=" + std::to_string(frames) +
                   ": a time series; expected one volume (save each time point as its own file)");
  const std::string order = p["DimensionOrder"];
  if (order.size() != 5 || !order.starts_with("XY") || !std::is_permutation(order.begin() + 2, order.end(), "CZT"))
    fail(path, "OME-XML description has DimensionOrder=" + shown(order) +
                   "; expected XY then C, Z and T in any order (XYCZT, XYZCT, ...)");
  if (samples > 1 && c != samples)
    fail(path, "OME-XML description has SizeC=" + std::to_string(c) + " but the pages have " + std::to_string(samples) +
                   " samples per pixel; expected them to agree");
  const long long per_slice = samples > 1 ? 1 : c;  // samples per pixel are the channels (RGB)
  if (per_slice * z != pages)
    fail(path, "OME-XML description has SizeC=" + std::to_string(c) + " and SizeZ=" + std::to_string(z) + " (" +
                   std::to_string(per_slice * z) + " pages) but the file has " + std::to_string(pages) +
                   " pages; expected them to agree");
  return {per_slice, order.find('C') < order.find('Z')};
}

// The voxel spacing of an OME-XML description: its Pixels element's PhysicalSizeX, Y and Z, each in its own unit
// (PhysicalSizeXUnit, ...; micrometres when not given, as the OME schema says), z isotropic with x when only X and Y
// are given. Nothing when the description gives no X or Y size, or gives them in pixels (uncalibrated). A size that is
// not a finite number > 0, or a unit that is not a length, is an error naming the attribute.
std::optional<std::array<double, 3>> ome_spacing(const std::string& path, const std::string& description) {
  bool complete = false;
  const std::vector<XmlTag> tags = xml_start_tags(description, &complete);
  const auto pixels = std::find_if(tags.begin(), tags.end(), [](const XmlTag& t) { return t.name == "Pixels"; });
  if (pixels == tags.end()) return std::nullopt;
  // Millimetres for one axis's size, 0 when not given, -1 when given in pixels.
  const auto size_mm = [&](const std::string& axis) {
    const std::string key = "PhysicalSize" + axis, v = (*pixels)[key];
    if (v.empty()) return 0.0;
    std::string unit = (*pixels)[key + "Unit"];
    if (unit == "pixel") return -1.0;
    for (const char* micro : {"&#181;m", "&#xB5;m", "&#xb5;m"})  // entities are not decoded by xml_start_tags
      if (unit == micro) unit = "\xc2\xb5m";
    const double unit_mm = unit.empty() ? 1e-3 : unit == "\xc3\x85" ? 1e-7 : unit == "pm" ? 1e-9 : unit_in_mm(unit);
    if (unit_mm <= 0)
      fail(path, "OME-XML description has " + key + "Unit=" + shown(unit) +
                     "; expected a length (nm, \xc2\xb5m, mm, cm, m, ...) or pixel");
    char* end = nullptr;
    const double n = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || *end != '\0' || !(std::isfinite(n) && n > 0) || !std::isfinite(n * unit_mm) ||
        n * unit_mm <= 0)
      fail(path, "OME-XML description has " + key + "=" + shown(v) + "; expected a finite voxel size > 0");
    return n * unit_mm;
  };
  const double x = size_mm("X"), y = size_mm("Y"), z = size_mm("Z");
  if (x <= 0 || y <= 0) return std::nullopt;
  return std::array<double, 3>{z > 0 ? z : x, y, x};
}

// The spacing of a volume: OME-XML's physical sizes where the description gives them, otherwise the ImageJ or
// resolution tags' (spacing_from_tags).
std::array<double, 3> volume_spacing(const std::string& path, const TiffTags& tags, bool* calibrated) {
  if (is_ome(tags.description))
    if (const auto s = ome_spacing(path, tags.description)) {
      *calibrated = true;
      return *s;
    }
  return spacing_from_tags(path, tags, calibrated);
}

// The page layout the description gives: ImageJ's channels= (channel fastest), OME-XML's sizes and order, or none.
PageLayout page_layout(const std::string& path, const TiffTags& tags, int64_t pages, int64_t samples) {
  if (is_ome(tags.description)) return ome_layout(path, tags.description, pages, samples);
  return {imagej_channels(path, tags, pages, samples), true};
}

TiffCompression compression_of(uint16_t c) {
  if (c == COMPRESSION_NONE) return TiffCompression::none;
  if (c == COMPRESSION_LZW) return TiffCompression::lzw;
  return TiffCompression::deflate;
}

uint16_t codec_of(TiffCompression c) {
  switch (c) {
    case TiffCompression::none:
      return COMPRESSION_NONE;
    case TiffCompression::lzw:
      return COMPRESSION_LZW;
    case TiffCompression::deflate:
      return COMPRESSION_ADOBE_DEFLATE;
  }
  return COMPRESSION_NONE;
}

// The value at flat index i of a u8, i32 or f32 tensor, as a double.
double value_at(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::u8:
      return t.data<uint8_t>()[i];
    case DType::i32:
      return t.data<int32_t>()[i];
    default:
      return t.data<float>()[i];
  }
}

}  // namespace

bool is_tiff_name(const std::string& path) {
  const std::string s = lower(std::filesystem::path(path).filename().string());
  return (s.size() > 4 && s.ends_with(".tif")) || (s.size() > 5 && s.ends_with(".tiff"));
}

TiffVolume read_tiff(const std::string& path) {
  // Opened here first for the reason it cannot be (libtiff says only "Cannot open"); O_NONBLOCK: a FIFO must not
  // block the open, it is refused below.
  unsigned char magic[4] = {};
  int64_t file_size = 0;
  {
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) fail(path, std::string("cannot open TIFF: ") + std::strerror(errno));
    struct stat st {};
    const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    const bool has_header = regular && ::pread(fd, magic, 4, 0) == 4;
    ::close(fd);
    if (!regular) fail(path, "not a regular file (expected a .tif or .tiff file)");
    file_size = static_cast<int64_t>(st.st_size);
    if (!is_tiff_name(path)) fail(path, "not a TIFF file name (expected .tif or .tiff)");
    const bool tiff_header = has_header && (std::memcmp(magic, "II", 2) == 0 || std::memcmp(magic, "MM", 2) == 0);
    if (!tiff_header) fail(path, "not a readable TIFF file (no TIFF header: expected \"II\" or \"MM\")");
  }
  // "m": read through the file, not a memory map (a file truncated later cannot fault); "c": no strip chopping (libtiff
  // would split a single uncompressed strip into strips the file does not list, see check_striles). The header is
  // TIFF, so a failure here is the first directory (page 1) that cannot be read.
  TiffFile t(path, "rmc", page_name(0) + ": cannot read its directory (truncated or corrupt file?)");
  TIFF* tif = t.get();

  // First pass over the pages: each like the first, and no more voxels than the file can decode to. The directories
  // are a chain: one that cannot be read (cut off by a truncation, say) is an error, never the end of the stack. A page
  // whose NewSubfileType marks it as a reduced-resolution copy (bit 0: a thumbnail, a pyramid level) or a transparency
  // mask (bit 2) is not a slice of the volume: skipped, unread. Messages count every page of the file.
  std::vector<Page> pages;          // the image pages
  TiffTags first_tags;              // the first image page's resolution and description
  int64_t compressed_at_least = 0;  // bytes the file must hold for the pages' decoded size
  int64_t directories = 0;
  for (bool more = true; more; ++directories) {
    const std::string at = page_name(directories);
    if (directories > 0)
      t.check(TIFFReadDirectory(tif), at + ": cannot read its directory (truncated or corrupt file?)");
    if (directories >= (1u << 20)) fail(path, "has more than 2^20 pages");
    uint32_t subfile = 0;
    if (!(TIFFGetField(tif, TIFFTAG_SUBFILETYPE, &subfile) && (subfile & (FILETYPE_REDUCEDIMAGE | FILETYPE_MASK)))) {
      Page p = read_page_tags(t, directories, path, file_size);
      p.directory = directories;
      check_striles(t, p, path, at);
      if (pages.empty()) first_tags = read_calibration_tags(tif);
      if (!pages.empty() && !p.same_samples(pages[0]))
        fail(path, at + " is " + std::to_string(p.width) + " x " + std::to_string(p.height) + " x " +
                       std::to_string(p.spp) + " samples of " + std::to_string(p.bits) + " bits, " +
                       page_name(pages[0].directory) + " " + std::to_string(pages[0].width) + " x " +
                       std::to_string(pages[0].height) + " x " + std::to_string(pages[0].spp) + " of " +
                       std::to_string(pages[0].bits) + "; a stack needs pages of one size and sample type");
      compressed_at_least += p.bytes() / max_expansion(p.compression);
      if (compressed_at_least > file_size)
        fail(path, "declares " + std::to_string(pages.size() + 1) + " page(s) of " + std::to_string(p.width) + " x " +
                       std::to_string(p.height) + " pixels, more than its " + std::to_string(file_size) +
                       " bytes can hold");
      pages.push_back(p);
    }
    more = !TIFFLastDirectory(tif);
    // libtiff takes a next-directory offset it cannot read for 0, the end of the chain: a file cut inside the last
    // directory it read would silently lose the pages after it.
    if (!more && raw_directory(t, TIFFIsTiled(tif)).end > file_size)
      fail(path, at + ": its directory runs past the end of the file (truncated file?)");
  }
  if (pages.empty())
    fail(path,
         "has only reduced-resolution or mask pages (NewSubfileType bit 0 or 2); expected at least one image page");
  const Page& first = pages[0];
  const int64_t nz = static_cast<int64_t>(pages.size()), ny = first.height, nx = first.width, nc = first.spp;
  if (nz * ny * nx * nc > (int64_t(1) << 32)) fail(path, "is too large (more than 2^32 samples)");

  TiffVolume vol;
  vol.path = path;
  vol.bits = first.bits;
  vol.is_float = first.format == SAMPLEFORMAT_IEEEFP;
  vol.is_signed = first.format == SAMPLEFORMAT_INT;
  vol.compression = compression_of(first.compression);
  vol.tags = first_tags;
  // The calibration and the channels stored as pages (ImageJ, OME), checked before anything is allocated.
  vol.spacing = volume_spacing(path, vol.tags, &vol.calibrated);
  const PageLayout layout = page_layout(path, vol.tags, nz, nc);
  vol.data = Tensor::empty({nz, ny, nx, nc});
  float* d = vol.data.data<float>();
  t.check(TIFFSetDirectory(tif, 0), page_name(0) + ": cannot be read");
  for (int64_t z = 0, dir = 0; z < nz; ++dir) {
    if (dir > 0) t.check(TIFFReadDirectory(tif), page_name(dir) + ": cannot be read");
    if (pages[static_cast<size_t>(z)].directory != dir) continue;  // skipped in the first pass
    float* page = d + z * ny * nx * nc;
    read_page(t, pages[static_cast<size_t>(z++)], dir, page);
    for (int64_t i = 0; i < ny * nx * nc; ++i)
      if (!std::isfinite(page[i]))
        fail(path, page_name(dir) + ", row " + std::to_string(i / nc / nx) + ", column " + std::to_string(i / nc % nx) +
                       (nc > 1 ? ", sample " + std::to_string(i % nc) : "") +
                       ": NaN, infinite or beyond the f32 range; expected finite values");
  }
  // Channels stored as pages (an ImageJ hyperstack, an OME-TIFF) become channels.
  if (const int64_t channels = layout.channels; channels > 1) {
    Tensor interleaved = vol.data;
    const int64_t slices = nz / channels;
    vol.data = Tensor::empty({slices, ny, nx, channels});
    const float* src = interleaved.data<float>();
    float* dst = vol.data.data<float>();
    for (int64_t k = 0; k < nz; ++k) {
      const int64_t z = layout.channel_fastest ? k / channels : k % slices;
      const int64_t c = layout.channel_fastest ? k % channels : k / slices;
      for (int64_t i = 0; i < ny * nx; ++i) dst[(z * ny * nx + i) * channels + c] = src[k * ny * nx + i];
    }
  }
  return vol;
}

void write_tiff(const std::string& path, const Tensor& data, const TiffWriteOptions& o) {
  if (!is_tiff_name(path)) fail(path, "output name must end in .tif or .tiff");
  check_arg(data.rank() == 3 || data.rank() == 4,
            path + ": expected [Z, Y, X] or [Z, Y, X, C] data, got " + data.describe());
  check_arg(data.dtype() == DType::u8 || data.dtype() == DType::i32 || data.dtype() == DType::f32,
            path + ": expected u8, i32 or f32 data, got " + data.describe());
  check_arg((!o.is_float && (o.bits == 8 || o.bits == 16)) || (o.is_float && o.bits == 32),
            path + ": expected 8- or 16-bit unsigned or 32-bit float samples, got " + std::to_string(o.bits) + " bits" +
                (o.is_float ? " float" : ""));
  const Tensor c = data.to(Device::cpu);
  const int64_t nz = c.dim(0), ny = c.dim(1), nx = c.dim(2), nc = c.rank() == 4 ? c.dim(3) : 1;
  check_arg(nz >= 1 && ny >= 1 && nx >= 1 && nc >= 1 && nc <= 64 && ny <= (1 << 20) && nx <= (1 << 20),
            path + ": cannot write " + c.describe() + " as TIFF pages (1 to 2^20 rows and columns, 1 to 64 samples)");
  const double top = o.is_float ? std::numeric_limits<float>::max() : o.bits == 8 ? 255.0 : 65535.0;
  for (int64_t i = 0; i < c.numel(); ++i) {
    const double v = value_at(c, i);
    if (!std::isfinite(v) || v < (o.is_float ? -top : 0.0) || v > top || (!o.is_float && v != std::floor(v)))
      fail(path, "value " + std::to_string(v) + " at index " + std::to_string(i) + " cannot be written as " +
                     (o.is_float ? std::string("a 32-bit float") : std::to_string(o.bits) + "-bit unsigned"));
  }
  const int64_t bytes = c.numel() * (o.bits / 8);
  AtomicFile file(path);
  {
    TiffFile t(file.temp_path(), bytes > (int64_t(7) << 29) ? "w8" : "w", "", path);  // BigTIFF beyond 3.5 GiB
    TIFF* tif = t.get();
    std::vector<uint8_t> row(static_cast<size_t>(nx * nc * (o.bits / 8)));
    const std::vector<uint16_t> extra(static_cast<size_t>(nc - 1), EXTRASAMPLE_UNSPECIFIED);
    for (int64_t z = 0; z < nz; ++z) {
      if (nz > 1) {
        TIFFSetField(tif, TIFFTAG_SUBFILETYPE, FILETYPE_PAGE);
        if (nz <= 65535) TIFFSetField(tif, TIFFTAG_PAGENUMBER, uint16_t(z), uint16_t(nz));
      }
      TIFFSetField(tif, TIFFTAG_IMAGEWIDTH, uint32_t(nx));
      TIFFSetField(tif, TIFFTAG_IMAGELENGTH, uint32_t(ny));
      TIFFSetField(tif, TIFFTAG_BITSPERSAMPLE, uint16_t(o.bits));
      TIFFSetField(tif, TIFFTAG_SAMPLESPERPIXEL, uint16_t(nc));
      if (nc > 1) TIFFSetField(tif, TIFFTAG_EXTRASAMPLES, uint16_t(nc - 1), extra.data());
      TIFFSetField(tif, TIFFTAG_SAMPLEFORMAT, o.is_float ? SAMPLEFORMAT_IEEEFP : SAMPLEFORMAT_UINT);
      TIFFSetField(tif, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
      TIFFSetField(tif, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
      TIFFSetField(tif, TIFFTAG_COMPRESSION, codec_of(o.compression));
      TIFFSetField(tif, TIFFTAG_ROWSPERSTRIP, TIFFDefaultStripSize(tif, 0));
      if (o.tags.has_resolution) {
        TIFFSetField(tif, TIFFTAG_XRESOLUTION, o.tags.x_resolution);
        TIFFSetField(tif, TIFFTAG_YRESOLUTION, o.tags.y_resolution);
        TIFFSetField(tif, TIFFTAG_RESOLUTIONUNIT, uint16_t(o.tags.resolution_unit));
      }
      if (z == 0 && !o.tags.description.empty())
        TIFFSetField(tif, TIFFTAG_IMAGEDESCRIPTION, o.tags.description.c_str());
      for (int64_t y = 0; y < ny; ++y) {
        const int64_t base = (z * ny + y) * nx * nc;
        for (int64_t i = 0; i < nx * nc; ++i) {
          const double v = value_at(c, base + i);
          if (o.is_float) {
            const float f = static_cast<float>(v);
            std::memcpy(row.data() + 4 * i, &f, 4);
          } else if (o.bits == 16) {
            const uint16_t u = static_cast<uint16_t>(v);
            std::memcpy(row.data() + 2 * i, &u, 2);
          } else {
            row[static_cast<size_t>(i)] = static_cast<uint8_t>(v);
          }
        }
        t.check(TIFFWriteScanline(tif, row.data(), uint32_t(y), 0) >= 0,
                "cannot write " + page_name(z) + ", row " + std::to_string(y));
      }
      t.check(TIFFWriteDirectory(tif), "cannot write " + page_name(z));
    }
    t.check(TIFFFlush(tif), "cannot write the file");
  }
  file.commit();
}

void set_imagej_calibration(TiffWriteOptions& o, const std::array<double, 3>& spacing, int64_t pages) {
  char d[160];
  std::snprintf(d, sizeof d, "ImageJ=1.11a\nimages=%lld\nslices=%lld\nunit=micron\nspacing=%.9g\n",
                static_cast<long long>(pages), static_cast<long long>(pages), spacing[0] * 1e3);
  o.tags.description = d;
  o.tags.has_resolution = true;
  o.tags.x_resolution = static_cast<float>(1.0 / (spacing[2] * 1e3));  // pixels per micrometre
  o.tags.y_resolution = static_cast<float>(1.0 / (spacing[1] * 1e3));
  o.tags.resolution_unit = RESUNIT_NONE;
}

TiffWriteOptions tiff_options_like(const TiffVolume& like, const Tensor& data) {
  TiffWriteOptions o;
  o.compression = like.compression;
  o.tags = like.tags;
  // An ImageJ description counts the input's pages, channels and frames, and may name its display mode: copied, it
  // would make ImageJ (and read_tiff) take the output's pages for channels. Only the calibration (unit, z spacing)
  // carries over, with the output's page count.
  if (like.tags.description.starts_with("ImageJ=")) {
    std::string d = "ImageJ=" + imagej_value(like.tags.description, "ImageJ") +
                    "\nimages=" + std::to_string(data.dim(0)) + "\nslices=" + std::to_string(data.dim(0)) + "\n";
    for (const char* key : {"unit", "spacing"})
      if (const std::string v = imagej_value(like.tags.description, key); !v.empty())
        d += std::string(key) + "=" + v + "\n";
    o.tags.description = d;
  } else if (is_ome(like.tags.description)) {
    // OME-XML describes the input's channels, slices and type (and may name the file): none of it fits a label map.
    // Its calibration is kept the way ImageJ writes one (micrometres), which read_tiff reads back.
    o.tags.description.clear();
    if (like.calibrated) set_imagej_calibration(o, like.spacing, data.dim(0));
  } else if (like.tags.description.starts_with("{") && like.tags.description.find("\"shape\"") != std::string::npos) {
    // tifffile's shaped series: the JSON gives the input array's shape, which a probabilities output (a sample per
    // class) does not have, and tells tifffile to look for its own layout (the pages' data after the first directory):
    // it takes a small stack of ours (each page's data before its directory) for one cut short and reads garbage.
    // Without it, tifffile reads the pages as a stack of their own shape, which is the output's.
    o.tags.description.clear();
  }
  if (data.dtype() == DType::f32) {
    o.bits = 32;
    o.is_float = true;
  } else {
    const Tensor c = data.to(Device::cpu);
    double top = 0;
    for (int64_t i = 0; i < c.numel(); ++i) top = std::max(top, value_at(c, i));
    o.bits = top > 255 ? 16 : 8;
  }
  return o;
}

}  // namespace unet::io
