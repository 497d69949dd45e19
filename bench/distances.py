"""Benchmark: minimal_perturbation on trained models, every method x norm. Run by hand:

    .venv/bin/python bench/distances.py [--device cuda] [--samples 500] [--models digits-cnn,mnist5k-cnn]

Prints samples/s, success rate, median norm and the median norm relative to the best any method found
per sample (1.000 = tightest), on the machine it runs on.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch

from mia_core.data import load_dataset, make_split
from mia_core.distances import SEARCHES, minimal_perturbation
from mia_core.models import build_model, pick_device
from mia_core.training import TrainConfig, train

SETUPS = {  # name: (dataset, model, width, members, epochs)
    "digits-mlp": ("digits", "mlp", 256, 500, 60),
    "digits-cnn": ("digits", "cnn", 128, 500, 30),
    "mnist5k-mlp": ("mnist5k", "mlp", 256, 1000, 20),
    "mnist5k-cnn": ("mnist5k", "cnn", 128, 1000, 10),
}


def trained(setup: str, device) -> tuple[torch.nn.Module, torch.Tensor]:
    dataset, arch, width, members, epochs = SETUPS[setup]
    ds = load_dataset(dataset)
    split = make_split(ds, members=members, seed=0)
    torch.manual_seed(0)
    model = build_model(arch, ds.input_shape, ds.num_classes, width=width).to(device)
    x = torch.from_numpy(ds.x).to(device)
    y = torch.from_numpy(ds.y).to(device)
    model.normalize.fit(x[split.members])
    train(model, x[split.members], y[split.members], TrainConfig(epochs=epochs))
    return model.eval(), x[split.nonmembers]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--models", default=",".join(SETUPS))
    ap.add_argument("--batch-size", type=int, default=512)
    a = ap.parse_args()
    device = pick_device(a.device)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}),"
          f" torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<13}{'norm':<6}{'method':<14}{'samples/s':>10}{'success':>9}{'median':>9}{'vs best':>9}")
    for setup in a.models.split(","):
        model, x = trained(setup, device)
        x = x[: a.samples]
        for norm in (2.0, math.inf):
            results = {}
            for method in SEARCHES:
                minimal_perturbation(model, x[:16], norm=norm, method=method)  # warm-up
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                res = minimal_perturbation(model, x, norm=norm, method=method, batch_size=a.batch_size)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                results[method] = (time.perf_counter() - t0, res)
            best = np.min(np.stack([r.norms for _, r in results.values()]), axis=0)
            for method, (dt, res) in results.items():
                ok = res.success & np.isfinite(best) & (best > 0)
                rel = np.median(res.norms[ok] / best[ok]) if ok.any() else float("nan")
                print(f"{setup:<13}{'L2' if norm == 2 else 'Linf':<6}{method:<14}{len(x) / dt:>10.1f}"
                      f"{res.success.mean():>9.3f}{np.median(res.norms):>9.4f}{rel:>9.3f}")


if __name__ == "__main__":
    main()
