"""A minimal safetensors writer following the published layout (u64 little-endian header size, JSON header, raw
little-endian data), independent of the engine's C++ writer. Used by the fixture generators; the Debian machine has
no python3-safetensors package."""
import json
import struct

import torch

_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32", torch.uint8: "U8"}


def save(path, tensors, metadata=None, order=None):
    blobs, header, offset = [], {}, 0
    for name in order or list(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[name] = {"shape": list(t.shape), "data_offsets": [offset, offset + len(raw)], "dtype": _NAMES[t.dtype]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
