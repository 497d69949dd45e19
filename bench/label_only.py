"""The label-only searches before and after issue 13, on the same trained models (run by hand, prints a table).

"0.4.0": HopSkipJump from uniform noise, 1000 queries a sample, for both norms. "now": the defaults, 400
queries, HopSkipJump (L2) and RayS (L-inf) started towards the nearest reference samples the model labels
otherwise. Both evaluations share the trained model (same store); the table gives each search's AUC with its
95% bootstrap interval, the median label-only distance of members and non-members, the queries a sample and
the label-only seconds.

    .venv/bin/python -m bench.label_only                                  # the default digits run
    .venv/bin/python -m bench.label_only --dataset mnist5k --model cnn --members 300 --epochs 20
"""

from __future__ import annotations

import tempfile

import numpy as np

from bench.runs import run_config, run_parser
from mia_core.experiment import run_experiment


def main() -> None:
    p = run_parser(__doc__)
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--store", default=None, help="a store to reuse (default: a fresh temporary one)")
    a = p.parse_args()
    store = a.store or tempfile.mkdtemp(prefix="bench-label-only-")
    print(f"| data | seed | search | norm | AUC [95% CI] | median distance | queries / sample | label-only s |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in (int(s) for s in a.seeds.split(",")):
        base = run_config(a, seed=seed)
        searches = {"0.4.0": base.replace(label_only_queries=1000, label_only_linf_queries=None,
                                          label_only_start="noise", label_only_linf="hopskipjump",
                                          label_only_probes="gaussian"), "now": base}
        medians = {}
        for name, cfg in searches.items():
            run = run_experiment(cfg, store=store)
            rec = run.record
            for attack, norm in (("label_only_l2", "L2"), ("label_only_linf", "L-inf")):
                m = rec.attacks[attack]
                d = np.r_[run.table.member_nonmember(attack)]
                medians[name, norm] = float(np.median(d))
                print(f"| {a.dataset} {a.model} {a.members} | {seed} | {name} | {norm} | {m.auc:.3f} "
                      f"[{m.auc_ci[0]:.3f}, {m.auc_ci[1]:.3f}] | {medians[name, norm]:.4f} | "
                      f"{rec.label_only_queries_used:.0f} | {rec.timings.label_only_seconds:.1f} |")
        for norm in ("L2", "L-inf"):
            print(f"|  | {seed} | now / 0.4.0 | {norm} |  | {medians['now', norm] / medians['0.4.0', norm]:.3f} |  |  |")
    print(f"\nstore: {store}")


if __name__ == "__main__":
    main()
