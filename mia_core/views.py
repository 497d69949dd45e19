"""View models: the tables and labels the app's pages (and the CLI) show, built from typed records as pure
functions, so they are tested without Streamlit and no algorithm lives in a page."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from . import metrics as mt
from .attacks import ATTACKS
from .config import ExperimentConfig
from .defenses import DEFENSES
from .records import RunRecord, ScoreTable

Metric = Callable[[mt.AttackMetrics], float]
AUC: Metric = lambda m: m.auc  # noqa: E731


def tpr_at(level: float) -> Metric:
    return lambda m: m.tpr_at_fpr[level]


METRIC_HELP = {
    "AUC": "Area under the ROC curve: the chance that a random member scores above a random non-member (0.5 = no leak).",
    "TPR@0.1%": "Share of members caught when at most 0.1% of non-members are wrongly accused.",
    "TPR@1%": "Share of members caught when at most 1% of non-members are wrongly accused.",
    "TPR@10%": "Share of members caught when at most 10% of non-members are wrongly accused.",
    "advantage": "max over thresholds of TPR - FPR (Yeom et al.'s membership advantage).",
    "oracle accuracy": "ORACLE upper bound: accuracy at the best threshold picked with the true membership; "
                       "no real attacker can pick it.",
    "test accuracy": "Accuracy on the held-out non-members.",
    "train accuracy": "Accuracy on the members (training set).",
}


def fpr_label(level: float) -> str:
    """0.001 -> 'TPR@0.1%'."""
    return f"TPR@{level * 100:g}%"


def attack_title(name: str) -> str:
    """The readable name of a registered attack (its id where it is not registered)."""
    return ATTACKS.get(name).title if name in ATTACKS else name


def describe(config: ExperimentConfig) -> str:
    """A run's label: the base setting and whatever makes it differ from a plain trained run."""
    c = config
    parts = [c.dataset, f"{c.model} (width {c.width})", f"{c.members} members"]
    if c.checkpoint:
        parts.append(f"checkpoint {c.checkpoint.rsplit('/', 1)[-1]}")
    else:
        parts.append(f"{c.epochs} epochs")
        if c.defense != "none":
            spec = DEFENSES.get(c.defense)
            parts.append(f"{c.defense} ({spec.strength_label} {c.defense_strength:g})")
    parts.append(f"seed {c.seed}")
    parts.append(f"search {c.distance_method}")
    if c.output_mask != "none":
        parts.append(f"API returns {c.output_mask}")
    return " · ".join(parts)


def best_attack(record: RunRecord, metric: Metric = AUC) -> str:
    """The attack with the highest `metric` on this evaluation (an ORACLE choice: it uses the evaluation's
    membership); attacks undefined here are skipped."""
    defined = [a for a, m in record.attacks.items() if not math.isnan(metric(m))]
    return max(defined, key=lambda a: metric(record.attacks[a]))


@dataclass(frozen=True)
class Headline:
    test_accuracy: float
    train_accuracy: float
    best_attack: str
    auc: float
    tpr_at_1pct_fpr: float


def headline(record: RunRecord) -> Headline:
    """Test accuracy, and the attack with the highest AUC with its TPR at 1% FPR."""
    best = best_attack(record)
    m = record.attacks[best]
    return Headline(record.test_accuracy, record.train_accuracy, best, m.auc, m.tpr_at_fpr[0.01])


def metrics_table(record: RunRecord) -> pd.DataFrame:
    """One row per attack: AUC with its interval, TPR at each FPR level, advantage and oracle accuracy."""
    rows = []
    for a, m in record.attacks.items():
        row = {"attack": attack_title(a), "id": a, "AUC": m.auc,
               "AUC 95% CI": f"[{m.auc_ci[0]:.3f}, {m.auc_ci[1]:.3f}]" if m.defined else "-"}
        row.update({fpr_label(f): m.tpr_at_fpr[f] for f in mt.FPR_LEVELS})
        row.update({"advantage": m.max_advantage, "oracle accuracy": m.oracle_accuracy})
        rows.append(row)
    return pd.DataFrame(rows)


