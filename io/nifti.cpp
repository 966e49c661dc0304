// NIfTI reading and writing on top of nifticlib (libnifti2, which reads and writes both NIfTI-1 and NIfTI-2).
#include "io/nifti.h"

#include "io/atomic_file.h"

#include <nifti2_io.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace unet::io {

struct NiftiHeader {
  nifti_image* nim = nullptr;
  ~NiftiHeader() {
    if (nim) nifti_image_free(nim);
  }
};

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Checks that `path` ends in .nii or .nii.gz in lower or upper case (`otherwise` is the message when it has neither).
void check_nifti_name(const std::string& path, const std::string& otherwise) {
  if (nifti_ending(path).empty()) fail(path, otherwise);
  if (std::string why = nifti_case_problem(path); !why.empty()) fail(path, why);
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// nifticlib ignores a zero slope (the NIfTI rule: no scaling), and so does this.
bool scaled(double slope, double inter) {
  return slope != 0.0 && !(slope == 1.0 && inter == 0.0);
}

template <class T>
void convert(const void* src, float* dst, int64_t n, double slope, double inter) {
  const T* s = static_cast<const T*>(src);
  if (scaled(slope, inter)) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<double>(s[i]) * slope + inter);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
  }
}

// Where voxel i of the file (NIfTI order: x fastest, channel slowest) sits, for messages.
std::string voxel_position(int64_t i, int64_t nx, int64_t ny, int64_t nz) {
  return "index " + std::to_string(i) + ": x " + std::to_string(i % nx) + ", y " + std::to_string(i / nx % ny) +
         ", z " + std::to_string(i / (nx * ny) % nz) + ", channel " + std::to_string(i / (nx * ny * nz));
}

// A NaN or infinite voxel would poison every statistic and gradient it touches, and a finite value beyond the f32
// range turns infinite on conversion: both are errors. Called only when the converted volume holds a non-finite
// value; the source values (in double, before and after scaling) tell the two cases apart.
template <class T>
void reject_non_finite(const std::string& path, const void* src, int64_t n, double slope, double inter,
                       const int64_t (&dims)[3]) {
  const T* s = static_cast<const T*>(src);
  const bool scale = scaled(slope, inter);
  int64_t bad = 0, first_bad = -1, overflow = 0, first_overflow = -1;
  for (int64_t i = 0; i < n; ++i) {
    double v = static_cast<double>(s[i]);
    if (!std::isfinite(v)) {
      if (bad++ == 0) first_bad = i;
      continue;
    }
    if (scale) v = v * slope + inter;
    if (!std::isfinite(static_cast<float>(v)) && overflow++ == 0) first_overflow = i;
  }
  auto voxels = [](int64_t k) { return std::to_string(k) + (k == 1 ? " voxel is" : " voxels are"); };
  if (bad > 0)
    fail(path, voxels(bad) + " NaN or infinite (first at " + voxel_position(first_bad, dims[0], dims[1], dims[2]) +
                   "); expected finite values");
  if (overflow > 0) {
    double v = static_cast<double>(s[first_overflow]);
    std::string scaling = scale ? " after scl_slope " + num(slope) + " and scl_inter " + num(inter) : "";
    fail(path, voxels(overflow) + " too large for f32" + scaling + " (first at " +
                   voxel_position(first_overflow, dims[0], dims[1], dims[2]) + ": " +
                   num(scale ? v * slope + inter : v) + "); expected magnitudes up to " +
                   num(std::numeric_limits<float>::max()) + ", the largest f32");
  }
}

// The first voxel whose value (after scaling, in double) differs from its f32 conversion, for NiftiVolume::inexact.
template <class T>
std::string first_inexact(const void* src, const float* converted, int64_t n, double slope, double inter,
                          const int64_t (&dims)[3]) {
  const T* s = static_cast<const T*>(src);
  const bool scale = scaled(slope, inter);
  for (int64_t i = 0; i < n; ++i) {
    double v = static_cast<double>(s[i]);
    if (scale) v = v * slope + inter;
    if (static_cast<double>(converted[i]) != v) {
      char value[40];  // the shortest text that reads back as v: 1.000000000001, not 1.0000000000010001
      const auto end = std::to_chars(value, value + sizeof value, v).ptr;
      return voxel_position(i, dims[0], dims[1], dims[2]) + " holds " + std::string(value, end);
    }
  }
  return "";
}

// Scaling so coarse that the stored values stop mattering (a huge scl_inter swamping them, a tiny scl_slope) would
// hand training a constant image: when the smallest and largest stored values differ but become the same f32 value,
// the file is refused. (Some precision is always lost in f32; only this total loss is an error.)
template <class T>
void reject_collapsed(const std::string& path, const void* src, int64_t n, double slope, double inter) {
  const T* s = static_cast<const T*>(src);
  if (n == 0) return;
  double lo = static_cast<double>(s[0]), hi = lo;
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, static_cast<double>(s[i]));
    hi = std::max(hi, static_cast<double>(s[i]));
  }
  const float a = static_cast<float>(lo * slope + inter), b = static_cast<float>(hi * slope + inter);
  if (lo != hi && a == b)
    fail(path, "header fields scl_slope " + num(slope) + " and scl_inter " + num(inter) +
                   " map every stored value (from " + num(lo) + " to " + num(hi) + ") to the same f32 value " + num(a) +
                   "; expected a scaling that keeps the values apart");
}

