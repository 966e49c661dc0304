#!/usr/bin/env python3
"""Golden values from PyTorch for the engine's ops (run with Debian's /usr/bin/python3, which has python3-torch).

Writes tests/golden/ops_golden.json: for each case the inputs, the output, and the gradients of
L = sum(output * r) for a random r, all converted to the engine's layouts (activations channels-last
NDHWC / NHWC, conv weights KTRSC = PyTorch OIDHW with I moved last, transposed-conv weights from
PyTorch IODHW to O D H W I). The committed JSON lets the C++ tests run without Python.
Regenerate: /usr/bin/python3 tests/golden/make_golden.py
"""
import json
import os

import torch
import torch.nn.functional as F

torch.manual_seed(20261121)
torch.set_default_dtype(torch.float32)


def act(t):  # NC... -> N...C
    return t.permute(0, *range(2, t.dim()), 1).contiguous()


def conv_w(w):  # O I k... -> O k... I
    return w.permute(0, *range(2, w.dim()), 1).contiguous()


def convt_w(w):  # I O k... -> O k... I
    return w.permute(1, *range(2, w.dim()), 0).contiguous()


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def record(name, tensors, output, grads, meta):
    case = {"name": name, **meta, "output": {"shape": list(output.shape), "data": flat(output)}}
    case["inputs"] = {k: {"shape": list(v.shape), "data": flat(v)} for k, v in tensors.items()}
    case["grads"] = {k: {"shape": list(v.shape), "data": flat(v)} for k, v in grads.items()}
    return case


def conv_case(name, n, c, k, spatial, kernel, stride, pad, bias=True):
    dims = len(spatial)
    x = torch.randn(n, c, *spatial, requires_grad=True)
    w = (torch.randn(k, c, *kernel) * 0.3).requires_grad_()
    b = torch.randn(k, requires_grad=True) if bias else None
    conv = F.conv3d if dims == 3 else F.conv2d
    y = conv(x, w, b, stride=stride, padding=pad)
    r = torch.randn_like(y)
    (y * r).sum().backward()
    tensors = {"x": act(x), "w": conv_w(w), "r": act(r)}
    grads = {"x": act(x.grad), "w": conv_w(w.grad)}
    if bias:
        tensors["bias"] = b
        grads["bias"] = b.grad
    return record(name, tensors, act(y), grads, {"stride": list(stride), "pad": list(pad)})


def conv_transpose_case(name, n, c, k, spatial, kernel):
    x = torch.randn(n, c, *spatial, requires_grad=True)
    w = (torch.randn(c, k, *kernel) * 0.3).requires_grad_()
    b = torch.randn(k, requires_grad=True)
    y = F.conv_transpose3d(x, w, b, stride=kernel)
    r = torch.randn_like(y)
    (y * r).sum().backward()
    return record(name, {"x": act(x), "w": convt_w(w), "bias": b, "r": act(r)}, act(y),
                  {"x": act(x.grad), "w": convt_w(w.grad), "bias": b.grad}, {})


def instance_norm_case(name, n, c, spatial):
    x = (torch.randn(n, c, *spatial) * 3 + 1.5).requires_grad_()
    g = (torch.rand(c) + 0.5).requires_grad_()
    b = torch.randn(c, requires_grad=True)
    y = F.instance_norm(x, weight=g, bias=b, eps=1e-5)
    r = torch.randn_like(y)
    (y * r).sum().backward()
    return record(name, {"x": act(x), "gamma": g, "beta": b, "r": act(r)}, act(y),
                  {"x": act(x.grad), "gamma": g.grad, "beta": b.grad}, {"eps": 1e-5})


def leaky_relu_case(name, shape, slope):
    x = torch.randn(*shape, requires_grad=True)
    y = F.leaky_relu(x, slope)
    r = torch.randn_like(y)
    (y * r).sum().backward()
    return record(name, {"x": act(x), "r": act(r)}, act(y), {"x": act(x.grad)}, {"slope": slope})


def dice_ce_case(name, n, classes, spatial, absent_class=None):
    """MONAI DiceCELoss(include_background=False, softmax=True, to_onehot_y=True, batch=True), as DLE nnU-Net uses."""
    logits = (torch.randn(n, classes, *spatial) * 2).requires_grad_()
    labels = torch.randint(0, classes, (n, *spatial))
    if absent_class is not None:
        labels[labels == absent_class] = 0
    p = torch.softmax(logits, dim=1)
    onehot = F.one_hot(labels, classes).permute(0, -1, *range(1, labels.dim())).float()
    axes = [0] + list(range(2, logits.dim()))  # batch and space
    inter = (p * onehot).sum(axes)[1:]
    denom = p.sum(axes)[1:] + onehot.sum(axes)[1:]
    dice = (1 - (2 * inter + 1e-5) / (denom + 1e-5)).mean()
    ce = F.cross_entropy(logits, labels)
    loss = dice + ce
    loss.backward()
    case = record(name, {"logits": act(logits)}, loss.reshape(1), {"logits": act(logits.grad)},
                  {"dice": float(dice), "ce": float(ce)})
    case["labels"] = {"shape": list(labels.shape), "data": [int(v) for v in labels.reshape(-1).tolist()]}
    return case


