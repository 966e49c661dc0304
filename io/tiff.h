// TIFF images and stacks (.tif, .tiff) through libtiff: a 2D image or a 3D stack whose pages are the z slices, as
// microscopy tools (ImageJ, tifffile) and the ISBI 2012 challenge store them. Voxel values become an f32 tensor in the
// engine's order [Z, Y, X, C] (C = samples per pixel), as for NIfTI (io/nifti.h).
//
// Read: pages flagged by NewSubfileType as reduced-resolution copies or masks are skipped; every other page must have
// the same size and sample type; 8-, 16- or 32-bit unsigned or signed integers, or 32-bit floats, in strips or tiles,
// contiguous or planar, with any compression libtiff decodes (none, LZW, Deflate, PackBits, ...). NaN or infinite
// samples are errors. Spacing: TIFF has no reliable physical spacing (image editors write 72 dpi), so it is read only
// where a scientific writer put it: OME-XML's PhysicalSizeX/Y/Z with their units, ImageJ's ImageDescription ("unit=",
// "spacing=" for z) with XResolution / YResolution, or XResolution / YResolution in centimetres; otherwise 1 mm. A
// calibration that is present but not a finite size > 0 is an error, as is an OME-XML description whose SizeC x SizeZ
// is not the page count (or SizeT > 1, or another order than XY + CZT), an ImageJ "channels=" that is not an integer 1
// to 64 dividing the page count, an Orientation other than 1 (top-left: pages are read in stored order), tiles off the
// TIFF rule (multiples of 16 up to 65536) or over 256 MiB, and strip or tile offsets or byte counts that are not one
// per strip or tile, or an offset inside the file header. Write: u8, i32 or f32 tensors as 8- or 16-bit unsigned or
// 32-bit float pages, uncompressed, LZW or Deflate, through a temporary file renamed into place (io/atomic_file.h). An
// output written "like" an input keeps its resolution tags and ImageDescription (rewritten for ImageJ and tifffile,
// replaced by ImageJ's calibration for OME), so its spacing reads back the same.
#pragma once
#include <array>
#include <string>

#include "engine/tensor.h"

namespace unet::io {

enum class TiffCompression { none, lzw, deflate };

// The tags an output carries over from its input.
struct TiffTags {
  bool has_resolution = false;
  float x_resolution = 0, y_resolution = 0;  // pixels per resolution unit
  int resolution_unit = 0;                   // RESUNIT_NONE (1), _INCH (2), _CENTIMETER (3)
  std::string description;                   // ImageDescription of the first page
};

struct TiffVolume {
  Tensor data;                             // f32 [Z, Y, X, C]
  std::array<double, 3> spacing{1, 1, 1};  // mm (z, y, x); see above
  bool calibrated = false;                 // the spacing came from the file, not the 1 mm default
  std::string path;
  int bits = 8;                                         // per sample: 8, 16 or 32
  bool is_float = false;                                // 32-bit IEEE floats
  bool is_signed = false;                               // signed integers
  TiffCompression compression = TiffCompression::none;  // of the first page (none for codecs not listed)
  TiffTags tags;
};

// Whether a file name ends in .tif or .tiff (any case).
bool is_tiff_name(const std::string& path);

// Reads every page of a TIFF file. Throws std::runtime_error naming the file and what is wrong (cannot be opened, with
// the system's reason; not a regular file; not TIFF; the page whose directory or data cannot be read, as in a
// truncated file, with libtiff's own message; the page that differs from the first; an unsupported sample type or
// photometric interpretation; a size the file cannot hold; the first NaN or infinite sample).
TiffVolume read_tiff(const std::string& path);

struct TiffWriteOptions {
  int bits = 8;           // 8 or 16 (unsigned integers) or 32 (with is_float)
  bool is_float = false;  // 32-bit IEEE floats
  TiffCompression compression = TiffCompression::deflate;
  TiffTags tags;  // resolution and ImageDescription to write (none when !has_resolution and empty)
};

// Writes data ([Z, Y, X] or [Z, Y, X, C]; u8, i32 or f32) as Z pages of Y rows, X columns and C samples per pixel.
// Integer outputs must hold whole values in range (0..255 or 0..65535): anything else is an error naming the value,
// never a silent wrap. BigTIFF when the pages exceed 3.5 GiB.
void write_tiff(const std::string& path, const Tensor& data, const TiffWriteOptions& options);

// The options that write `data` like `like`: its compression (Deflate for codecs not listed), resolution and
// description; labels (u8 or i32) as 8-bit, or 16-bit when a value exceeds 255; f32 as 32-bit floats.
TiffWriteOptions tiff_options_like(const TiffVolume& like, const Tensor& data);

// ImageJ's calibration of `spacing` (mm, z y x) for `pages` pages, as ImageJ writes it (micrometres: the description's
// unit and z spacing, XResolution / YResolution in pixels per micrometre), which read_tiff reads back.
void set_imagej_calibration(TiffWriteOptions& o, const std::array<double, 3>& spacing, int64_t pages);

}  // namespace unet::io