// Calls f.template operator()<T>() with T the C++ type of a supported NIfTI datatype.
template <class F>
void with_voxel_type(int64_t datatype, F&& f) {
  switch (datatype) {
    case DT_UINT8:
      return f.template operator()<uint8_t>();
    case DT_INT8:
      return f.template operator()<int8_t>();
    case DT_INT16:
      return f.template operator()<int16_t>();
    case DT_UINT16:
      return f.template operator()<uint16_t>();
    case DT_INT32:
      return f.template operator()<int32_t>();
    case DT_FLOAT32:
      return f.template operator()<float>();
    case DT_FLOAT64:
      return f.template operator()<double>();
  }
}

// Inflates a .nii.gz to its end: the `bytes` bytes after `offset` (the voxels) into `data`, the rest read and
// dropped, so that zlib checks every gzip member's CRC-32 and length (a file cut short before them, an interrupted
// copy, is an error, not voxels read without their check). A file may hold several members (legal gzip) and zero
// padding after them; any other bytes after the last member are refused where zlib's gzread ignores them (Python's
// gzip, and so nibabel, refuses them too). Returns "" or what is wrong.
std::string inflate_voxels(const char* file, int64_t offset, int64_t bytes, void* data) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(file, "rb"), &std::fclose);
  if (f == nullptr) return std::string("cannot open the file: ") + std::strerror(errno);
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return "zlib cannot start";
  std::unique_ptr<z_stream, int (*)(z_stream*)> end(&z, &inflateEnd);
  std::vector<unsigned char> in(1 << 17), scratch(1 << 17);
  int64_t produced = 0;  // bytes inflated so far, the header's included
  bool in_member = true, at_eof = false;
  while (true) {
    if (z.avail_in < 2 && !at_eof) {  // keep the unread bytes in front, then fill the rest
      if (z.avail_in > 0) std::memmove(in.data(), z.next_in, z.avail_in);
      const size_t n = std::fread(in.data() + z.avail_in, 1, in.size() - z.avail_in, f.get());
      if (std::ferror(f.get())) return std::string("read error: ") + std::strerror(errno);
      at_eof = n == 0;
      z.next_in = in.data();
      z.avail_in += static_cast<uInt>(n);
    }
    if (!in_member) {
      while (z.avail_in > 0 && *z.next_in == 0) ++z.next_in, --z.avail_in;  // zero padding
      if (z.avail_in == 0 && at_eof) break;
      if (z.avail_in < 2 && !at_eof) continue;
      if (z.avail_in < 2 || z.next_in[0] != 0x1f || z.next_in[1] != 0x8b)
        return "bytes after the end of its gzip data are not gzip (trailing garbage; expected the file to end there)";
      inflateReset(&z);
      in_member = true;
    }
    // Inflate straight into the voxels where the output falls in them, else into scratch (never across the start).
    const int64_t room = produced < offset ? std::min<int64_t>(offset - produced, static_cast<int64_t>(scratch.size()))
                         : produced < offset + bytes ? std::min<int64_t>(offset + bytes - produced, 1 << 30)
                                                     : static_cast<int64_t>(scratch.size());
    z.next_out = produced >= offset && produced < offset + bytes
                     ? static_cast<unsigned char*>(data) + (produced - offset)
                     : scratch.data();
    z.avail_out = static_cast<uInt>(room);
    const int rc = inflate(&z, Z_NO_FLUSH);
    produced += room - static_cast<int64_t>(z.avail_out);
    if (rc == Z_STREAM_END) {
      in_member = false;
    } else if (rc == Z_BUF_ERROR && at_eof) {
      return "the gzip data ends before its end";
    } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
      return std::string("corrupt gzip data (zlib: ") + (z.msg != nullptr ? z.msg : "error " + std::to_string(rc)) +
             ")";
    }
  }
  if (produced < offset + bytes)
    return "its gzip data holds " + std::to_string(produced) + " bytes, fewer than vox_offset + the voxels (" +
           std::to_string(offset + bytes) + ")";
  return "";
}

// Whether the file starts as gzip does (zlib reads a .nii.gz that is not compressed as it is, and so do we).
bool starts_as_gzip(const char* file) {
  unsigned char magic[2] = {0, 0};
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(file, "rb"), &std::fclose);
  return f != nullptr && std::fread(magic, 1, 2, f.get()) == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
}

