"""Command line: `python -m mia_core run|runs|download ...`. A thin layer over mia_core.experiment."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .attacks import ATTACKS, OUTPUT_MASKS
from .data import DATASETS, DatasetError, download_dataset
from .defenses import DEFAULT_STRENGTH, DEFENSE_HELP, DEFENSES
from .distances import METHODS
from .experiment import ExperimentConfig, best_attack, list_runs, run_experiment
from .models import MODELS
from .training import CheckpointError


class LineProgress:
    """Prints `stage  42%` on one updating line (a plain new line per stage when not a terminal)."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.stage, self.last = stream, None, 0.0

    def __call__(self, stage: str, frac: float) -> None:
        now = time.monotonic()
        if stage == self.stage and frac < 1.0 and now - self.last < 0.2:
            return
        self.last = now
        if self.stream.isatty():
            end = "\n" if frac >= 1.0 else ""
            self.stream.write(f"\r{stage:<40} {frac:6.1%}{end}")
        elif stage != self.stage or frac >= 1.0:
            self.stream.write(f"{stage:<40} {frac:6.1%}\n")
        self.stream.flush()
        self.stage = stage


def _add_run_args(p: argparse.ArgumentParser) -> None:
    d = ExperimentConfig()
    p.add_argument("--dataset", default=d.dataset,
                   help=f"one of {', '.join(DATASETS)}, or npz:PATH (arrays x in [0,1] and y). Default: %(default)s")
    p.add_argument("--data-dir", default=None, help="folder holding torchvision datasets (mnist, fashion_mnist, cifar10)")
    p.add_argument("--model", default=d.model, choices=list(MODELS), help="architecture. Default: %(default)s")
    p.add_argument("--width", type=int, default=d.width, help="hidden width (mlp, cnn). Default: %(default)s")
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout rate. Default: %(default)s")
    p.add_argument("--members", type=int, default=d.members, help="training-set size. Default: %(default)s")
    p.add_argument("--nonmembers", type=int, default=None, help="held-out evaluation size (default: = members)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="Default: %(default)s")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="Default: %(default)s")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate. Default: %(default)s")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="Default: %(default)s")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the split, the initialisation and the batches")
    p.add_argument("--defense", default=d.defense, choices=list(DEFENSES),
                   help="train-time defense: " + "; ".join(f"{k}: {v}" for k, v in DEFENSE_HELP.items()))
    p.add_argument("--strength", type=float, default=None,
                   help="the defense's strength (default: a typical value for the chosen defense)")
    p.add_argument("--adv-epsilon", type=float, default=d.adv_epsilon,
                   help="radius for PGD-AT / TRADES training, robust accuracy and the adv_confidence attack")
    p.add_argument("--adv-norm", default=d.adv_norm, choices=["linf", "l2"], help="norm of the PGD / TRADES ball")
    p.add_argument("--checkpoint", default=None,
                   help="evaluate this state_dict (.safetensors, or .pt via weights_only) instead of training")
    p.add_argument("--method", default=d.distance_method, choices=list(METHODS),
                   help="minimal-perturbation search: deepfool (fastest), superdeepfool (tighter), fmn (tightest, "
                        "started from superdeepfool). Default: %(default)s")
    p.add_argument("--steps", type=int, default=None, help="iterations of the search (default: the method's own)")
    p.add_argument("--reference-scored", type=int, default=d.reference_scored,
                   help="reference samples scored for calibrated thresholds. Default: %(default)s")
    p.add_argument("--bootstrap", type=int, default=d.bootstrap_rounds, help="bootstrap rounds for intervals")
    p.add_argument("--label-only-queries", type=int, default=d.label_only_queries,
                   help="label queries per sample for the label-only distance. Default: %(default)s")
    p.add_argument("--lira-shadows", type=int, default=d.lira_shadows,
                   help="shadow models for LiRA and shadow thresholds (even). Default: %(default)s")
    p.add_argument("--output-mask", default=d.output_mask, choices=list(OUTPUT_MASKS),
                   help="what the attacker's API returns: " + "; ".join(f"{k}: {v}" for k, v in OUTPUT_MASKS.items()))
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda. Default: %(default)s")
    p.add_argument("--store", default=None, help="store folder for cached runs (default: $MIA_STORE or ./mia_runs)")
    p.add_argument("--out", default=None, help="also write summary.json and per_sample.csv into this folder")


