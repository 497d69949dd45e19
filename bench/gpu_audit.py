"""Benchmark (GPU): the full audit of a ResNet-18 on CIFAR-10-sized data, stage by stage.

Runs `run_experiment` (training, minimal perturbations, label-only searches, LiRA / RMIA reference models, every
attack's metrics) and prints each stage's seconds, the reference models' rate and the time a 64-model audit would
take at that rate. CIFAR-10 is read from --data-dir when it is there; otherwise synthetic, class-structured
3x32x32 images with 10% flipped labels stand in (for timing only: their accuracies say nothing about CIFAR-10),
and the output says so.

    python bench/gpu_audit.py [--members 25000] [--shadows 8] [--epochs 10] [--data-dir DIR] [--store DIR]

With --store, a run cut off part-way (a time limit) resumes from the stages and reference-model chunks it stored:
run the same command again; each call prints its own stages' seconds, and the audit's time is their sum.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mia_core.data import DatasetError, load_dataset
from mia_core.experiment import ExperimentConfig, run_experiment


def synthetic_cifar(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n class-structured 3x32x32 images in [0, 1] (uint8) with 10% of labels flipped, so members are memorised."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((10, 3, 8, 8))
    protos = coarse.repeat(4, axis=2).repeat(4, axis=3)
    y = rng.integers(0, 10, n)
    x = 0.55 * protos[y] + 0.45 * rng.random((n, 3, 32, 32))
    flip = rng.random(n) < 0.1
    y[flip] = rng.integers(0, 10, flip.sum())
    return (x * 255).round().astype(np.uint8), y.astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=25_000)
    ap.add_argument("--shadows", type=int, default=8, help="reference models (even)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--label-only-queries", type=int, default=400)
    ap.add_argument("--label-only-linf-queries", type=int, default=200)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--store", default=None, help="default: a temporary folder")
    ap.add_argument("--device", default="cuda", help="cpu for a quick check of the script itself")
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench/gpu_audit.py needs a CUDA GPU and this machine has none (--device cpu checks the script "
                 "itself; bench/first_results.py times a whole audit on the CPU).")
    tmp = Path(tempfile.mkdtemp(prefix="gpu_audit_"))
    try:
        audit(a, tmp)
    finally:  # the temporary data and store (a given --store and the data beside it stay)
        shutil.rmtree(tmp, ignore_errors=True)


def audit(a: argparse.Namespace, tmp: Path) -> None:
    """Run and print the audit `a` asks for, with `tmp` for what no --store keeps."""
    try:
        load_dataset("cifar10", data_dir=a.data_dir)
        dataset, source = "cifar10", f"CIFAR-10 from {a.data_dir}"
    except DatasetError:
        # beside a given store, so that a run stopped part-way (a call's time limit) resumes from its stages
        data = (Path(a.store).parent if a.store else tmp) / f"synthetic_cifar_{2 * a.members + 2_000}.npz"
        if not data.is_file():
            x, y = synthetic_cifar(2 * a.members + 2_000)
            np.savez(data, x=x, y=y)
        dataset, source = f"npz:{data}", "SYNTHETIC CIFAR-sized images (no CIFAR-10 here)"
    cfg = ExperimentConfig(dataset=dataset, data_dir=a.data_dir, model="resnet18", members=a.members,
                           epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, lira_shadows=a.shadows,
                           label_only_queries=a.label_only_queries,
                           label_only_linf_queries=a.label_only_linf_queries, device=a.device)
    where = torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device
    print(f"{where}, torch {torch.__version__}; {source}; {a.members:,} members and as "
          f"many non-members; {a.shadows} reference models of {a.epochs} epochs")
    t0 = time.perf_counter()
    stage = {"name": None, "since": t0}

    def progress(name: str, fraction: float) -> None:
        head = name.split(" (")[0].split(" on ")[0]
        if head != stage["name"]:
            now = time.perf_counter()
            if stage["name"] is not None:
                print(f"  {stage['name']:<44}{now - stage['since']:>9.1f} s", flush=True)
            stage.update(name=head, since=now)

    r = run_experiment(cfg, store=a.store or tmp / "store", progress=progress)
    total = time.perf_counter() - t0
    rec, tm = r.record, r.record.timings
    print(f"train accuracy {rec.train_accuracy:.3f}, test accuracy {rec.test_accuracy:.3f}")
    rows = [("training", tm.train_seconds), ("minimal perturbations (L2 + L-inf)", tm.distance_seconds),
            ("label-only searches", tm.label_only_seconds), (f"{a.shadows} reference models", tm.shadow_seconds),
            ("whole evaluation", tm.evaluation_seconds), ("whole audit (wall)", total)]
    print(f"{'stage':<40}{'seconds':>10}")
    for name, s in rows:
        print(f"{name:<40}{s:>10.1f}")
    per_model = tm.shadow_seconds / a.shadows
    print(f"reference models: {per_model:.1f} s each ({per_model / a.epochs:.2f} s per epoch of "
          f"{a.members:,} samples); 64 of them: {64 * per_model / 60:.1f} min; the whole audit with 64: "
          f"{(total + (64 - a.shadows) * per_model) / 60:.1f} min")
    for name, m in list(rec.attacks.items())[:8]:
        print(f"  {name:<28} AUC {m.auc:.3f}")


if __name__ == "__main__":
    main()
