#!/usr/bin/python3
# Writes tests/golden/optim.json: parameters after each of a few torch.optim steps (AdamW, Adam, SGD with and without
# Nesterov) on small fixed tensors with fixed gradients, plus the final optimizer state. The C++ optimizers are tested
# against these values (tests/test_optim.cpp), so the tests need no Python. Run once with Debian's torch:
#   /usr/bin/python3 tests/golden/make_optim_golden.py
# Three parameters: 5 and 2x3 elements, and 37 (more than one 16-lane vector plus a tail in the fused kernel).
# At step 2 the 2x3 parameter has no gradient, so its per-parameter step count (Adam bias correction) and momentum
# buffer lag behind the others, as torch does it.
import json
import os

import torch

STEPS = 4
SHAPES = [[5], [2, 3], [37]]


def make_inputs():
    g = torch.Generator().manual_seed(1234)
    params = [torch.randn(s, generator=g) for s in SHAPES]
    grads = []
    for step in range(STEPS):
        row = []
        for i, s in enumerate(SHAPES):
            if step == 1 and i == 1:
                row.append(None)
                continue
            # gradients of varied magnitude (1e-3 .. 1e1) so eps and weight decay both matter somewhere
            scale = 10.0 ** torch.empty(s).uniform_(-3, 1, generator=g)
            row.append(torch.randn(s, generator=g) * scale)
        grads.append(row)
    return params, grads


CASES = [
    ("adamw", "AdamW", dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)),
    ("adamw_dle_defaults", "AdamW", dict(lr=8e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)),
    ("adam_l2", "Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    ("sgd_nesterov", "SGD", dict(lr=1e-2, momentum=0.99, nesterov=True, weight_decay=1e-2)),
    ("sgd_momentum", "SGD", dict(lr=5e-2, momentum=0.9, nesterov=False, weight_decay=0.0)),
]


def flat(t):
    return t.detach().reshape(-1).tolist()


def main():
    out = {"generator": "tests/golden/make_optim_golden.py", "torch": torch.__version__, "shapes": SHAPES, "cases": []}
    params0, grads = make_inputs()
    out["params"] = [flat(p) for p in params0]
    out["grads"] = [[None if g is None else flat(g) for g in row] for row in grads]
    for name, cls, kw in CASES:
        params = [p.clone().requires_grad_(True) for p in params0]
        opt = getattr(torch.optim, cls)(params, **kw)
        after = []
        for row in grads:
            for p, g in zip(params, row):
                p.grad = None if g is None else g.clone()
            opt.step()
            after.append([flat(p) for p in params])
        state = {}
        for i, p in enumerate(params):
            for k, v in opt.state[p].items():
                if v is None:
                    continue
                state[f"{k}.{i}"] = [float(v)] if k == "step" else flat(v)
        hyper = dict(kw)
        if "betas" in hyper:
            hyper["beta1"], hyper["beta2"] = hyper.pop("betas")
        out["cases"].append({"name": name, "optimizer": cls, "hyper": hyper, "after": after, "state": state})
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "optim.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
