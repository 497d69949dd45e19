"""Membership scores: one number per sample, higher meaning "more likely a member".

Classic signals from the model's softmax (Yeom et al. 2018; Song & Mittal, USENIX Security 2021) and the
boundary distance (Li & Zhang 2021; Choquette-Choo et al. 2021; Kadoche et al. 2022).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from .distances import Perturbation, minimal_perturbation
from .training import predict_logits

_EPS = 1e-12


def loss_score(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-CE = log p_y: members have low loss (Yeom et al. 2018). From log-probabilities, so a confident
    model's scores do not all round to 0."""
    return logp[np.arange(len(y)), y]


def confidence_score(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p_y, the probability of the true label."""
    return np.exp(logp[np.arange(len(y)), y])


def entropy_score(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-H(p) = sum_k p_k log p_k: members get confident, low-entropy predictions. Label-free."""
    return np.sum(np.exp(logp) * logp, axis=1)


def modified_entropy_score(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-Mentr(p, y) of Song & Mittal (2021): -(1 - p_y) log p_y - sum_{k != y} p_k log(1 - p_k), negated."""
    idx = np.arange(len(y))
    p = np.exp(logp)
    lpy = logp[idx, y]
    others = p * np.log1p(-np.clip(p, 0.0, 1.0 - 1e-16))
    others[idx, y] = 0.0
    mentr = -(-np.expm1(lpy)) * lpy - others.sum(axis=1)
    return -mentr


def gap_score(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 if the prediction is correct else 0 (the gap attack of Yeom et al. 2018)."""
    return (logp.argmax(axis=1) == y).astype(np.float64)


SOFTMAX_ATTACKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "loss": loss_score,
    "confidence": confidence_score,
    "entropy": entropy_score,
    "modified_entropy": modified_entropy_score,
    "gap": gap_score,
}

DISTANCE_ATTACKS: dict[str, float] = {"distance_l2": 2.0, "distance_linf": math.inf}
"""Boundary-distance scores: the norm of the minimal perturbation from the true label (0 if misclassified)."""

ADVERSARIAL_ATTACKS: tuple[str, ...] = ("adv_confidence", "verified_confidence")
"""Song, Shokri & Mittal (CCS 2019): I_A, the true-label confidence after an L-inf PGD attack, and I_V, the
verified worst-case confidence by interval bound propagation (mia_core.verified; NaN where unsupported)."""

LABEL_ONLY_ATTACKS: dict[str, float] = {"label_only_l2": 2.0, "label_only_linf": math.inf}
"""Decision-based boundary distances (mia_core.label_only): they see predicted labels only."""

LIRA_ATTACKS: tuple[str, ...] = ("lira_online", "lira_online_fixed", "lira_offline", "lira_offline_fixed")

ATTACKS: tuple[str, ...] = (*DISTANCE_ATTACKS, *LABEL_ONLY_ATTACKS, *SOFTMAX_ATTACKS, *ADVERSARIAL_ATTACKS,
                            *LIRA_ATTACKS, "local_variation")
LABEL_ONLY = ("gap", *LABEL_ONLY_ATTACKS)
"""Attacks that need nothing but the predicted label: output masking cannot hide from them."""

OUTPUT_MASKS: dict[str, str] = {
    "none": "the full probability vector",
    "label": "the top-1 label only",
    "round2": "probabilities rounded to 2 decimals",
}

ATTACK_HELP: dict[str, str] = {
    "distance_l2": "L2 norm of the smallest change that flips the prediction (0 if already wrong).",
    "distance_linf": "L-inf norm of the smallest change that flips the prediction (0 if already wrong).",
    "loss": "Negative cross-entropy loss on the true label.",
    "confidence": "Softmax probability of the true label.",
    "entropy": "Negative entropy of the softmax output (label-free).",
    "modified_entropy": "Negative modified entropy of Song & Mittal 2021 (uses the true label).",
    "gap": "1 if the model classifies the sample correctly, else 0.",
    "adv_confidence": "True-label confidence after a PGD attack of radius epsilon (Song et al. 2019's I_A; "
                      "'confidence' is their I_B).",
    "verified_confidence": "True-label probability of the verified worst case in the epsilon-ball, by interval "
                           "bound propagation (Song et al. 2019's I_V; not defined for resnet18).",
    "label_only_l2": "L2 distance to the boundary found from predicted labels only (HopSkipJump-style).",
    "label_only_linf": "L-inf distance to the boundary found from predicted labels only (HopSkipJump-style).",
    "lira_online": "LiRA (Carlini et al. 2022): likelihood ratio of IN vs OUT shadow-model Gaussians.",
    "lira_online_fixed": "LiRA online with one global variance (steadier with few shadows).",
    "lira_offline": "LiRA offline: how far above the OUT shadow-model Gaussian (no IN models needed).",
    "lira_offline_fixed": "LiRA offline with one global variance.",
    "local_variation": "This project's reading of Kadoche et al. 2022: minus the loss change from x to its "
                       "minimal adversarial example per unit of L2 distance (flatter = more member-like).",
}


def precise_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log p_k = -softplus(logsumexp_{j != k}(z_j - z_k)), in float64.

    Unlike z_k - logsumexp(z), this keeps tiny losses distinct on a saturated model (log p_y of -1e-18
    and -1e-22 do not both round to 0), so confident members still rank by their loss.
    """
    z = logits.double()
    diff = z[:, None, :] - z[:, :, None]  # [N, k, j] = z_j - z_k
    diff.diagonal(dim1=1, dim2=2).fill_(-torch.inf)
    return -torch.nn.functional.softplus(torch.logsumexp(diff, dim=2))


def log_probabilities(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> np.ndarray:
    """Precise log-softmax outputs [N, K] in float64 (see precise_log_softmax)."""
    logits = predict_logits(model, x)
    return torch.cat([precise_log_softmax(logits[i : i + batch_size]) for i in range(0, len(logits), batch_size)]
                     ).cpu().numpy() if len(logits) else np.zeros((0, 0))


def softmax_scores(logp: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Every softmax attack's score for samples with log-probabilities `logp` and true labels `y`."""
    return {name: fn(logp, y) for name, fn in SOFTMAX_ATTACKS.items()}


def distance_scores(
    model: nn.Module, x: torch.Tensor, y: np.ndarray, *, method: str = "fmn", steps: int | None = None,
    progress=None,
) -> tuple[dict[str, np.ndarray], dict[str, Perturbation]]:
    """distance_l2 and distance_linf scores (and the perturbations behind them) from the true labels."""
    scores, perts = {}, {}
    for name, norm in DISTANCE_ATTACKS.items():
        pert = minimal_perturbation(model, x, norm=norm, labels=torch.as_tensor(y), method=method, steps=steps,
                                    progress=progress)
        scores[name], perts[name] = pert.norms, pert
    return scores, perts


def adversarial_confidence_score(model: nn.Module, x: torch.Tensor, y: np.ndarray, *, eps: float,
                                 steps: int = 20, batch_size: int = 512, mask: str = "none") -> np.ndarray:
    """p_y(x') with x' an untargeted L-inf PGD attack on the cross-entropy started at x: 20 steps of size
    2.5 eps / 20, clipped to [0, 1] (Song, Shokri & Mittal, CCS 2019, inference on adversarial inputs)."""
    from .defenses import pgd

    device = next(model.parameters()).device
    yt = torch.as_tensor(y, device=device)
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), yt[i : i + batch_size]
        xa = pgd(model, xb, yb, eps=eps, norm="linf", steps=steps, random_start=False)
        with torch.no_grad():
            logp = mask_log_probs(precise_log_softmax(model(xa)).cpu().numpy(), mask)
        out.append(confidence_score(logp, yb.cpu().numpy()))
    return np.concatenate(out) if out else np.zeros(0)


