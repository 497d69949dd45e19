"""Thresholds an attacker can really choose, compared on the target with the oracle one.

- Shadow models (Choquette-Choo et al., ICML 2021): the threshold that best separates a shadow model's own
  members from its non-members, applied to the target.
- Class-dependent thresholds chosen on shadow data (Song & Mittal, USENIX Security 2021).
- Noise percentile (Li & Zhang, CCS 2021): the t-th percentile of the boundary distance of random uniform
  inputs (t = 50 by default): "member if farther than that".
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .distances import minimal_perturbation
from .tensors import model_device
from .metrics import oracle_threshold, rates_at_threshold
from .records import ScoreTable, ThresholdReport


def balanced_threshold(inside: np.ndarray, outside: np.ndarray) -> float:
    """The threshold of highest balanced accuracy ((TPR + TNR) / 2) between IN and OUT scores of the
    attacker's own (shadow) data."""
    cands = np.unique(np.r_[inside, outside])
    if len(cands) > 2000:
        cands = np.quantile(np.r_[inside, outside], np.linspace(0, 1, 2001))
    s_in, s_out = np.sort(inside), np.sort(outside)
    tpr = 1 - np.searchsorted(s_in, cands, side="left") / len(s_in)  # share of IN scoring >= the candidate
    tnr = np.searchsorted(s_out, cands, side="left") / len(s_out)
    return float(cands[int(np.argmax(tpr + tnr))])


def class_thresholds(inside: np.ndarray, outside: np.ndarray, y_in: np.ndarray, y_out: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """One balanced threshold per class (falls back to the global one for a class without data)."""
    glob = balanced_threshold(inside, outside)
    out = np.full(num_classes, glob)
    for k in range(num_classes):
        a, b = inside[y_in == k], outside[y_out == k]
        if len(a) and len(b):
            out[k] = balanced_threshold(a, b)
    return out


def noise_percentile_threshold(model: nn.Module, input_shape: tuple[int, ...], *, norm: float = 2.0,
                               n: int = 300, percentile: float = 50.0, seed: int = 0,
                               method: str = "deepfool", bounds: tuple[float, float] = (0.0, 1.0)) -> float:
    """The `percentile` of minimal-perturbation norms of `n` uniform random inputs in the box (Li & Zhang 2021)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand((n, *input_shape), generator=gen)
    if tuple(bounds) != (0.0, 1.0):
        noise = (bounds[0] + (bounds[1] - bounds[0]) * noise).clamp(bounds[0], bounds[1])
    noise = noise.to(model_device(model))
    d = minimal_perturbation(model, noise, norm=norm, method=method, bounds=bounds).norms
    return float(np.percentile(d[np.isfinite(d)], percentile))


def report(members: np.ndarray, nonmembers: np.ndarray, threshold: float | np.ndarray,
           y_members: np.ndarray | None = None, y_nonmembers: np.ndarray | None = None, *,
           oracle: bool = False) -> ThresholdReport:
    """TPR, FPR and balanced accuracy of "member if score >= threshold" on the target's evaluation set.
    A per-class threshold array is indexed by the samples' labels (its report's threshold is NaN)."""
    if np.ndim(threshold):
        tpr = float(np.mean(members >= threshold[y_members]))
        fpr = float(np.mean(nonmembers >= threshold[y_nonmembers]))
        thr = float("nan")
    else:
        tpr, fpr = rates_at_threshold(members, nonmembers, float(threshold))
        thr = float(threshold)
    return ThresholdReport(threshold=thr, tpr=tpr, fpr=fpr, accuracy=(tpr + 1 - fpr) / 2, oracle=oracle)


def attacker_thresholds(table: ScoreTable, shadows, shadow_labels: np.ndarray, num_classes: int, model: nn.Module,
                        input_shape: tuple[int, ...], seed: int, bounds: tuple[float, float] = (0.0, 1.0)
                        ) -> dict[str, ThresholdReport]:
    """Every attacker-chosen threshold of this module, with the oracle beside them (marked as such)."""
    m_phi, n_phi = table["members"].artifacts["lira_phi"], table["nonmembers"].artifacts["lira_phi"]
    ym, yn = table["members"].label, table["nonmembers"].label
    out: dict[str, ThresholdReport] = {}
    if shadows is not None:
        phi, inside = shadows.phi(shadow_labels), shadows.inside
        lab = np.broadcast_to(shadow_labels, phi.shape)
        out["confidence: shadow threshold (Choquette-Choo)"] = report(
            m_phi, n_phi, balanced_threshold(phi[inside], phi[~inside]))
        out["confidence: class thresholds on shadows (Song & Mittal)"] = report(
            m_phi, n_phi, class_thresholds(phi[inside], phi[~inside], lab[inside], lab[~inside], num_classes), ym, yn)
    out["confidence: ORACLE (uses true membership)"] = report(m_phi, n_phi, oracle_threshold(m_phi, n_phi),
                                                              oracle=True)
    dm, dn = table.member_nonmember("distance_l2")
    out["distance_l2: noise percentile 50 (Li & Zhang)"] = report(
        dm, dn, noise_percentile_threshold(model, input_shape, seed=seed, bounds=bounds))
    out["distance_l2: ORACLE (uses true membership)"] = report(dm, dn, oracle_threshold(dm, dn), oracle=True)
    return out
