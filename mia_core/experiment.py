"""One experiment end to end: dataset -> split -> model -> training -> evaluation -> store.

Two cached stages, each in its own atomically written folder keyed by the configuration fields of its stage
(see `config.Stage`): the trained model (`<store>/<train_key>/`) and its evaluation
(`<train_key>/eval-<eval_key>/`, see `evaluation.py`), so that changing only the distance search reuses the
trained model.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .config import DEFAULT_CONFIG, ConfigError, ExperimentConfig  # noqa: F401  (re-exported)
from .data import Dataset, Split, load_dataset, make_split
from .defenses import DEFENSES, DefenseContext, make_objective
from .evaluation import EvaluationInputs, evaluate, validation_indices  # noqa: F401  (re-exported)
from .models import build_model, pick_device
from .records import GROUPS, DefenseInfo, RunRecord, ScoreTable, TrainingRecord  # noqa: F401
from .store import (
    Store, StoreError, atomic_folder, discard_folder, folder_problem, read_json, remove_stale_temporaries, write_json,
)
from .training import TrainConfig, accuracy, load_weights, read_state_dict, save_checkpoint, seed_everything, train

Progress = Callable[[str, float], None]


def file_digest(path: str | Path) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def train_key(cfg: ExperimentConfig, ds: Dataset) -> str:
    return cfg.train_key(ds.fingerprint(), file_digest(cfg.checkpoint) if cfg.checkpoint else None)


@dataclass
class RunResult:
    """A finished run: where it is stored, its model and split, its record and its per-sample scores."""

    config: ExperimentConfig
    store: Store
    run_dir: Path
    eval_dir: Path
    dataset: Dataset
    split: Split
    model: torch.nn.Module | None  # None for an audited Python module (its code is the user's, never stored)
    record: RunRecord
    table: ScoreTable
    reused: bool

    @property
    def run_id(self) -> str:
        return Store.run_id(self.eval_dir)

    def scores(self, attack: str, group: str) -> np.ndarray:
        return self.table.scores(attack, group)

    def frame(self) -> pd.DataFrame:
        """One row per scored sample: dataset index, group, label, prediction and every attack's score."""
        return self.table.to_frame()


def _train_stage(cfg: ExperimentConfig, run_dir: Path, ds: Dataset, device, progress) -> None:
    """Train (or load) the model and write config, split, weights and the training record into run_dir."""
    split = make_split(ds, members=cfg.members, nonmembers=cfg.nonmembers, seed=cfg.seed)
    x = torch.from_numpy(ds.x).to(device)
    y = torch.from_numpy(ds.y).to(device)
    model, record = fit_model(cfg, ds, split, x[split.members], y[split.members], device, progress)
    with atomic_folder(run_dir) as tmp:
        write_json(tmp / "config.json", cfg.to_dict() | {"train_key": run_dir.name})
        np.savez(tmp / "split.npz", **split.to_arrays())
        save_checkpoint(model, tmp / "model.safetensors", metadata={"model": cfg.model, "width": cfg.width})
        write_json(tmp / "training.json", record.to_json())


def fit_model(cfg: ExperimentConfig, ds: Dataset, split: Split, xm: torch.Tensor, ym: torch.Tensor, device,
              progress=None) -> tuple[torch.nn.Module, TrainingRecord]:
    """Train `cfg`'s model and defense on (xm, ym) (or load its checkpoint), and measure its accuracy on the split.
    The training set is usually the split's members; a one-run audit adds its canaries to it. Robust accuracy is
    measured by the evaluation (evaluation.SharedWork.robustness), after its first results."""
    seed_everything(cfg.seed)
    weight_decay, dropout = cfg.effective_training()
    model = build_model(cfg.model, ds.input_shape, ds.num_classes, width=cfg.width, dropout=dropout)
    x = torch.from_numpy(ds.x).to(device)
    y = torch.from_numpy(ds.y).to(device)
    model.to(device)
    spec = DEFENSES.get(cfg.defense)
    t0 = time.perf_counter()
    history = None
    info: dict = {}
    if cfg.checkpoint:
        load_weights(model, read_state_dict(cfg.checkpoint))
        model.to(device)
    elif spec.trainer is not None:  # a defense with its own training loop (DP-SGD)
        model.normalize.fit(xm)
        info = spec.trainer(model=model, x=xm, y=ym, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr * 50,
                            noise_multiplier=cfg.defense_strength, seed=cfg.seed, progress=progress)
        model = _unwrapped_copy(model, cfg, ds, dropout, device)
    else:
        model.normalize.fit(xm)
        val = torch.from_numpy(validation_indices(split, cfg.validation_size, cfg.seed)).to(device)
        ctx = DefenseContext(x_train=xm, y_train=ym, x_val=x[val], y_val=y[val], num_classes=ds.num_classes,
                             epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                             adv_epsilon=cfg.adv_epsilon, adv_norm=cfg.adv_norm)
        objective = make_objective(cfg.defense, cfg.defense_strength, ctx)
        tc = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=weight_decay,
                         seed=cfg.seed, optimizer=cfg.optimizer)
        history = train(model, xm, ym, tc, step_loss=objective.step_loss, epoch_end=objective.epoch_end,
                        progress=progress)
        if objective.finish:
            objective.finish(model)
        info = {k: v for k, v in objective.info.items() if k != "best"}
    train_s = time.perf_counter() - t0
    record = TrainingRecord(
        train_accuracy=accuracy(model, xm, ym),
        test_accuracy=accuracy(model, x[split.nonmembers], y[split.nonmembers]),
        reference_accuracy=accuracy(model, x[split.reference], y[split.reference]),
        train_seconds=train_s, device=str(device), defense=DefenseInfo.from_dict(info),
        loss_history=tuple(history.loss) if history else tuple(info.get("loss", ())),
        accuracy_history=tuple(history.train_accuracy) if history else (),
        stopped_at=history.stopped_at if history else None,
    )
    return model, record


