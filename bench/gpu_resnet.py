"""Benchmark (GPU): minimal perturbations of 10,000 CIFAR-sized images (3x32x32) on ResNet-18.

Synthetic inputs stand in when CIFAR-10 is not on the machine. Reports wall time, samples/s and the
fraction of the forward-plus-backward floor the engine reaches: the floor is (sample-passes the search
actually made) x (the per-sample cost of one batched forward + backward), measured with the same batch size.

    python bench/gpu_resnet.py [--n 10000] [--batch-size 1000] [--device cpu: a quick check of the script itself]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from mia_core.distances import SEARCHES, minimal_perturbation
from mia_core.models import build_model
from mia_core.training import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--methods", default=",".join(SEARCHES))
    ap.add_argument("--precisions", default="tf32,bf16", help="search arithmetic; verification is always fp32")
    ap.add_argument("--device", default="cuda", help="cpu for a quick check of the script itself")
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu_resnet.py needs a CUDA GPU and this machine has none (--device cpu checks the script "
                 "itself; bench/distances.py measures the searches on the CPU).")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), 10).to(dev)
    # a quick fit on synthetic, class-structured images, so the boundary is not arbitrary
    protos = torch.rand(10, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.n,), device=dev)
    x = (0.7 * protos[y] + 0.3 * torch.rand(a.n, 3, 32, 32, device=dev)).clamp(0, 1)
    model.normalize.fit(x)
    train(model, x[:5000], y[:5000], TrainConfig(epochs=2, batch_size=256))
    model.eval()
    passes = {"fwd": 0}
    model.register_forward_hook(lambda m, i, o: passes.__setitem__("fwd", passes["fwd"] + i[0].shape[0]))

    xb = x[: a.batch_size].clone().requires_grad_(True)
    for _ in range(3):
        torch.autograd.grad(model(xb).sum(), xb)
    sync()
    t0 = time.perf_counter()
    for _ in range(10):
        torch.autograd.grad(model(xb).sum(), xb)
    sync()
    per_sample = (time.perf_counter() - t0) / 10 / a.batch_size
    where = torch.cuda.get_device_name() if dev.type == "cuda" else a.device
    print(f"{where}, torch {torch.__version__}; one forward+backward: "
          f"{per_sample * 1e6:.2f} us/sample at batch {a.batch_size}")
    print(f"{'method':<14}{'search':<7}{'norm':<6}{'seconds':>9}{'samples/s':>11}{'success':>9}{'median':>9}{'passes/sample':>15}"
          f"{'floor frac':>12}")
    for method in a.methods.split(","):
        for precision in a.precisions.split(","):
            for norm in (2.0, math.inf):
                minimal_perturbation(model, x[:64], norm=norm, method=method, precision=precision)
                passes["fwd"] = 0
                sync()
                t0 = time.perf_counter()
                res = minimal_perturbation(model, x, norm=norm, method=method, batch_size=a.batch_size,
                                           precision=precision)
                sync()
                dt = time.perf_counter() - t0
                floor = passes["fwd"] * per_sample
                print(f"{method:<14}{precision:<7}{'L2' if norm == 2 else 'Linf':<6}{dt:>9.2f}{a.n / dt:>11.0f}{res.success.mean():>9.3f}"
                      f"{np.median(res.norms):>9.4f}{passes['fwd'] / a.n:>15.1f}{floor / dt:>12.2f}")


if __name__ == "__main__":
    main()
