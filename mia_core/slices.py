"""Where it leaks: an attack's metrics on slices of the evaluation (as TF Privacy's slicing does): per class,
per correctly / wrongly classified sample, and per decile of the boundary distance, with bootstrap intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import auc, bootstrap_intervals, roc_points, tpr_at_fpr
from .records import ScoreTable

SLICINGS = ("class", "correctly classified", "distance decile")
MIN_PER_SIDE = 5  # fewer members or non-members in a slice leave its AUC undefined


@dataclass(frozen=True)
class SliceMetrics:
    slicing: str
    slice: str
    members: int
    nonmembers: int
    auc: float
    auc_ci: tuple[float, float]
    tpr_at_1pct: float


def _slice_labels(table: ScoreTable, slicing: str) -> tuple[np.ndarray, np.ndarray]:
    """Each member's and non-member's slice, as strings."""
    m, n = table["members"], table["nonmembers"]
    if slicing == "class":
        return m.label.astype(str), n.label.astype(str)
    if slicing == "correctly classified":
        word = np.array(["wrong", "correct"])
        return word[(m.prediction == m.label).astype(int)], word[(n.prediction == n.label).astype(int)]
    if slicing == "distance decile":
        dm, dn = table.member_nonmember("distance_l2")
        both = np.r_[dm, dn]
        edges = np.quantile(both[np.isfinite(both)], np.linspace(0, 1, 11)[1:-1])
        name = lambda d: np.array([f"D{int(k) + 1}" for k in np.searchsorted(edges, d, side="right")])  # noqa: E731
        return name(dm), name(dn)
    raise ValueError(f"Unknown slicing '{slicing}'. Choose one of {', '.join(SLICINGS)}.")


def slice_metrics(table: ScoreTable, attack: str, slicing: str, *, bootstrap_rounds: int = 200,
                  seed: int = 0) -> list[SliceMetrics]:
    """The attack's AUC (with a percentile bootstrap interval) and TPR at 1% FPR within each slice; slices with
    fewer than MIN_PER_SIDE members or non-members get NaN."""
    sm, sn = _slice_labels(table, slicing)
    m, n = table.member_nonmember(attack)
    keys = sorted(set(sm) | set(sn), key=lambda k: (len(k), k))
    out = []
    for k in keys:
        a, b = m[sm == k], n[sn == k]
        if min(len(a), len(b)) < MIN_PER_SIDE or np.isnan(a).all():
            out.append(SliceMetrics(slicing, k, len(a), len(b), float("nan"), (float("nan"),) * 2, float("nan")))
            continue
        ci = bootstrap_intervals(a, b, rounds=bootstrap_rounds, seed=seed)[0] if bootstrap_rounds else (np.nan,) * 2
        out.append(SliceMetrics(slicing, k, len(a), len(b), auc(a, b), ci, tpr_at_fpr(roc_points(a, b), 0.01)))
    return out
