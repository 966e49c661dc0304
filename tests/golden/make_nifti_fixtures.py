#!/usr/bin/env python3
"""Small NIfTI fixtures made with nibabel (Debian python3-nibabel), and what nibabel reads from them
(voxel values after scaling in the engine's [z, y, x, c] order, pixdim, qform/sform codes and matrices),
so the C++ tests check nifticlib-based I/O against an independent reader.
Regenerate: /usr/bin/python3 tests/golden/make_nifti_fixtures.py
"""
import json
import os

import nibabel as nib
import numpy as np

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nifti")
os.makedirs(here, exist_ok=True)
rng = np.random.default_rng(20261121)
expected = {}


def save(name, img):
    path = os.path.join(here, name)
    nib.save(img, path)
    back = nib.load(path)
    data = np.asarray(back.get_fdata(dtype=np.float64))
    if data.ndim == 3:
        data = data[..., None]
    zyxc = np.transpose(data, (2, 1, 0, 3))  # nibabel indexes [x, y, z, c]
    hdr = back.header
    qform, qcode = back.get_qform(coded=True)
    sform, scode = back.get_sform(coded=True)
    expected[name] = {
        "shape": list(zyxc.shape),
        "data": [float(v) for v in zyxc.reshape(-1)],
        "pixdim": [float(v) for v in hdr["pixdim"][:8]],
        "qform_code": int(qcode) if qcode is not None else 0,
        "sform_code": int(scode) if scode is not None else 0,
        "qform": [[float(v) for v in row] for row in (qform if qform is not None else np.zeros((4, 4)))],
        "sform": [[float(v) for v in row] for row in (sform if sform is not None else np.zeros((4, 4)))],
        "nifti2": isinstance(back, nib.Nifti2Image),
    }


affine = np.array([[-0.9, 0.1, 0.0, 10.0], [0.05, 0.95, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0, 0, 0, 1]])

# sform only (code 2 = aligned), float32
img = nib.Nifti1Image(rng.normal(size=(7, 6, 5)).astype(np.float32), None)
img.set_sform(affine, code=2)
img.set_qform(None, code=0)
save("sform_only.nii.gz", img)

# qform only (code 1 = scanner), int16, uncompressed
img = nib.Nifti1Image(rng.integers(-300, 300, size=(6, 5, 4)).astype(np.int16), None)
img.set_qform(np.diag([1.2, 1.2, 3.0, 1.0]) @ np.array([[1, 0, 0, 3], [0, -1, 0, 4], [0, 0, 1, 5], [0, 0, 0, 1]]), code=1)
img.set_sform(None, code=0)
save("qform_only.nii", img)

# anisotropic spacing, int16 with scl_slope / scl_inter, both forms
img = nib.Nifti1Image(rng.integers(0, 1000, size=(8, 7, 3)).astype(np.int16), np.diag([0.8, 0.75, 3.5, 1.0]))
img.header.set_slope_inter(0.5, -10.0)
img.header.set_xyzt_units("mm", "sec")
save("aniso_int16_scaled.nii.gz", img)

# 4D: three channels (modalities), float32
img = nib.Nifti1Image(rng.normal(size=(5, 4, 3, 3)).astype(np.float32), np.diag([1.0, 1.0, 1.5, 1.0]))
save("four_channels.nii.gz", img)

# NIfTI-2, uint8
img = nib.Nifti2Image(rng.integers(0, 255, size=(4, 5, 6)).astype(np.uint8), affine)
save("nifti2_uint8.nii", img)

with open(os.path.join(here, "expected.json"), "w") as f:
    json.dump(expected, f)
print("wrote", len(expected), "fixtures to", here)
