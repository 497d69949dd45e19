"""One-run DP auditing (Steinke, Nasr & Jagielski, NeurIPS 2023): m canaries, each put in the training set with
probability 1/2, one training run, and an attack that guesses IN for its k+ highest-scored canaries and OUT for its
k- lowest. Under (epsilon, delta)-DP the number v of correct guesses among r = k+ + k- is stochastically dominated
as their Theorem says, which gives a p-value for every epsilon and so a lower bound on it at a confidence level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit
from scipy.stats import binom

from .attacks import loss_score
from .config import ExperimentConfig
from .data import load_dataset, make_split
from .evaluation import scored_groups, validation_indices
from .models import pick_device
from .probabilities import log_probabilities

CANARY_KINDS = ("natural", "mislabelled")


def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The probability of v or more correct guesses out of r (m canaries) under (eps, delta)-DP: the binomial tail
    at q = e^eps / (1 + e^eps), plus 2 m delta times the largest mean of the tail just below v (their Appendix D)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = float(expit(eps))
    p = float(binom.sf(v - 1, r, q))
    if delta > 0 and v > 0:
        below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))  # P[v - i <= Bin < v], i = 1..v
        p += 2 * m * delta * float(np.max(below / np.arange(1, v + 1)))
    return min(p, 1.0)


def one_run_epsilon(m: int, r: int, v: int, *, delta: float = 1e-5, confidence: float = 0.95,
                    eps_max: float = 50.0) -> float:
    """The largest epsilon that v correct guesses out of r rule out at `confidence` (0 if none): the p-value grows
    with epsilon, so bisect for where it reaches 1 - confidence."""
    alpha = 1 - confidence
    if one_run_p_value(m, r, v, 0.0, delta) > alpha:
        return 0.0
    lo, hi = 0.0, eps_max
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if one_run_p_value(m, r, v, mid, delta) <= alpha else (lo, mid)
    return lo


@dataclass(frozen=True)
class OneRunAudit:
    """One training run's audit: its canaries, the guesses made, and the epsilon they rule out."""

    canaries: int
    kind: str
    guesses: int
    correct: int
    epsilon: float
    delta: float
    confidence: float
    accountant_epsilon: float | None  # DP-SGD's own epsilon for the same training, if it ran
    test_accuracy: float


def one_run_audit(config: ExperimentConfig, *, canaries: int = 500, kind: str = "mislabelled",
                  guesses: int | None = None, delta: float = 1e-5, confidence: float = 0.95,
                  progress=None) -> OneRunAudit:
    """Audit `config`'s training (its model, defense and recipe) in one run: `canaries` points from the reference
    pool (never the scored reference samples or the defender's validation set), with a random wrong label when
    `kind` is "mislabelled", each added to the members with probability 1/2; the loss attack guesses IN for the
    `guesses`/2 lowest-loss canaries and OUT for the `guesses`/2 highest (default: a fifth of the canaries)."""
    from .experiment import fit_model  # the training stage; imported here, the experiment module imports this one's

    if kind not in CANARY_KINDS:
        raise ValueError(f"Unknown canary kind '{kind}'. Choose one of {', '.join(CANARY_KINDS)}.")
    config.validate()
    device = pick_device(config.device)
    ds = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    split = make_split(ds, members=config.members, nonmembers=config.nonmembers, seed=config.seed)
    taken = np.r_[scored_groups(split, config)["reference"], validation_indices(split, config.validation_size,
                                                                                 config.seed)]
    pool = np.setdiff1d(split.reference, taken)
    if len(pool) < canaries:
        raise ValueError(f"Only {len(pool)} reference-pool samples are free for canaries; ask for at most that many "
                         "(or fewer members / reference samples).")
    rng = np.random.default_rng(config.seed + 31)
    idx = np.sort(rng.choice(pool, canaries, replace=False))
    labels = ds.y[idx].copy()
    if kind == "mislabelled":
        labels = (labels + rng.integers(1, ds.num_classes, canaries)) % ds.num_classes
    included = rng.random(canaries) < 0.5
    x = torch.from_numpy(ds.x).to(device)
    xc, yc = x[idx], torch.from_numpy(labels).to(device)
    xm = torch.cat([x[split.members], xc[torch.from_numpy(included).to(device)]])
    ym = torch.cat([torch.from_numpy(ds.y[split.members]).to(device), yc[torch.from_numpy(included).to(device)]])
    model, record = fit_model(config, ds, split, xm, ym, device, progress)
    score = loss_score(log_probabilities(model.eval(), xc), labels)  # higher = lower loss = more member-like
    k = (guesses or canaries // 5) // 2
    order = np.argsort(score, kind="stable")
    guess_in, guess_out = order[-k:] if k else order[:0], order[:k]
    correct = int(included[guess_in].sum() + (~included[guess_out]).sum())
    eps = one_run_epsilon(canaries, 2 * k, correct, delta=delta, confidence=confidence)
    return OneRunAudit(canaries, kind, 2 * k, correct, eps, delta, confidence, record.defense.epsilon,
                       record.test_accuracy)


def guess_accuracy_at(eps: float) -> float:
    """The guess accuracy an eps-DP run allows at best (randomised response): e^eps / (1 + e^eps)."""
    return 1 / (1 + math.exp(-eps))
