"""Typed results: the run record (what a run measured) and the score table (per-sample scores and artifacts).

A `RunRecord` travels as JSON (`to_json` / `from_json`, NaN written as null); a `ScoreTable` as one .npz file
(`to_npz` / `from_npz`), the only place where a string key format ("<group>/score/<attack>") exists, and in a
run's folder (`save` / `load`) with its large per-sample arrays (the adversarial examples) beside it as plain
.npy files that are memory-mapped when read, so a page that shows eight of them reads eight rows. Every
reader (the CLI, the app's pages, reproduce, sweeps, export) works with these types, never with raw dicts.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .config import ExperimentConfig
from .metrics import FPR_LEVELS, AttackMetrics, CalibratedThreshold
from .privacy import EpsilonBound
from .store import json_safe

GROUPS = ("members", "nonmembers", "reference")
"""members: the training set; nonmembers: held out and scored against them; reference: scored samples of the
attacker's reference pool (disjoint from both and from the defender's validation set), for calibration."""


def _f(v: Any) -> float:
    """A float read back from JSON, where null stood for NaN."""
    return float("nan") if v is None else float(v)


def _fpr_key(level: float) -> str:
    return f"{level:g}"


def _levels(d: dict[str, Any] | None, conv) -> dict[float, Any]:
    return {float(k): conv(v) for k, v in (d or {}).items()}


# ----------------------------------------------------------------------------- attack metrics as JSON


def metrics_to_json(m: AttackMetrics) -> dict[str, Any]:
    return {
        "auc": m.auc, "auc_ci": list(m.auc_ci), "max_advantage": m.max_advantage,
        "oracle_accuracy": m.oracle_accuracy,
        "tpr_at_fpr": {_fpr_key(k): v for k, v in m.tpr_at_fpr.items()},
        "tpr_at_fpr_ci": {_fpr_key(k): list(v) for k, v in m.tpr_at_fpr_ci.items()},
        "calibrated": {_fpr_key(k): {"threshold": c.threshold, "tpr": c.tpr, "fpr": c.fpr}
                       for k, c in m.calibrated.items()},
    }


def metrics_from_json(d: dict[str, Any]) -> AttackMetrics:
    return AttackMetrics(
        auc=_f(d["auc"]), max_advantage=_f(d["max_advantage"]), oracle_accuracy=_f(d["oracle_accuracy"]),
        auc_ci=tuple(_f(v) for v in d.get("auc_ci", (None, None))),
        tpr_at_fpr=_levels(d["tpr_at_fpr"], _f),
        tpr_at_fpr_ci=_levels(d.get("tpr_at_fpr_ci"), lambda v: (_f(v[0]), _f(v[1]))),
        calibrated=_levels(d.get("calibrated"), lambda c: CalibratedThreshold(_f(c["threshold"]), _f(c["tpr"]),
                                                                                _f(c["fpr"]))),
    )


# ----------------------------------------------------------------------------- the run record


@dataclass(frozen=True)
class ThresholdReport:
    """A threshold rule applied to the target: "member if score >= threshold" (NaN threshold: per class)."""

    threshold: float
    tpr: float
    fpr: float
    accuracy: float  # balanced: (TPR + TNR) / 2
    oracle: bool = False  # chosen with the evaluation's own membership: an upper bound, not an attack


@dataclass(frozen=True)
class DefenseInfo:
    """What the training defense reported (fields that do not apply to a defense stay None)."""

    robust_accuracy: float | None = None  # non-members under PGD at adv_epsilon
    robust_train_accuracy: float | None = None
    epsilon: float | None = None  # DP-SGD's accountant
    delta: float | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    adv_epsilon: float | None = None
    adv_norm: str | None = None
    mmd_passes: tuple[int, ...] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DefenseInfo":
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("mmd_passes") is not None:
            kw["mmd_passes"] = tuple(kw["mmd_passes"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class TrainingRecord:
    """What training (or loading a checkpoint) measured: stored beside the model as training.json."""

    train_accuracy: float
    test_accuracy: float
    reference_accuracy: float
    train_seconds: float
    device: str
    defense: DefenseInfo = DefenseInfo()
    loss_history: tuple[float, ...] = ()
    accuracy_history: tuple[float, ...] = ()
    stopped_at: int | None = None  # early stopping's epoch

    def to_json(self) -> dict[str, Any]:
        return json_safe({"train_accuracy": self.train_accuracy, "test_accuracy": self.test_accuracy,
                          "reference_accuracy": self.reference_accuracy, "train_seconds": self.train_seconds,
                          "device": self.device, "defense": self.defense.to_dict(),
                          "history": {"loss": list(self.loss_history), "train_accuracy": list(self.accuracy_history),
                                      "stopped_at": self.stopped_at}})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainingRecord":
        h = d.get("history") or {}
        return cls(_f(d["train_accuracy"]), _f(d["test_accuracy"]), _f(d["reference_accuracy"]),
                   _f(d["train_seconds"]), d["device"], DefenseInfo.from_dict(d.get("defense") or {}),
                   tuple(h.get("loss", ())), tuple(h.get("train_accuracy", ())), h.get("stopped_at"))


@dataclass(frozen=True)
class AuditInfo:
    """How a user's own model and data were audited (None in a record for runs the product trained)."""

    model: str  # what the model is, e.g. "ResidualMLP (a Python nn.Module)" or "net.onnx (ONNX)"
    model_kind: str  # "module", "onnx" or "factory"
    data: str  # where the data came from
    bounds: tuple[float, float]  # the input box; every distance is measured in it
    reference: str  # how the reference pool was chosen
    retraining: str | None = None  # how reference models of the user's architecture were trained, if they were
    onnx_max_difference: float | None = None  # converted ONNX model vs ONNX Runtime on the user's inputs
    outputs: str = "logits"  # how its outputs are read (user_models.OUTPUT_READINGS): "probabilities", "one logit"...
    logits_before_activation: bool = False  # probabilities read through the logits before the final softmax/sigmoid

    def to_dict(self) -> dict[str, Any]:
        return json_safe({**self.__dict__, "bounds": list(self.bounds)})

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "AuditInfo | None":
        if not d:
            return None
        return cls(model=d["model"], model_kind=d["model_kind"], data=d["data"],
                   bounds=(float(d["bounds"][0]), float(d["bounds"][1])), reference=d["reference"],
                   retraining=d.get("retraining"),
                   onnx_max_difference=(None if d.get("onnx_max_difference") is None
                                        else float(d["onnx_max_difference"])),
                   outputs=d.get("outputs", "logits"),
                   logits_before_activation=bool(d.get("logits_before_activation", False)))


