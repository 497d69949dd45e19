"""Membership attacks: one number per sample, higher meaning "more likely a member", in one registry.

Each attack is an `AttackSpec` whose `score(ctx)` reads what it needs from a scoring context (the model, the
group's inputs and labels, its masked log-probabilities, and lazily computed shared work: minimal
perturbations, label-only searches, shadow models); see `mia_core.evaluation.GroupScoring`. Adding an attack is
one `ATTACKS.register(AttackSpec(...))`: the CLI table, the stored run and the app's pages read the registry.

Classic signals from the model's softmax (Yeom et al. 2018; Song & Mittal, USENIX Security 2021), the
boundary distance (Li & Zhang 2021; Choquette-Choo et al. 2021; Kadoche et al. 2022), the adversarial
signals of Song, Shokri & Mittal (CCS 2019), and LiRA (Carlini et al., S&P 2022).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from .adversarial import pgd
from .distances import Perturbation, minimal_perturbation
from .models import logits_in_rows, search_model
from .probabilities import OUTPUT_MASKS, log_probabilities, mask_log_probs, precise_log_softmax  # noqa: F401
from .registry import Registry
from .tensors import model_device
from .verified import verified_confidence_score

if TYPE_CHECKING:
    from .evaluation import GroupScoring

_EPS = 1e-12


# ----------------------------------------------------------------------------- score functions


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


SOFTMAX_SCORES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "loss": loss_score,
    "confidence": confidence_score,
    "entropy": entropy_score,
    "modified_entropy": modified_entropy_score,
    "gap": gap_score,
}


def softmax_scores(logp: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Every softmax attack's score for samples with log-probabilities `logp` and true labels `y`."""
    return {name: fn(logp, y) for name, fn in SOFTMAX_SCORES.items()}


def distance_scores(
    model: nn.Module, x: torch.Tensor, y: np.ndarray, *, method: str = "fmn", steps: int | None = None,
    progress=None,
) -> tuple[dict[str, np.ndarray], dict[str, Perturbation]]:
    """distance_l2 and distance_linf scores (and the perturbations behind them) from the true labels."""
    scores, perts = {}, {}
    for name, norm in (("distance_l2", 2.0), ("distance_linf", math.inf)):
        pert = minimal_perturbation(model, x, norm=norm, labels=torch.as_tensor(y), method=method, steps=steps,
                                    progress=progress)
        scores[name], perts[name] = pert.norms, pert
    return scores, perts


def adversarial_confidence_score(model: nn.Module, x: torch.Tensor, y: np.ndarray, *, eps: float,
                                 steps: int = 20, batch_size: int = 512, mask: str = "none") -> np.ndarray:
    """p_y(x') with x' an untargeted L-inf PGD attack on the cross-entropy started at x: 20 steps of size
    2.5 eps / 20, clipped to [0, 1] (Song, Shokri & Mittal, CCS 2019, inference on adversarial inputs)."""
    device = model_device(model)
    yt = torch.as_tensor(y, device=device)
    fast = search_model(model, x)  # PGD steps on the channels-last copy; the confidence is the model's own
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), yt[i : i + batch_size]
        xa = pgd(fast, xb, yb, eps=eps, norm="linf", steps=steps, random_start=False)
        with torch.no_grad():
            logp = mask_log_probs(precise_log_softmax(logits_in_rows(model, xa)).cpu().numpy(), mask)
        out.append(confidence_score(logp, yb.cpu().numpy()))
    return np.concatenate(out) if out else np.zeros(0)


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


# ----------------------------------------------------------------------------- the registry


class Cost(enum.IntEnum):
    """How soon an attack's scores exist in a staged evaluation (evaluation.evaluate's first results)."""

    LOGITS = 0  # one forward pass a sample
    GRADIENTS = 1  # a white-box search or attack: tens of gradient steps a sample
    EXPENSIVE = 2  # many label queries, reference models, bound propagation


@dataclass(frozen=True)
class AttackSpec:
    """A membership attack. `score(ctx)` returns one float per sample of the context's group (NaN where it is
    undefined). `label_only`: needs nothing but predicted labels, so output masking cannot hide from it.
    `needs_shadows`: scores exist only for points in the shadow models' pool (members and non-members), so
    there are no reference scores and no threshold calibrated on them. `cost`: how soon a staged evaluation
    has its scores (the first results hold the LOGITS attacks, then the GRADIENTS ones). `searches`: a search or
    attack per sample, so the reference group scores only its searched subset (config.reference_searched) and
    leaves the rest NaN."""

    name: str
    title: str
    family: str
    help: str
    score: Callable[["GroupScoring"], np.ndarray]
    label_only: bool = False
    needs_shadows: bool = False
    cost: Cost = Cost.LOGITS
    searches: bool = False

    @property
    def has_reference_scores(self) -> bool:
        return not self.needs_shadows


FAMILIES = ("boundary distance", "label-only", "softmax", "adversarial", "shadow models", "experimental")

ATTACKS: Registry[AttackSpec] = Registry("attack")


def _softmax(name: str) -> Callable[["GroupScoring"], np.ndarray]:
    return lambda ctx: SOFTMAX_SCORES[name](ctx.logp, ctx.y)


