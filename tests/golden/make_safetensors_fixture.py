#!/usr/bin/env python3
"""Writes tests/golden/fixture.safetensors with a writer independent of the engine's, following the published
safetensors layout (u64 little-endian header size, JSON header, raw data), with choices the engine's writer does
not make: unsorted header keys, a second space-padded header, tensors stored in reverse name order.
Regenerate: /usr/bin/python3 tests/golden/make_safetensors_fixture.py
"""
import json
import os
import struct

import torch

tensors = {
    "input_block.conv1.conv.weight": torch.arange(2 * 1 * 3 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3, 3) / 7,
    "input_block.norm1.weight": torch.tensor([1.5, -0.25], dtype=torch.float16),
    "bf16_values": torch.tensor([1.0, -2.5, 3.140625], dtype=torch.bfloat16),
    "labels": torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
    "mask": torch.tensor([0, 255, 7], dtype=torch.uint8),
}
names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32", torch.uint8: "U8"}

blobs, header, offset = [], {}, 0
for name in sorted(tensors, reverse=True):
    t = tensors[name].contiguous()
    raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
    header[name] = {"shape": list(t.shape), "data_offsets": [offset, offset + len(raw)], "dtype": names[t.dtype]}
    blobs.append(raw)
    offset += len(raw)
header["__metadata__"] = {"format": "pt", "model": "{\"name\": \"fixture\"}"}
text = json.dumps(header, indent=1).encode() + b"   "
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixture.safetensors")
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
print("wrote", out)
