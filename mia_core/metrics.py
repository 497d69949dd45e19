"""Honest attack metrics: ROC, AUC, TPR at low FPR, bootstrap intervals, calibrated thresholds.

Threshold-free numbers (ROC, AUC, TPR at a fixed FPR) follow Carlini et al. (S&P 2022). A threshold
picked on the evaluation members themselves is an oracle and is only ever labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

FPR_LEVELS: tuple[float, ...] = (0.001, 0.01, 0.1)


@dataclass(frozen=True)
class RocCurve:
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def finite_scores(scores: np.ndarray) -> np.ndarray:
    """Replace +-inf (e.g. no adversarial example found) by values just past the finite range; order is kept."""
    s = np.asarray(scores, dtype=np.float64)
    finite = s[np.isfinite(s)]
    if finite.size == len(s):
        return s
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    span = max(hi - lo, 1.0)
    return np.where(s == np.inf, hi + span, np.where(s == -np.inf, lo - span, np.nan_to_num(s, nan=lo - span)))


def _labels_scores(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    return y, finite_scores(np.r_[members, nonmembers])


def roc_points(members: np.ndarray, nonmembers: np.ndarray) -> RocCurve:
    """The ROC curve of the score (higher = member) over every threshold (scikit-learn's roc_curve)."""
    y, s = _labels_scores(members, nonmembers)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thr)


def _counted_roc(members: np.ndarray, nonmembers: np.ndarray) -> RocCurve:
    """roc_points of finite scores without scikit-learn's input checks, for the bootstrap's thousands of resamples
    (its checks cost 20x the arithmetic there): the same points, bit for bit, because the curve is counts: at
    each distinct score, descending, the members and non-members scoring at least as high (exact integers in
    float64), divided by the group sizes (tests compare it with roc_curve)."""
    s = np.r_[members, nonmembers]
    order = np.argsort(-s, kind="stable")
    ranked = s[order]
    cuts = np.r_[np.flatnonzero(np.diff(ranked)), len(s) - 1]
    tps = np.cumsum(order < len(members), dtype=np.float64)[cuts]
    fps = 1 + cuts.astype(np.float64) - tps
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    return RocCurve(fpr=fps / fps[-1], tpr=tps / tps[-1], thresholds=np.r_[np.inf, ranked[cuts]])


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    y, s = _labels_scores(members, nonmembers)
    return float(roc_auc_score(y, s))


def tpr_at_fpr(roc: RocCurve, fpr: float) -> float:
    """Largest TPR among thresholds whose FPR does not exceed `fpr` (no interpolation above it)."""
    ok = roc.fpr <= fpr + 1e-12
    return float(roc.tpr[ok].max()) if ok.any() else 0.0


def max_advantage(roc: RocCurve) -> float:
    """max over thresholds of TPR - FPR (Yeom et al.'s membership advantage at the best threshold)."""
    return float(np.max(roc.tpr - roc.fpr))


def oracle_accuracy(roc: RocCurve, n_members: int, n_nonmembers: int) -> float:
    """ORACLE upper bound: accuracy at the best threshold chosen with the evaluation's true membership."""
    correct = roc.tpr * n_members + (1 - roc.fpr) * n_nonmembers
    return float(correct.max() / (n_members + n_nonmembers))


def threshold_at_fpr(reference_nonmembers: np.ndarray, fpr: float) -> float:
    """A threshold an attacker can pick from reference data known to be non-members (e.g. the reference
    pool scored on the target model): the lowest one at which at most a fraction `fpr` of them score
    >= it."""
    s = np.sort(finite_scores(reference_nonmembers))
    allowed = int(np.floor(fpr * len(s) + 1e-9))
    if allowed >= len(s):
        return float(s[0])
    return float(np.nextafter(s[len(s) - allowed - 1], np.inf))


def rates_at_threshold(members: np.ndarray, nonmembers: np.ndarray, threshold: float) -> tuple[float, float]:
    """(TPR, FPR) of the rule "member if score >= threshold" (the rule scikit-learn's roc_curve uses)."""
    s_m, s_n = finite_scores(members), finite_scores(nonmembers)
    return float(np.mean(s_m >= threshold)), float(np.mean(s_n >= threshold))


@dataclass(frozen=True)
class CalibratedThreshold:
    """A threshold set on reference non-members at a target FPR, and its real rates on the evaluation."""

    threshold: float
    tpr: float
    fpr: float


@dataclass(frozen=True)
class AttackMetrics:
    """One attack's threshold-free metrics (keyed by float FPR levels) and its reference-calibrated thresholds."""

    auc: float
    tpr_at_fpr: dict[float, float]
    max_advantage: float
    oracle_accuracy: float
    auc_ci: tuple[float, float] = (float("nan"), float("nan"))
    tpr_at_fpr_ci: dict[float, tuple[float, float]] = field(default_factory=dict)
    calibrated: dict[float, CalibratedThreshold] = field(default_factory=dict)

    @property
    def defined(self) -> bool:
        """False for an attack that has no score on this model (e.g. I_V on resnet18)."""
        return not np.isnan(self.auc)

    @classmethod
    def undefined(cls) -> "AttackMetrics":
        nan = float("nan")
        return cls(auc=nan, tpr_at_fpr={f: nan for f in FPR_LEVELS}, max_advantage=nan, oracle_accuracy=nan)