def _unwrapped_copy(model, cfg, ds, dropout, device):
    """A fresh module with the trained weights, free of opacus's hooks."""
    clean = build_model(cfg.model, ds.input_shape, ds.num_classes, width=cfg.width, dropout=dropout)
    clean.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    return clean.to(device).eval()


def load_trained(cfg: ExperimentConfig, run_dir: Path, ds: Dataset, device
                 ) -> tuple[torch.nn.Module, Split, TrainingRecord]:
    """The trained model, its split and its training record from a run folder."""
    model = build_model(cfg.model, ds.input_shape, ds.num_classes, width=cfg.width,
                        dropout=cfg.effective_training()[1])
    load_weights(model, read_state_dict(run_dir / "model.safetensors"))
    model.to(device).eval()
    with np.load(run_dir / "split.npz", allow_pickle=False) as z:
        split = Split(members=z["members"], nonmembers=z["nonmembers"], reference=z["reference"])
    return model, split, TrainingRecord.from_json(read_json(run_dir / "training.json"))


def run_experiment(
    config: ExperimentConfig = DEFAULT_CONFIG,
    *,
    store: Store | str | Path | None = None,
    progress: Progress | None = None,
    first_results: Callable[[str], None] | None = None,
) -> RunResult:
    """Train (or reuse) the model of `config`, score every attack, and return the stored result.
    `store` defaults to $MIA_STORE, else ./mia_runs (Store.resolve). `first_results` is called with the run id
    of the cheap attacks' results as soon as they are stored (evaluation.evaluate), before the expensive ones."""
    config.validate()
    st = Store.resolve(store)
    device = pick_device(config.device)
    ds = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    key = train_key(config, ds)
    run_dir = st.run_dir(key)
    eval_dir = st.eval_dir(key, config.eval_key())
    for folder in (run_dir, eval_dir):  # a damaged stored stage is recomputed, never reused
        if folder.is_dir() and folder_problem(folder) is not None:
            discard_folder(folder)
    reused = eval_dir.is_dir()
    if not run_dir.is_dir():
        _train_stage(config, run_dir, ds, device, progress)
    model, split, training = load_trained(config, run_dir, ds, device)
    if not eval_dir.is_dir():
        evaluate(EvaluationInputs(config, ds, split, model, device, progress=progress), training, st, key,
                 first_results=first_results)
    if progress:
        progress("done", 1.0)
    return _assemble(st, config, eval_dir, ds, model, split, reused)


def check_checkpoint(config: ExperimentConfig) -> None:
    """Refuse, before any work, a checkpoint that cannot be read or does not fit the configured architecture
    (CheckpointError names why)."""
    if not config.checkpoint:
        return
    ds = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    model = build_model(config.model, ds.input_shape, ds.num_classes, width=config.width,
                        dropout=config.effective_training()[1])
    load_weights(model, read_state_dict(config.checkpoint))


def stored_run_id(config: ExperimentConfig, store: Store | str | Path | None = None) -> str | None:
    """The id of `config`'s finished, intact run in the store, or None when it would have to be computed."""
    st = Store.resolve(store)
    try:
        ds = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    except ValueError:
        return None
    key = train_key(config, ds)
    eval_dir = st.eval_dir(key, config.eval_key())
    return Store.intact_run_id(eval_dir)


def _assemble(st: Store, config, eval_dir: Path, ds, model, split, reused: bool) -> RunResult:
    record = RunRecord.from_json(read_json(eval_dir / "summary.json"))
    table = ScoreTable.load(eval_dir)
    return RunResult(config, st, eval_dir.parent, eval_dir, ds, split, model, record, table, reused)


