"""Empirical privacy: what an attack's measured success says about differential privacy.

An (epsilon, delta)-DP training algorithm bounds every membership test: TPR <= e^eps FPR + delta and
(1 - FPR) <= e^eps (1 - TPR) + delta. A test at a threshold fixed without the evaluation's membership (here: on
reference data) therefore gives a lower bound on epsilon, made statistically sound with Clopper-Pearson intervals
on its TPR and FPR (Jagielski, Ullman & Oprea 2020; Nasr et al. 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import beta

from .metrics import AttackMetrics


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """The exact two-sided (1 - alpha) confidence interval of a binomial proportion."""
    if trials <= 0:
        return 0.0, 1.0
    lo = 0.0 if successes <= 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    hi = 1.0 if successes >= trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return lo, hi


def epsilon_lower_bound(true_positives: int, members: int, false_positives: int, nonmembers: int, *,
                        delta: float = 1e-5, alpha: float = 0.05) -> float:
    """The largest epsilon that the test's counts rule out at confidence 1 - alpha (0 when none):
    max(log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo))), every rate at the end of its
    Clopper-Pearson interval that makes the bound smallest."""
    tpr_lo, tpr_hi = clopper_pearson(true_positives, members, alpha / 2)  # alpha shared by the two rates
    fpr_lo, fpr_hi = clopper_pearson(false_positives, nonmembers, alpha / 2)
    bounds = [0.0]
    if tpr_lo - delta > 0 and fpr_hi > 0:
        bounds.append(math.log((tpr_lo - delta) / fpr_hi))
    if 1 - fpr_hi - delta > 0 and 1 - tpr_lo > 0:
        bounds.append(math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    return max(bounds)


@dataclass(frozen=True)
class EpsilonBound:
    """A lower bound on epsilon at `delta`, holding with probability `confidence`, and the test that gave it."""

    epsilon: float
    attack: str | None
    fpr_level: float | None
    delta: float
    confidence: float


def attack_epsilon_bound(name: str, m: AttackMetrics, members: int, nonmembers: int, *, delta: float = 1e-5,
                         confidence: float = 0.95, tests: int = 1) -> EpsilonBound:
    """The best bound over an attack's reference-calibrated thresholds (one per FPR level). `tests` is how many
    such bounds the caller will take the maximum of in all: each is made at confidence 1 - (1 - confidence) /
    tests (Bonferroni), so the maximum still holds at `confidence`."""
    alpha = (1 - confidence) / (tests * max(len(m.calibrated), 1))
    best = EpsilonBound(0.0, None, None, delta, confidence)
    for level, c in m.calibrated.items():
        eps = epsilon_lower_bound(round(c.tpr * members), members, round(c.fpr * nonmembers), nonmembers,
                                  delta=delta, alpha=alpha)
        if eps > best.epsilon:
            best = EpsilonBound(eps, name, level, delta, confidence)
    return best


def run_epsilon_bound(attacks: dict[str, AttackMetrics], members: int, nonmembers: int, *, delta: float = 1e-5,
                      confidence: float = 0.95) -> tuple[EpsilonBound, dict[str, EpsilonBound]]:
    """The run's lower bound: the best over every attack with reference-calibrated thresholds, Bonferroni-corrected
    over all of them and all their levels; and each attack's own bound at the same corrected confidence."""
    usable = {a: m for a, m in attacks.items() if m.calibrated}
    per = {a: attack_epsilon_bound(a, m, members, nonmembers, delta=delta, confidence=confidence, tests=len(usable))
           for a, m in usable.items()}
    best = max(per.values(), key=lambda b: b.epsilon, default=EpsilonBound(0.0, None, None, delta, confidence))
    return best, per
