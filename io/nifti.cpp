// NIfTI reading and writing on top of nifticlib (libnifti2, which reads and writes both NIfTI-1 and NIfTI-2).
#include "io/nifti.h"

#include "io/atomic_file.h"

#include <nifti2_io.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace unet::io {

struct NiftiHeader {
  nifti_image* nim = nullptr;
  ~NiftiHeader() {
    if (nim) nifti_image_free(nim);
  }
};

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) { throw std::runtime_error(path + ": " + what); }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

template <class T>
void convert(const void* src, float* dst, int64_t n, double slope, double inter) {
  const T* s = static_cast<const T*>(src);
  if (slope != 0.0 && !(slope == 1.0 && inter == 0.0)) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<double>(s[i]) * slope + inter);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
  }
}

// One .nii / .nii.gz file: header, a 4-byte empty extension flag, voxels. nifticlib fills the header structs, but
// its own writer (3.0.1) cannot write single-file NIfTI-2 (it treats type 4 as a header/image pair), so the bytes are
// written here through znzlib, which also does the gzip compression.
void write_single_file(const std::string& path, nifti_image* nim, bool nifti2, bool gz) {
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
  znzFile fp = znzopen(path.c_str(), "wb", gz ? 1 : 0);
  if (znz_isnull(fp)) fail(path, "cannot create the output file");
  bool ok = znzwrite(header.data(), 1, header.size(), fp) == header.size() && znzwrite(nim->data, 1, bytes, fp) == bytes;
  ok = (znzclose(fp) == 0) && ok;
  if (!ok) {
    std::error_code ec;
    std::filesystem::remove(path, ec);
    fail(path, "writing the NIfTI file failed (disk full?)");
  }
}

}  // namespace

std::array<double, 3> NiftiVolume::spacing() const {
  const nifti_image* n = header->nim;
  return {n->pixdim[3] > 0 ? n->pixdim[3] : 1.0, n->pixdim[2] > 0 ? n->pixdim[2] : 1.0,
          n->pixdim[1] > 0 ? n->pixdim[1] : 1.0};
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

NiftiVolume read_nifti(const std::string& path) {
  nifti_set_debug_level(0);  // nifticlib prints its own errors otherwise; ours name the file
  if (!std::filesystem::exists(path)) fail(path, "no such file");
  if (!ends_with(path, ".nii") && !ends_with(path, ".nii.gz")) fail(path, "not a NIfTI file name (expected .nii or .nii.gz)");
  auto header = std::make_shared<NiftiHeader>();
  header->nim = nifti_image_read(path.c_str(), 0);
  nifti_image* nim = header->nim;
  if (!nim) fail(path, "not a readable NIfTI-1 or NIfTI-2 file");
  // nifticlib reports NIfTI-2 single files as type 1; ask the header itself, so outputs keep the version.
  int version = 0;
  if (void* raw_header = nifti_read_header(path.c_str(), &version, 0)) free(raw_header);
  if (version == 2 && nim->nifti_type == NIFTI_FTYPE_NIFTI1_1) nim->nifti_type = NIFTI_FTYPE_NIFTI2_1;
  if (nim->ndim < 1 || nim->ndim > 4) fail(path, "has " + std::to_string(nim->ndim) + " dimensions; expected 3D or 4D (channels)");
  int64_t nx = nim->nx, ny = nim->ny > 0 ? nim->ny : 1, nz = nim->nz > 0 ? nim->nz : 1, nc = nim->nt > 0 ? nim->nt : 1;
  if (nim->ndim < 4) nc = 1;
  for (int64_t d : {nx, ny, nz, nc})
    if (d < 1 || d > (1 << 20)) fail(path, "has a dimension of " + std::to_string(d) + " voxels");
  if (nx * ny * nz * nc > (int64_t(1) << 32)) fail(path, "is too large (more than 2^32 voxels)");
  switch (nim->datatype) {
    case DT_UINT8: case DT_INT8: case DT_INT16: case DT_UINT16: case DT_INT32: case DT_FLOAT32: case DT_FLOAT64: break;
    default:
      fail(path, std::string("has unsupported datatype ") + nifti_datatype_to_string(nim->datatype) +
                     " (expected uint8, int8, int16, uint16, int32, float32 or float64)");
  }
  if (nifti_image_load(nim) != 0 || !nim->data) fail(path, "cannot read the voxel data (truncated or corrupt file?)");

  NiftiVolume vol;
  vol.path = path;
  vol.datatype = nim->datatype;
  int64_t n = nx * ny * nz * nc;
  Tensor flat = Tensor::empty({nc, nz, ny, nx});  // NIfTI order: x fastest, channel slowest
  float* f = flat.data<float>();
  double slope = nim->scl_slope, inter = nim->scl_inter;
  switch (nim->datatype) {
    case DT_UINT8: convert<uint8_t>(nim->data, f, n, slope, inter); break;
    case DT_INT8: convert<int8_t>(nim->data, f, n, slope, inter); break;
    case DT_INT16: convert<int16_t>(nim->data, f, n, slope, inter); break;
    case DT_UINT16: convert<uint16_t>(nim->data, f, n, slope, inter); break;
    case DT_INT32: convert<int32_t>(nim->data, f, n, slope, inter); break;
    case DT_FLOAT32: convert<float>(nim->data, f, n, slope, inter); break;
    case DT_FLOAT64: convert<double>(nim->data, f, n, slope, inter); break;
  }
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
  if (!ends_with(path, ".nii") && !ends_with(path, ".nii.gz")) fail(path, "output name must end in .nii or .nii.gz");
  check_arg(data.rank() == 3 || data.rank() == 4, path + ": expected [Z, Y, X] or [Z, Y, X, C] data, got " + data.describe());
  const nifti_image* src = like.header->nim;
  int64_t nz = data.dim(0), ny = data.dim(1), nx = data.dim(2), nc = data.rank() == 4 ? data.dim(3) : 1;
  int64_t snz = src->nz > 0 ? src->nz : 1, sny = src->ny > 0 ? src->ny : 1;
  check_arg(nx == src->nx && ny == sny && nz == snz,
            path + ": data " + data.describe() + " does not match the reference grid of " + like.path);
  int datatype = 0;
  switch (data.dtype()) {
    case DType::u8: datatype = DT_UINT8; break;
    case DType::i32: datatype = DT_INT32; break;
    case DType::f32: datatype = DT_FLOAT32; break;
    default: check_arg(false, path + ": cannot write " + data.describe() + " (expected u8, i32 or f32)");
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
  int64_t dims[8] = {nc > 1 ? 4 : 3, nx, ny, nz, nc, 1, 1, 1};
  for (int i = 0; i < 8; ++i) nim->dim[i] = dims[i];
  nifti_update_dims_from_array(nim.get());
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
  write_single_file(file.temp_path(), nim.get(), nifti_type == NIFTI_FTYPE_NIFTI2_1, ends_with(path, ".gz"));
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
