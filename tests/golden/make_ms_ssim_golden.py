"""UNet 3+'s hybrid loss with MS-SSIM (the paper's, tf.image.ssim_multiscale with its defaults) rebuilt in PyTorch,
in float64, on the softmax of random logits: focal (alpha 4, gamma 2) + mean over samples of 1 - MS-SSIM(t, p) + IoU.
Writes tests/golden/ms_ssim.safetensors: logits [N, H, W, C] (channels last), labels [N, H, W] (u8), the gradient
of loss * r, and the loss and its parts in the metadata. MS-SSIM needs images of at least 161 x 161, hence the size.
Run with Debian's python3 (python3-torch): /usr/bin/python3 tests/golden/make_ms_ssim_golden.py"""
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_writer import save  # noqa: E402

WEIGHTS = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]


def ssim_and_cs(x, y):
    """tf.image.ssim's _ssim_per_channel (max_val 1): the means over the valid positions of SSIM and of cs, [N, C]."""
    c = x.shape[1]
    coords = torch.arange(11, dtype=torch.float64) - 5
    g1 = torch.exp(-coords ** 2 / (2 * 1.5 ** 2))
    g2 = (g1[:, None] * g1[None, :])
    g2 = (g2 / g2.sum()).expand(c, 1, 11, 11)
    blur = lambda t: F.conv2d(t, g2, groups=c)  # noqa: E731
    mx, my = blur(x), blur(y)
    num0, den0 = mx * my * 2, mx ** 2 + my ** 2
    lum = (num0 + 0.01 ** 2) / (den0 + 0.01 ** 2)
    num1, den1 = blur(x * y) * 2, blur(x ** 2 + y ** 2)
    cs = (num1 - num0 + 0.03 ** 2) / (den1 - den0 + 0.03 ** 2)
    return (lum * cs).mean((2, 3)), cs.mean((2, 3))


def ms_ssim(x, y):
    """tf.image.ssim_multiscale(x, y, max_val=1) on NCHW -> [N]: after the first scale, pad to even sizes by repeating
    the last row / column (TF's SYMMETRIC pad of the remainder) and average-pool 2 x 2; relu(cs) at scales 0..3,
    relu(ssim) at scale 4, the product of their powers, the mean over channels."""
    mcs = []
    for k in range(len(WEIGHTS)):
        if k > 0:
            pad = (0, x.shape[3] % 2, 0, x.shape[2] % 2)
            x, y = [F.avg_pool2d(F.pad(t, pad, mode="replicate"), 2) for t in (x, y)]
        ssim, cs = ssim_and_cs(x, y)
        mcs.append(F.relu(cs))
    values = torch.stack(mcs[:-1] + [F.relu(ssim)], -1)
    return torch.prod(values ** torch.tensor(WEIGHTS, dtype=torch.float64), -1).mean(1)


def main():
    torch.manual_seed(5)
    n, classes, h, w, scale = 2, 2, 166, 161, 0.6  # sides 166, 83, 42, 21, 11 and 161, 81, 41, 21, 11
    labels = torch.zeros(n, h, w, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for s in range(n):  # a disc and a bar, shifted per sample, for structure at every scale
        labels[s][((yy - 70 - 9 * s) ** 2 + (xx - 60) ** 2) < 45 ** 2] = 1
        labels[s][(yy > 125) & (xx > 30 + 11 * s) & (xx < 140)] = 1
    onehot = F.one_hot(labels, classes).permute(0, 3, 1, 2).double()
    logits = (1.5 * torch.randn(n, classes, h, w, dtype=torch.float64) + 2.5 * onehot).float()
    z = logits.double().requires_grad_()
    p = torch.softmax(z, dim=1)
    q = p + 1e-9
    focal = (4 * (onehot * (1 - q) ** 2) * (onehot * -torch.log(q))).max(1).values.mean()
    ssim = (1 - ms_ssim(onehot, p)).mean()
    iou = 1 - (onehot * p).sum() / (onehot + p - onehot * p).sum()
    loss = focal + ssim + iou
    (loss * scale).backward()
    tensors = {
        "logits": logits.permute(0, 2, 3, 1).contiguous(),
        "labels": labels.to(torch.uint8),
        "grad_logits": z.grad.float().permute(0, 2, 3, 1).contiguous(),
    }
    meta = {"loss": float(loss), "focal": float(focal), "ssim": float(ssim), "iou": float(iou), "r": scale}
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ms_ssim.safetensors")
    save(out, tensors, {k: json.dumps(v) for k, v in meta.items()})
    print("wrote", out, meta)


if __name__ == "__main__":
    main()