@dataclass(frozen=True)
class Timings:
    """Seconds each stage took (a stage reused from the store takes about none)."""

    train_seconds: float
    distance_seconds: float
    distance_samples_per_second: float
    label_only_seconds: float = float("nan")
    shadow_seconds: float = float("nan")
    evaluation_seconds: float = float("nan")


@dataclass(frozen=True)
class Environment:
    core: str
    torch: str
    device: str
    platform: str
    finished_at: str


@dataclass(frozen=True)
class RunRecord:
    """Everything a finished run measured: its config, accuracies, every attack's metrics (in the attack
    registry's order), attacker-chosen thresholds, the defense's own report, timings and environment."""

    config: ExperimentConfig
    train_key: str
    eval_key: str
    train_accuracy: float
    test_accuracy: float
    n_members: int
    n_nonmembers: int
    n_reference_scored: int
    attacks: dict[str, AttackMetrics]
    thresholds: dict[str, ThresholdReport]
    defense: DefenseInfo
    timings: Timings
    environment: Environment
    label_only_queries_used: float
    unavailable: dict[str, str] = field(default_factory=dict)  # attack -> why it has no score here
    attack_parameters: dict[str, float] = field(default_factory=dict)  # chosen during the run (RMIA's a)
    epsilon_bound: EpsilonBound | None = None  # the measured leakage's lower bound on DP epsilon
    epsilon_bounds: dict[str, float] = field(default_factory=dict)  # each attack's own (same confidence)
    audit: AuditInfo | None = None  # set when a user's own model was audited
    pending: tuple[str, ...] = ()  # attacks still being computed: this record holds the first results

    @property
    def is_audit(self) -> bool:
        return self.audit is not None

    @property
    def is_first_results(self) -> bool:
        return bool(self.pending)

    @property
    def n_reference_searched(self) -> int:
        """How many of the scored reference samples the per-sample searches scored (config.reference_searched)."""
        k = self.config.reference_searched
        return self.n_reference_scored if k is None else min(k, self.n_reference_scored)

    @property
    def generalization_gap(self) -> float:
        return self.train_accuracy - self.test_accuracy

    @property
    def run_id(self) -> str:
        """The finished run's id (first results live in a folder of their own: evaluation.evaluate)."""
        return f"{self.train_key}/eval-{self.eval_key}"

    def defined_attacks(self) -> list[str]:
        return [a for a, m in self.attacks.items() if m.defined]

    def to_json(self) -> dict[str, Any]:
        return json_safe({
            "config": self.config.to_dict(), "train_key": self.train_key, "eval_key": self.eval_key,
            "train_accuracy": self.train_accuracy, "test_accuracy": self.test_accuracy,
            "generalization_gap": self.generalization_gap,
            "n_members": self.n_members, "n_nonmembers": self.n_nonmembers,
            "n_reference_scored": self.n_reference_scored,
            "attacks": [{"name": a, **metrics_to_json(m)} for a, m in self.attacks.items()],  # lists keep the order
            "thresholds": [{"rule": k, **t.__dict__} for k, t in self.thresholds.items()],
            "defense": self.defense.to_dict(), "timings": self.timings.__dict__,
            "environment": self.environment.__dict__, "label_only_queries_used": self.label_only_queries_used,
            "unavailable": self.unavailable, "attack_parameters": self.attack_parameters,
            "epsilon_bound": None if self.epsilon_bound is None else self.epsilon_bound.__dict__,
            "epsilon_bounds": self.epsilon_bounds,
            "audit": None if self.audit is None else self.audit.to_dict(),
        } | ({"pending": list(self.pending)} if self.pending else {}))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunRecord":
        return cls(
            config=ExperimentConfig.from_dict(d["config"]), train_key=d["train_key"], eval_key=d["eval_key"],
            train_accuracy=_f(d["train_accuracy"]), test_accuracy=_f(d["test_accuracy"]),
            n_members=int(d["n_members"]), n_nonmembers=int(d["n_nonmembers"]),
            n_reference_scored=int(d["n_reference_scored"]),
            attacks={m["name"]: metrics_from_json(m) for m in d["attacks"]},
            thresholds={t["rule"]: ThresholdReport(_f(t["threshold"]), _f(t["tpr"]), _f(t["fpr"]), _f(t["accuracy"]),
                                                   bool(t.get("oracle", False))) for t in d["thresholds"]},
            defense=DefenseInfo.from_dict(d.get("defense") or {}),
            timings=Timings(**{k: _f(v) for k, v in d["timings"].items()}),
            environment=Environment(**d["environment"]),
            label_only_queries_used=_f(d.get("label_only_queries_used")),
            unavailable=dict(d.get("unavailable") or {}),
            attack_parameters={k: _f(v) for k, v in (d.get("attack_parameters") or {}).items()},
            epsilon_bound=None if not d.get("epsilon_bound") else EpsilonBound(**d["epsilon_bound"]),
            epsilon_bounds={k: _f(v) for k, v in (d.get("epsilon_bounds") or {}).items()},
            audit=AuditInfo.from_dict(d.get("audit")),
            pending=tuple(d.get("pending") or ()),
        )


