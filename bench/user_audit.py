"""Auditing a user's own model: its cost against a trained run of the same size, and the breast-cancer demo.

    .venv/bin/python -m bench.user_audit [--store DIR]

1. digits, the default 2x256 MLP on 200 members: a full trained run (training, 16 shadow models, every attack)
   against an audit of the same trained model through `mia_core.audit` with fixed weights (no retraining: the
   distances and every reference-free attack), with a factory (the same 16 reference models retrained), and of
   its ONNX export (torch's default exporter) with reference models that are copies of the graph.
2. The table demo (`TABLE_DEMO`, breast cancer, 100 patients, 300 epochs) over seeds 0-2: test accuracy, the
   distance / loss / label-only / LiRA / RMIA AUC and LiRA's TPR at 1% FPR.
Prints markdown tables (the README's). Fresh store folders, so nothing is reused.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time

import numpy as np
import torch

import mia_core
from mia_core.config import DEFAULT_CONFIG, TABLE_DEMO
from mia_core.experiment import run_experiment
from mia_core.models import build_model
from mia_core.user_audit import audit_dataset, audit_onnx


def cost_table(root: str) -> list[str]:
    t0 = time.perf_counter()
    trained = run_experiment(DEFAULT_CONFIG, store=f"{root}/trained")
    full = time.perf_counter() - t0
    ds, split = trained.dataset, trained.split
    groups = dict(members=(ds.x[split.members], ds.y[split.members]),
                  nonmembers=(ds.x[split.nonmembers], ds.y[split.nonmembers]),
                  reference=(ds.x[split.reference], ds.y[split.reference]))
    cfg = DEFAULT_CONFIG.replace(validation_size=0)
    rows = ["| what | seconds | distance L2 AUC | loss AUC | LiRA online AUC |", "|---|---|---|---|---|"]

    def row(name, seconds, rec):
        a = rec.attacks
        lira = f"{a['lira_online'].auc:.3f}" if a["lira_online"].defined else "unavailable"
        rows.append(f"| {name} | {seconds:.1f} | {a['distance_l2'].auc:.3f} | {a['loss'].auc:.3f} | {lira} |")

    row("trained run (training, 16 shadow models, every attack)", full, trained.record)
    t0 = time.perf_counter()
    fixed = mia_core.audit(trained.model, **groups, config=cfg, store=f"{root}/fixed")
    row("audit of its weights (no retraining: distances + reference-free attacks)", time.perf_counter() - t0,
        fixed.record)
    factory = lambda: build_model("mlp", ds.input_shape, ds.num_classes, width=256)  # noqa: E731
    t0 = time.perf_counter()
    retrained = mia_core.audit(trained.model, **groups, config=cfg, store=f"{root}/factory", model_factory=factory,
                               recipe=mia_core.TrainingRecipe(epochs=60))
    row("audit with a factory (16 reference models retrained)", time.perf_counter() - t0, retrained.record)
    blob = io.BytesIO()  # the same weights exported as a user would, with torch's default exporter
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(trained.model.eval(), (torch.from_numpy(ds.x[:2]),), blob,
                          dynamic_shapes=({0: torch.export.Dim("n")},), input_names=["x"])
    ods, osplit, how = audit_dataset(groups["members"], groups["nonmembers"], groups["reference"])
    t0 = time.perf_counter()
    copies = audit_onnx(blob.getvalue(), ods, osplit, how, data_label="digits", file_name="digits_mlp.onnx",
                        config=cfg, store=f"{root}/onnx", recipe=mia_core.TrainingRecipe(epochs=60))
    row("audit of its ONNX export, copies of its graph (16 reference models)", time.perf_counter() - t0,
        copies.record)
    return rows


def demo_table(root: str) -> list[str]:
    names = ("distance_l2", "loss", "label_only_l2", "lira_online", "rmia_online")
    rows = ["| seed | test acc | train acc | " + " | ".join(f"{n} AUC" for n in names) + " | LiRA TPR @ 1% FPR |",
            "|---|" + "---|" * (len(names) + 3)]
    per = {n: [] for n in (*names, "tpr", "acc")}
    for seed in (0, 1, 2):
        rec = run_experiment(TABLE_DEMO.replace(seed=seed), store=f"{root}/demo").record
        a = rec.attacks
        rows.append(f"| {seed} | {rec.test_accuracy:.3f} | {rec.train_accuracy:.3f} | "
                    + " | ".join(f"{a[n].auc:.3f}" for n in names) + f" | {a['lira_online'].tpr_at_fpr[0.01]:.3f} |")
        for n in names:
            per[n].append(a[n].auc)
        per["tpr"].append(a["lira_online"].tpr_at_fpr[0.01])
        per["acc"].append(rec.test_accuracy)
    ms = lambda v: f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"  # noqa: E731
    rows.append(f"| mean ± sd | {ms(per['acc'])} | | " + " | ".join(ms(per[n]) for n in names) + f" | {ms(per['tpr'])} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", default=None)
    a = p.parse_args()
    root = a.store or tempfile.mkdtemp(prefix="bench-audit-")
    print("\n".join(cost_table(root)))
    print()
    print("\n".join(demo_table(root)))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
