"""How many samples a pass suits a CNN on the CPU: queries (no gradients) and input gradients a second of the
search copy (`models.search_model`: channels-last, `RowChunks`, ReLUs in place) against one pass over many
samples, by chunk size (run by hand, prints a table; about a minute).

    .venv/bin/python -m bench.chunks [--model cnn] [--shape 1 28 28] [--width 256]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from mia_core.models import build_model, search_model


def rate(net: nn.Module, x: torch.Tensor, rows: int, grad: bool, repeats: int = 2) -> float:
    """Samples a second through `net`, `rows` at a time (with input gradients when `grad`)."""
    def once():
        for i in range(0, len(x), rows):
            if grad:
                xb = x[i : i + rows].clone().requires_grad_(True)
                torch.autograd.grad(net(xb).logsumexp(1).sum(), xb)
            else:
                with torch.no_grad():
                    net(x[i : i + rows])
    once()  # warm-up: oneDNN's kernels for this shape
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    return repeats * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--shape", type=int, nargs=3, default=(1, 28, 28))
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--samples", type=int, default=2048)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(a.model, tuple(a.shape), 10, width=a.width).eval()
    x = torch.rand(a.samples, *a.shape)
    fast = search_model(model, x)
    plain = copy.deepcopy(fast.model)  # channels-last, ReLUs out of place: the search copy before chunks
    for m in plain.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    print(f"{a.model} {tuple(a.shape)} width {a.width}, {a.samples} samples, {torch.get_num_threads()} threads\n")
    print("| pass | samples a pass | ReLU | queries / s | gradients / s |")
    print("|---|---|---|---|---|")
    for rows in (2048, 512):
        print(f"| one pass (channels-last copy) | {rows} | out of place | {rate(plain, x, rows, False):,.0f} | "
              f"{rate(plain, x[:1024], min(rows, 512), True):,.0f} |", flush=True)
    for rows in (256, 128, 64):
        fast.rows = 2 * rows
        print(f"| search copy (RowChunks) | {rows} (grad) / {2 * rows} | in place | "
              f"{rate(fast, x, len(x), False):,.0f} | {rate(fast, x[:1024], 1024, True):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