def _lira(variant: str) -> Callable[["GroupScoring"], np.ndarray]:
    return lambda ctx: ctx.lira(variant)


def _verified(ctx: "GroupScoring") -> np.ndarray:
    iv = verified_confidence_score(ctx.unit_model, ctx.unit_x, ctx.y, eps=ctx.config.adv_epsilon)
    return np.full(len(ctx.y), np.nan) if iv is None else iv


def _local_variation(ctx: "GroupScoring") -> np.ndarray:
    p = ctx.perturbation(2.0)
    return local_variation_score(ctx.model, ctx.clean_logp, p.x_adv, ctx.y, p.norms)


for _spec in (
    AttackSpec("distance_l2", "Boundary distance (L2)", "boundary distance",
               "L2 norm of the smallest change that flips the prediction (0 if already wrong).",
               lambda ctx: ctx.perturbation(2.0).norms, cost=Cost.GRADIENTS, searches=True),
    AttackSpec("distance_linf", "Boundary distance (L-inf)", "boundary distance",
               "L-inf norm of the smallest change that flips the prediction (0 if already wrong).",
               lambda ctx: ctx.perturbation(math.inf).norms, cost=Cost.GRADIENTS, searches=True),
    AttackSpec("label_only_l2", "Label-only distance (L2)", "label-only",
               "L2 distance to the boundary found from predicted labels only (HopSkipJump-style).",
               lambda ctx: ctx.label_only(2.0).norms, label_only=True, cost=Cost.EXPENSIVE, searches=True),
    AttackSpec("label_only_linf", "Label-only distance (L-inf)", "label-only",
               "L-inf distance to the boundary found from predicted labels only (HopSkipJump-style).",
               lambda ctx: ctx.label_only(math.inf).norms, label_only=True, cost=Cost.EXPENSIVE, searches=True),
    AttackSpec("loss", "Loss", "softmax", "Negative cross-entropy loss on the true label.", _softmax("loss")),
    AttackSpec("confidence", "Confidence (I_B)", "softmax", "Softmax probability of the true label.",
               _softmax("confidence")),
    AttackSpec("entropy", "Entropy", "softmax", "Negative entropy of the softmax output (label-free).",
               _softmax("entropy")),
    AttackSpec("modified_entropy", "Modified entropy", "softmax",
               "Negative modified entropy of Song & Mittal 2021 (uses the true label).", _softmax("modified_entropy")),
    AttackSpec("gap", "Gap (correct or not)", "softmax", "1 if the model classifies the sample correctly, else 0.",
               _softmax("gap"), label_only=True),
    AttackSpec("adv_confidence", "Adversarial confidence (I_A)", "adversarial",
               "True-label confidence after a PGD attack of radius epsilon (Song et al. 2019's I_A; "
               "'confidence' is their I_B).",
               lambda ctx: adversarial_confidence_score(ctx.unit_model, ctx.unit_x, ctx.y, eps=ctx.config.adv_epsilon,
                                                        mask=ctx.config.output_mask),
               cost=Cost.GRADIENTS, searches=True),
    AttackSpec("verified_confidence", "Verified confidence (I_V)", "adversarial",
               "True-label probability of the verified worst case in the epsilon-ball, by interval bound "
               "propagation (Song et al. 2019's I_V; not defined for resnet18).", _verified, cost=Cost.EXPENSIVE),
    *(AttackSpec(name, title, "shadow models", help, _lira(name), needs_shadows=True, cost=Cost.EXPENSIVE)
      for name, title, help in (
        ("lira_online", "LiRA online",
         "LiRA (Carlini et al. 2022): likelihood ratio of IN vs OUT shadow-model Gaussians."),
        ("lira_online_fixed", "LiRA online, fixed variance",
         "LiRA online with one global variance (steadier with few shadows)."),
        ("lira_offline", "LiRA offline",
         "LiRA offline: how far above the OUT shadow-model Gaussian (no IN models needed)."),
        ("lira_offline_fixed", "LiRA offline, fixed variance", "LiRA offline with one global variance."),
    )),
    AttackSpec("rmia_online", "RMIA online", "shadow models",
               "RMIA (Zarifzadeh et al. 2024): share of population points z that x beats in likelihood ratio "
               "[Pr(x|target)/Pr(x)] / [Pr(z|target)/Pr(z)] >= gamma, Pr(.) averaged over all reference models.",
               lambda ctx: ctx.rmia("rmia_online"), needs_shadows=True, cost=Cost.EXPENSIVE),
    AttackSpec("rmia_offline", "RMIA offline", "shadow models",
               "RMIA with only the reference models that did not train on x, corrected by a (chosen on the "
               "reference models themselves).", lambda ctx: ctx.rmia("rmia_offline"), needs_shadows=True,
               cost=Cost.EXPENSIVE),
    AttackSpec("local_variation", "Local variation (experimental)", "experimental",
               "This project's reading of Kadoche et al. 2022: minus the loss change from x to its minimal "
               "adversarial example per unit of L2 distance (flatter = more member-like).", _local_variation,
               cost=Cost.GRADIENTS, searches=True),
):
    ATTACKS.register(_spec)