def config_from_args(a: argparse.Namespace) -> ExperimentConfig:
    return ExperimentConfig(
        dataset=a.dataset, model=a.model, width=a.width, dropout=a.dropout, members=a.members,
        nonmembers=a.nonmembers, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
        seed=a.seed, checkpoint=a.checkpoint, defense=a.defense,
        defense_strength=DEFAULT_STRENGTH[a.defense] if a.strength is None else a.strength,
        adv_epsilon=a.adv_epsilon, adv_norm=a.adv_norm, distance_method=a.method, distance_steps=a.steps,
        reference_scored=a.reference_scored, bootstrap_rounds=a.bootstrap,
        label_only_queries=a.label_only_queries, lira_shadows=a.lira_shadows, output_mask=a.output_mask, data_dir=a.data_dir, device=a.device,
    )


def format_table(summary: dict) -> str:
    """The readable end-of-run table: one row per attack."""
    lines = [
        f"train accuracy {summary['train_accuracy']:.3f}   test accuracy {summary['test_accuracy']:.3f}   "
        f"members {summary['n_members']}   non-members {summary['n_nonmembers']}   device {summary['device']}",
        "",
        f"{'attack':<21}{'AUC':>7}  {'95% CI':<15}{'TPR@0.1%':>9}{'TPR@1%':>8}{'TPR@10%':>9}{'adv':>7}"
        f"{'TPR@1% (calibrated)':>21}",
    ]
    for name in ATTACKS:
        m = summary["attacks"][name]
        t = m["tpr_at_fpr"]
        lo, hi = m["auc_ci"]
        cal = m.get("calibrated", {}).get("0.01")
        cal_s = f"{cal['tpr']:.3f} @ FPR {cal['fpr']:.3f}" if cal else "-"
        lines.append(f"{name:<21}{m['auc']:>7.3f}  [{lo:.3f}, {hi:.3f}] {t['0.001']:>8.3f}{t['0.01']:>8.3f}"
                     f"{t['0.1']:>9.3f}{m['max_advantage']:>7.3f}{cal_s:>21}")
    lines.append("")
    lines.append("adv = max over thresholds of TPR - FPR. Calibrated: threshold set on the reference pool at 1% FPR "
                 "(LiRA has no reference scores: its points must be in the shadows' pool).")
    lines.append("")
    lines.append(f"{'threshold rule (chosen without membership labels, except ORACLE)':<58}{'TPR':>7}{'FPR':>7}{'bal acc':>9}")
    for rule, v in summary.get("thresholds", {}).items():
        lines.append(f"{rule:<58}{v['tpr']:>7.3f}{v['fpr']:>7.3f}{v['accuracy']:>9.3f}")
    return "\n".join(lines)


def cmd_run(a: argparse.Namespace) -> int:
    cfg = config_from_args(a)
    result = run_experiment(cfg, store_root=a.store, progress=LineProgress())
    if result.reused:
        print(f"reused the stored run {result.eval_dir}", file=sys.stderr)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        from .store import write_json

        write_json(out / "summary.json", result.summary)
        result.table().to_csv(out / "per_sample.csv", index=False)
    print(format_table(result.summary))
    print(f"\nstored in {result.eval_dir}")
    return 0


def cmd_runs(a: argparse.Namespace) -> int:
    runs = list_runs(a.store)
    if a.json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    print(f"{'finished':<20}{'dataset':<10}{'model':<9}{'members':>8}{'test acc':>9}{'best AUC':>9}  folder")
    for s in runs:
        c = s["config"]
        best = s["attacks"][best_attack(s)]["auc"]
        print(f"{s['finished_at']:<20}{c['dataset']:<10}{c['model']:<9}{s['n_members']:>8}"
              f"{s['test_accuracy']:>9.3f}{best:>9.3f}  {s['eval_dir']}")
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from .sweep import parse_grid, run_sweep, sweep_points

    grid = parse_grid(a.grid)
    seeds = [int(s) for s in a.seeds.split(",")]
    points = sweep_points(config_from_args(a), grid, seeds)
    print(f"{len(points)} points ({len(grid)} defenses x strengths x {len(seeds)} seeds) on {a.executor}",
          file=sys.stderr)
    results = run_sweep(points, store_root=a.store or "mia_runs", executor=a.executor, workers=a.workers,
                        address=a.address, progress=LineProgress())
    print(f"{'defense':<16}{'strength':>9}{'seed':>6}{'test acc':>9}{'best AUC':>9}{'TPR@1%':>8}  reused")
    for p, (s, reused) in zip(points, results):
        best = best_attack(s)
        print(f"{p.config.defense:<16}{p.config.defense_strength:>9g}{p.config.seed:>6}{s['test_accuracy']:>9.3f}"
              f"{s['attacks'][best]['auc']:>9.3f}{s['attacks'][best]['tpr_at_fpr']['0.01']:>8.3f}  {reused}")
    return 0


