"""Benchmark: peak memory of the label-only search on a 28x28 CNN (the step that took the app server to 8.5 GB).
Run by hand (it trains a small CNN for a few epochs first):

    .venv/bin/python bench/memory.py [--samples 300] [--queries 1000]

Prints the peak resident memory of this process after loading the data, after training, and after the
label-only search, and the search's time.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from mia_core.data import load_dataset, make_split
from mia_core.label_only import label_only_distance
from mia_core.models import build_model
from mia_core.training import TrainConfig, train


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    ds = load_dataset("mnist5k")
    split = make_split(ds, members=300, seed=0)
    print(f"{'stage':<34}{'peak RSS (MB)':>14}")
    print(f"{'data loaded':<34}{peak_mb():>14.0f}")
    model = build_model("cnn", ds.input_shape, ds.num_classes, width=256)
    xm, ym = torch.from_numpy(ds.x[split.members]), torch.from_numpy(ds.y[split.members])
    model.normalize.fit(xm)
    train(model, xm, ym, TrainConfig(epochs=a.epochs, seed=0))
    model.eval()
    print(f"{'cnn (width 256) trained':<34}{peak_mb():>14.0f}")
    idx = split.nonmembers[: a.samples]
    t0 = time.perf_counter()
    r = label_only_distance(model, torch.from_numpy(ds.x[idx]), ds.y[idx], max_queries=a.queries)
    dt = time.perf_counter() - t0
    print(f"{f'label-only search ({a.samples} x {a.queries} q)':<34}{peak_mb():>14.0f}   {dt:.1f} s, "
          f"median L2 {np.median(r.norms[np.isfinite(r.norms)]):.4f}")


if __name__ == "__main__":
    main()
