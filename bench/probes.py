"""HopSkipJump's Gaussian probes against low-frequency ones, on one trained target (run by hand, prints a table).

The L2 label-only search (`label_only_distance`) of the members and non-members of one run, with each probe
distribution and each query budget: AUC with its 95% bootstrap interval, the median distance (members and
non-members together), its ratio to the Gaussian search at the first budget, queries a sample and seconds. The
L-inf default (RayS) draws no probes and is not affected.

    .venv/bin/python -m bench.probes --dataset mnist5k --model cnn --members 300 --epochs 20
    .venv/bin/python -m bench.probes                                   # the default digits run (8x8: no change)
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.runs import run_config, run_parser
from mia_core.data import load_dataset, make_split
from mia_core.evaluation import EvaluationInputs, scored_groups
from mia_core.experiment import fit_model
from mia_core.label_only import PROBE_DISTRIBUTIONS, label_only_distance
from mia_core.metrics import attack_metrics


def main() -> None:
    p = run_parser(__doc__)
    p.add_argument("--queries", default="400,200", help="comma-separated query budgets")
    a = p.parse_args()
    cfg = run_config(a)
    device = torch.device("cpu")
    ds = load_dataset(cfg.dataset, seed=cfg.seed)
    split = make_split(ds, members=cfg.members, nonmembers=cfg.nonmembers, seed=cfg.seed)
    x_all, y_all = torch.from_numpy(ds.x), torch.from_numpy(ds.y)
    model, _ = fit_model(cfg, ds, split, x_all[split.members], y_all[split.members], device)
    model.eval()
    groups = scored_groups(split, cfg)
    pool = EvaluationInputs(cfg, ds, split, model, device).label_only_starts()
    budgets = [int(q) for q in a.queries.split(",")]
    print(f"| {a.dataset} {a.model} {a.members} | probes | queries | AUC [95% CI] | median L2 | ratio | "
          "queries / sample | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    first = None
    for dist in reversed(PROBE_DISTRIBUTIONS):  # gaussian first: the reference row
        for q in budgets:
            t0 = time.perf_counter()
            r = {g: label_only_distance(model, torch.from_numpy(ds.x[groups[g]]), ds.y[groups[g]], norm=2.0,
                                        max_queries=q, seed=cfg.seed, start_pool=pool, probe_distribution=dist)
                 for g in ("members", "nonmembers")}
            seconds = time.perf_counter() - t0
            m = attack_metrics(r["members"].norms, r["nonmembers"].norms, bootstrap_rounds=200, seed=cfg.seed)
            both = np.r_[r["members"].norms, r["nonmembers"].norms]
            first = np.median(both) if first is None else first
            spent = np.r_[r["members"].queries, r["nonmembers"].queries].mean()
            print(f"|  | {dist} | {q} | {m.auc:.3f} [{m.auc_ci[0]:.3f}, {m.auc_ci[1]:.3f}] | {np.median(both):.4f} "
                  f"| {np.median(both) / first:.3f} | {spent:.0f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
