"""Command line: `python -m mia_core run|runs|download ...`. A thin layer over mia_core.experiment."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import textwrap
import time
from pathlib import Path

from . import views
from .config import ExperimentConfig, Stage
from .data import DATASETS, DatasetError, download_dataset
from .defenses import DEFENSES
from .experiment import collect_garbage, repair_store, scan_store
from .jobs import JobQueue, run_attached
from .lira import claim_process
from .metrics import FPR_LEVELS
from .records import RunRecord
from .store import DEFAULT_FOLDER, STORE_ENV, Store, read_json, write_json
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

    def interject(self, text: str) -> None:
        """A block of text between progress lines (the first results)."""
        self.stream.write(("\n" if self.stream.isatty() else "") + text + "\n")
        self.stream.flush()
        self.stage = None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _number_or_none(kind, text: str):
    if text.strip().lower() == "none":
        return None
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value (or none): '{text}'") from None


def _add_run_args(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One flag per config field (its metadata gives the help, type, choices and aliases), plus --store/--out;
    `only` limits the fields."""
    d = ExperimentConfig()
    for name, prm in ExperimentConfig.params().items():
        if only is not None and name not in only:
            continue
        kw: dict = {"dest": name, "help": prm.help}
        if prm.kind is str:
            kw["type"] = str
        else:
            kw["type"] = prm.kind
            kw["metavar"] = "N" if prm.kind is int else "X"
            if prm.optional and getattr(d, name) is not None:  # "none" says what the help gives for None
                kw["type"] = functools.partial(_number_or_none, prm.kind)
                kw["metavar"] += "|none"
        if name == "defense_strength":  # default: the chosen defense's typical strength
            kw.update(default=None, help=prm.help + " (default: the defense's typical value)")
        else:
            kw["default"] = getattr(d, name)
            if getattr(d, name) is not None:
                kw["help"] += ". Default: %(default)s"
        if prm.choices is not None:
            kw["choices"] = list(prm.choices())
        if name == "dataset":
            kw["help"] += " (" + ", ".join(DATASETS) + ")"
        p.add_argument(_flag(name), *prm.aliases, **kw)
    p.add_argument("--store", default=None, help=f"store folder for cached runs (default: ${STORE_ENV} or ./{DEFAULT_FOLDER})")
    p.add_argument("--out", default=None, help="also write summary.json and per_sample.csv into this folder")


def config_from_args(a: argparse.Namespace, base: ExperimentConfig | None = None) -> ExperimentConfig:
    """The config the flags describe, validated (ConfigError lists every problem). With `base`, only the flags
    the parser has replace its fields."""
    values = {name: getattr(a, name) for name in ExperimentConfig.params() if hasattr(a, name)}
    if getattr(a, "model_factory", None) and base is None:
        values["model"] = "factory:" + a.model_factory
    if base is not None:
        return base.replace(**values).validate()
    if values["defense_strength"] is None:
        values["defense_strength"] = DEFENSES.get(a.defense).default_strength
    return ExperimentConfig(**values).validate()


def format_table(record: RunRecord) -> str:
    """The readable end-of-run table: one row per attack."""
    width = max(len(a) for a in record.attacks) + 2
    fprs = "".join(f"{views.fpr_label(f):>9}" for f in FPR_LEVELS)
    lines = [
        f"train accuracy {record.train_accuracy:.3f}   test accuracy {record.test_accuracy:.3f}   "
        f"members {record.n_members}   non-members {record.n_nonmembers}   device {record.environment.device}",
        "",
        f"{'attack':<{width}}{'AUC':>7}  {'95% CI':<15}{fprs}{'adv':>7}{'TPR@1% (calibrated)':>21}",
    ]
    for name, m in record.attacks.items():
        if not m.defined:
            why = "still being computed" if name in record.pending else record.unavailable.get(name, "undefined here")
            lines.append(f"{name:<{width}}{'-':>7}  {why}")
            continue
        lo, hi = m.auc_ci
        cal = m.calibrated.get(0.01)
        cal_s = f"{cal.tpr:.3f} @ FPR {cal.fpr:.3f}" if cal else "-"
        tprs = "".join(f"{m.tpr_at_fpr[f]:>9.3f}" for f in FPR_LEVELS)
        lines.append(f"{name:<{width}}{m.auc:>7.3f}  [{lo:.3f}, {hi:.3f}]{tprs}{m.max_advantage:>7.3f}{cal_s:>21}")
    lines.append("")
    lines.append("adv = max over thresholds of TPR - FPR. Calibrated: threshold set on the reference pool at 1% FPR "
                 f"({record.n_reference_scored} samples; {record.n_reference_searched} for the per-sample searches, "
                 "the distances, label-only distances, I_A and local variation; LiRA and RMIA have no reference "
                 "scores: their points must be in the shadows' pool).")
    if note := views.privacy_summary(record):
        lines += ["", note]
    lines.append("")
    lines.append(f"{'threshold rule (chosen without membership labels, except ORACLE)':<58}{'TPR':>7}{'FPR':>7}{'bal acc':>9}")
    for rule, v in record.thresholds.items():
        lines.append(f"{rule:<58}{v.tpr:>7.3f}{v.fpr:>7.3f}{v.accuracy:>9.3f}")
    return "\n".join(lines)