// Reads the voxel bytes into nim->data (byte-swapped to this machine's order, not scaled). nifticlib's
// nifti_image_load would do the same but also silently set NaN and infinite floats to 0 (in nifti_read_buffer),
// hiding exactly the voxels that read_nifti must refuse; so the bytes are read here, from where it would read them.
void load_voxels(const std::string& path, nifti_image* nim) {
  const int64_t bytes = nifti_get_volsize(nim);
  if (nim->iname == nullptr || nim->iname_offset < 0 || bytes <= 0)
    fail(path, "cannot locate the voxel data (not a single-file NIfTI?)");
  // The header's dimensions must fit the file before anything is allocated for them (a 400-byte file declaring
  // 15 GB of voxels is refused, not allocated): an uncompressed file holds them after vox_offset; a gzip file cannot
  // hold more than deflate's largest ratio, 1032:1, allows.
  const bool gz = nifti_is_gzfile(nim->iname) && starts_as_gzip(nim->iname);
  std::error_code ec;
  const auto file_bytes = static_cast<int64_t>(std::filesystem::file_size(nim->iname, ec));
  if (!ec) {
    const double room = gz ? 1032.0 * static_cast<double>(file_bytes)
                           : static_cast<double>(file_bytes) - static_cast<double>(nim->iname_offset);
    if (static_cast<double>(bytes) > room)
      fail(path, "its header declares " + std::to_string(bytes) + " bytes of voxels (" + std::to_string(nim->nvox) +
                     " voxels), more than the file " +
                     (gz ? "of " + std::to_string(file_bytes) + " compressed bytes can hold"
                         : "holds after vox_offset (" +
                               std::to_string(std::max<int64_t>(0, file_bytes - nim->iname_offset)) + " bytes)") +
                     " (truncated file or corrupt dimensions?)");
  }
  nim->data = std::calloc(1, static_cast<size_t>(bytes));  // nifti_image_free releases it with free()
  if (nim->data == nullptr) fail(path, "out of memory for " + std::to_string(bytes) + " bytes of voxels");
  bool ok = false;
  if (gz) {
    if (const std::string why = inflate_voxels(nim->iname, nim->iname_offset, bytes, nim->data); !why.empty())
      fail(path, "cannot read the voxel data (truncated or corrupt file?): " + why);
    ok = true;
  } else {
    znzFile fp = znzopen(nim->iname, "rb", 0);
    if (znz_isnull(fp)) fail(path, "cannot open the file to read its voxels");
    ok = znzseek(fp, static_cast<znz_off_t>(nim->iname_offset), SEEK_SET) >= 0 &&
         znzread(nim->data, 1, static_cast<size_t>(bytes), fp) == static_cast<size_t>(bytes);
    znzclose(fp);
  }
  if (!ok) fail(path, "cannot read the voxel data (truncated or corrupt file?)");
  if (nim->swapsize > 1 && nim->byteorder != nifti_short_order())
    nifti_swap_Nbytes(bytes / nim->swapsize, nim->swapsize, nim->data);
}

// The bytes of a header field as C would write them ("n+1\0"), for messages about a damaged one.
std::string escaped(const unsigned char* b, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    char buf[8];
    if (b[i] == 0)
      s += "\\0";
    else if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '"' && b[i] != '\\')
      s += static_cast<char>(b[i]);
    else
      std::snprintf(buf, sizeof buf, "\\x%02x", b[i]), s += buf;
  }
  return s;
}

// The header's size and magic, before anything else in it is trusted: a 348-byte NIfTI-1 header ends in "n+1\0", a
// 540-byte NIfTI-2 header holds "n+2\0\r\n\032\n" at byte 4. Without the magic, nifticlib reads any 348-byte header
// as ANALYZE 7.5 and believes its dimensions, datatype and offset (a damaged or foreign file read as garbage voxels);
// "ni1" / "ni2" is the header of a .hdr/.img pair, whose voxels are not in this file.
void check_magic(const std::string& path) {
  unsigned char h[552] = {};
  // zlib reads both (an uncompressed file as it is) and says when the compressed data is damaged, which would
  // otherwise read as a header of zeros.
  gzFile fp = gzopen(path.c_str(), "rb");
  if (fp == nullptr) fail(path, std::string("cannot open the file: ") + std::strerror(errno));
  const int read = gzread(fp, h, sizeof h);
  int error = Z_OK;
  std::string zlib_message = gzerror(fp, &error);  // "PATH: what"
  if (zlib_message.starts_with(path + ": ")) zlib_message.erase(0, path.size() + 2);
  gzclose_r(fp);
  if (read < 0 || (error != Z_OK && error != Z_BUF_ERROR))
    fail(path, "corrupt gzip data in the header (zlib: " + zlib_message + ")");
  const size_t got = static_cast<size_t>(read);
  if (got < 348)
    fail(path, "not a readable NIfTI-1 or NIfTI-2 file: " + std::to_string(got) +
                   " bytes, shorter than a NIfTI-1 header (348 bytes)");
  int32_t size = 0;
  std::memcpy(&size, h, 4);
  const int32_t swapped = static_cast<int32_t>(__builtin_bswap32(static_cast<uint32_t>(size)));
  const bool n1 = size == 348 || swapped == 348, n2 = size == 540 || swapped == 540;
  if (!n1 && !n2)
    fail(path, "not a readable NIfTI-1 or NIfTI-2 file: header field sizeof_hdr is " + std::to_string(size) +
                   "; expected 348 (NIfTI-1) or 540 (NIfTI-2)");
  if (n2 && got < 540)
    fail(path, "not a readable NIfTI-2 file: " + std::to_string(got) + " bytes, shorter than its 540-byte header");
  const unsigned char* magic = n1 ? h + 344 : h + 4;
  const size_t magic_size = n1 ? 4 : 8;
  const char* single = n1 ? "n+1\0" : "n+2\0\r\n\032\n";
  if (std::memcmp(magic, single, magic_size) == 0) return;
  const bool pair = std::memcmp(magic, n1 ? "ni1\0" : "ni2\0", 4) == 0;
  fail(path, std::string("header magic is \"") + escaped(magic, magic_size) + "\"" +
                 (pair ? " (the header of a .hdr/.img pair)" : "") + "; expected \"" +
                 escaped(reinterpret_cast<const unsigned char*>(single), magic_size) + "\", a single-file NIfTI-" +
                 (n1 ? "1" : "2") + " (.nii or .nii.gz)");
}

