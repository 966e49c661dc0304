#!/usr/bin/env python3
"""Resampling fixtures made with scipy.ndimage (Debian python3-scipy), as nnU-Net resamples (its
preprocessing/preprocessing.py, resample_data_or_seg and resize_segmentation, through skimage.transform.resize with
mode "edge" and no anti-aliasing): output voxel i samples the input at (i + 0.5) * n_in / n_out - 0.5 along each axis,
values beyond the edge are the edge's (map_coordinates mode "nearest"); images with spline order 3 (or 0 along the
low-resolution axis when anisotropic), labels one class at a time: the class's mask resampled with order 1 (0 along the
low-resolution axis), voxels >= 0.5 take the class, classes in ascending order.
Writes tests/golden/resample.json: inputs in [z, y, x, c] order, per-axis orders, output shapes and values.
Regenerate: /usr/bin/python3 tests/golden/make_resample_fixtures.py
"""
import json
import os

import numpy as np
from scipy import ndimage

rng = np.random.default_rng(20261205)


def resize_axis(a, axis, n_out, order):
    """One axis of `a` resized to n_out with map_coordinates (the other axes sampled at their own voxels)."""
    n_in = a.shape[axis]
    grids = np.meshgrid(*[np.arange(n_out if d == axis else a.shape[d], dtype=np.float64) for d in range(a.ndim)],
                        indexing="ij")
    grids[axis] = (grids[axis] + 0.5) * n_in / n_out - 0.5
    return ndimage.map_coordinates(a, grids, order=order, mode="nearest")


def resize(a, shape, orders):
    """A 3D array resized axis by axis. For orders that are all equal this is map_coordinates over the 3D grid
    (tensor-product splines are separable); checked below for order 3."""
    out = a.astype(np.float64)
    for axis in range(3):
        if out.shape[axis] != shape[axis]:
            out = resize_axis(out, axis, shape[axis], orders[axis])
    return out


def resize_3d(a, shape, order):
    grids = np.meshgrid(*[(np.arange(shape[d], dtype=np.float64) + 0.5) * a.shape[d] / shape[d] - 0.5
                          for d in range(3)], indexing="ij")
    return ndimage.map_coordinates(a.astype(np.float64), grids, order=order, mode="nearest")


cases = []
image = rng.normal(size=(7, 9, 11, 2))
for name, shape, orders in [("cubic", (5, 13, 8), (3, 3, 3)), ("anisotropic", (12, 6, 14), (0, 3, 3)),
                            ("linear", (4, 10, 16), (1, 1, 1)), ("nearest", (9, 5, 7), (0, 0, 0))]:
    out = np.stack([resize(image[..., c], shape, orders) for c in range(image.shape[3])], axis=-1)
    if len(set(orders)) == 1:
        full = np.stack([resize_3d(image[..., c], shape, orders[0]) for c in range(image.shape[3])], axis=-1)
        assert np.max(np.abs(full - out)) < 1e-9, name
    cases.append({"name": name, "kind": "image", "input_shape": list(image.shape), "input": image.ravel().tolist(),
                  "output_shape": list(shape), "orders": list(orders), "output": out.ravel().tolist()})

label = rng.integers(0, 3, size=(6, 8, 10))
label[2:5, 3:7, 2:8] = 2  # a block, so the classes have regions and not only single voxels
for name, shape, orders in [("label_linear", (9, 5, 12), (1, 1, 1)), ("label_anisotropic", (3, 11, 7), (0, 1, 1))]:
    out = np.zeros(shape, dtype=np.int64)
    for c in np.unique(label):
        mask = resize((label == c).astype(np.float64), shape, orders)
        out[mask >= 0.5] = c
    cases.append({"name": name, "kind": "label", "input_shape": list(label.shape), "input": label.ravel().tolist(),
                  "output_shape": list(shape), "orders": list(orders), "output": out.ravel().tolist()})

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resample.json")
with open(path, "w") as f:
    json.dump({"generator": "scipy " + __import__("scipy").__version__, "cases": cases}, f)
print("wrote", path)