def format_first_results(record: RunRecord) -> str:
    """The first results of a run still being computed: the cheap attacks' AUCs, and what is still running."""
    width = max(len(a) for a in record.attacks) + 2
    lines = [f"first results (train accuracy {record.train_accuracy:.3f}, test accuracy {record.test_accuracy:.3f}):"]
    lines += [f"  {a:<{width}}AUC {m.auc:.3f}  [{m.auc_ci[0]:.3f}, {m.auc_ci[1]:.3f}]"
              for a, m in record.attacks.items() if m.defined]
    lines.append("  still being computed: " + ", ".join(record.pending))
    return "\n".join(lines)


def _print_first_results(store: Store, progress: "LineProgress"):
    def show(run_id: str) -> None:
        record = RunRecord.from_json(read_json(store.eval_path(run_id) / "summary.json"))
        progress.interject(format_first_results(record))
    return show


def _check_out(out: str | None) -> Path | None:
    """The --out folder, created and checked writable before any work starts."""
    if not out:
        return None
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--out {out} is not a writable folder ({err.strerror}).") from None
    return path


def cmd_run(a: argparse.Namespace) -> int:
    cfg = config_from_args(a)
    out = _check_out(a.out)
    store, progress = Store.resolve(a.store), LineProgress()
    result = run_attached(cfg, store, progress, first_results=_print_first_results(store, progress))  # joins
    # the app's job if one computes it
    return _report(result, out, "run")


def _report(result, out: Path | None, what: str) -> int:
    """The end of `run` and `audit`: the table, the stored folder, and summary.json / per_sample.csv in --out."""
    if result.reused:
        print(f"reused the stored {what} {result.eval_dir}", file=sys.stderr)
    if out:
        write_json(out / "summary.json", result.record.to_json())
        result.frame().to_csv(out / "per_sample.csv", index=False)
    note = views.audit_note(result.record)
    if note:  # what was audited and how its outputs were read
        print(textwrap.fill(note, 118) + "\n")
    print(format_table(result.record))
    print(f"\nstored in {result.eval_dir}")
    return 0


def cmd_audit(a: argparse.Namespace) -> int:
    """Audit the user's own model (ONNX, or a factory with weights or trained here) on their own data."""
    from .training import load_weights, read_state_dict
    from .user_audit import TrainingRecipe, audit_onnx, audit_prepared, train_user_model
    from .user_data import prepare_user_data, read_member_ids, read_user_data
    from .user_models import build_from_factory, state_digest

    if bool(a.onnx) == bool(a.model_factory):
        raise ValueError("Name the model: --onnx FILE, or --model-factory package.module:function (with --weights "
                         "FILE, or trained here on the members with the recipe flags).")
    if a.weights and not a.model_factory:
        raise ValueError("--weights needs --model-factory (the architecture the weights belong to).")
    if a.onnx_references and not a.onnx:
        raise ValueError("--onnx-references needs --onnx (a factory's reference models are copies of it already).")
    if a.onnx_batch_norm and not a.onnx_references:
        raise ValueError("--onnx-batch-norm needs --onnx-references (it says how the reference copies are built).")
    base = config_from_args(a, ExperimentConfig())
    out = _check_out(a.out)
    data = read_user_data(a.data, label_column=a.label_column, id_column=a.id_column,
                          membership_column=a.membership_column)
    if a.bounds:
        data = data.with_bounds(tuple(a.bounds))
    prepared = prepare_user_data(data, member_ids=read_member_ids(a.member_ids) if a.member_ids else None,
                                 reference_ids=read_member_ids(a.reference_ids) if a.reference_ids else None,
                                 reference_share=a.reference_share, seed=base.seed)
    ds, split = prepared.dataset, prepared.split
    store, progress = Store.resolve(a.store), LineProgress()
    common = dict(config=base, store=store, progress=progress, seed=base.seed, device=base.device)
    if a.onnx:
        result = audit_onnx(Path(a.onnx), ds, split, prepared.reference, data_label=prepared.source,
                            file_name=Path(a.onnx).name,
                            recipe=TrainingRecipe.of(base) if a.onnx_references else None,
                            batch_norm=a.onnx_batch_norm, **common)
    else:
        recipe = TrainingRecipe.of(base)
        if a.weights:
            model = build_from_factory(a.model_factory, ds.input_shape, ds.num_classes)
            load_weights(model, read_state_dict(a.weights))
            label, kind = f"{Path(a.weights).name} on {a.model_factory} (weights given)", "factory"
        else:
            model = train_user_model(a.model_factory, ds, split, recipe, seed=base.seed, progress=progress)
            label, kind = f"{a.model_factory} trained here on the members ({recipe.describe()})", "factory"
        result = audit_prepared(model, ds, split, prepared.reference, model_label=label, model_kind=kind,
                                model_digest=state_digest(model), data_label=prepared.source,
                                short_name=a.model_factory.rpartition(":")[2], model_factory=a.model_factory,
                                recipe=recipe, **common)
    return _report(result, out, "audit")