// nifticlib's name of a datatype code without its prefix, in lower case: "float32", "rgb24", "unknown".
std::string datatype_name(int64_t datatype) {
  std::string s = nifti_datatype_to_string(static_cast<int>(datatype));
  for (const char* prefix : {"NIFTI_TYPE_", "DT_"})
    if (s.starts_with(prefix)) s = s.substr(std::strlen(prefix));
  return lower(s);
}

// The bits per voxel of the datatypes read_nifti converts, or 0 for any other datatype code.
int supported_bitpix(int64_t datatype) {
  switch (datatype) {
    case DT_UINT8:
    case DT_INT8:
      return 8;
    case DT_INT16:
    case DT_UINT16:
      return 16;
    case DT_INT32:
    case DT_FLOAT32:
      return 32;
    case DT_FLOAT64:
      return 64;
    default:
      return 0;
  }
}

// Checks the fields of the file's own header that nifticlib trusts or silently repairs: an extent below 1 (nifticlib
// only says the file is unreadable), a voxel count that overflows (its nvox would wrap), and a vox_offset inside the
// header (it would quietly read the voxels from the end of the header instead). Returns the NIfTI version (1 or 2)
// or fails; check_magic has refused anything else.
// Why the qform or sform a header declares (code > 0) cannot place the voxels, or "": a NaN or infinite quaternion,
// offset or matrix element (nifticlib reads an infinite qoffset as 0, and a NaN sform would be copied to the output).
template <class Header>
std::string nonfinite_geometry(const Header& h) {
  if (h.qform_code > 0)
    for (const auto& [name, v] : {std::pair{"quatern_b", double(h.quatern_b)},
                                  {"quatern_c", double(h.quatern_c)},
                                  {"quatern_d", double(h.quatern_d)},
                                  {"qoffset_x", double(h.qoffset_x)},
                                  {"qoffset_y", double(h.qoffset_y)},
                                  {"qoffset_z", double(h.qoffset_z)}})
      if (!std::isfinite(v))
        return std::string("header field ") + name + " is " + num(v) + " with qform_code " +
               std::to_string(h.qform_code) + "; expected a finite number (or qform_code 0)";
  if (h.sform_code > 0)
    for (const auto& [name, row] : {std::pair{"srow_x", h.srow_x}, {"srow_y", h.srow_y}, {"srow_z", h.srow_z}})
      for (int i = 0; i < 4; ++i)
        if (!std::isfinite(double(row[i])))
          return std::string("header field ") + name + "[" + std::to_string(i) + "] is " + num(double(row[i])) +
                 " with sform_code " + std::to_string(h.sform_code) + "; expected a finite number (or sform_code 0)";
  return "";
}

