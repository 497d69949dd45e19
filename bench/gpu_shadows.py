"""Benchmark (GPU): how reference models of a CIFAR-sized network train fastest on one GPU.

Trains 4 models of each architecture (ResNet-18, and the CNN of width 64) on 10,000 synthetic class-structured
3x32x32 images each, 2 epochs at batch 512, four ways: one by one in float32 and in bfloat16 autocast (fused Adam,
channels-last), all four stacked under vmap in float32, and `train_shadow_chunk(training="mixed")`, the audit's
default rule. Prints model-epochs a second (after one warm-up of each) and the accuracy on the 20,000 images.

    python bench/gpu_shadows.py
"""

from __future__ import annotations

import sys
import time

import torch

from mia_core.lira import _train_one_by_one, train_shadow_chunk
from mia_core.models import build_model


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_shadows.py needs a CUDA GPU and this machine has none (bench/shadows.py measures the "
                 "reference models' training on the CPU).")
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    n, per, n_models, epochs = 20_000, 10_000, 4, 2
    protos = torch.rand(10, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (0.6 * protos[y] + 0.4 * torch.rand(n, 3, 32, 32, generator=g)).to(dev)
    y = y.to(dev)
    subsets = torch.stack([torch.randperm(n, generator=g)[:per] for _ in range(n_models)]).to(dev)
    recipe = dict(epochs=epochs, batch_size=512, lr=2e-3, weight_decay=0.0, seed=0, optimizer="adam")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {n_models} models x {per:,} samples x "
          f"{epochs} epochs, batch 512")
    print(f"{'model':<10}{'training':<26}{'model-epochs/s':>15}{'accuracy':>10}")
    for arch in ("resnet18", "cnn"):
        def build():
            return build_model(arch, (3, 32, 32), 10, width=64)

        def fresh():
            torch.manual_seed(0)
            models = [build().to(dev) for _ in range(n_models)]
            for m, sub in zip(models, subsets):
                m.normalize.fit(x[sub])
            return models

        cases = {
            "one by one, fp32": lambda: _train_one_by_one(fresh(), x, y, subsets, population=None, fast=True,
                                                           mixed=False, **recipe),
            "one by one, bf16": lambda: _train_one_by_one(fresh(), x, y, subsets, population=None, fast=True,
                                                           mixed=True, **recipe),
            "stacked (vmap), fp32": lambda: train_shadow_chunk(build, x, y, subsets, training="fast", **recipe),
            "mixed (the audit's rule)": lambda: train_shadow_chunk(build, x, y, subsets, training="mixed", **recipe),
        }
        for name, fit in cases.items():
            fit()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            logp, _ = fit()
            torch.cuda.synchronize()
            rate = n_models * epochs / (time.perf_counter() - t0)
            print(f"{arch:<10}{name:<26}{rate:>15.2f}{(logp.argmax(-1) == y).float().mean().item():>10.3f}")


if __name__ == "__main__":
    main()
