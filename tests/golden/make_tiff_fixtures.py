#!/usr/bin/env python3
"""Small TIFF fixtures made with tifffile (Debian python3-tifffile), LZW and PackBits copies made from them with
libtiff's tiffcp (Debian libtiff-tools; tifffile writes neither without imagecodecs), and what tifffile reads from them:
sample values in the engine's [z, y, x, c] order and the spacing (z, y, x) in millimetres the reader must find.
Also malformed files the reader must refuse, each with a phrase its error must contain.
Regenerate: /usr/bin/python3 tests/golden/make_tiff_fixtures.py
"""
import json
import os
import subprocess

import numpy as np
import tifffile

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiff")
os.makedirs(here, exist_ok=True)
rng = np.random.default_rng(20261205)
expected = {}


def record(name, zyxc, spacing=(1.0, 1.0, 1.0)):
    """What the reader must return for `name`: tifffile's values (checked by reading the file back) and spacing."""
    back = tifffile.imread(os.path.join(here, name))
    assert back.size == zyxc.size, name
    expected[name] = {
        "shape": list(zyxc.shape),
        "values": [float(v) for v in zyxc.reshape(-1)],
        "spacing": list(spacing),
    }


def write(name, data, zyxc, spacing=(1.0, 1.0, 1.0), **kwargs):
    kwargs.setdefault("photometric", "minisblack")  # else tifffile takes a first axis of 3 or 4 for RGB(A) planes
    tifffile.imwrite(os.path.join(here, name), data, **kwargs)
    record(name, zyxc, spacing)


# An 8-bit stack of 3 pages, uncompressed.
a = rng.integers(0, 256, size=(3, 5, 7), dtype=np.uint8)
write("u8_stack.tif", a, a[..., None])
# 16-bit, Deflate.
b = rng.integers(0, 65536, size=(4, 6, 9), dtype=np.uint16)
write("u16_deflate.tif", b, b[..., None], compression="zlib")
# One 2D float page, Deflate.
f = rng.normal(0, 100, size=(8, 11)).astype(np.float32)
write("f32_2d.tif", f, f[None, ..., None], compression="zlib")
# Signed 16-bit.
s = rng.integers(-32768, 32768, size=(2, 5, 6), dtype=np.int16)
write("i16_stack.tif", s, s[..., None])
# Tiled (16 x 16 tiles over 20 x 37 pixels: partial tiles on both edges).
t = rng.integers(0, 65536, size=(2, 20, 37), dtype=np.uint16)
write("u16_tiled.tif", t, t[..., None], tile=(16, 16))
# Two samples per pixel stored as separate planes, 3 pages.
p = rng.integers(0, 256, size=(3, 2, 5, 7), dtype=np.uint8)
write("u8_planar_2ch.tif", p, np.transpose(p, (0, 2, 3, 1)), planarconfig="separate", photometric="minisblack")
# RGB, contiguous.
rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
write("rgb.tif", rgb, rgb[None], photometric="rgb")
# ImageJ stack with a spacing: x 0.25 um, y 0.5 um, z 2 um.
ij = rng.normal(0, 1, size=(4, 5, 6)).astype(np.float32)
write("imagej_spacing.tif", ij, ij[..., None], (0.002, 0.0005, 0.00025), imagej=True,
      resolution=(1 / 0.25, 1 / 0.5), metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"})
# ImageJ hyperstack with 2 channels and 3 slices: pages interleave the channels (ImageJ's czt order).
hc = rng.integers(0, 256, size=(3, 2, 5, 6), dtype=np.uint8)
write("imagej_2ch.tif", hc, np.transpose(hc, (0, 2, 3, 1)), imagej=True, metadata={"axes": "ZCYX"})
# Resolution in pixels per centimetre: x 0.1 mm, y 0.2 mm, z the x spacing (isotropic).
cm = rng.integers(0, 256, size=(2, 4, 5), dtype=np.uint8)
write("cm_resolution.tif", cm, cm[..., None], (0.1, 0.2, 0.1), resolution=(100, 50), resolutionunit="CENTIMETER")
# 72 dpi from an image editor is not a physical spacing: 1 mm.
dpi = rng.integers(0, 256, size=(4, 5), dtype=np.uint8)
write("dpi72.tif", dpi, dpi[None, ..., None], resolution=(72, 72), resolutionunit="INCH")

# LZW and PackBits copies by libtiff's tiffcp.
for src, codec, name in [("u8_stack.tif", "lzw", "u8_lzw.tif"), ("u16_deflate.tif", "lzw", "u16_lzw.tif"),
                         ("f32_2d.tif", "lzw", "f32_lzw.tif"), ("u8_stack.tif", "packbits", "u8_packbits.tif")]:
    subprocess.run(["tiffcp", "-c", codec, os.path.join(here, src), os.path.join(here, name)], check=True)
    expected[name] = dict(expected[src])

# Malformed or unsupported files, and a phrase of the error each must get.
bad = {}
nan = rng.normal(0, 1, size=(3, 5, 6)).astype(np.float32)
nan[1, 3, 4] = np.nan
tifffile.imwrite(os.path.join(here, "bad_nan.tif"), nan, photometric="minisblack")
bad["bad_nan.tif"] = "page 2, row 3, column 4: NaN"
tifffile.imwrite(os.path.join(here, "bad_palette.tif"), np.zeros((5, 6), np.uint8), photometric="palette",
                 colormap=np.zeros((3, 256), np.uint16))
bad["bad_palette.tif"] = "a palette image"
with tifffile.TiffWriter(os.path.join(here, "bad_mixed_sizes.tif")) as w:
    w.write(np.zeros((5, 6), np.uint8))
    w.write(np.zeros((5, 7), np.uint8))
bad["bad_mixed_sizes.tif"] = "a stack needs pages of one size and sample type"
tifffile.imwrite(os.path.join(here, "bad_f16.tif"), np.zeros((5, 6), np.float16))
bad["bad_f16.tif"] = "16-bit floating-point samples"
# Stored rotated by 180 degrees (Orientation 3, bottom-right): read in stored order it would pair with its label map,
# or be scored against its reference, pixel for pixel in the wrong place.
tifffile.imwrite(os.path.join(here, "bad_orientation.tif"), np.zeros((5, 6), np.uint8), extratags=[(274, 3, 1, 3, True)])
bad["bad_orientation.tif"] = "has Orientation 3; expected 1"
with open(os.path.join(here, "u16_deflate.tif"), "rb") as fh:
    whole = fh.read()
with tifffile.TiffFile(os.path.join(here, "u16_deflate.tif")) as tf:  # where page 3's compressed data begins
    start = tf.pages[2].dataoffsets[0]
# Pages 3 and 4: zeros instead of Deflate data, and page 4's directory (after page 3's data) zeros too, which the
# reader finds first (it reads every directory before any data).
with open(os.path.join(here, "bad_truncated.tif"), "wb") as fh:
    fh.write(whole[:start] + bytes(len(whole) - start))
bad["bad_truncated.tif"] = "page 4: cannot read its directory"
with open(os.path.join(here, "bad_not_tiff.tif"), "wb") as fh:
    fh.write(b"P5\n4 4\n255\n" + bytes(16))
bad["bad_not_tiff.tif"] = "not a readable TIFF file"

with open(os.path.join(here, "expected.json"), "w") as fh:
    json.dump({"good": expected, "bad": bad}, fh, indent=1)
print("wrote", len(expected), "good and", len(bad), "bad fixtures to", here)