int check_header_fields(const std::string& path) {
  int version = 0;
  void* raw = nifti_read_header(path.c_str(), &version, 0);
  if (raw) free(raw);
  if (!raw || version < 0) fail(path, "not a readable NIfTI-1 or NIfTI-2 file");
  if (version != 1 && version != 2) fail(path, "not a readable NIfTI-1 or NIfTI-2 file");  // check_magic passed
  // Read again through the version's own reader, which byte-swaps a big-endian header.
  int swapped = 0;
  int64_t dim[8] = {}, header_size = 0, sizeof_hdr = 0;
  std::string geometry_problem;
  double raw_offset = 0, slope = 0, inter = 0;
  int64_t datatype = 0, bitpix = 0;
  double pixdim[8] = {};
  bool one_file = false;
  if (version == 2) {
    nifti_2_header* h = nifti_read_n2_hdr(path.c_str(), &swapped, 0);
    if (!h) fail(path, "not a readable NIfTI-2 file");
    for (int i = 0; i < 8; ++i) dim[i] = h->dim[i];
    raw_offset = static_cast<double>(h->vox_offset);
    slope = h->scl_slope, inter = h->scl_inter;
    datatype = h->datatype, bitpix = h->bitpix;
    for (int i = 0; i < 8; ++i) pixdim[i] = h->pixdim[i];
    one_file = NIFTI_ONEFILE(*h);
    header_size = 540;
    sizeof_hdr = h->sizeof_hdr;
    geometry_problem = nonfinite_geometry(*h);
    free(h);
  } else {
    nifti_1_header* h = nifti_read_n1_hdr(path.c_str(), &swapped, 0);
    if (!h) fail(path, "not a readable NIfTI-1 file");
    for (int i = 0; i < 8; ++i) dim[i] = h->dim[i];
    raw_offset = h->vox_offset;  // a float in NIfTI-1
    slope = h->scl_slope, inter = h->scl_inter;
    datatype = h->datatype, bitpix = h->bitpix;
    for (int i = 0; i < 8; ++i) pixdim[i] = h->pixdim[i];
    one_file = NIFTI_ONEFILE(*h);
    header_size = 348;
    sizeof_hdr = h->sizeof_hdr;
    geometry_problem = nonfinite_geometry(*h);
    free(h);
  }
  // nifticlib takes the byte order from dim[0]; a sizeof_hdr that only reads right in the other order is a header
  // whose fields mix byte orders (or a damaged one), so which order holds for the rest is a guess.
  if (!geometry_problem.empty()) fail(path, geometry_problem);
  if (sizeof_hdr != header_size)
    fail(path, "header field sizeof_hdr is " + std::to_string(sizeof_hdr) + " in the byte order of dim[0]; expected " +
                   std::to_string(header_size) + " (a header that mixes byte orders?)");
  // nifticlib sizes the voxels by datatype alone; a bitpix that disagrees means a damaged header or a writer that
  // meant another type, and either way the values would be read wrongly.
  const int bits = supported_bitpix(datatype);
  if (bits == 0)
    fail(path,
         "header field datatype is " + std::to_string(datatype) + " (" + datatype_name(datatype) +
             "); expected uint8 (2), int8 (256), int16 (4), uint16 (512), int32 (8), float32 (16) or float64 (64)");
  if (bitpix != bits)
    fail(path, "header field bitpix is " + std::to_string(bitpix) + " with datatype " + std::to_string(datatype) +
                   " (" + datatype_name(datatype) + "); expected " + std::to_string(bits));
  // nifticlib reads a non-finite scl_inter as 0, and the values would silently lose their offset (nibabel refuses
  // the file: "valid slope but invalid intercept"). A zero or non-finite slope means no scaling, as in both.
  if (std::isfinite(slope) && slope != 0 && !std::isfinite(inter))
    fail(path, "header field scl_inter is " + num(inter) + " with scl_slope " + num(slope) +
                   "; expected a finite intercept when the slope scales the values");
  if (dim[0] < 1 || dim[0] > 7)
    fail(path, "header field dim[0] is " + std::to_string(dim[0]) + "; expected the number of dimensions, 1 to 7");
  int64_t voxels = 1;
  std::string extents;
  for (int i = 1; i <= dim[0]; ++i) {
    extents += (i > 1 ? " x " : "") + std::to_string(dim[i]);
    if (dim[i] < 1)
      fail(path, "header field dim[" + std::to_string(i) + "] is " + std::to_string(dim[i]) + "; every extent dim[1.." +
                     std::to_string(dim[0]) + "] must be at least 1");
  }
  for (int i = 1; i <= dim[0]; ++i)
    if (__builtin_mul_overflow(voxels, dim[i], &voxels))
      fail(path, "header fields dim[1.." + std::to_string(dim[0]) + "] = " + extents +
                     " multiply to more voxels than a 64-bit count holds");
  // The voxel size along each axis the volume has: nifticlib keeps a NaN, zero or negative one, and spacing() would
  // have to guess (nibabel silently sets zero to 1 and negative to its absolute value); the resampling and the grid
  // comparisons need the real one.
  for (int i = 1; i <= std::min<int64_t>(dim[0], 3); ++i)
    if (!(std::isfinite(pixdim[i]) && pixdim[i] > 0))
      fail(path, "header field pixdim[" + std::to_string(i) + "] (the voxel size along " + "xyz"[i - 1] + ") is " +
                     num(pixdim[i]) + "; expected a finite size > 0");
  if (one_file) {
    // nifticlib moves an offset inside the header to its end, and reads one inside the 4-byte extension flag that
    // follows it as given: either way the voxels would be read from the wrong bytes (nibabel refuses both).
    if (!(raw_offset >= static_cast<double>(header_size + 4)))
      fail(path, "header field vox_offset is " + num(raw_offset) + "; the voxel data of a single-file NIfTI-" +
                     std::to_string(version) + " starts after its " + std::to_string(header_size) +
                     "-byte header and 4-byte extension flag (expected >= " + std::to_string(header_size + 4) + ")");
    // nifticlib converts a NIfTI-1 offset (a float) to int: a larger one would wrap around to the header's end.
    if (version == 1 && raw_offset > static_cast<double>(std::numeric_limits<int32_t>::max()))
      fail(path, "header field vox_offset is " + num(raw_offset) + "; a NIfTI-1 file addresses at most 2^31 bytes");
  }
  return version;
}

