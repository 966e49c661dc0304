#!/usr/bin/env python3
"""UNet 3+ (DLE UNet3P, Keras) as a PyTorch module with the engine's parameter names, small filters, deep supervision
on, random weights and random running statistics. Writes tests/golden/unet3plus.safetensors:
- the state (parameters and batch-norm buffers) in PyTorch layout and names, as the engine must load it;
- "__input__" (channels-last) and, for a forward in training mode (batch statistics, running ones updated):
  "__output__.K" for the five outputs (logits, then the supervision heads of levels 1..4), one random "__r__", the
  gradients of sum((sum_K output_K) * r) for the input ("__grad_input__") and every parameter ("__grad__.NAME",
  PyTorch layout),
  and the running statistics after that step ("__after__.NAME");
- "__eval_output__": the logits in evaluation mode (running statistics), after the training step.
And tests/golden/unet3plus_cgm.safetensors, the classification-guided module (cgm_main).
The C++ test (tests/test_unet3plus.cpp) loads it, runs its own network and compares.
Regenerate: /usr/bin/python3 tests/golden/make_unet3plus_golden.py
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_writer import save  # noqa: E402

EPS, MOMENTUM = 1e-3, 0.01  # Keras' BatchNormalization defaults (momentum 0.99 in Keras' convention)


class ConvBlock(nn.Module):  # conv 3x3 same -> batch norm -> ReLU (DLE's conv_block with n = 1)
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout, eps=EPS, momentum=MOMENTUM)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class EncoderLevel(nn.Module):  # DLE's conv_block with n = 2
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(cout, eps=EPS, momentum=MOMENTUM)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout, eps=EPS, momentum=MOMENTUM)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class DecoderLevel(nn.Module):
    def __init__(self, sources, cat):
        super().__init__()
        self.branch = nn.ModuleList([ConvBlock(s, cat) for s in sources])
        self.fuse = ConvBlock(len(sources) * cat, len(sources) * cat)


def up(x, size):  # Keras' UpSampling2D(interpolation="bilinear") is align_corners false, half-pixel centres
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UNet3Plus(nn.Module):
    def __init__(self, cin, classes, f, deep_supervision):
        super().__init__()
        self.encoder = nn.ModuleList([EncoderLevel(cin if i == 0 else f[i - 1], f[i]) for i in range(5)])
        cat = f[0]
        sources = [f[0]] + [5 * cat] * 3 + [f[4]]  # what each level's decoder map has (level 4: the encoder's)
        self.decoder = nn.ModuleDict()
        for d in (3, 2, 1, 0):
            self.decoder[str(d)] = DecoderLevel(f[: d + 1] + sources[d + 1:], cat)
        self.head = nn.Conv2d(5 * cat, classes, 3, padding=1)
        if deep_supervision:
            self.ds_heads = nn.ModuleList([nn.Conv2d(sources[k], classes, 3, padding=1) for k in range(1, 5)])

    def forward(self, x):
        enc = []
        h = x
        for i, level in enumerate(self.encoder):
            if i > 0:
                h = F.max_pool2d(h, 2)
            h = level(h)
            enc.append(h)
        maps = list(enc)
        for d in (3, 2, 1, 0):
            dec = self.decoder[str(d)]
            size = enc[d].shape[-2:]
            parts = []
            for j in range(5):
                if j < d:
                    src = F.max_pool2d(enc[j], 2 ** (d - j))
                elif j == d:
                    src = enc[j]
                else:
                    src = up(maps[j], size)
                parts.append(dec.branch[j](src))
            maps[d] = dec.fuse(torch.cat(parts, 1))
        out = [self.head(maps[0])]
        if self.training and hasattr(self, "ds_heads"):
            out += [up(head(maps[k + 1]), x.shape[-2:]) for k, head in enumerate(self.ds_heads)]
        return out


def act(t):
    return t.permute(0, 2, 3, 1).contiguous()


def randomize(net):
    """Random weights (He-scaled convolutions, batch norm gammas near 1, small biases) and running statistics."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() > 1:  # He-scaled convolutions
                p.copy_(torch.randn_like(p) * (2.0 / p[0].numel()) ** 0.5)
            elif ".bn" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)


def main():
    torch.manual_seed(1205)
    config = {"in_channels": 3, "out_channels": 3, "filters": [4, 8, 8, 16, 16], "input": [2, 3, 32, 48],
              "deep_supervision": True}
    net = UNet3Plus(config["in_channels"], config["out_channels"], config["filters"], config["deep_supervision"])
    randomize(net)
    tensors = {k: v.detach().clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    x = torch.randn(*config["input"], requires_grad=True)
    net.train()
    outs = net(x)
    r = torch.randn_like(outs[0])
    (sum(outs) * r).sum().backward()
    tensors["__input__"] = act(x.detach())
    tensors["__r__"] = act(r)
    for k, o in enumerate(outs):
        tensors[f"__output__.{k}"] = act(o.detach())
    tensors["__grad_input__"] = act(x.grad)
    for name, p in net.named_parameters():
        tensors["__grad__." + name] = p.grad
    for name, b in net.named_buffers():
        if not name.endswith("num_batches_tracked"):
            tensors["__after__." + name] = b.detach().clone()
    net.eval()
    with torch.no_grad():
        tensors["__eval_output__"] = act(net(x)[0])
    config["parameters"] = sum(p.numel() for p in net.parameters())
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unet3plus.safetensors")
    save(out, tensors, {k: json.dumps(v) for k, v in config.items()})
    print("wrote", out, "outputs", [list(o.shape) for o in outs], "parameters", config["parameters"])


def cgm_main():
    """tests/golden/unet3plus_cgm.safetensors: the classification-guided module in evaluation mode (no dropout) on a
    net without deep supervision: the state, "__input__", "__cls__" (the two logits per sample: the global maximum of
    the 1x1 convolution of the bottom encoder map) and "__eval_output__" (the logits times each sample's argmax). The
    module's bias is shifted so that one sample is "absent" (zero logits) and the other "present"."""
    torch.manual_seed(1206)
    config = {"in_channels": 2, "out_channels": 3, "filters": [4, 8, 8, 16, 16], "input": [2, 2, 32, 32],
              "deep_supervision": False, "cgm": True}
    net = UNet3Plus(config["in_channels"], config["out_channels"], config["filters"], False)
    net.cgm = nn.Conv2d(config["filters"][4], 2, 1)
    randomize(net)
    net.eval()
    x = torch.randn(*config["input"])
    with torch.no_grad():
        bottom = x
        for i, level in enumerate(net.encoder):
            bottom = level(F.max_pool2d(bottom, 2) if i > 0 else bottom)
        cls = net.cgm(bottom).amax((2, 3))
        d = cls[:, 1] - cls[:, 0]
        net.cgm.bias[1] -= float(d.mean())  # one sample each side of the decision
        cls = net.cgm(bottom).amax((2, 3))
        present = (cls[:, 1] > cls[:, 0]).float()
        assert present.sum() == 1 and (cls[:, 1] - cls[:, 0]).abs().min() > 0.01, cls  # a clear decision each
        logits = net(x)[0] * present[:, None, None, None]
    tensors = {k: v.detach().clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    tensors["__input__"] = act(x)
    tensors["__cls__"] = cls
    tensors["__eval_output__"] = act(logits)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unet3plus_cgm.safetensors")
    save(out, tensors, {k: json.dumps(v) for k, v in config.items()})
    print("wrote", out, "classification", cls.tolist())


if __name__ == "__main__":
    main()
    cgm_main()
