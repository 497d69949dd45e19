"""Benchmark: shadow / reference models a second on this machine, core 0.4.0's stacked training against the fast one.
Run by hand (about 12 minutes on 2 CPU cores with the defaults; 0.4.0's stacked CNNs take 4 of them a repeat):

    .venv/bin/python bench/shadows.py [--repeats 2] [--cases digits-mlp mnist5k-cnn]

Each case trains the shadow set an audit of the default recipe trains (16 models on random halves of the
evaluation pool, the target's epochs and batch size), once per mode and repeat, interleaved, in this one
process after a warm-up; it prints the median models a second, and each set's mean accuracy on the points its
models did not train on (the speed must not cost accuracy).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from mia_core.config import SHADOW_TRAINING
from mia_core.data import load_dataset
from mia_core.lira import shadow_set
from mia_core.models import build_model

CASES = {  # name: (dataset, model, pool size, epochs)
    "digits-mlp": ("digits", "mlp", 400, 60),
    "mnist5k-cnn": ("mnist5k", "cnn", 600, 20),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    a = ap.parse_args()
    import torch._dynamo  # noqa: F401  (the optimisers import it once per process: not part of a measurement)

    print(f"{'case':<13}{'training':<10}{'models/s (runs)':<28}{'median':>8}{'held-out acc':>14}")
    for case in a.cases:
        name, arch, pool, epochs = CASES[case]
        ds = load_dataset(name)
        x, y = torch.from_numpy(ds.x[:pool]), torch.from_numpy(ds.y[:pool])
        build = functools.partial(build_model, arch, ds.input_shape, ds.num_classes, width=256)
        kw = dict(n_models=a.models, epochs=epochs, batch_size=64, lr=1e-3, weight_decay=0.0, seed=0,
                  population=torch.from_numpy(ds.x[pool : pool + 500]))
        shadow_set(build, x, y, **{**kw, "n_models": 2, "epochs": 1})  # warm-up
        rates: dict[str, list[float]] = {t: [] for t in SHADOW_TRAINING}
        accuracy: dict[str, float] = {}
        for _ in range(a.repeats):
            for training in ("stacked", "fast", "mixed"):
                t0 = time.perf_counter()
                s = shadow_set(build, x, y, training=training, **kw)
                rates[training].append(a.models / (time.perf_counter() - t0))
                accuracy[training] = s.held_out_accuracy(ds.y[:pool])
        for training in ("stacked", "fast", "mixed"):
            runs = ", ".join(f"{r:.2f}" for r in rates[training])
            print(f"{case:<13}{training:<10}{runs:<28}{statistics.median(rates[training]):>8.2f}"
                  f"{accuracy[training]:>14.3f}")
        for training in ("fast", "mixed"):
            ratio = statistics.median(rates[training]) / statistics.median(rates["stacked"])
            print(f"{case:<13}{training} / stacked: {ratio:.2f}x")


if __name__ == "__main__":
    main()