def mask_log_probs(logp: np.ndarray, mode: str) -> np.ndarray:
    """What an attacker sees through an API that masks its outputs (see OUTPUT_MASKS), as log-probabilities."""
    if mode == "none":
        return logp
    k = logp.shape[-1]
    if mode == "label":
        p = np.full(logp.shape, 1e-6 / (k - 1))
        np.put_along_axis(p, logp.argmax(-1)[..., None], 1 - 1e-6, axis=-1)
    elif mode == "round2":
        p = np.maximum(np.round(np.exp(logp), 2), 1e-4)
        p = p / p.sum(-1, keepdims=True)
    else:
        raise ValueError(f"Unknown output mask '{mode}'. Choose one of {', '.join(OUTPUT_MASKS)}.")
    return np.log(p)


def local_variation_score(model: nn.Module, clean_logp: np.ndarray, x_adv: torch.Tensor, y: np.ndarray,
                          distance: np.ndarray) -> np.ndarray:
    """-|loss(x_adv) - loss(x)| / ||x_adv - x||_2: an EXPERIMENTAL reading of Kadoche et al. (2022)'s
    "proxy of the total variation of a trained model near its training samples" (only their abstract was
    available); higher = flatter around the sample. `clean_logp` are the (unmasked) log-probabilities at x,
    already computed by the caller. Samples with distance 0 or no adversarial example score 0."""
    lx = -loss_score(clean_logp, y)
    la = -loss_score(log_probabilities(model, x_adv), y)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.abs(la - lx) / distance
    return np.where(np.isfinite(v), -v, 0.0)
