#!/usr/bin/python3
# PyTorch (oneDNN) baseline for bench/conv_bench.cpp: times convolution forward, grad input and grad weight on the
# CPU for the shapes given on the command line, with channels-last tensors and the same thread count as our bench,
# and prints one JSON object {"torch": version, "threads": n, "shapes": [{"spec":..,"fprop_ms":..,"dgrad_ms":..,
# "wgrad_ms":..}, ...]} with the shapes in command-line order.
# A shape is N,C,K,SIZE,KERNEL,STRIDE,DIMS: batch, in/out channels, cube (or square) size, kernel and stride on every
# axis, 2 or 3 spatial dims; padding is nnU-Net's (kernel - stride + 1) // 2.
# Usage: torch_conv.py --threads 2 --reps 5 --warmup 2 1,32,32,64,3,1,3 ...
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def median_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("shapes", nargs="+", help="N,C,K,SIZE,KERNEL,STRIDE,DIMS")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    with torch.no_grad():
        for spec in args.shapes:
            n, c, k, size, kernel, stride, dims = (int(v) for v in spec.split(","))
            pad = (kernel - stride + 1) // 2
            fmt = torch.channels_last_3d if dims == 3 else torch.channels_last
            conv = F.conv3d if dims == 3 else F.conv2d
            grad = torch.nn.grad
            conv_input = grad.conv3d_input if dims == 3 else grad.conv2d_input
            conv_weight = grad.conv3d_weight if dims == 3 else grad.conv2d_weight
            x = torch.randn(n, c, *([size] * dims)).to(memory_format=fmt)
            w = torch.randn(k, c, *([kernel] * dims)).to(memory_format=fmt)
            y = conv(x, w, None, stride, pad)
            dy = torch.randn(y.shape).to(memory_format=fmt)
            fprop = median_ms(lambda: conv(x, w, None, stride, pad), args.warmup, args.reps)
            dgrad = median_ms(lambda: conv_input(x.shape, w, dy, stride, pad), args.warmup, args.reps)
            wgrad = median_ms(lambda: conv_weight(x, w.shape, dy, stride, pad), args.warmup, args.reps)
            results.append({"spec": spec, "fprop_ms": fprop, "dgrad_ms": dgrad, "wgrad_ms": wgrad})
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "shapes": results}))


if __name__ == "__main__":
    main()
