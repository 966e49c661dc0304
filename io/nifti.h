// NIfTI-1 and NIfTI-2 volumes (.nii, .nii.gz) through nifticlib. Voxel values become an f32 tensor in the engine's
// channels-last order [Z, Y, X, C] (NIfTI stores x fastest, so a 3D volume needs no reordering; the 4th NIfTI
// dimension holds the channels of multi-modal images). scl_slope / scl_inter are applied. The complete header
// (dimensions, pixdim, qform and sform with their codes, units, description, extensions) is kept, so outputs
// can be written on the same grid as their input.
#pragma once
#include <array>
#include <memory>
#include <string>

#include "engine/tensor.h"

namespace unet::io {

struct NiftiHeader;  // nifticlib's header, data unloaded

// The header fields an output must carry over from its input.
struct NiftiGeometry {
  int nifti_type = 0;  // 1 = NIfTI-1 single file, 4 = NIfTI-2 single file
  std::array<int64_t, 8> dim{};
  std::array<double, 8> pixdim{};
  int qform_code = 0, sform_code = 0;
  double quatern_b = 0, quatern_c = 0, quatern_d = 0, qoffset_x = 0, qoffset_y = 0, qoffset_z = 0, qfac = 0;
  std::array<std::array<double, 4>, 4> qto_xyz{}, sto_xyz{};
  int xyz_units = 0, time_units = 0;
  std::string descrip;
};

struct NiftiVolume {
  Tensor data;  // f32 [Z, Y, X, C]
  std::shared_ptr<const NiftiHeader> header;
  std::string path;
  int datatype = 0;  // the file's DT_* code
  // What f32 could not hold exactly: "" when every voxel converted exactly (always for integers of up to 16 bits
  // unscaled, and for float32), else the first voxel that changed, as "index I: x X, y Y, z Z, channel C holds V".
  // Images tolerate the rounding; a label map must not (1 + 1e-12 in a float64 label is not class 1).
  std::string inexact;

  // Voxel spacing in millimetres in the engine's axis order (z, y, x), from pixdim[3], pixdim[2], pixdim[1] in the
  // header's spatial unit (nifti_space_unit_mm); 1 mm along an axis the volume does not have.
  std::array<double, 3> spacing() const;
  NiftiGeometry geometry() const;
};

// Millimetres per unit of the spatial part of a NIfTI xyzt_units code (NiftiGeometry::xyz_units): meters 1000,
// micrometers 0.001, millimetres 1; an unknown or missing unit (0 or any other code) is taken as millimetres, as ITK
// and nibabel take it. pixdim and the qform / sform (origin included) are in this unit.
double nifti_space_unit_mm(int xyz_units);

// The NIfTI ending of a file name, ".nii" or ".nii.gz", matched in any case (".NII.GZ" gives ".nii.gz"), or "" when
// the name has neither (or is only the ending).
std::string nifti_ending(const std::string& path);

// Why a NIfTI name's ending cannot be read or written ("the ending .Nii.gz mixes lower and upper case ..."), or "":
// nifticlib takes ".nii.gz" and ".NII.GZ" only. Tools check their output names with it before the work.
std::string nifti_case_problem(const std::string& path);

// Reads a NIfTI-1 or NIfTI-2 file (.nii or .nii.gz), 3D or 4D (channels). Throws std::runtime_error naming the file
// and what is wrong (missing, not a regular file, not NIfTI, more than 4 dimensions, too large), the header field at
// fault (sizeof_hdr or the magic of a single-file NIfTI-1 or NIfTI-2, a datatype other than uint8, int8, int16,
// uint16, int32, float32 or float64 or a bitpix that disagrees with it, an extent below 1 in dim[1..dim[0]], extents
// whose product overflows, a voxel size pixdim[1..3] of a used axis that is not finite and > 0, a vox_offset inside
// the header), or the first bad voxel (NaN or infinite values, values that overflow f32 as stored or after
// scl_slope / scl_inter). The ending may be upper case (.NII, .NII.GZ); one of mixed case (.Nii.gz), which nifticlib
// cannot find, is refused by name.
NiftiVolume read_nifti(const std::string& path);

// Writes data ([Z, Y, X] or [Z, Y, X, C]; u8, i32 or f32) with the header of `like`: same grid, pixdim, qform, sform,
// units and NIfTI version; the datatype follows the tensor and scaling is reset. .nii.gz (or .NII.GZ) compresses.
// Written to a temporary name and renamed into place, so a failure leaves no partial file.
void write_nifti(const std::string& path, const Tensor& data, const NiftiVolume& like);

// A fresh NIfTI-1 header (no voxel data: `data` stays undefined) for volumes of `shape` ([Z, Y, X] or [Z, Y, X, C])
// with voxel spacing (z, y, x) in millimetres: qform and sform both scanner-anatomical (code 1) with the diagonal
// transform diag(x, y, z) and origin 0, units mm. For writing volumes that have no input file (synthetic data).
NiftiVolume make_nifti_like(const Shape& shape, const std::array<double, 3>& spacing_zyx);

}  // namespace unet::io
