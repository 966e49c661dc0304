#!/usr/bin/env python3
"""Writes tests/golden/fixture.safetensors with a writer independent of the engine's, following the published
safetensors layout (u64 little-endian header size, JSON header, raw data), with a choice the engine's writer does
not make: tensors stored in reverse name order.
Regenerate: /usr/bin/python3 tests/golden/make_safetensors_fixture.py
"""
import os

import torch

from safetensors_writer import save

tensors = {
    "input_block.conv1.conv.weight": torch.arange(2 * 1 * 3 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3, 3) / 7,
    "input_block.norm1.weight": torch.tensor([1.5, -0.25], dtype=torch.float16),
    "bf16_values": torch.tensor([1.0, -2.5, 3.140625], dtype=torch.bfloat16),
    "labels": torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
    "mask": torch.tensor([0, 255, 7], dtype=torch.uint8),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixture.safetensors")
save(out, tensors, {"format": "pt", "model": "{\"name\": \"fixture\"}"}, order=sorted(tensors, reverse=True))
print("wrote", out)
