"""Benchmark: RMIA against LiRA with few reference models (the regime where Zarifzadeh, Liu & Shokri report RMIA
ahead). Run by hand:

    .venv/bin/python bench/rmia_vs_lira.py [--datasets digits,mnist5k] [--seeds 0,1,2] [--models 1,2,4]

For each dataset and seed: the default target (2x256 MLP on 200 members, 60 epochs), reference models of the same
recipe on random halves of the members + non-members pool, and 500 reference-pool samples as RMIA's population.
Prints AUC and TPR at 1% FPR (mean +- sd over seeds) of LiRA online / offline (fixed variance, the steadier
variant with few models) and RMIA online / offline. LiRA online needs IN and OUT models for every point: with one
reference model it is not defined ("-").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mia_core.data import load_dataset, make_split
from mia_core.lira import lira_scores, phi_from_log_probs, shadow_set
from mia_core.metrics import auc, roc_points, tpr_at_fpr
from mia_core.models import build_model
from mia_core.probabilities import log_probabilities
from mia_core.rmia import choose_offline_a, rmia_scores, true_label_probability
from mia_core.training import TrainConfig, train


def one_seed(dataset: str, seed: int, counts: list[int]) -> dict[tuple[str, int], tuple[float, float]]:
    ds = load_dataset(dataset)
    split = make_split(ds, members=200, seed=seed)
    build = lambda: build_model("mlp", ds.input_shape, ds.num_classes, width=256)  # noqa: E731
    torch.manual_seed(seed)
    target = build()
    xm, ym = torch.from_numpy(ds.x[split.members]), torch.from_numpy(ds.y[split.members])
    target.normalize.fit(xm)
    train(target, xm, ym, TrainConfig(epochs=60, seed=seed))
    target.eval()
    pool = np.r_[split.members, split.nonmembers]
    population = np.random.default_rng(seed).choice(split.reference, 500, replace=False)
    logp_x = log_probabilities(target, torch.from_numpy(ds.x[pool]))
    logp_z = log_probabilities(target, torch.from_numpy(ds.x[population]))
    member = np.r_[np.ones(len(split.members), bool), np.zeros(len(split.nonmembers), bool)]
    out = {}
    for k in counts:
        shadows = shadow_set(build, torch.from_numpy(ds.x[pool]), torch.from_numpy(ds.y[pool]), n_models=k, epochs=60,
                             batch_size=64, lr=1e-3, weight_decay=0.0, seed=seed,
                             population=torch.from_numpy(ds.x[population]))
        y_pool, y_pop = ds.y[pool], ds.y[population]
        lira = lira_scores(phi_from_log_probs(logp_x, y_pool), shadows.phi(y_pool), shadows.inside)
        ref_x = true_label_probability(shadows.logp, y_pool)
        ref_z = true_label_probability(shadows.population_logp, y_pop)
        t_x, t_z = true_label_probability(logp_x, y_pool), true_label_probability(logp_z, y_pop)
        a = choose_offline_a(ref_x, ref_z, shadows.inside)
        scores = {"LiRA offline (fixed var.)": lira["lira_offline_fixed"],
                  "RMIA online": rmia_scores(t_x, t_z, ref_x, ref_z),
                  "RMIA offline": rmia_scores(t_x, t_z, ref_x, ref_z, shadows.inside, a=a)}
        if k >= 2:
            scores["LiRA online (fixed var.)"] = lira["lira_online_fixed"]
        for name, s in scores.items():
            m, n = s[member], s[~member]
            out[(name, k)] = (auc(m, n), tpr_at_fpr(roc_points(m, n), 0.01))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="digits,mnist5k")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default="1,2,4")
    a = ap.parse_args()
    counts = [int(c) for c in a.models.split(",")]
    names = ["LiRA online (fixed var.)", "LiRA offline (fixed var.)", "RMIA online", "RMIA offline"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; members 200, population 500")
    print(f"{'dataset':<9}{'attack':<27}" + "".join(f"{f'{k} ref. AUC':>16}{'TPR@1%':>14}" for k in counts))
    for dataset in a.datasets.split(","):
        t0 = time.perf_counter()
        runs = [one_seed(dataset, int(s), counts) for s in a.seeds.split(",")]
        for name in names:
            row = f"{dataset:<9}{name:<27}"
            for k in counts:
                vals = [r[(name, k)] for r in runs if (name, k) in r]
                if not vals:
                    row += f"{'-':>16}{'-':>14}"
                    continue
                aucs, tprs = np.array(vals).T
                row += f"{aucs.mean():>9.3f} ± {aucs.std():.3f}{tprs.mean():>7.3f} ± {tprs.std():.3f}"
            print(row)
        print(f"# {dataset}: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
