"""One experiment end to end: dataset -> split -> model -> training -> scores -> metrics -> store.

Two cached stages, each in its own atomically written folder keyed by the configuration it depends on:
the trained model (`<store>/<train_key>/`) and its evaluation (`<train_key>/eval-<eval_key>/`), so that
changing only the distance search reuses the trained model.
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import __version__
from . import store as st
from .attacks import (
    ATTACKS, LABEL_ONLY_ATTACKS, adversarial_confidence_score, distance_scores, local_variation_score,
    log_probabilities, mask_log_probs, softmax_scores,
)
from .label_only import label_only_distance
from .lira import lira_scores, phi_from_log_probs, shadow_key, shadow_set
from .thresholds import attacker_thresholds
from .data import Dataset, Split, load_dataset, make_split
from .defenses import ADVERSARIAL, DefenseContext, make_objective, robust_accuracy, train_dp_sgd
from .metrics import AttackMetrics, attack_metrics
from .verified import verified_confidence_score
from .models import build_model, pick_device
from .training import (
    TrainConfig, accuracy, load_weights, read_state_dict, save_checkpoint, seed_everything, train,
)

Progress = Callable[[str, float], None]
GROUPS = ("members", "nonmembers", "reference")

_EVAL_FIELDS = ("distance_method", "distance_steps", "reference_scored", "bootstrap_rounds", "label_only_queries",
                "lira_shadows", "output_mask")
_UNHASHED = ("data_dir", "device")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that decides a run's results. Its hash names the run's folder in the store."""

    dataset: str = "digits"
    model: str = "mlp"
    width: int = 256
    dropout: float = 0.0
    members: int = 200
    nonmembers: int | None = None
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint: str | None = None  # a user's state_dict to evaluate instead of training
    defense: str = "none"  # see mia_core.defenses.DEFENSES
    defense_strength: float = 0.0
    adv_epsilon: float = 0.1  # radius of PGD / TRADES training and of robust accuracy
    adv_norm: str = "linf"
    validation_size: int = 200  # drawn from the reference pool; used by defenses, never scored
    distance_method: str = "fmn"
    distance_steps: int | None = None
    reference_scored: int = 500  # reference-pool samples scored to calibrate thresholds
    bootstrap_rounds: int = 200
    label_only_queries: int = 1000  # label queries per sample for the label-only distance
    lira_shadows: int = 16  # shadow models for LiRA and shadow-calibrated thresholds (even, >= 2)
    output_mask: str = "none"  # what the attacker's API returns: none, label, round2 (see attacks.OUTPUT_MASKS)
    data_dir: str | None = None  # where torchvision datasets live; not part of the hash
    device: str = "auto"  # not part of the hash

    def train_key(self, dataset_fingerprint: str) -> str:
        """Hash of every field that decides the trained model, with the data's own fingerprint."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in (*_EVAL_FIELDS, *_UNHASHED)}
        d["data"] = dataset_fingerprint
        d["core"] = __version__  # a new release of the algorithms never reuses an old result
        d["checkpoint"] = _file_digest(self.checkpoint) if self.checkpoint else None
        if self.checkpoint:
            for k in ("epochs", "batch_size", "lr", "weight_decay", "dropout", "defense", "defense_strength"):
                d.pop(k)
        return st.config_hash(d)

    def eval_key(self) -> str:
        return st.config_hash({**{k: getattr(self, k) for k in _EVAL_FIELDS}, "core": __version__})


DEFAULT_CONFIG = ExperimentConfig()
"""The embedded default: digits, a 2x256 MLP on 200 members for 60 epochs. Trains in seconds on 2 cores
and visibly leaks (see the README for its measured AUCs)."""


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class RunResult:
    """A finished run: its folders, model, split, per-sample scores and summary."""

    config: ExperimentConfig
    run_dir: Path
    eval_dir: Path
    dataset: Dataset
    split: Split
    model: torch.nn.Module
    summary: dict
    arrays: dict[str, np.ndarray]  # "<group>/<score>" per-sample arrays, plus indices, labels, preds, x_adv
    reused: bool

    def scores(self, attack: str, group: str) -> np.ndarray:
        return self.arrays[f"{group}/{attack}"]

    def table(self) -> pd.DataFrame:
        """One row per scored sample: dataset index, group, label, prediction and every attack's score."""
        frames = []
        for g in GROUPS:
            idx = self.arrays[f"{g}/index"]
            cols = {"index": idx, "group": g, "member": int(g == "members"),
                    "label": self.arrays[f"{g}/label"], "prediction": self.arrays[f"{g}/prediction"]}
            cols.update({a: self.arrays[f"{g}/{a}"] for a in ATTACKS})
            frames.append(pd.DataFrame(cols))
        return pd.concat(frames, ignore_index=True)


