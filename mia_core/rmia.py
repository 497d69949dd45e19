"""RMIA, the robust membership inference attack (Zarifzadeh, Liu & Shokri, ICML 2024), from the reference
(shadow) models that LiRA already trains.

For a target point x and population points z (seen by neither the target nor any reference model):

    LR(x, z) = [Pr(x | theta) / Pr(x)] / [Pr(z | theta) / Pr(z)],   Score(x) = share of z with LR(x, z) >= gamma,

with Pr(. | theta) the target's probability of the true label and Pr(.) its average over reference models. Online,
Pr(x) averages every reference model (each x is IN for about half of them: 1/2 (P_IN + P_OUT)). Offline, only the
models that did not train on x count, with the paper's linear correction Pr(x) = 1/2 ((1 + a) P_OUT(x) + (1 - a)),
applied to x and z alike; `a` is chosen by attacking reference models with the others, never with the target's
membership (`choose_offline_a`).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

A_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
A_FALLBACK = 0.3  # the paper's CIFAR-10 configuration, when there are too few reference models to choose


def _out_mean(ref: np.ndarray, inside: np.ndarray | None) -> np.ndarray:
    """Mean over the models that did not train on each point; where every model did, over all of them."""
    if inside is None:
        return ref.mean(0)
    out = ~inside
    count = out.sum(0)
    return np.where(count > 0, (ref * out).sum(0) / np.maximum(count, 1), ref.mean(0))


def rmia_scores(target_x: np.ndarray, target_z: np.ndarray, ref_x: np.ndarray, ref_z: np.ndarray,
                inside: np.ndarray | None = None, *, gamma: float = 1.0, a: float | None = None) -> np.ndarray:
    """RMIA scores of points x (higher = more likely a member).

    target_x [n] and target_z [m]: the target's probability of the true label at x and at the population z;
    ref_x [k, n] and ref_z [k, m]: the same on k reference models; inside [k, n]: which x each reference model
    trained on. `a` None gives the online attack (all reference models), a number the offline one (OUT models
    only, corrected by `a`)."""
    if a is None:
        pr_x, pr_z = ref_x.mean(0), ref_z.mean(0)
    else:
        pr_x = 0.5 * ((1 + a) * _out_mean(ref_x, inside) + (1 - a))
        pr_z = 0.5 * ((1 + a) * ref_z.mean(0) + (1 - a))
    ratio_x = target_x / np.maximum(pr_x, 1e-300)
    ratio_z = np.sort(target_z / np.maximum(pr_z, 1e-300))
    # LR(x, z) >= gamma  <=>  ratio_z <= ratio_x / gamma: count those z by a binary search
    return np.searchsorted(ratio_z, ratio_x / gamma, side="right") / len(ratio_z)


def choose_offline_a(ref_x: np.ndarray, ref_z: np.ndarray, inside: np.ndarray, *, gamma: float = 1.0,
                     grid=A_GRID, targets: int = 4) -> float:
    """The offline correction `a` with the best mean AUC when up to `targets` reference models are attacked in
    turn with the others (their own membership is known to the attacker; the target's is never used)."""
    k = len(ref_x)
    if k < 3:  # with one or two models, the others leave too few OUT models per point to choose well
        return A_FALLBACK
    best, best_auc = A_FALLBACK, -1.0
    for a in grid:
        aucs = []
        for t in range(min(targets, k)):
            rest = [j for j in range(k) if j != t]
            s = rmia_scores(ref_x[t], ref_z[t], ref_x[rest], ref_z[rest], inside[rest], gamma=gamma, a=a)
            aucs.append(roc_auc_score(inside[t], s))
        if np.mean(aucs) > best_auc + 1e-12:
            best, best_auc = float(a), float(np.mean(aucs))
    return best


def true_label_probability(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pr(x | model): exp(log p_y) from log-probabilities [..., points, classes] and labels [points]."""
    return np.exp(np.take_along_axis(logp, np.broadcast_to(y, logp.shape[:-1])[..., None], axis=-1)[..., 0])