def cmd_jobs(a: argparse.Namespace) -> int:
    """List the store's background jobs (the app's and the CLI's), or cancel one."""
    queue = JobQueue(Store.resolve(a.store))
    if a.cancel:
        job = queue.cancel(a.cancel)
        if job is None:
            raise ValueError(f"No job '{a.cancel}' in this store.")
        print(f"{job.id}: {job.status.value}")
        return 0
    frame = views.jobs_frame(queue.jobs())
    print("no jobs" if frame.empty else frame.drop(columns=["error"]).to_string(index=False))
    return 0


def cmd_runs(a: argparse.Namespace) -> int:
    store = Store.resolve(a.store)
    if a.delete:
        store.delete_run(a.delete)
        print(f"deleted {a.delete}")
        return 0
    if a.name:
        store.set_name(*a.name)
        print(f"named {a.name[0]}: {a.name[1]!r}")
        return 0
    if a.repair:
        removed = repair_store(store)
        for d in removed:
            print(f"removed damaged {d.run_id}: {d.reason}")
        print(f"{len(removed)} damaged run(s) removed; run their configurations again to recompute them.")
        return 0
    scan = scan_store(store, checksums=a.verify)
    if a.json:
        print(json.dumps({"runs": [r.record.to_json() | {"eval_dir": str(r.eval_dir)} for r in scan.runs],
                          "damaged": [{"run": d.run_id, "path": str(d.path), "reason": d.reason}
                                      for d in scan.damaged]}, indent=2, allow_nan=False))
        return 0
    names = store.names()
    print(f"{'finished':<20}{'test acc':>9}{'best AUC':>9}  {'run':<40} what")
    for r in scan.runs:
        rec = r.record
        best = rec.attacks[views.best_attack(rec)].auc
        print(f"{rec.environment.finished_at:<20}{rec.test_accuracy:>9.3f}{best:>9.3f}  {r.run_id:<40} "
              f"{views.run_label(rec, names.get(r.run_id))}")
    for d in scan.damaged:
        print(f"{'DAMAGED':<38}  {d.run_id:<40} {d.reason}")
    if scan.damaged:
        print(f"\n{len(scan.damaged)} damaged run(s): `runs --repair` removes them; the next request for their "
              "configuration recomputes them.", file=sys.stderr)
    return 0


def cmd_gc(a: argparse.Namespace) -> int:
    done = collect_garbage(Store.resolve(a.store), older_than_s=a.older_than * 3600)
    print(f"removed {done.temporaries} leftover(s) of interrupted writes, {len(done.uploads)} unused upload(s) and "
          f"{len(done.job_inputs)} ended audit job(s)' copy of their files")
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from .sweep import parse_grid, run_sweep, sweep_points

    grid = parse_grid(a.grid)
    seeds = [int(s) for s in a.seeds.split(",")]
    points = sweep_points(config_from_args(a), grid, seeds)
    print(f"{len(points)} points ({len(grid)} defenses x strengths x {len(seeds)} seeds) on {a.executor}",
          file=sys.stderr)
    results = run_sweep(points, store=Store.resolve(a.store), executor=a.executor, workers=a.workers,
                        address=a.address, progress=LineProgress())
    print(f"{'defense':<16}{'strength':>9}{'seed':>6}{'test acc':>9}{'best AUC':>9}{'TPR@1%':>8}  reused")
    for p, (rec, reused) in zip(points, results):
        best = rec.attacks[views.best_attack(rec)]
        print(f"{p.config.defense:<16}{p.config.defense_strength:>9g}{p.config.seed:>6}{rec.test_accuracy:>9.3f}"
              f"{best.auc:>9.3f}{best.tpr_at_fpr[0.01]:>8.3f}  {reused}")
    return 0


