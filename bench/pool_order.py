"""Pooling before the ReLU against the textbook order on the CPU (models.pool_before_relu; run by hand, prints a
table): a training step, an input-gradient pass and a query pass of the 28x28 CNN of width 256, both orders
alternated, and whether their outputs are the same bits.

    .venv/bin/python -m bench.pool_order [--rows 64] [--repeats 30]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn
from torch.nn import functional as F

from mia_core.models import _relu_in_place, build_model


def _textbook(model: nn.Module) -> nn.Module:
    """`model` with each (max-pool, ReLU) pair of its body swapped back to ReLU first."""
    other = copy.deepcopy(model)
    mods = other.body._modules
    names = list(mods)
    for a, b in zip(names, names[1:]):
        if isinstance(mods[a], nn.MaxPool2d) and isinstance(mods[b], nn.ReLU):
            mods[a], mods[b] = mods[b], mods[a]
    return other


def _seconds(f, repeats: int) -> float:
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(repeats):
        f()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--repeats", type=int, default=30)
    a = p.parse_args()
    torch.manual_seed(0)
    ours = build_model("cnn", (1, 28, 28), 10)
    x = torch.rand(a.rows, 1, 28, 28)
    y = torch.randint(0, 10, (a.rows,))
    nets = {"pool, then ReLU (ours)": ours, "ReLU, then pool": _textbook(ours)}
    funcs, outs = {}, {}
    for name, net in nets.items():
        train_copy = copy.deepcopy(net).to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        fast = copy.deepcopy(net).eval().requires_grad_(False)  # a search copy as models.search_model makes
        _relu_in_place(fast)  # one, without the reordering
        fast = fast.to(memory_format=torch.channels_last)

        def step(m=train_copy):
            m.zero_grad(set_to_none=True)
            F.cross_entropy(m(xc), y).backward()

        def gradient(m=fast):
            d = torch.zeros_like(x).requires_grad_(True)
            return torch.autograd.grad(m(x + d)[:, 0].sum(), d)[0]

        def query(m=fast):
            with torch.no_grad():
                return m(x)

        funcs[name], outs[name] = (step, gradient, query), (gradient(), query())
    rows = {name: [float("inf")] * 3 for name in nets}
    for _ in range(3):  # the two orders alternated; the best of three rounds
        for name, fs in funcs.items():
            rows[name] = [min(old, _seconds(f, a.repeats) * 1e3) for old, f in zip(rows[name], fs)]
    (r0, r1) = outs.values()
    print(f"28x28 CNN of width 256, {a.rows} rows, {torch.get_num_threads()} threads\n")
    print("| order | training step (ms) | input gradient (ms) | query pass (ms) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r[0]:.1f} | {r[1]:.1f} | {r[2]:.1f} |")
    print(f"\nsame gradients: {torch.equal(r0[0], r1[0])}, same logits: {torch.equal(r0[1], r1[1])}")


if __name__ == "__main__":
    main()