def vulnerability_table(table: ScoreTable) -> pd.DataFrame:
    """Members and non-members ranked by merged exposure (mia_core.metrics.vulnerability), from the attacks
    that have reference scores (LiRA's points must be in its shadows' pool; I_V may be undefined)."""
    usable = [a for a in table.attacks() if table.reference_scores(a) is not None]
    ref = {a: table.scores(a, "reference") for a in usable}
    frames = []
    for g in ("members", "nonmembers"):
        gs = table[g]
        exposure = mt.vulnerability({a: gs.scores[a] for a in usable}, ref)
        frames.append(pd.DataFrame({"dataset index": gs.index, "group": g, "label": gs.label,
                                    "exposure (FPR)": exposure, "distance_l2": gs.scores["distance_l2"],
                                    "loss": -gs.scores["loss"]}))
    return pd.concat(frames).sort_values("exposure (FPR)", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class ThresholdRow:
    rule: str
    threshold: float
    tpr: float
    fpr: float
    precision: float


def threshold_rows(table: ScoreTable, attack: str, threshold: float, target_fpr: float,
                   prevalence: float) -> list[ThresholdRow]:
    """The user's threshold, the one calibrated on reference non-members at `target_fpr` (only for attacks
    that have reference scores), and the ORACLE one, each with its real TPR / FPR and the precision at a
    member prevalence."""
    m, n = table.member_nonmember(attack)
    rows = []

    def row(rule: str, thr: float) -> ThresholdRow:
        tpr, fpr = mt.rates_at_threshold(m, n, thr)
        return ThresholdRow(rule, thr, tpr, fpr, mt.precision_at_prevalence(tpr, fpr, prevalence))

    rows.append(row("yours", threshold))
    ref = table.reference_scores(attack)
    if ref is not None:
        rows.append(row(f"calibrated on reference ({target_fpr:g})", mt.threshold_at_fpr(ref, target_fpr)))
    rows.append(row("ORACLE (not achievable)", mt.oracle_threshold(m, n)))
    return rows


def distance_stats(members: np.ndarray, nonmembers: np.ndarray) -> pd.DataFrame:
    """Summary statistics of two groups' distances (misclassified samples count as 0, failures as none)."""
    def stats(v: np.ndarray) -> dict:
        fin = v[np.isfinite(v)]
        return {"n": len(v), "mean": float(np.mean(fin)) if len(fin) else float("nan"), "median": np.median(v),
                "10th pct": np.quantile(v, 0.1), "90th pct": np.quantile(v, 0.9),
                "zero (misclassified)": int(np.sum(v == 0)), "none found": int(np.sum(~np.isfinite(v)))}
    return pd.DataFrame({"members": stats(members), "non-members": stats(nonmembers)}).T


def runs_frame(runs: Sequence, leak: Metric = AUC, attack: str | None = None) -> pd.DataFrame:
    """One row per stored run (objects with `.record` and `.run_id`): its settings, accuracy and leakage by
    `attack` (the best one by `leak` when None)."""
    rows = []
    for r in runs:
        rec: RunRecord = r.record
        c = rec.config
        a = attack or best_attack(rec, leak)
        rows.append({
            "run": r.run_id, "finished": rec.environment.finished_at, "dataset": c.dataset, "model": c.model,
            "width": c.width, "members": rec.n_members, "epochs": c.epochs, "seed": c.seed,
            "defense": c.defense, "strength": c.defense_strength, "search": c.distance_method,
            "checkpoint": bool(c.checkpoint), "test accuracy": rec.test_accuracy,
            "leakage": leak(rec.attacks[a]) if a in rec.attacks else float("nan"),
            "robust accuracy": np.nan if rec.defense.robust_accuracy is None else rec.defense.robust_accuracy,
            "label": describe(c),
        })
    return pd.DataFrame(rows)


def defense_families(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs grouped by what defenses are compared over (dataset, model, members), largest first; checkpoint
    runs are not trained configurations and never join a family."""
    trained = frame[~frame["checkpoint"]] if len(frame) else frame
    return (trained.groupby(["dataset", "model", "members"]).size().rename("runs")
            .sort_values(ascending=False).reset_index())


def aggregate_over_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds per (defense, strength); one evaluation per (defense, strength, seed) counts."""
    one = frame.drop_duplicates(["defense", "strength", "seed"])
    return (one.groupby(["defense", "strength"])
            .agg(leakage=("leakage", "mean"), leakage_sd=("leakage", "std"), accuracy=("test accuracy", "mean"),
                 accuracy_sd=("test accuracy", "std"), robust=("robust accuracy", "mean"), seeds=("seed", "nunique"))
            .reset_index().fillna({"leakage_sd": 0.0, "accuracy_sd": 0.0}))


EXPLORER_GROUPS = {
    "members farthest from the boundary (most exposed)": ("members", "farthest"),
    "members nearest the boundary (least exposed)": ("members", "nearest"),
    "non-members farthest (most likely to be wrongly accused)": ("nonmembers", "farthest"),
    "non-members nearest": ("nonmembers", "nearest"),
}


def extreme_samples(distances: np.ndarray, which: str, count: int) -> np.ndarray:
    """Positions of the `count` samples farthest from (or nearest to) the boundary, among those with a found,
    non-zero distance (misclassified samples and failures are left out)."""
    ok = np.flatnonzero(np.isfinite(distances) & (distances > 0))
    sign = -1 if which == "farthest" else 1
    return ok[np.argsort(sign * distances[ok], kind="stable")[:count]]


def label_only_agreement(white_box: np.ndarray, label_only: np.ndarray) -> float:
    """Share of samples (white-box distance > 0) whose label-only distance is at least the white-box one."""
    pos = white_box > 0
    return float(np.mean(label_only[pos] >= white_box[pos] * (1 - 1e-6)))