def load_run(run: str | Path, *, store: Store | str | Path | None = None, device: str = "auto") -> RunResult:
    """Reopen a finished run (no training, no search): by its id in the store, or by its evaluation folder.
    Its files are checked against their manifests first: a damaged run raises StoreError naming the problem."""
    st = Store.resolve(store)
    eval_dir = Path(run)
    if not (eval_dir / "summary.json").is_file():
        eval_dir = st.eval_path(str(run))
    for folder in (eval_dir.parent, eval_dir):
        if problem := folder_problem(folder):
            raise StoreError(f"The run {Store.run_id(eval_dir)} is damaged ({folder.name}: {problem}); run its "
                             "configuration again to recompute it (`python -m mia_core runs --repair` removes it).")
    record = RunRecord.from_json(read_json(eval_dir / "summary.json"))
    config = record.config
    if record.is_audit:  # a user's model and data, kept with the run
        from .user_audit import reopen_audit

        ds, split, model = reopen_audit(eval_dir.parent, pick_device(device))
        return _assemble(st, config, eval_dir, ds, model, split, True)
    ds = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    model, split, _ = load_trained(config, eval_dir.parent, ds, pick_device(device))
    return _assemble(st, config, eval_dir, ds, model, split, True)


@dataclass(frozen=True)
class StoredRun:
    """A run record as listed from the store, with where it lives."""

    record: RunRecord
    eval_dir: Path

    @property
    def run_id(self) -> str:
        return Store.run_id(self.eval_dir)


@dataclass(frozen=True)
class DamagedRun:
    """A folder in the store that is not a usable run, and why."""

    path: Path
    reason: str

    @property
    def run_id(self) -> str:
        return Store.run_id(self.path) if self.path.name.startswith("eval-") else self.path.name


@dataclass(frozen=True)
class StoreScan:
    runs: list[StoredRun]
    damaged: list[DamagedRun]


def scan_store(store: Store | str | Path | None = None, *, checksums: bool = False) -> StoreScan:
    """Every finished evaluation in the store, newest first, and every damaged one with the reason. Sizes are
    always checked against the manifests, contents too with `checksums` (`runs --verify`)."""
    st = Store.resolve(store)
    runs, damaged = [], []
    for eval_dir in st.evaluation_dirs():
        problem = folder_problem(eval_dir.parent, checksums=checksums) or folder_problem(eval_dir, checksums=checksums)
        if problem:
            damaged.append(DamagedRun(eval_dir, problem))
            continue
        try:
            runs.append(StoredRun(RunRecord.from_json(read_json(eval_dir / "summary.json")), eval_dir))
        except (OSError, ValueError, KeyError, TypeError) as err:
            damaged.append(DamagedRun(eval_dir, f"unreadable summary ({type(err).__name__})"))
    runs.sort(key=lambda r: r.record.environment.finished_at, reverse=True)
    return StoreScan(runs, damaged)


def list_runs(store: Store | str | Path | None = None) -> list[StoredRun]:
    """Every finished, intact evaluation in the store, newest first (interrupted or damaged runs never appear)."""
    return scan_store(store).runs


def repair_store(store: Store | str | Path | None = None) -> list[DamagedRun]:
    """Remove every damaged run (contents checked), so that its configuration is recomputed on the next request;
    a damaged trained model goes with every evaluation of it. Returns what was removed."""
    st = Store.resolve(store)
    damaged = scan_store(st, checksums=True).damaged
    for d in damaged:
        model_problem = folder_problem(d.path.parent)
        discard_folder(d.path.parent if model_problem else d.path)
    return damaged


@dataclass(frozen=True)
class Collected:
    temporaries: int
    uploads: list[Path]
    first_results: list[Path] = field(default_factory=list)
    job_inputs: list[Path] = field(default_factory=list)  # audit jobs' copies of a user's files


def collect_garbage(store: Store | str | Path | None = None, *, older_than_s: float = 3600) -> Collected:
    """Remove leftovers of interrupted writes older than `older_than_s` and uploads that no stored model uses."""
    st = Store.resolve(store)
    temporaries = remove_stale_temporaries(st.root, older_than_s)
    used = set()
    for cfg_file in st.root.glob("*/config.json"):
        try:
            ckpt = read_json(cfg_file).get("checkpoint")
        except (OSError, ValueError):
            continue
        if ckpt:
            used.add(Path(ckpt).name)
    unused = [p for p in st.uploads.glob("*") if p.is_file() and not p.name.startswith(".") and p.name not in used
              and time.time() - p.stat().st_mtime > older_than_s]
    for p in unused:
        p.unlink(missing_ok=True)
    # first results of a job that ended without finishing its run (killed, failed), or of one that finished
    stale = [p for p in st.root.glob("*/first?-*") if p.is_dir() and (
        (p.parent / ("eval-" + p.name.split("-", 1)[1])).is_dir()
        or time.time() - p.stat().st_mtime > older_than_s and not _job_running(st, p))]
    for p in stale:
        discard_folder(p)
    from .jobs import discard_unused_inputs

    return Collected(temporaries, unused, stale, discard_unused_inputs(st, older_than_s))


def _job_running(st: Store, first: Path) -> bool:
    """Whether an active job of the store is computing the evaluation whose first results are `first`."""
    from .jobs import JobQueue

    run_id = Store.run_id(first)
    return any(j.status.active and j.first_run_id == run_id for j in JobQueue(st).jobs())