// One .nii / .nii.gz file: header, a 4-byte empty extension flag, voxels. nifticlib fills the header structs, but
// its own writer (3.0.1) cannot write single-file NIfTI-2 (it treats type 4 as a header/image pair), so the bytes are
// written here through znzlib, which also does the gzip compression. Written to `temp` (AtomicFile's); errors name
// `path`, the file the user asked for.
void write_single_file(const std::string& path, const std::string& temp, nifti_image* nim, bool nifti2, bool gz) {
  std::string header;
  if (nifti2) {
    nim->iname_offset = 544;
    nifti_2_header h;
    if (nifti_convert_nim2n2hdr(nim, &h) != 0) fail(path, "cannot build the NIfTI-2 header");
    std::memcpy(h.magic, "n+2\0\r\n\032\n", 8);
    h.vox_offset = 544;
    header.assign(reinterpret_cast<const char*>(&h), sizeof h);
  } else {
    nim->iname_offset = 352;
    nifti_1_header h;
    if (nifti_convert_nim2n1hdr(nim, &h) != 0) fail(path, "cannot build the NIfTI-1 header (dimensions too large?)");
    std::memcpy(h.magic, "n+1\0", 4);
    h.vox_offset = 352;
    header.assign(reinterpret_cast<const char*>(&h), sizeof h);
  }
  header.append(4, '\0');  // extension flag: no extensions follow
  size_t bytes = static_cast<size_t>(nim->nvox) * static_cast<size_t>(nim->nbyper);
  znzFile fp = znzopen(temp.c_str(), "wb", gz ? 1 : 0);
  if (znz_isnull(fp)) fail(path, "cannot create the output file");
  errno = 0;
  bool ok =
      znzwrite(header.data(), 1, header.size(), fp) == header.size() && znzwrite(nim->data, 1, bytes, fp) == bytes;
  ok = (znzclose(fp) == 0) && ok;
  if (!ok) {
    std::error_code ec;
    const std::string why = write_failure_reason();
    std::filesystem::remove(temp, ec);
    fail(path, "writing the NIfTI file failed: " + why);
  }
}

}  // namespace

double nifti_space_unit_mm(int xyz_units) {
  switch (XYZT_TO_SPACE(xyz_units)) {
    case NIFTI_UNITS_METER:
      return 1000.0;
    case NIFTI_UNITS_MICRON:
      return 1e-3;
    default:
      return 1.0;  // NIFTI_UNITS_MM, or unknown
  }
}

std::array<double, 3> NiftiVolume::spacing() const {
  // read_nifti has checked the axes the volume has; the others (a 2D image's z) are 1 mm.
  const nifti_image* n = header->nim;
  const double unit = nifti_space_unit_mm(n->xyz_units);
  return {n->ndim >= 3 ? n->pixdim[3] * unit : 1.0, n->ndim >= 2 ? n->pixdim[2] * unit : 1.0, n->pixdim[1] * unit};
}

NiftiGeometry NiftiVolume::geometry() const {
  const nifti_image* n = header->nim;
  NiftiGeometry g;
  g.nifti_type = n->nifti_type;
  for (int i = 0; i < 8; ++i) g.dim[i] = n->dim[i], g.pixdim[i] = n->pixdim[i];
  g.qform_code = n->qform_code;
  g.sform_code = n->sform_code;
  g.quatern_b = n->quatern_b, g.quatern_c = n->quatern_c, g.quatern_d = n->quatern_d;
  g.qoffset_x = n->qoffset_x, g.qoffset_y = n->qoffset_y, g.qoffset_z = n->qoffset_z, g.qfac = n->qfac;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) g.qto_xyz[i][j] = n->qto_xyz.m[i][j], g.sto_xyz[i][j] = n->sto_xyz.m[i][j];
  g.xyz_units = n->xyz_units;
  g.time_units = n->time_units;
  g.descrip = std::string(n->descrip, strnlen(n->descrip, sizeof(n->descrip)));
  return g;
}

std::string nifti_ending(const std::string& path) {
  const std::string name = lower(std::filesystem::path(path).filename().string());
  for (const char* ending : {".nii.gz", ".nii"})
    if (name.size() > std::strlen(ending) && name.ends_with(ending)) return ending;
  return "";
}

// nifticlib finds a file by its ending in one case only (".Nii.gz" is "not valid" to it), and reads ".GZ" as gzip.
std::string nifti_case_problem(const std::string& path) {
  const std::string ending = nifti_ending(path);
  if (ending.empty()) return "";
  const std::string actual = path.substr(path.size() - ending.size());
  std::string upper = ending;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (actual == ending || actual == upper) return "";
  return "the ending " + actual + " mixes lower and upper case, which nifticlib cannot read; expected " + ending +
         " or " + upper;
}

