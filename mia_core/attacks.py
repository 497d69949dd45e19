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


def loss_score(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-CE(p, y): members have low loss (Yeom et al. 2018)."""
    return np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))


def confidence_score(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p_y, the probability of the true label."""
    return p[np.arange(len(y)), y]


def entropy_score(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-H(p) = sum_k p_k log p_k: members get confident, low-entropy predictions. Label-free."""
    return np.sum(p * np.log(np.clip(p, _EPS, 1.0)), axis=1)


def modified_entropy_score(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-Mentr(p, y) of Song & Mittal (2021): -(1 - p_y) log p_y - sum_{k != y} p_k log(1 - p_k), negated."""
    idx = np.arange(len(y))
    py = p[idx, y]
    log_1mp = np.log(np.clip(1.0 - p, _EPS, 1.0))
    others = p * log_1mp
    others[idx, y] = 0.0
    mentr = -(1.0 - py) * np.log(np.clip(py, _EPS, 1.0)) - others.sum(axis=1)
    return -mentr


def gap_score(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 if the prediction is correct else 0 (the gap attack of Yeom et al. 2018)."""
    return (p.argmax(axis=1) == y).astype(np.float64)


SOFTMAX_ATTACKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "loss": loss_score,
    "confidence": confidence_score,
    "entropy": entropy_score,
    "modified_entropy": modified_entropy_score,
    "gap": gap_score,
}

DISTANCE_ATTACKS: dict[str, float] = {"distance_l2": 2.0, "distance_linf": math.inf}
"""Boundary-distance scores: the norm of the minimal perturbation from the true label (0 if misclassified)."""

ADVERSARIAL_ATTACKS: tuple[str, ...] = ("adv_confidence",)
"""I_A of Song, Shokri & Mittal (CCS 2019): the true-label confidence after an L-inf PGD attack."""

ATTACKS: tuple[str, ...] = (*DISTANCE_ATTACKS, *SOFTMAX_ATTACKS, *ADVERSARIAL_ATTACKS)

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
}


def softmax_probabilities(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Softmax outputs [N, K] as float64 numpy."""
    return torch.softmax(predict_logits(model, x).double(), dim=1).cpu().numpy()


def softmax_scores(probs: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Every softmax attack's score for samples with softmax `probs` and true labels `y`."""
    return {name: fn(probs, y) for name, fn in SOFTMAX_ATTACKS.items()}


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
                                 steps: int = 20, batch_size: int = 512) -> np.ndarray:
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
            p = torch.softmax(model(xa).double(), dim=1)
        out.append(p.gather(1, yb[:, None]).squeeze(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