def cmd_reproduce(a: argparse.Namespace) -> int:
    from .reproduce import reproduce, write_into_readme

    base = config_from_args(a)
    table = reproduce(base, seeds=[int(s) for s in a.seeds.split(",")],
                      store=Store.resolve(a.store), executor=a.executor, workers=a.workers,
                      progress=LineProgress())
    print(table)
    if a.readme:
        write_into_readme(table, a.readme, base.dataset)
        print(f"\nwritten into {a.readme}", file=sys.stderr)
    return 0


def cmd_one_run(a: argparse.Namespace) -> int:
    from .one_run import one_run_audit

    cfg = config_from_args(a)
    r = one_run_audit(cfg, canaries=a.canaries, kind=a.kind, guesses=a.guesses, progress=LineProgress())
    print(f"{views.describe(cfg)}; {r.canaries} {r.kind} canaries, each included with probability 1/2")
    print(f"loss attack: {r.correct} of {r.guesses} guesses correct ({r.correct / max(r.guesses, 1):.1%}); test "
          f"accuracy {r.test_accuracy:.3f}")
    print(f"one-run audit: epsilon >= {r.epsilon:.2f} at delta {r.delta:g} with {r.confidence:.0%} confidence "
          "(Steinke, Nasr & Jagielski 2023)")
    if r.accountant_epsilon is not None:
        print(f"DP-SGD's accountant: epsilon <= {r.accountant_epsilon:.2f} at delta 1e-05")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .experiment import list_runs, load_run
    from .report import write_report

    store = Store.resolve(a.store)
    run = load_run(a.run, store=store)
    out = _check_out(a.out or f"report-{run.run_id.replace('/', '-')}")
    rep = write_report(run, out, pdf=not a.no_pdf, family=list_runs(store))
    print(f"wrote {rep.html}" + (f" and {rep.pdf}" if rep.pdf else "") + f" in {rep.seconds:.1f} s")
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
    run.add_argument("--model-factory", default=None, metavar="PKG.MODULE:FUNCTION",
                     help="train your own architecture: f(input_shape, num_classes) -> nn.Module (trusted local code)")
    run.set_defaults(func=cmd_run)
    aud = sub.add_parser(
        "audit", help="audit your own model (ONNX, or your architecture) on your own data",
        description="Audit your own model on your own data: a table (.csv/.tsv/.parquet with a label column), an "
                    "image folder (one sub-folder per class) or an .npz; who was in training from a membership "
                    "column or a file of member ids; the model as an ONNX file, or as your architecture "
                    "(--model-factory) with --weights, or trained here on the members. With a factory, the "
                    "reference-model attacks (LiRA, RMIA) train copies with the recipe flags; with an ONNX file "
                    "they do with --onnx-references (copies of its graph, re-initialized), and are reported "
                    "unavailable without it.")
    aud.add_argument("--data", required=True, help="table, image folder, .zip of an image folder or .npz")
    aud.add_argument("--label-column", default=None, help="a table's class column")
    aud.add_argument("--membership-column", default=None, help="a table's column saying who was in training (1/0)")
    aud.add_argument("--id-column", default=None, help="a table's id column (member ids refer to it)")
    aud.add_argument("--member-ids", default=None, metavar="FILE",
                     help="member ids, one per line: a table's id-column values (or row numbers), an image's path "
                          "below the folder ('cat/001.png', or with the folder's name in front), an .npz's row numbers")
    aud.add_argument("--reference-ids", default=None, metavar="FILE",
                     help="the attacker's reference pool, one id per line (default: a share of the non-members)")
    aud.add_argument("--reference-share", type=float, default=0.5, help="Default: %(default)s")
    aud.add_argument("--onnx", default=None, metavar="FILE", help="the model as an ONNX file")
    aud.add_argument("--onnx-references", action="store_true",
                     help="reference models for LiRA and RMIA: copies of the ONNX graph, re-initialized and trained "
                          "with the recipe flags (--epochs --lr --optimizer --batch-size --weight-decay)")
    aud.add_argument("--onnx-batch-norm", action="store_true",
                     help="with --onnx-references: your model trained with a batch norm after each convolution, which "
                          "the exporter folded into it; the copies get them back")
    aud.add_argument("--model-factory", default=None, metavar="PKG.MODULE:FUNCTION",
                     help="your architecture: f(input_shape, num_classes) -> nn.Module (trusted local code)")
    aud.add_argument("--weights", default=None, metavar="FILE", help="its trained weights (.safetensors or .pt)")
    aud.add_argument("--bounds", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                     help="the box the model's inputs live in (tables and images are scaled to 0 1)")
    _add_run_args(aud, only=("epochs", "batch_size", "lr", "weight_decay", "optimizer", "seed", "device",
                             *ExperimentConfig.stage_fields(Stage.EVALUATION)))
    aud.set_defaults(func=cmd_audit)
    jobs = sub.add_parser("jobs", help="list the background jobs of the store (the app's and the CLI's), or cancel one")
    jobs.add_argument("--store", default=None, help=f"store folder (default: ${STORE_ENV} or ./{DEFAULT_FOLDER})")
    jobs.add_argument("--cancel", metavar="JOB", default=None, help="stop a queued or running job")
    jobs.set_defaults(func=cmd_jobs)
    runs = sub.add_parser("runs", help="list the runs in the store")
    runs.add_argument("--store", default=None, help=f"store folder (default: ${STORE_ENV} or ./{DEFAULT_FOLDER})")
    runs.add_argument("--json", action="store_true", help="print the summaries (and damaged runs) as JSON")
    runs.add_argument("--verify", action="store_true", help="check every file against its checksum (slower)")
    runs.add_argument("--name", nargs=2, metavar=("RUN", "NAME"), help="give a run a name (empty: remove it)")
    runs.add_argument("--delete", metavar="RUN", help="delete a run (and its model when no other run uses it)")
    runs.add_argument("--repair", action="store_true",
                      help="remove damaged runs (checksums checked) so that they are recomputed on the next request")
    runs.set_defaults(func=cmd_runs)
    gc = sub.add_parser("gc", help="remove leftovers of interrupted writes and uploads no run uses")
    gc.add_argument("--store", default=None, help=f"store folder (default: ${STORE_ENV} or ./{DEFAULT_FOLDER})")
    gc.add_argument("--older-than", type=float, default=1.0, help="hours a leftover must be old. Default: %(default)s")
    gc.set_defaults(func=cmd_gc)
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
    orun = sub.add_parser("audit-one-run", help="one-run DP audit: train once with canaries, bound epsilon",
                          description="Steinke, Nasr & Jagielski (NeurIPS 2023): canaries from the reference pool, "
                                      "each in the training set with probability 1/2, one training run of the "
                                      "configured model and defense, and the loss attack's guesses turned into a "
                                      "lower bound on epsilon (delta 1e-5, 95% confidence).")
    _add_run_args(orun)
    orun.add_argument("--canaries", type=int, default=500, help="Default: %(default)s")
    orun.add_argument("--kind", default="mislabelled", choices=["mislabelled", "natural"],
                      help="canaries with a random wrong label, or as they are. Default: %(default)s")
    orun.add_argument("--guesses", type=int, default=None, help="guesses made (default: a fifth of the canaries)")
    orun.set_defaults(func=cmd_one_run)
    rep = sub.add_parser("report", help="write a self-contained audit report of a run (HTML, and PDF via Chromium)")
    rep.add_argument("run", help="the run id, as `runs` lists it (<train key>/eval-<eval key>)")
    rep.add_argument("--store", default=None, help=f"store folder (default: ${STORE_ENV} or ./{DEFAULT_FOLDER})")
    rep.add_argument("--out", default=None, help="folder for report.html / report.pdf (default: report-<run>)")
    rep.add_argument("--no-pdf", action="store_true", help="HTML only (no Chromium needed)")
    rep.set_defaults(func=cmd_report)
    dl = sub.add_parser("download", help="fetch mnist, fashion_mnist or cifar10 into a folder (needs internet)")
    dl.add_argument("--dataset", required=True, choices=["mnist", "fashion_mnist", "cifar10"])
    dl.add_argument("--data-dir", required=True)
    dl.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    claim_process()  # a command computes one thing at a time: shadow chunks may train in threads (lira)
    try:
        return args.func(args)
    except (DatasetError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory: the data or the model is too large for this machine.", file=sys.stderr)
        return 2
    except RuntimeError as err:  # e.g. no Chromium for a PDF
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only folder, an unreadable file
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: {err.strerror or err}{where}. Nothing partial was stored.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing partial was stored; run the same command again to start over.", file=sys.stderr)
        return 130
