// The image files the tools read and write, whatever their format: NIfTI (.nii, .nii.gz; io/nifti.h) and TIFF
// (.tif, .tiff; io/tiff.h), chosen by the file name. Voxels are f32 [Z, Y, X, C] either way.
#pragma once
#include <array>
#include <optional>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "io/nifti.h"
#include "io/tiff.h"

namespace unet::io {

struct Image {
  Tensor data;                             // f32 [Z, Y, X, C]
  std::array<double, 3> spacing{1, 1, 1};  // mm (z, y, x)
  std::string path;
  std::optional<NiftiVolume> nifti;  // the header of a NIfTI file (its data is `data`)
  std::optional<TiffVolume> tiff;    // the sample type, compression and tags of a TIFF file (its data is `data`)
};

// Whether a file name is one of the formats above (.nii, .nii.gz, .tif, .tiff; in any case, as every directory of
// inputs is listed: "B.NII.GZ" is read as a NIfTI file).
bool is_image_name(const std::string& path);
// The file name without its format's extension: "case_001" for ".../case_001.nii.gz".
std::string image_stem(const std::string& path);

// Reads a NIfTI or TIFF file (by its name). Errors as read_nifti and read_tiff: std::runtime_error naming the file.
Image read_image(const std::string& path);
// nnU-Net v2's one file per channel (CASE_0000, CASE_0001, ...): each read, on one grid, stacked as channels in the
// given order; the header and path are the first file's. A grid that differs is an error naming both files.
Image read_channel_images(const std::vector<std::string>& paths);

// What differs between the grids of two images that must coincide voxel for voxel (an image and its label, the
// channel files of a case, a prediction and its reference), or "" when nothing does; `b` is named as the reference.
// Compared: the extent (z, y, x); the spacing; and, when both are NIfTI files with a qform or sform, the direction
// cosines, the voxel sizes (the columns' lengths: an sform may scale what pixdim does not) and the origin of the
// voxel-to-world transform (the sform when its code is set, else the qform, as nifticlib and ITK choose), all in
// millimetres whatever the files' units (nifti_space_unit_mm). Two numbers agree when
// |a - b| <= 1e-4 + 1e-3 |b| (mm, or cosines), origins when |a - b| <= 1e-4 + 1e-5 |b| mm: headers written in f32
// by other tools pass, a grid shifted by a slice (even at a CT table's -1200 mm) or flipped does not. A TIFF without a
// calibration (io/tiff.h) has no spacing to compare, and TIFF has no origin or direction.
std::string grid_mismatch(const Image& a, const Image& b);

// What is wrong with the voxels of an f32 [Z, Y, X, C] tensor, or "" when every value is finite: "N voxels are NaN
// or infinite (first at x X, y Y, z Z, channel C)". Resampling or normalising huge values, or a damaged model, can
// make them; argmax over NaN would silently write background.
std::string nonfinite_problem(const Tensor& data);

// Checks that a label map's values reached f32 exactly (NiftiVolume::inexact; TIFF holds at most 32-bit floats):
// otherwise std::runtime_error "PATH: voxel ... holds 1.000000000001, which f32 ...". A float64 1 + 1e-12 would
// otherwise pass as class 1.
void check_exact_labels(const Image& labels);

// Checks a voxel spacing (mm, z, y, x): each finite and > 0; otherwise std::runtime_error "WHAT: voxel spacing ...".
void check_spacing(const std::array<double, 3>& spacing, const std::string& what);

// Writes data ([Z, Y, X] or [Z, Y, X, C]; u8, i32 or f32) in the format of path's name, like `like`: a NIfTI output
// of a NIfTI input keeps its header; a TIFF output of a TIFF input its compression and tags (labels as 8-bit, 16-bit
// above 255; f32 as floats); across formats the spacing carries over. Atomic, as the writers below.
void write_image_like(const std::string& path, const Tensor& data, const Image& like);

}  // namespace unet::io