def cmd_reproduce(a: argparse.Namespace) -> int:
    from .reproduce import reproduce, write_into_readme

    base = config_from_args(a)
    table = reproduce(base, seeds=[int(s) for s in a.seeds.split(",")],
                      store_root=a.store or "mia_runs", executor=a.executor, workers=a.workers,
                      progress=LineProgress())
    print(table)
    if a.readme:
        write_into_readme(table, a.readme, base.dataset)
        print(f"\nwritten into {a.readme}", file=sys.stderr)
    return 0


def cmd_download(a: argparse.Namespace) -> int:
    path = download_dataset(a.dataset, a.data_dir)
    print(f"{a.dataset} is in {path}; use --dataset {a.dataset} --data-dir {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mia_core",
        description="Membership Leakage Explorer: train a classifier, measure each sample's distance to the "
                    "decision boundary, and score membership-inference attacks honestly (ROC, AUC, TPR at low FPR).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train (or reuse) a model, score every attack, print a table",
                         description="Train (or reuse from the store) a model, compute minimal perturbations and "
                                     "every attack's scores, and print AUC / TPR-at-FPR with bootstrap intervals.")
    _add_run_args(run)
    run.set_defaults(func=cmd_run)
    runs = sub.add_parser("runs", help="list the runs in the store")
    runs.add_argument("--store", default=None, help="store folder (default: $MIA_STORE or ./mia_runs)")
    runs.add_argument("--json", action="store_true", help="print the summaries as JSON")
    runs.set_defaults(func=cmd_runs)
    sw = sub.add_parser("sweep", help="run a grid of defenses x strengths x seeds into the store (resumable)",
                        description="Each point is a run in the store: finished points are reused, so an "
                                    "interrupted sweep resumes where it stopped. Example: --grid none "
                                    "--grid pgd_at=0.05,0.1 --grid mmd_mixup=1,3 --seeds 0,1,2")
    _add_run_args(sw)
    sw.add_argument("--grid", action="append", required=True, help="DEFENSE[=s1,s2,...], repeatable")
    sw.add_argument("--seeds", default="0", help="comma-separated seeds. Default: %(default)s")
    sw.add_argument("--executor", default="process", choices=["serial", "process", "ray"],
                    help="local process pool (default), serial, or a Ray cluster")
    sw.add_argument("--workers", type=int, default=None, help="parallel points (default: the CPU count)")
    sw.add_argument("--address", default=None, help="Ray cluster address (ray://host:10001 or auto)")
    sw.set_defaults(func=cmd_sweep)
    rp = sub.add_parser("reproduce", help="measure the seed papers' findings and write a table",
                        description="Runs natural, PGD-AT, TRADES, MMD+mix-up and DP-SGD models over seeds on the "
                                    "chosen data and prints the findings beside the papers' reference values.")
    _add_run_args(rp)
    rp.add_argument("--seeds", default="0,1,2", help="Default: %(default)s")
    rp.add_argument("--executor", default="process", choices=["serial", "process", "ray"])
    rp.add_argument("--workers", type=int, default=None)
    rp.add_argument("--readme", default=None, help="write the table into this README between its markers")
    rp.set_defaults(func=cmd_reproduce)
    dl = sub.add_parser("download", help="fetch mnist, fashion_mnist or cifar10 into a folder (needs internet)")
    dl.add_argument("--dataset", required=True, choices=["mnist", "fashion_mnist", "cifar10"])
    dl.add_argument("--data-dir", required=True)
    dl.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing partial was stored; run the same command again to start over.", file=sys.stderr)
        return 130
