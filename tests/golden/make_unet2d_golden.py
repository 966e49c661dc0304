#!/usr/bin/env python3
"""UNet2D (Ronneberger; DLE UNet_Medical) as a PyTorch module with the engine's parameter names, run on a random
input with random weights. Writes tests/golden/unet2d.safetensors: the weights in PyTorch layout and names (what the
engine must load), the input, the logits and a random r in channels-last layout ("__input__", "__output__", "__r__"),
and the gradients of sum(logits * r) for the input ("__grad_input__", channels-last) and every parameter
("__grad__.NAME", PyTorch layout). Dropout is off (evaluation mode): the engine's mask is its own.
The C++ test (tests/test_unet2d.cpp) loads it, runs its own network and compares.
Regenerate: /usr/bin/python3 tests/golden/make_unet2d_golden.py
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_writer import save  # noqa: E402


class Level(nn.Module):
    def __init__(self, cin, cout, up):
        super().__init__()
        if up:
            self.upconv = nn.ConvTranspose2d(cin, cout, 3, stride=2)
            cin = 2 * cout
        self.conv1 = nn.Conv2d(cin, cout, 3)
        self.conv2 = nn.Conv2d(cout, cout, 3)

    def convs(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class UNet2D(nn.Module):
    def __init__(self, cin, classes, filters, dropout=0.5):
        super().__init__()
        f = filters
        self.down = nn.ModuleList([Level(cin if i == 0 else f[i - 1], f[i], False) for i in range(4)])
        self.bottleneck = Level(f[3], f[4], False)
        self.up = nn.ModuleList([Level(f[4 - i], f[3 - i], True) for i in range(4)])
        self.head = nn.Conv2d(f[0], classes, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        skips = []
        for level in self.down:
            x = level.convs(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.dropout(self.bottleneck.convs(x))
        for i, level in enumerate(self.up):
            h, w = x.shape[-2:]
            up = F.relu(level.upconv(x)[..., : 2 * h, : 2 * w])  # TensorFlow's "same": the first 2n outputs
            skip = skips[3 - i]
            oh, ow = up.shape[-2:]
            top, left = (skip.shape[-2] - oh) // 2, (skip.shape[-1] - ow) // 2
            x = level.convs(torch.cat([up, skip[..., top: top + oh, left: left + ow]], 1))
        return self.head(x)


def act(t):
    return t.permute(0, 2, 3, 1).contiguous()


def main():
    torch.manual_seed(1205)
    config = {"in_channels": 1, "out_channels": 3, "filters": [4, 8, 8, 16, 16], "input": [2, 1, 188, 204]}
    net = UNet2D(config["in_channels"], config["out_channels"], config["filters"]).eval()
    with torch.no_grad():
        for p in net.parameters():  # He-scaled, so activations stay of order 1 through the 23 layers
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn_like(p) * ((2.0 / fan_in) ** 0.5 if p.dim() > 1 else 0.1))
    x = torch.randn(*config["input"], requires_grad=True)
    y = net(x)
    r = torch.randn_like(y)
    (y * r).sum().backward()
    tensors = {k: v.detach() for k, v in net.state_dict().items()}
    tensors["__input__"] = act(x.detach())
    tensors["__output__"] = act(y.detach())
    tensors["__r__"] = act(r)
    tensors["__grad_input__"] = act(x.grad)
    for name, p in net.named_parameters():
        tensors["__grad__." + name] = p.grad
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unet2d.safetensors")
    save(out, tensors, {k: json.dumps(v) for k, v in config.items()})
    print("wrote", out, "output", list(y.shape))


if __name__ == "__main__":
    main()
