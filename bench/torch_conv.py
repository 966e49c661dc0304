#!/usr/bin/python3
# PyTorch (oneDNN) baseline for bench/conv_bench.cpp: times conv3d forward, grad input and grad weight on the CPU
# for the shapes given on the command line, with channels_last_3d tensors and the same thread count as our bench,
# and prints one JSON object {"shapes": [{"c":..,"k":..,"size":..,"fprop_ms":..,"dgrad_ms":..,"wgrad_ms":..}]}.
# Usage: torch_conv.py --threads 2 --reps 5 --warmup 2 32x64 64x32 ...   (CxSIZE, C = K, kernel 3, stride 1, pad 1)
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
    ap.add_argument("shapes", nargs="+", help="CxSIZE, e.g. 32x64 for 32 channels at 64^3")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    with torch.no_grad():
        for spec in args.shapes:
            c, size = (int(v) for v in spec.split("x"))
            fmt = torch.channels_last_3d
            x = torch.randn(1, c, size, size, size).to(memory_format=fmt)
            w = torch.randn(c, c, 3, 3, 3).to(memory_format=fmt)
            dy = torch.randn(1, c, size, size, size).to(memory_format=fmt)
            fprop = median_ms(lambda: F.conv3d(x, w, None, 1, 1), args.warmup, args.reps)
            dgrad = median_ms(lambda: torch.nn.grad.conv3d_input(x.shape, w, dy, 1, 1), args.warmup, args.reps)
            wgrad = median_ms(lambda: torch.nn.grad.conv3d_weight(x, w.shape, dy, 1, 1), args.warmup, args.reps)
            results.append({"c": c, "k": c, "size": size, "fprop_ms": fprop, "dgrad_ms": dgrad, "wgrad_ms": wgrad})
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "shapes": results}))


if __name__ == "__main__":
    main()