def bootstrap_intervals(
    members: np.ndarray, nonmembers: np.ndarray, *, rounds: int = 200, level: float = 0.95, seed: int = 0
) -> tuple[tuple[float, float], dict[float, tuple[float, float]]]:
    """Percentile bootstrap intervals of AUC and TPR at FPR_LEVELS, resampling members and non-members apart."""
    rng = np.random.default_rng(seed)
    m, n = finite_scores(members), finite_scores(nonmembers)
    aucs, tprs = [], {f: [] for f in FPR_LEVELS}
    for _ in range(rounds):
        bm = m[rng.integers(0, len(m), len(m))]
        bn = n[rng.integers(0, len(n), len(n))]
        roc = _counted_roc(bm, bn)
        aucs.append(float(np.trapezoid(roc.tpr, roc.fpr)))
        for f in FPR_LEVELS:
            tprs[f].append(tpr_at_fpr(roc, f))
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    pct = lambda v: (float(np.percentile(v, lo)), float(np.percentile(v, hi)))  # noqa: E731
    return pct(aucs), {k: pct(v) for k, v in tprs.items()}


def attack_metrics(
    members: np.ndarray,
    nonmembers: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    bootstrap_rounds: int = 200,
    seed: int = 0,
) -> AttackMetrics:
    """All metrics of one attack's scores. With `reference` (scores of known non-members that are neither
    members nor evaluation non-members) thresholds are calibrated there at each FPR level and their real
    TPR / FPR on the evaluation set are reported."""
    roc = roc_points(members, nonmembers)
    auc_ci, tpr_ci = ((float("nan"), float("nan")), {})
    if bootstrap_rounds:
        auc_ci, tpr_ci = bootstrap_intervals(members, nonmembers, rounds=bootstrap_rounds, seed=seed)
    calibrated = {}
    if reference is not None and len(reference):
        for f in FPR_LEVELS:
            thr = threshold_at_fpr(reference, f)
            calibrated[f] = CalibratedThreshold(thr, *rates_at_threshold(members, nonmembers, thr))
    return AttackMetrics(
        auc=auc(members, nonmembers),
        tpr_at_fpr={f: tpr_at_fpr(roc, f) for f in FPR_LEVELS},
        max_advantage=max_advantage(roc),
        oracle_accuracy=oracle_accuracy(roc, len(members), len(nonmembers)),
        auc_ci=auc_ci, tpr_at_fpr_ci=tpr_ci, calibrated=calibrated,
    )


def confusion_at_threshold(members: np.ndarray, nonmembers: np.ndarray, threshold: float) -> dict[str, int]:
    """Counts of the rule "member if score >= threshold": tp, fn (members), fp, tn (non-members)."""
    s_m, s_n = finite_scores(members), finite_scores(nonmembers)
    tp, fp = int(np.sum(s_m >= threshold)), int(np.sum(s_n >= threshold))
    return {"tp": tp, "fn": len(s_m) - tp, "fp": fp, "tn": len(s_n) - fp}


def precision_at_prevalence(tpr: float, fpr: float, prevalence: float) -> float:
    """Precision of an attack with rates (tpr, fpr) when a fraction `prevalence` of targets are members."""
    hits = prevalence * tpr
    false = (1 - prevalence) * fpr
    return float(hits / (hits + false)) if hits + false > 0 else float("nan")


def oracle_threshold(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """ORACLE: the threshold of highest accuracy, chosen with the evaluation's true membership."""
    roc = roc_points(members, nonmembers)
    correct = roc.tpr * len(members) + (1 - roc.fpr) * len(nonmembers)
    thr = roc.thresholds[int(np.argmax(correct))]
    return float(thr if np.isfinite(thr) else finite_scores(np.r_[members, nonmembers]).max())


def empirical_fpr(scores: np.ndarray, reference_nonmembers: np.ndarray) -> np.ndarray:
    """For each score, the fraction of reference non-members scoring at least as high: the lowest FPR at
    which a reference-calibrated threshold would still flag it (smaller = more exposed)."""
    ref = np.sort(finite_scores(reference_nonmembers))
    s = finite_scores(scores)
    above = len(ref) - np.searchsorted(ref, s, side="left")
    return (above + 1) / (len(ref) + 1)


def vulnerability(scores: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> np.ndarray:
    """Per record, the smallest empirical FPR over all attacks (see empirical_fpr): merges the attacks
    into one exposure level that never uses the evaluation's membership labels."""
    return np.min(np.stack([empirical_fpr(scores[a], reference[a]) for a in scores]), axis=0)


def pareto_front(accuracy: np.ndarray, leakage: np.ndarray) -> np.ndarray:
    """Indices of runs that no other run beats on both counts (higher accuracy and lower leakage)."""
    acc, leak = np.asarray(accuracy, float), np.asarray(leakage, float)
    keep = []
    for i in range(len(acc)):
        dominated = np.any((acc >= acc[i]) & (leak <= leak[i]) & ((acc > acc[i]) | (leak < leak[i])))
        if not dominated:
            keep.append(i)
    return np.array(keep, dtype=int)


def roc_band(members: np.ndarray, nonmembers: np.ndarray, *, rounds: int = 100, level: float = 0.95,
             seed: int = 0, log: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bootstrap confidence band of the ROC: (fpr grid, lower tpr, upper tpr)."""
    rng = np.random.default_rng(seed)
    grid = np.logspace(-3, 0, 60) if log else np.linspace(0, 1, 60)
    m, n = finite_scores(members), finite_scores(nonmembers)
    rows = []
    for _ in range(rounds):
        roc = roc_points(m[rng.integers(0, len(m), len(m))], n[rng.integers(0, len(n), len(n))])
        rows.append(np.interp(grid, roc.fpr, roc.tpr))
    rows = np.array(rows)
    a = (1 - level) / 2 * 100
    return grid, np.percentile(rows, a, axis=0), np.percentile(rows, 100 - a, axis=0)
