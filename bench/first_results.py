"""Time to the first results and to the full audit (issue 13), from a fresh store (run by hand, prints a table).

The evaluation is staged (evaluation.evaluate): the members' and non-members' softmax signals are stored first,
then with the white-box distances, then the finished run with label-only searches, reference models, I_V and
the reference pool. Times are seconds from the start of the run (training included).

    .venv/bin/python -m bench.first_results                                    # the default digits run
    .venv/bin/python -m bench.first_results --dataset mnist5k --model cnn --members 300 --epochs 20
"""

from __future__ import annotations

import tempfile
import time

from bench.runs import run_config, run_parser
from mia_core.experiment import run_experiment


def main() -> None:
    a = run_parser(__doc__).parse_args()
    cfg = run_config(a)
    store = tempfile.mkdtemp(prefix="bench-first-results-")
    t0 = time.perf_counter()
    seen: list[tuple[str, float]] = []
    run = run_experiment(cfg, store=store, first_results=lambda rid: seen.append((rid, time.perf_counter() - t0)))
    total = time.perf_counter() - t0
    t = run.record.timings
    print(f"{a.dataset} {a.model}, {a.members} members, {a.epochs} epochs (store {store})\n")
    print("| results | seconds from the start |")
    print("|---|---|")
    names = {"first0": "first: softmax signals", "first1": "then: white-box distances too"}
    for rid, at in seen:
        print(f"| {names.get(rid.split('/')[1].split('-')[0], rid)} | {at:.1f} |")
    print(f"| full audit | {total:.1f} |")
    print(f"\nstages: training {t.train_seconds:.1f} s, white-box distances {t.distance_seconds:.1f} s, label-only "
          f"{t.label_only_seconds:.1f} s ({run.record.label_only_queries_used:.0f} queries a sample), reference "
          f"models {t.shadow_seconds:.1f} s, evaluation {t.evaluation_seconds:.1f} s")


if __name__ == "__main__":
    main()