def conv_transpose_general_case(name, n, c, k, spatial, kernel, stride, pad, output_pad, keep=None):
    """ConvTranspose with any kernel, stride and padding; keep = the first `keep` outputs per axis (TF's "same")."""
    conv_t = F.conv_transpose3d if len(spatial) == 3 else F.conv_transpose2d
    x = torch.randn(n, c, *spatial, requires_grad=True)
    w = (torch.randn(c, k, *kernel) * 0.3).requires_grad_()
    b = torch.randn(k, requires_grad=True)
    y = conv_t(x, w, b, stride=stride, padding=pad, output_padding=output_pad)
    if keep is not None:
        y = y[(slice(None), slice(None)) + tuple(slice(0, m) for m in keep)]
    r = torch.randn_like(y)
    (y * r).sum().backward()
    meta = {"stride": list(stride), "pad": list(pad), "output_pad": list(output_pad)}
    if keep is not None:
        meta["keep"] = list(keep)
    return record(name, {"x": act(x), "w": conv_w(w), "bias": b, "r": act(r)}, act(y),
                  {"x": act(x.grad), "w": conv_w(w.grad), "bias": b.grad}, meta)


def max_pool_case(name, n, c, spatial, window):
    x = torch.round(torch.randn(n, c, *spatial) * 4) / 4  # ties
    x.requires_grad_()
    pool = F.max_pool3d if len(spatial) == 3 else F.max_pool2d
    y = pool(x, window)
    r = torch.randn_like(y)
    (y * r).sum().backward()
    return record(name, {"x": act(x), "r": act(r)}, act(y), {"x": act(x.grad)}, {"window": list(window)})


def bilinear_case(name, n, c, spatial, size, align_corners):
    x = torch.randn(n, c, *spatial, requires_grad=True)
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    r = torch.randn_like(y)
    (y * r).sum().backward()
    return record(name, {"x": act(x), "r": act(r)}, act(y), {"x": act(x.grad)},
                  {"size": list(size), "align_corners": align_corners})


def batch_norm_case(name, n, c, spatial, relu, momentum, eps):
    """Training mode (batch statistics, running statistics updated from rm / rv), then evaluation with those."""
    x = (torch.randn(n, c, *spatial) * 2 + 0.7).requires_grad_()
    g = (torch.rand(c) + 0.5).requires_grad_()
    b = torch.randn(c, requires_grad=True)
    rm, rv = torch.randn(c), torch.rand(c) + 0.5
    rm_new, rv_new = rm.clone(), rv.clone()
    y = F.batch_norm(x, rm_new, rv_new, weight=g, bias=b, training=True, momentum=momentum, eps=eps)
    if relu:
        y = F.relu(y)
    r = torch.randn_like(y)
    (y * r).sum().backward()
    x_eval = torch.randn(n, c, *spatial) * 2 + 0.7
    with torch.no_grad():
        y_eval = F.batch_norm(x_eval, rm_new, rv_new, weight=g, bias=b, training=False, eps=eps)
        if relu:
            y_eval = F.relu(y_eval)
    case = record(name, {"x": act(x), "gamma": g, "beta": b, "running_mean": rm, "running_var": rv, "r": act(r),
                         "x_eval": act(x_eval)}, act(y), {"x": act(x.grad), "gamma": g.grad, "beta": b.grad},
                  {"relu": relu, "momentum": momentum, "eps": eps})
    case["running_mean_after"] = flat(rm_new)
    case["running_var_after"] = flat(rv_new)
    case["eval_output"] = flat(act(y_eval))
    return case


def tf_ssim(x, y):
    """tf.image.ssim(x, y, max_val=1) on NCHW: 11 x 11 Gaussian (sigma 1.5), valid positions, mean over space and
    channels -> [N]."""
    c = x.shape[1]
    coords = torch.arange(11, dtype=torch.float64) - 5
    g1 = torch.exp(-coords ** 2 / (2 * 1.5 ** 2))
    g2 = (g1[:, None] * g1[None, :])
    g2 = (g2 / g2.sum()).float().expand(c, 1, 11, 11)
    blur = lambda t: F.conv2d(t, g2, groups=c)  # noqa: E731
    mx, my = blur(x), blur(y)
    num0, den0 = mx * my * 2, mx ** 2 + my ** 2
    lum = (num0 + 0.01 ** 2) / (den0 + 0.01 ** 2)
    num1, den1 = blur(x * y) * 2, blur(x ** 2 + y ** 2)
    cs = (num1 - num0 + 0.03 ** 2) / (den1 - den0 + 0.03 ** 2)
    return (lum * cs).mean((2, 3)).mean(1)