NiftiVolume read_nifti(const std::string& path) {
  nifti_set_debug_level(0);  // nifticlib prints its own errors otherwise; ours name the file
  if (!std::filesystem::exists(path)) fail(path, "no such file");
  // nifticlib would open a FIFO and block until someone writes to it, or fail obscurely on a directory.
  if (!std::filesystem::is_regular_file(path)) fail(path, "not a regular file (expected a .nii or .nii.gz file)");
  check_nifti_name(path, "not a NIfTI file name (expected .nii or .nii.gz)");
  check_magic(path);
  const int version = check_header_fields(path);
  auto header = std::make_shared<NiftiHeader>();
  header->nim = nifti_image_read(path.c_str(), 0);
  nifti_image* nim = header->nim;
  if (!nim) fail(path, "not a readable NIfTI-1 or NIfTI-2 file");
  // nifticlib reports NIfTI-2 single files as type 1; the header's own version says, so outputs keep it.
  if (version == 2 && nim->nifti_type == NIFTI_FTYPE_NIFTI1_1) nim->nifti_type = NIFTI_FTYPE_NIFTI2_1;
  if (nim->ndim < 1 || nim->ndim > 4)
    fail(path, "has " + std::to_string(nim->ndim) + " dimensions; expected 3D or 4D (channels)");
  int64_t nx = nim->nx, ny = nim->ny > 0 ? nim->ny : 1, nz = nim->nz > 0 ? nim->nz : 1, nc = nim->nt > 0 ? nim->nt : 1;
  if (nim->ndim < 4) nc = 1;
  for (int64_t d : {nx, ny, nz, nc})
    if (d < 1 || d > (1 << 20)) fail(path, "has a dimension of " + std::to_string(d) + " voxels");
  if (nx * ny * nz * nc > (int64_t(1) << 32)) fail(path, "is too large (more than 2^32 voxels)");
  if (supported_bitpix(nim->datatype) == 0)  // checked in the header already; nifticlib must not have changed it
    fail(path, "has unsupported datatype " + std::to_string(nim->datatype));
  load_voxels(path, nim);

  NiftiVolume vol;
  vol.path = path;
  vol.datatype = nim->datatype;
  int64_t n = nx * ny * nz * nc;
  Tensor flat = Tensor::empty({nc, nz, ny, nx});  // NIfTI order: x fastest, channel slowest
  float* f = flat.data<float>();
  const double slope = nim->scl_slope, inter = nim->scl_inter;
  const int64_t dims[3] = {nx, ny, nz};
  with_voxel_type(nim->datatype, [&]<class T>() {
    convert<T>(nim->data, f, n, slope, inter);
    bool all_finite = true;
    for (int64_t i = 0; i < n; ++i) all_finite &= std::isfinite(f[i]);
    // Only floats can be non-finite in the file, but any scaled type can overflow.
    if (!all_finite) reject_non_finite<T>(path, nim->data, n, slope, inter, dims);
    if (scaled(slope, inter)) reject_collapsed<T>(path, nim->data, n, slope, inter);
    // Unscaled, only int32 and float64 can lose digits (smaller integers and float32 convert exactly): one pass.
    if (scaled(slope, inter) || (sizeof(T) > 2 && !std::is_same_v<T, float>))
      vol.inexact = first_inexact<T>(nim->data, f, n, slope, inter, dims);
  });
  nifti_image_unload(nim);
  if (nc == 1) {
    vol.data = flat.reshape({nz, ny, nx, 1});
  } else {
    vol.data = Tensor::empty({nz, ny, nx, nc});
    float* d = vol.data.data<float>();
    int64_t plane = nx * ny * nz;
    for (int64_t c = 0; c < nc; ++c)
      for (int64_t i = 0; i < plane; ++i) d[i * nc + c] = f[c * plane + i];
  }
  vol.header = std::move(header);
  return vol;
}