# ----------------------------------------------------------------------------- the score table


@dataclass
class GroupScores:
    """One group's samples: dataset indices, labels, predictions, every attack's score, and artifacts (the
    searches' adversarial examples and labels, query counts, LiRA's phi), kept apart from the scores."""

    index: np.ndarray
    label: np.ndarray
    prediction: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)


def _linked(array: np.ndarray, target: Path) -> bool:
    """Hard-link `target` to the .npy file that `array` maps whole (a stored stage's adversarial examples, as
    `np.load(..., mmap_mode="r")` returns it) instead of writing the same bytes again; False where the array is
    anything else (in memory, a slice of a mapping) or the file system cannot link, and then nothing is done."""
    if not isinstance(array, np.memmap) or not isinstance(array.base, mmap.mmap) or not array.filename:
        return False
    try:
        with open(array.filename, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                return False
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
        if (shape, fortran, dtype) != (array.shape, False, array.dtype) or array.offset != offset:
            return False
        os.link(array.filename, target)
        return True
    except (OSError, ValueError):
        return False


_BASE = ("index", "label", "prediction")
SCORES_FILE = "scores.npz"


@dataclass
class ScoreTable:
    """Per-sample results of one evaluation, by group (GROUPS)."""

    groups: dict[str, GroupScores]

    def __getitem__(self, group: str) -> GroupScores:
        return self.groups[group]

    def scores(self, attack: str, group: str) -> np.ndarray:
        return self.groups[group].scores[attack]

    def member_nonmember(self, attack: str) -> tuple[np.ndarray, np.ndarray]:
        return self.scores(attack, "members"), self.scores(attack, "nonmembers")

    def reference_scores(self, attack: str) -> np.ndarray | None:
        """The reference group's scores of the samples the attack scored (a searching attack scores a subset of
        them, config.reference_searched; NaN marks the others), or None where it scored none."""
        ref = self.scores(attack, "reference")
        scored = ~np.isnan(ref)
        if not scored.any():
            return None
        return ref if scored.all() else ref[scored]

    def attacks(self) -> list[str]:
        return list(self.groups["members"].scores)

    def to_npz(self, path: str | Path, *, large: bool = True) -> None:
        """Write every array into one compressed .npz (without `large`, the artifacts of more than one
        dimension are left out: `save` writes those beside it)."""
        arrays: dict[str, np.ndarray] = {}
        for g, gs in self.groups.items():
            for b in _BASE:
                arrays[f"{g}/{b}"] = getattr(gs, b)
            arrays.update({f"{g}/score/{k}": v for k, v in gs.scores.items()})
            arrays.update({f"{g}/artifact/{k}": v for k, v in gs.artifacts.items() if large or np.ndim(v) < 2})
        np.savez_compressed(path, **arrays)

    def save(self, folder: str | Path) -> None:
        """Write the table into a run's folder: `scores.npz` with the scores and small artifacts, and each
        artifact of more than one dimension (an adversarial example per sample) as `<group>.<name>.npy`."""
        folder = Path(folder)
        self.to_npz(folder / SCORES_FILE, large=False)
        for g, gs in self.groups.items():
            for k, v in gs.artifacts.items():
                if np.ndim(v) >= 2 and not _linked(v, folder / f"{g}.{k}.npy"):
                    np.save(folder / f"{g}.{k}.npy", np.asarray(v), allow_pickle=False)

    @classmethod
    def load(cls, folder: str | Path, *, artifacts: bool = True) -> "ScoreTable":
        """Read a table written by `save` (or a folder of core 0.4.0, whose artifacts are all in the .npz); the
        large artifacts are memory-mapped read-only, read from disk only where indexed."""
        folder = Path(folder)
        table = cls.from_npz(folder / SCORES_FILE, artifacts=artifacts)
        if artifacts:
            for path in sorted(folder.glob("*.npy")):
                g, _, name = path.name.removesuffix(".npy").partition(".")
                if g in table.groups and name:
                    table.groups[g].artifacts[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        return table

    @classmethod
    def from_npz(cls, path: str | Path, *, artifacts: bool = True) -> "ScoreTable":
        """Read a table; with artifacts=False the (large) adversarial examples are not loaded."""
        groups: dict[str, GroupScores] = {}
        with np.load(path, allow_pickle=False) as z:
            names = z.files
            for g in dict.fromkeys(n.split("/", 1)[0] for n in names):
                gs = GroupScores(*(z[f"{g}/{b}"] for b in _BASE))
                for n in names:
                    head, _, rest = n.partition("/")
                    if head != g:
                        continue
                    kind, _, key = rest.partition("/")
                    if kind == "score":
                        gs.scores[key] = z[n]
                    elif kind == "artifact" and artifacts:
                        gs.artifacts[key] = z[n]
                groups[g] = gs
        return cls(groups)

    def to_frame(self) -> pd.DataFrame:
        """One row per scored sample: dataset index, group, member flag, label, prediction, every score."""
        frames = []
        for g, gs in self.groups.items():
            cols: dict[str, Any] = {"index": gs.index, "group": g, "member": int(g == "members"),
                                    "label": gs.label, "prediction": gs.prediction}
            cols.update(gs.scores)
            frames.append(pd.DataFrame(cols))
        return pd.concat(frames, ignore_index=True)

    def __iter__(self) -> Iterator[str]:
        return iter(self.groups)


__all__ = ["GROUPS", "FPR_LEVELS", "AttackMetrics", "CalibratedThreshold", "ThresholdReport", "DefenseInfo",
           "TrainingRecord", "Timings", "Environment", "RunRecord", "GroupScores", "ScoreTable"]