def validation_indices(split: Split, n: int, seed: int) -> np.ndarray:
    """The defender's validation set: a seeded part of the reference pool (at most half of it)."""
    n = min(n, len(split.reference) // 2)
    return np.sort(np.random.default_rng(seed + 2).choice(split.reference, size=n, replace=False))


def _reference_subset(split: Split, n: int, seed: int, exclude: np.ndarray) -> np.ndarray:
    """The attacker's scored reference samples: from the pool, never the defender's validation set."""
    ref = np.setdiff1d(split.reference, exclude)
    if len(ref) <= n:
        return ref
    return np.sort(np.random.default_rng(seed + 1).choice(ref, size=n, replace=False))


def effective_training(cfg: ExperimentConfig) -> tuple[float, float]:
    """(weight decay, dropout) after the weight_decay / dropout defenses are applied."""
    wd = cfg.defense_strength if cfg.defense == "weight_decay" else cfg.weight_decay
    dropout = cfg.defense_strength if cfg.defense == "dropout" else cfg.dropout
    return wd, dropout


def _train_stage(cfg: ExperimentConfig, run_dir: Path, ds: Dataset, device, progress) -> None:
    """Train (or load) the model and write config, split, weights and training metrics into run_dir."""
    split = make_split(ds, members=cfg.members, nonmembers=cfg.nonmembers, seed=cfg.seed)
    seed_everything(cfg.seed)
    weight_decay, dropout = effective_training(cfg)
    model = build_model(cfg.model, ds.input_shape, ds.num_classes, width=cfg.width, dropout=dropout)
    x = torch.from_numpy(ds.x).to(device)
    y = torch.from_numpy(ds.y).to(device)
    xm, ym = x[split.members], y[split.members]
    model.to(device)
    t0 = time.perf_counter()
    history: dict = {}
    defense_info: dict = {}
    if cfg.checkpoint:
        load_weights(model, read_state_dict(cfg.checkpoint))
        model.to(device)
    elif cfg.defense == "dp_sgd":
        model.normalize.fit(xm)
        defense_info = train_dp_sgd(model, xm, ym, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr * 50,
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
                         seed=cfg.seed)
        history = train(model, xm, ym, tc, step_loss=objective.step_loss, epoch_end=objective.epoch_end,
                        progress=progress).to_dict()
        if objective.finish:
            objective.finish(model)
        defense_info = {k: v for k, v in objective.info.items() if k != "best"}
    train_s = time.perf_counter() - t0
    if cfg.defense in ADVERSARIAL or cfg.defense == "none":
        xn, yn = x[split.nonmembers], y[split.nonmembers]
        defense_info["robust_accuracy"] = robust_accuracy(model, xn, yn, eps=cfg.adv_epsilon, norm=cfg.adv_norm)
        defense_info["robust_train_accuracy"] = robust_accuracy(model, xm, ym, eps=cfg.adv_epsilon, norm=cfg.adv_norm)
    info = {
        "defense": defense_info,
        "train_accuracy": accuracy(model, xm, ym),
        "test_accuracy": accuracy(model, x[split.nonmembers], y[split.nonmembers]),
        "reference_accuracy": accuracy(model, x[split.reference], y[split.reference]),
        "train_seconds": train_s,
        "history": history,
        "device": str(device),
    }
    with st.atomic_folder(run_dir) as tmp:
        st.write_json(tmp / "config.json", asdict(cfg) | {"train_key": run_dir.name})
        np.savez(tmp / "split.npz", **split.to_arrays())
        save_checkpoint(model, tmp / "model.safetensors", metadata={"model": cfg.model, "width": cfg.width})
        st.write_json(tmp / "training.json", info)


def _unwrapped_copy(model, cfg, ds, dropout, device):
    """A fresh module with the trained weights, free of opacus's hooks."""
    clean = build_model(cfg.model, ds.input_shape, ds.num_classes, width=cfg.width, dropout=dropout)
    clean.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    return clean.to(device).eval()


def load_trained(cfg: ExperimentConfig, run_dir: Path, ds: Dataset, device) -> tuple[torch.nn.Module, Split, dict]:
    model = build_model(cfg.model, ds.input_shape, ds.num_classes, width=cfg.width, dropout=effective_training(cfg)[1])
    load_weights(model, read_state_dict(run_dir / "model.safetensors"))
    model.to(device).eval()
    with np.load(run_dir / "split.npz") as z:
        split = Split(members=z["members"], nonmembers=z["nonmembers"], reference=z["reference"])
    return model, split, st.read_json(run_dir / "training.json")


def _eval_stage(cfg, eval_dir, ds, model, split, info, device, progress) -> None:
    if cfg.lira_shadows < 2 or cfg.lira_shadows % 2:
        raise ValueError("lira_shadows must be an even number >= 2.")
    groups = {"members": split.members, "nonmembers": split.nonmembers,
              "reference": _reference_subset(split, cfg.reference_scored, cfg.seed,
                                             validation_indices(split, cfg.validation_size, cfg.seed))}
    mask = lambda logp: mask_log_probs(logp, cfg.output_mask)  # noqa: E731
    arrays: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    for g, idx in groups.items():
        x = torch.from_numpy(ds.x[idx]).to(device)
        y = ds.y[idx]
        clean_logp = log_probabilities(model, x)
        logp = mask(clean_logp)
        arrays[f"{g}/index"], arrays[f"{g}/label"] = idx, y
        arrays[f"{g}/prediction"] = logp.argmax(1)
        arrays.update({f"{g}/{k}": v for k, v in softmax_scores(logp, y).items()})
        arrays[f"{g}/lira_phi"] = phi_from_log_probs(logp, y)
        t0 = time.perf_counter()
        sub = (lambda stage, f, g=g: progress(f"{stage} on {g}", f)) if progress else None
        dist, perts = distance_scores(model, x, y, method=cfg.distance_method, steps=cfg.distance_steps, progress=sub)
        timings[g] = time.perf_counter() - t0
        arrays.update({f"{g}/{k}": v for k, v in dist.items()})
        arrays[f"{g}/adv_confidence"] = adversarial_confidence_score(model, x, y, eps=cfg.adv_epsilon,
                                                                     mask=cfg.output_mask)
        iv = verified_confidence_score(model, x, y, eps=cfg.adv_epsilon)
        arrays[f"{g}/verified_confidence"] = np.full(len(y), np.nan) if iv is None else iv
        arrays[f"{g}/local_variation"] = local_variation_score(model, clean_logp, perts["distance_l2"].x_adv, y,
                                                               dist["distance_l2"])
        for name, norm in LABEL_ONLY_ATTACKS.items():
            if progress:
                progress(f"label-only search on {g}", 0.0)
            lo = label_only_distance(model, x, y, norm=norm, max_queries=cfg.label_only_queries, seed=cfg.seed)
            arrays[f"{g}/{name}"] = lo.norms
            arrays[f"{g}/{name}_queries"] = lo.queries
        if g != "reference":
            for k, p in perts.items():
                arrays[f"{g}/x_adv_{k}"] = p.x_adv.cpu().numpy()
                arrays[f"{g}/adv_label_{k}"] = p.adv_labels
    # LiRA: shadow models on random halves of the evaluation pool, cached beside the trained model
    pool = np.concatenate([split.members, split.nonmembers])
    wd, dropout = effective_training(cfg)
    shadows = shadow_set(
        lambda: build_model(cfg.model, ds.input_shape, ds.num_classes, width=cfg.width, dropout=dropout),
        torch.from_numpy(ds.x[pool]).to(device), torch.from_numpy(ds.y[pool]).to(device),
        n_models=cfg.lira_shadows, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=wd,
        seed=cfg.seed, cache_dir=eval_dir.parent / f"shadows-{shadow_key(cfg.lira_shadows, cfg.seed)}",
        progress=progress)
    shadow_phi = shadows.phi(ds.y[pool], mask)
    target_phi = np.r_[arrays["members/lira_phi"], arrays["nonmembers/lira_phi"]]
    lira = lira_scores(target_phi, shadow_phi, shadows.inside)
    n_m = len(split.members)
    for k, v in lira.items():
        arrays[f"members/{k}"], arrays[f"nonmembers/{k}"] = v[:n_m], v[n_m:]
        arrays[f"reference/{k}"] = np.full(len(groups["reference"]), np.nan)  # not in the shadows' pool
    attacks = {}
    for a in ATTACKS:
        ref = arrays[f"reference/{a}"]
        if np.isnan(arrays[f"members/{a}"]).all():  # not defined for this model (I_V on resnet18)
            attacks[a] = AttackMetrics(auc=float("nan"), tpr_at_fpr={k: float("nan") for k in ("0.001", "0.01", "0.1")},
                                       max_advantage=float("nan"), oracle_accuracy=float("nan")).to_dict()
            continue
        m = attack_metrics(arrays[f"members/{a}"], arrays[f"nonmembers/{a}"],
                           reference=None if np.isnan(ref).all() else ref, bootstrap_rounds=cfg.bootstrap_rounds,
                           seed=cfg.seed)
        attacks[a] = m.to_dict()
    thresholds = attacker_thresholds(
        arrays, type(shadows)(logp=mask(shadows.logp), inside=shadows.inside) if cfg.output_mask != "none" else shadows,
        ds.y[pool], ds.num_classes, model, ds.input_shape, cfg.seed)
    n_scored = sum(len(v) for v in groups.values())
    summary = {
        "config": asdict(cfg),
        "train_key": eval_dir.parent.name,
        "eval_key": cfg.eval_key(),
        "train_accuracy": info["train_accuracy"],
        "test_accuracy": info["test_accuracy"],
        "generalization_gap": info["train_accuracy"] - info["test_accuracy"],
        "n_members": len(split.members),
        "n_nonmembers": len(split.nonmembers),
        "n_reference_scored": len(groups["reference"]),
        "attacks": attacks,
        "thresholds": thresholds,
        "label_only_queries_used": float(np.mean(arrays["members/label_only_l2_queries"])),
        "distance_seconds": sum(timings.values()),
        "distance_samples_per_second": 2 * n_scored / max(sum(timings.values()), 1e-9),
        "train_seconds": info["train_seconds"],
        "defense": info.get("defense", {}),
        "device": str(device),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with st.atomic_folder(eval_dir) as tmp:
        np.savez_compressed(tmp / "scores.npz", **arrays)
        st.write_json(tmp / "summary.json", summary)


def run_experiment(
    config: ExperimentConfig = DEFAULT_CONFIG,
    *,
    store_root: str | Path | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Train (or reuse) the model of `config`, score every attack, and return the stored result."""
    root = Path(store_root) if store_root is not None else st.DEFAULT_ROOT
    device = pick_device(config.device)
    ds = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    run_dir = root / config.train_key(ds.fingerprint())
    eval_dir = run_dir / f"eval-{config.eval_key()}"
    reused = eval_dir.is_dir()
    if not run_dir.is_dir():
        _train_stage(config, run_dir, ds, device, progress)
    model, split, info = load_trained(config, run_dir, ds, device)
    if not eval_dir.is_dir():
        _eval_stage(config, eval_dir, ds, model, split, info, device, progress)
    if progress:
        progress("done", 1.0)
    return _assemble(config, eval_dir, ds, model, split, reused)


def _assemble(config, eval_dir: Path, ds, model, split, reused: bool) -> RunResult:
    with np.load(eval_dir / "scores.npz") as z:
        arrays = {k: z[k] for k in z.files}
    summary = st.read_json(eval_dir / "summary.json")
    return RunResult(config, eval_dir.parent, eval_dir, ds, split, model, summary, arrays, reused)


def load_run(eval_dir: str | Path, *, device: str = "auto") -> RunResult:
    """Reopen a finished evaluation folder from the store (no training, no search)."""
    eval_dir = Path(eval_dir)
    if not (eval_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{eval_dir} is not a finished run.")
    config = config_from_summary(st.read_json(eval_dir / "summary.json"))
    ds = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    model, split, _ = load_trained(config, eval_dir.parent, ds, pick_device(device))
    return _assemble(config, eval_dir, ds, model, split, True)


def list_runs(store_root: str | Path | None = None) -> list[dict]:
    """Summaries of every finished evaluation in the store, newest first (interrupted runs never appear)."""
    root = Path(store_root) if store_root is not None else st.DEFAULT_ROOT
    out = []
    for path in root.glob("*/eval-*/summary.json"):
        if any(part.startswith(".tmp-") for part in path.parts):
            continue
        try:
            s = st.read_json(path)
        except (OSError, ValueError):
            continue
        s["eval_dir"] = str(path.parent)
        out.append(s)
    return sorted(out, key=lambda s: s.get("finished_at", ""), reverse=True)


def config_from_summary(summary: dict) -> ExperimentConfig:
    names = {f.name for f in fields(ExperimentConfig)}
    return ExperimentConfig(**{k: v for k, v in summary["config"].items() if k in names})


def best_attack(summary: dict, metric=lambda m: m["auc"]) -> str:
    """The attack with the highest value of `metric` (AUC by default); attacks not defined here (NaN) skipped."""
    defined = [a for a, m in summary["attacks"].items() if not math.isnan(metric(m))]
    return max(defined, key=lambda a: metric(summary["attacks"][a]))


def headline(summary: dict) -> dict:
    """Test accuracy, and the attack with the highest AUC with its TPR at 1% FPR."""
    best = best_attack(summary)
    m = summary["attacks"][best]
    return {"test_accuracy": summary["test_accuracy"], "best_attack": best, "auc": m["auc"],
            "tpr_at_1pct_fpr": m["tpr_at_fpr"]["0.01"]}

