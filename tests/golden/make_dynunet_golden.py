#!/usr/bin/env python3
"""The nnU-Net DynUNet written in plain PyTorch with MONAI's module names (Debian has no MONAI package), run on a
random input with random weights. Writes, per configuration, a safetensors file holding the weights in PyTorch
layout and names (what the engine must load), the input and the outputs in the engine's channels-last layout
(tensors "__input__", "__output__", "__ds1__", ...), and the configuration in the metadata.
The C++ test (tests/test_nnunet.cpp) loads it, runs its own network and compares.
usage: /usr/bin/python3 tests/golden/make_dynunet_golden.py [OUTPUT_DIR]   (default: tests/golden)
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_writer import save  # noqa: E402


def conv_nd(dims, transposed=False):
    return {(2, False): nn.Conv2d, (3, False): nn.Conv3d, (2, True): nn.ConvTranspose2d, (3, True): nn.ConvTranspose3d}[
        (dims, transposed)]


class Wrap(nn.Module):  # MONAI's Convolution is a Sequential whose layer is called "conv"
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


def conv(dims, cin, cout, k, s, bias=False):
    pad = [(ki - si + 1) // 2 for ki, si in zip(k, s)]
    return Wrap(conv_nd(dims)(cin, cout, k, s, pad, bias=bias))


def norm(dims, c):
    return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(c, eps=1e-5, affine=True)


class Block(nn.Module):
    def __init__(self, dims, cin, cout, k, s, res):
        super().__init__()
        self.conv1, self.norm1 = conv(dims, cin, cout, k, s), norm(dims, cout)
        self.conv2, self.norm2 = conv(dims, cout, cout, k, [1] * dims), norm(dims, cout)
        self.res = res
        if res and (cin != cout or any(x != 1 for x in s)):
            self.conv3, self.norm3 = conv(dims, cin, cout, [1] * dims, s), norm(dims, cout)
        else:
            self.conv3 = None

    def forward(self, x):
        h = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        h = self.norm2(self.conv2(h))
        if self.res:
            h = h + (self.norm3(self.conv3(x)) if self.conv3 is not None else x)
        return F.leaky_relu(h, 0.01)


class Up(nn.Module):
    def __init__(self, dims, cin, cout, k, up, res):
        super().__init__()
        self.transp_conv = Wrap(conv_nd(dims, True)(cin, cout, up, up, bias=True))
        self.conv_block = Block(dims, 2 * cout, cout, k, [1] * dims, res)

    def forward(self, x, skip):
        return self.conv_block(torch.cat([self.transp_conv(x), skip], dim=1))


class DynUNet(nn.Module):
    def __init__(self, dims, cin, cout, kernels, strides, filters, ds, res):
        super().__init__()
        L = len(kernels)
        self.input_block = Block(dims, cin, filters[0], kernels[0], strides[0], res)
        self.downsamples = nn.ModuleList(
            [Block(dims, filters[i - 1], filters[i], kernels[i], strides[i], res) for i in range(1, L - 1)])
        self.bottleneck = Block(dims, filters[L - 2], filters[L - 1], kernels[L - 1], strides[L - 1], res)
        self.upsamples = nn.ModuleList(
            [Up(dims, filters[L - 1 - j], filters[L - 2 - j], kernels[L - 1 - j], strides[L - 1 - j], res)
             for j in range(L - 1)])
        self.output_block = Wrap(conv(dims, filters[0], cout, [1] * dims, [1] * dims, bias=True))
        self.deep_supervision_heads = nn.ModuleList(
            [Wrap(conv(dims, filters[i + 1], cout, [1] * dims, [1] * dims, bias=True)) for i in range(ds)])

    def forward(self, x):
        skips = [self.input_block(x)]
        for d in self.downsamples:
            skips.append(d(skips[-1]))
        h = self.bottleneck(skips[-1])
        L = len(skips) + 1
        decoder = {}
        for j, up in enumerate(self.upsamples):
            h = up(h, skips[L - 2 - j])
            decoder[L - 2 - j] = h
        outs = [self.output_block(h)]
        for i, head in enumerate(self.deep_supervision_heads):
            outs.append(F.interpolate(head(decoder[i + 1]), size=x.shape[2:], mode="nearest"))
        return outs


def act(t):
    return t.permute(0, *range(2, t.dim()), 1).contiguous()


CONFIGS = {
    "dynunet3d_ds": dict(dims=3, cin=2, cout=3, kernels=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                         strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]], filters=[4, 8, 16], ds=1, res=False,
                         input=[1, 2, 8, 12, 16]),
    "dynunet2d_res": dict(dims=2, cin=1, cout=2, kernels=[[3, 3], [3, 3], [3, 3], [3, 3]],
                          strides=[[1, 1], [2, 2], [2, 2], [2, 2]], filters=[4, 8, 16, 16], ds=2, res=True,
                          input=[2, 1, 16, 24]),
}


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    torch.manual_seed(1121)
    for name, c in CONFIGS.items():
        net = DynUNet(c["dims"], c["cin"], c["cout"], c["kernels"], c["strides"], c["filters"], c["ds"], c["res"])
        with torch.no_grad():
            for p_name, p in net.named_parameters():
                p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.2) + (1.0 if p_name.endswith("norm1.weight") else 0.0))
        x = torch.randn(*c["input"])
        outs = net(x)
        tensors = dict(net.state_dict())
        tensors["__input__"] = act(x)
        for i, o in enumerate(outs):
            tensors["__output__" if i == 0 else f"__ds{i}__"] = act(o)
        meta = {k: json.dumps(v) for k, v in c.items()}
        save(os.path.join(out_dir, name + ".safetensors"), tensors, meta)
    print("wrote", ", ".join(CONFIGS), "to", out_dir)


if __name__ == "__main__":
    main()