void write_nifti(const std::string& path, const Tensor& data, const NiftiVolume& like) {
  nifti_set_debug_level(0);
  check_nifti_name(path, "output name must end in .nii or .nii.gz");
  check_arg(data.rank() == 3 || data.rank() == 4,
            path + ": expected [Z, Y, X] or [Z, Y, X, C] data, got " + data.describe());
  const nifti_image* src = like.header->nim;
  int64_t nz = data.dim(0), ny = data.dim(1), nx = data.dim(2), nc = data.rank() == 4 ? data.dim(3) : 1;
  int64_t snz = src->nz > 0 ? src->nz : 1, sny = src->ny > 0 ? src->ny : 1;
  check_arg(nx == src->nx && ny == sny && nz == snz,
            path + ": data " + data.describe() + " does not match the reference grid of " + like.path);
  int datatype = 0;
  switch (data.dtype()) {
    case DType::u8:
      datatype = DT_UINT8;
      break;
    case DType::i32:
      datatype = DT_INT32;
      break;
    case DType::f32:
      datatype = DT_FLOAT32;
      break;
    default:
      check_arg(false, path + ": cannot write " + data.describe() + " (expected u8, i32 or f32)");
  }

  std::unique_ptr<nifti_image, void (*)(nifti_image*)> nim(nifti_copy_nim_info(src), [](nifti_image* p) {
    p->data = nullptr;  // the tensor owns the voxels
    nifti_image_free(p);
  });
  if (!nim) fail(path, "cannot copy the NIfTI header of " + like.path);
  nim->datatype = datatype;
  nifti_datatype_sizes(datatype, &nim->nbyper, &nim->swapsize);
  nim->scl_slope = 0.0;  // values are stored as they are
  nim->scl_inter = 0.0;
  nim->cal_min = nim->cal_max = 0.0;
  // As many dimensions as the reference declares (a 3D grid with one slice stays 3D; a 2D image stays 2D), 4 with
  // channels; nifti_update_dims_from_array would drop trailing extents of 1, so dim[0] is set again after it.
  const int64_t ndim = nc > 1 ? 4 : std::clamp<int64_t>(src->dim[0], 1, 3);
  int64_t dims[8] = {ndim, nx, ny, nz, nc, 1, 1, 1};
  for (int i = 0; i < 8; ++i) nim->dim[i] = dims[i];
  nifti_update_dims_from_array(nim.get());
  nim->dim[0] = nim->ndim = ndim;
  int nifti_type = nim->nifti_type == NIFTI_FTYPE_NIFTI2_1 ? NIFTI_FTYPE_NIFTI2_1 : NIFTI_FTYPE_NIFTI1_1;
  nim->nifti_type = nifti_type;

  // Voxels back to NIfTI order (x fastest, channel slowest).
  Tensor out = data;
  if (nc > 1) {
    out = Tensor::empty({nc, nz, ny, nx}, data.dtype());
    size_t es = dtype_size(data.dtype());
    const char* s = static_cast<const char*>(data.raw());
    char* d = static_cast<char*>(out.raw());
    int64_t plane = nx * ny * nz;
    for (int64_t c = 0; c < nc; ++c)
      for (int64_t i = 0; i < plane; ++i) std::memcpy(d + (c * plane + i) * es, s + (i * nc + c) * es, es);
  }
  nim->data = out.raw();

  namespace fs = std::filesystem;
  fs::path target(path);
  if (!target.parent_path().empty() && !fs::is_directory(target.parent_path()))
    fail(path, "output directory " + target.parent_path().string() + " does not exist");
  AtomicFile file(path);
  write_single_file(path, file.temp_path(), nim.get(), nifti_type == NIFTI_FTYPE_NIFTI2_1,
                    nifti_ending(path) == ".nii.gz");
  // nifticlib reports write errors only on stderr: verify the file by reading its header back.
  nifti_image* check = nifti_image_read(file.temp_path().c_str(), 0);
  bool ok = check && check->nx == nx && check->ny == ny && check->nz == nz && check->datatype == datatype;
  if (check) nifti_image_free(check);
  if (!ok) fail(path, "writing the NIfTI file failed");
  file.commit();
}

NiftiVolume make_nifti_like(const Shape& shape, const std::array<double, 3>& spacing_zyx) {
  check_arg(shape.size() == 3 || shape.size() == 4,
            "make_nifti_like: expected a [Z, Y, X] or [Z, Y, X, C] shape, got " + shape_str(shape));
  for (int64_t d : shape) check_arg(d >= 1 && d <= (1 << 20), "make_nifti_like: bad dimension in " + shape_str(shape));
  for (double s : spacing_zyx)
    check_arg(std::isfinite(s) && s > 0, "make_nifti_like: spacing must be positive, got " + std::to_string(s));
  int64_t nc = shape.size() == 4 ? shape[3] : 1;
  int64_t dims[8] = {nc > 1 ? 4 : 3, shape[2], shape[1], shape[0], nc, 1, 1, 1};
  nifti_set_debug_level(0);
  auto header = std::make_shared<NiftiHeader>();
  header->nim = nifti_make_new_nim(dims, DT_FLOAT32, 0);  // data_fill 0: no voxel buffer
  nifti_image* nim = header->nim;
  if (!nim) throw std::runtime_error("make_nifti_like: nifticlib cannot create a header for " + shape_str(shape));
  nim->nifti_type = NIFTI_FTYPE_NIFTI1_1;
  double dx = spacing_zyx[2], dy = spacing_zyx[1], dz = spacing_zyx[0];
  nim->dx = nim->pixdim[1] = dx;
  nim->dy = nim->pixdim[2] = dy;
  nim->dz = nim->pixdim[3] = dz;
  nim->xyz_units = NIFTI_UNITS_MM;
  nim->qform_code = NIFTI_XFORM_SCANNER_ANAT;
  nim->quatern_b = nim->quatern_c = nim->quatern_d = 0.0;
  nim->qoffset_x = nim->qoffset_y = nim->qoffset_z = 0.0;
  nim->qfac = 1.0;
  nim->qto_xyz = nifti_quatern_to_dmat44(0, 0, 0, 0, 0, 0, dx, dy, dz, 1.0);
  nim->qto_ijk = nifti_dmat44_inverse(nim->qto_xyz);
  nim->sform_code = NIFTI_XFORM_SCANNER_ANAT;
  nim->sto_xyz = nim->qto_xyz;
  nim->sto_ijk = nim->qto_ijk;
  NiftiVolume vol;
  vol.header = std::move(header);
  vol.path = "<new header " + shape_str(shape) + ">";
  vol.datatype = DT_FLOAT32;
  return vol;
}

}  // namespace unet::io