def hybrid_loss_case(name, n, classes, spatial, scale):
    """DLE UNet3P's unet3p_hybrid_loss on the softmax of the logits: focal_loss (alpha 4, gamma 2, eps 1e-9, the max
    over classes of the one-hot-masked terms, mean over pixels) + ssim_loss (mean over samples of 1 - tf.image.ssim) +
    iou_loss (1 - sum t p / sum (t + p - t p))."""
    logits = (torch.randn(n, classes, *spatial) * 2).requires_grad_()
    labels = torch.randint(0, classes, (n, *spatial))
    labels[:, 2:7, 3:9] = 1  # a block of one class, so the SSIM sees structure
    p = torch.softmax(logits, dim=1)
    t = F.one_hot(labels, classes).permute(0, 3, 1, 2).float()
    q = p + 1e-9
    focal = (4 * (t * (1 - q) ** 2) * (t * -torch.log(q))).max(1).values.mean()
    ssim = (1 - tf_ssim(t, p)).mean()
    iou = 1 - (t * p).sum() / (t + p - t * p).sum()
    loss = focal + ssim + iou
    (loss * scale).backward()
    r = torch.tensor([scale])
    case = record(name, {"logits": act(logits), "r": r}, loss.reshape(1), {"logits": act(logits.grad)},
                  {"focal": float(focal), "ssim": float(ssim), "iou": float(iou)})
    case["labels"] = {"shape": list(labels.shape), "data": [int(v) for v in labels.reshape(-1).tolist()]}
    return case


cases = [
    conv_case("conv3d_stride1", 2, 3, 4, (6, 7, 5), (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    conv_case("conv3d_stride2", 2, 3, 5, (7, 6, 5), (3, 3, 3), (2, 2, 2), (1, 1, 1)),
    conv_case("conv3d_kernel133", 1, 4, 3, (3, 8, 7), (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False),
    conv_case("conv2d_stride2", 2, 3, 4, (9, 8), (3, 3), (2, 2), (1, 1)),
    conv_transpose_case("conv_transpose3d", 2, 4, 3, (3, 4, 2), (2, 2, 2)),
    conv_transpose_case("conv_transpose3d_122", 1, 3, 2, (2, 3, 3), (1, 2, 2)),
    instance_norm_case("instance_norm3d", 2, 3, (5, 6, 4)),
    leaky_relu_case("leaky_relu", (2, 3, 4, 5, 3), 0.01),
    dice_ce_case("dice_ce3d", 2, 3, (5, 6, 4)),
    dice_ce_case("dice_ce2d_absent_class", 2, 4, (7, 6), absent_class=2),
    # UNet2D's up-convolution: kernel 3, stride 2, TF "same" = PyTorch padding 0 keeping the first 2n outputs.
    conv_transpose_general_case("conv_transpose2d_tf_same", 2, 4, 3, (5, 6), (3, 3), (2, 2), (0, 0), (0, 0),
                                keep=(10, 12)),
    conv_transpose_general_case("conv_transpose3d_k3s2p1op1", 1, 3, 2, (3, 4, 2), (3, 3, 3), (2, 2, 2), (1, 1, 1),
                                (1, 1, 1)),
    conv_transpose_general_case("conv_transpose2d_k4s3p1", 2, 2, 3, (4, 3), (4, 2), (3, 1), (1, 0), (0, 0)),
    max_pool_case("max_pool2d", 2, 3, (9, 11), (2, 2)),
    max_pool_case("max_pool3d_122", 1, 2, (3, 6, 7), (1, 2, 2)),
    # UNet 3+'s upsampling (factors 2 to 16), both corner conventions, and sizes that are not multiples.
    bilinear_case("bilinear_x2", 2, 3, (5, 6), (10, 12), False),
    bilinear_case("bilinear_x2_align_corners", 2, 3, (5, 6), (10, 12), True),
    bilinear_case("bilinear_x8", 1, 2, (3, 2), (24, 16), False),
    bilinear_case("bilinear_x16_align_corners", 1, 2, (2, 3), (32, 48), True),
    bilinear_case("bilinear_mixed", 2, 2, (5, 7), (9, 4), False),
    bilinear_case("bilinear_mixed_align_corners", 2, 2, (5, 7), (9, 4), True),
    bilinear_case("bilinear_to_one", 1, 2, (4, 3), (1, 5), True),
    # UNet 3+'s conv block norm: PyTorch's defaults, and Keras' (momentum 0.99 = PyTorch 0.01, eps 1e-3) with ReLU.
    batch_norm_case("batch_norm2d", 3, 4, (5, 6), False, 0.1, 1e-5),
    batch_norm_case("batch_norm2d_relu_keras", 2, 3, (7, 5), True, 0.01, 1e-3),
    batch_norm_case("batch_norm3d", 2, 3, (3, 4, 5), False, 0.1, 1e-5),
    # UNet 3+'s hybrid loss: a non-square image with several SSIM positions, and the smallest (one position).
    hybrid_loss_case("hybrid_loss", 2, 3, (16, 13), 0.7),
    hybrid_loss_case("hybrid_loss_11x11", 1, 2, (11, 11), 1.0),
]

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ops_golden.json")
with open(out, "w") as f:
    json.dump({"generator": "tests/golden/make_golden.py", "torch": torch.__version__, "cases": cases}, f)
print(f"wrote {out}: {len(cases)} cases")
