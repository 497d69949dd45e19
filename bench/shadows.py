"""Benchmark: shadow / reference models a second on this machine, by training mode (`--shadow-training`).
Run by hand (about 12 minutes on 2 CPU cores with the defaults; 0.4.0's stacked CNNs take 4 of them a repeat):

    .venv/bin/python bench/shadows.py [--repeats 2] [--cases digits-mlp mnist5k-cnn]

Each case trains the shadow set an audit of the default recipe trains (16 models on random halves of the
evaluation pool, the target's epochs and batch size), once per mode and repeat, interleaved, in this one
process after a warm-up; it prints the median models a second, and each set's mean accuracy on the points its
models did not train on (the speed must not cost accuracy). For an MLP each mode also runs as before
`models.stacked_forward` and `models.stacked_gradients` (vmap over functional_call, differentiated by autograd: the
same bits), so the table compares the two in one run, and with `executor="threads"` (its chunks side by side,
one intra-op thread each, as the CLI and the app's job workers train them: the same bits again).
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
from mia_core.models import Classifier, build_model, stacked_forward

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

    print(f"{'case':<13}{'training':<18}{'models/s (runs)':<28}{'median':>8}{'held-out acc':>14}")
    for case in a.cases:
        name, arch, pool, epochs = CASES[case]
        ds = load_dataset(name)
        x, y = torch.from_numpy(ds.x[:pool]), torch.from_numpy(ds.y[:pool])
        build = functools.partial(build_model, arch, ds.input_shape, ds.num_classes, width=256)
        kw = dict(n_models=a.models, epochs=epochs, batch_size=64, lr=1e-3, weight_decay=0.0, seed=0,
                  population=torch.from_numpy(ds.x[pool : pool + 500]))
        shadow_set(build, x, y, **{**kw, "n_models": 2, "epochs": 1})  # warm-up
        builds = {t: build for t in SHADOW_TRAINING}
        if stacked_forward(build()) is not None:  # also the path before it: vmap, same bits
            builds.update({f"{t} (vmap)": functools.partial(_under_vmap, build) for t in SHADOW_TRAINING})
            # and the chunks side by side in threads, as the CLI and the app's job workers train them (`auto`)
            builds.update({f"{t} threads": build for t in SHADOW_TRAINING})
        rates: dict[str, list[float]] = {t: [] for t in builds}
        accuracy: dict[str, float] = {}
        for _ in range(a.repeats):
            for label, builder in builds.items():
                t0 = time.perf_counter()
                s = shadow_set(builder, x, y, training=label.split()[0],
                               executor="threads" if label.endswith("threads") else "local", **kw)
                rates[label].append(a.models / (time.perf_counter() - t0))
                accuracy[label] = s.held_out_accuracy(ds.y[:pool])
        for label in builds:
            runs = ", ".join(f"{r:.2f}" for r in rates[label])
            print(f"{case:<13}{label:<18}{runs:<28}{statistics.median(rates[label]):>8.2f}{accuracy[label]:>14.3f}")
        for label in builds:
            ratio = statistics.median(rates[label]) / statistics.median(rates["stacked (vmap)" if "stacked (vmap)"
                                                                                 in rates else "stacked"])
            print(f"{case:<13}{label} / 0.4.0 stacked: {ratio:.2f}x")


class _UnderVmap(Classifier):
    """The same network; as a subclass, `stacked_forward` declines it, so its shadows train under vmap."""


def _under_vmap(build):
    m = build()
    return _UnderVmap(m.normalize, m.body)

if __name__ == "__main__":
    main()
