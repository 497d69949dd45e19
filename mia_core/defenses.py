"""Train-time defenses against membership inference, each with one strength parameter.

Each defense yields an `Objective` for `training.train`: a per-batch loss, an optional end-of-epoch pass,
and a final step. DP-SGD trains through opacus instead (`train_dp_sgd`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .adversarial import pgd, robust_accuracy  # noqa: F401  (robust_accuracy re-exported)
from .registry import Registry
from .training import accuracy, cross_entropy_step


# ----------------------------------------------------------------------------- MMD


def mmd2(p: torch.Tensor, q: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Biased squared MMD with the Gaussian kernel exp(-||a - b||^2 / (2 sigma^2)) between row sets p, q."""
    def k(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * sigma**2))
    return k(p, p).mean() + k(q, q).mean() - 2 * k(p, q).mean()


class ClassMatchedSampler:
    """Draws, for a batch of labels, validation samples with the same labels (uniformly within each class)."""

    def __init__(self, x_val: torch.Tensor, y_val: torch.Tensor, num_classes: int, generator: torch.Generator):
        order = torch.argsort(y_val.cpu(), stable=True)
        self.x, self.y = x_val[order.to(x_val.device)], y_val[order.to(y_val.device)]
        counts = torch.bincount(self.y.cpu(), minlength=num_classes)
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts
        self.gen = generator

    def __call__(self, labels: torch.Tensor) -> torch.Tensor:
        lab = labels.cpu()
        cnt = self.counts[lab]
        if (cnt == 0).any():
            # a class without validation samples: fall back to any sample
            cnt = torch.where(cnt == 0, torch.full_like(cnt, len(self.y)), cnt)
        offs = torch.where(self.counts[lab] == 0, torch.zeros_like(cnt), self.offsets[lab])
        pick = offs + (torch.rand(len(lab), generator=self.gen) * cnt).long().clamp(max=cnt - 1)
        return self.x[pick.to(self.x.device)]


# ----------------------------------------------------------------------------- objectives


@dataclass
class Objective:
    """How a defense changes training: the batch loss, an optional end-of-epoch pass, a final step."""

    step_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor] = cross_entropy_step
    epoch_end: Callable[[nn.Module, torch.optim.Optimizer, int], bool] | None = None  # returns True to stop
    finish: Callable[[nn.Module], None] | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DefenseContext:
    """What a defense may use besides the members: a validation set disjoint from members and non-members
    (drawn from the reference pool), the epoch budget and the seed."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    epochs: int
    batch_size: int
    seed: int
    adv_epsilon: float = 0.1
    adv_norm: str = "linf"
    adv_steps: int = 7


def mixup_loss(alpha: float, gen: torch.Generator):
    """Mix-up (Zhang et al., ICLR 2018): lam ~ Beta(alpha, alpha); train on lam x_i + (1 - lam) x_j."""
    beta = torch.distributions.Beta(alpha, alpha) if alpha > 0 else None

    def step(model, x, y, epoch):
        if beta is None:
            return F.cross_entropy(model(x), y)
        lam = float(beta.sample())
        perm = torch.randperm(len(x), generator=gen).to(x.device)
        logits = model(lam * x + (1 - lam) * x[perm])
        return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])

    return step


def _none(strength: float, ctx: DefenseContext) -> Objective:
    return Objective()


def _pgd_at(strength: float, ctx: DefenseContext) -> Objective:
    """PGD adversarial training (Madry et al. 2018), radius = strength, on adversarial inputs only."""
    eps = strength

    def step(model, x, y, epoch):
        xa = pgd(model, x, y, eps=eps, norm=ctx.adv_norm, steps=ctx.adv_steps)
        return F.cross_entropy(model(xa), y)

    return Objective(step_loss=step, info={"adv_epsilon": eps, "adv_norm": ctx.adv_norm})


def _trades(strength: float, ctx: DefenseContext) -> Objective:
    """TRADES (Zhang et al., ICML 2019): CE(f(x), y) + beta KL(f(x) || f(x')), x' maximising that KL
    within radius adv_epsilon; beta = strength."""
    beta, eps = strength, ctx.adv_epsilon

    def step(model, x, y, epoch):
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        xa = pgd(model, x, y, eps=eps, norm=ctx.adv_norm, steps=ctx.adv_steps, random_start=True,
                 loss_fn=lambda logits: F.kl_div(F.log_softmax(logits, 1), p_clean, reduction="sum"))
        logits = model(x)
        kl = F.kl_div(F.log_softmax(model(xa), 1), F.softmax(logits, 1), reduction="batchmean")
        return F.cross_entropy(logits, y) + beta * kl

    return Objective(step_loss=step, info={"adv_epsilon": eps, "adv_norm": ctx.adv_norm})


def _mmd_mixup(strength: float, ctx: DefenseContext, *, alpha: float = 1.0, sigma: float = 1.0,
               gap_threshold: float = 0.03) -> Objective:
    """MMD set regulariser + mix-up (Li, Li & Ribeiro, CODASPY 2021), lambda = strength.

    Each epoch: a mix-up pass; then, while train accuracy - validation accuracy >= 3 points and not in the
    last epoch, an MMD pass: per training batch, a class-matched validation batch, loss
    lambda * MMD^2(softmax(f(batch)), softmax(f(val batch)).detach()), a step on that loss alone.
    """
    gen = torch.Generator().manual_seed(ctx.seed + 17)
    sampler = ClassMatchedSampler(ctx.x_val, ctx.y_val, ctx.num_classes, gen)
    passes = []

    def epoch_end(model, opt, epoch):
        if epoch >= ctx.epochs - 1 or strength <= 0:
            return False
        gap = accuracy(model, ctx.x_train, ctx.y_train) - accuracy(model, ctx.x_val, ctx.y_val)
        if abs(gap) < gap_threshold:
            return False
        passes.append(epoch)
        model.train()
        perm = torch.randperm(len(ctx.x_train), generator=gen).to(ctx.x_train.device)
        for s in range(0, len(perm), ctx.batch_size):
            idx = perm[s : s + ctx.batch_size]
            xb, yb = ctx.x_train[idx], ctx.y_train[idx]
            xv = sampler(yb)
            with torch.no_grad():
                q = F.softmax(model(xv), dim=1)
            loss = strength * mmd2(F.softmax(model(xb), dim=1), q, sigma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return False

    obj = Objective(step_loss=mixup_loss(alpha, gen), epoch_end=epoch_end, info={"mmd_passes": passes})
    return obj


def _mixup(strength: float, ctx: DefenseContext) -> Objective:
    return Objective(step_loss=mixup_loss(strength, torch.Generator().manual_seed(ctx.seed + 17)))


def _label_smoothing(strength: float, ctx: DefenseContext) -> Objective:
    return Objective(step_loss=lambda model, x, y, epoch: F.cross_entropy(model(x), y, label_smoothing=strength))


def _early_stopping(strength: float, ctx: DefenseContext) -> Objective:
    """Stop when validation accuracy has not improved for `strength` epochs; keep the best weights."""
    patience = max(1, int(round(strength)))
    best = {"acc": -1.0, "epoch": -1, "state": None}

    def epoch_end(model, opt, epoch):
        acc = accuracy(model, ctx.x_val, ctx.y_val)
        if acc > best["acc"]:
            best.update(acc=acc, epoch=epoch, state=copy.deepcopy(model.state_dict()))
        return epoch - best["epoch"] >= patience

    def finish(model):
        if best["state"] is not None:
            model.load_state_dict(best["state"])

    return Objective(epoch_end=epoch_end, finish=finish, info={"best": best})


@dataclass(frozen=True)
class DefenseSpec:
    """A train-time defense and its one strength parameter.

    Exactly one way of acting: `objective` (a loss / epoch hook for `training.train`), `trainer` (its own
    training loop, e.g. DP-SGD through opacus), or `config_field` (the strength replaces that training
    setting: weight decay, dropout). `valid` is the range a strength must lie in; `slider` (low, high, step) the
    range the app offers by default, inside it."""

    name: str
    help: str
    strength_label: str
    default_strength: float
    valid: tuple[float, float]
    slider: tuple[float, float, float]
    objective: Callable[[float, DefenseContext], Objective] | None = None
    trainer: Callable[..., dict] | None = None
    config_field: str | None = None
    adversarial: bool = False  # trains on adversarial examples (robust accuracy is measured)

    def check_strength(self, strength: float) -> str | None:
        """None if `strength` is allowed, else what is wrong with it."""
        lo, hi = self.valid
        if not math.isfinite(strength) or not lo <= strength <= hi:
            return f"the strength ({self.strength_label}) of {self.name} must be in [{lo:g}, {hi:g}], got {strength:g}"
        return None


DEFENSES: Registry[DefenseSpec] = Registry("defense")
for _spec in (
    DefenseSpec("none", "No defense.", "none", 0.0, (0.0, 0.0), (0.0, 0.0, 1.0), objective=_none),
    DefenseSpec("pgd_at", "PGD adversarial training (Madry et al.); strength = radius epsilon. Raises leakage "
                "(Song et al. 2019).", "epsilon", 0.1, (0.0, 1.0), (0.0, 0.3, 0.02), objective=_pgd_at,
                adversarial=True),
    DefenseSpec("trades", "TRADES (Zhang et al. 2019); strength = beta, radius = adv_epsilon.", "beta", 1.0,
                (0.0, 1000.0), (0.0, 6.0, 0.5), objective=_trades, adversarial=True),
    DefenseSpec("mmd_mixup", "MMD set regulariser + mix-up (Li, Li & Ribeiro 2021); strength = MMD weight lambda.",
                "lambda", 3.0, (0.0, 10000.0), (0.0, 30.0, 1.0), objective=_mmd_mixup),
    DefenseSpec("mixup", "Mix-up alone; strength = Beta(alpha, alpha) parameter.", "alpha", 1.0, (0.0, 1000.0),
                (0.0, 4.0, 0.1), objective=_mixup),
    DefenseSpec("label_smoothing", "Label smoothing; strength = smoothing mass.", "smoothing", 0.1, (0.0, 1.0),
                (0.0, 0.5, 0.05), objective=_label_smoothing),
    DefenseSpec("weight_decay", "L2 weight decay in Adam; strength = coefficient.", "coefficient", 1e-3,
                (0.0, 10.0), (0.0, 0.05, 0.001), config_field="weight_decay"),
    DefenseSpec("dropout", "Dropout in the hidden layers; strength = rate.", "rate", 0.3, (0.0, 0.95),
                (0.0, 0.8, 0.05), config_field="dropout"),
    DefenseSpec("early_stopping", "Stop on the validation set; strength = patience in epochs.", "patience", 5.0,
                (1.0, 100000.0), (1.0, 30.0, 1.0), objective=_early_stopping),
    DefenseSpec("dp_sgd", "DP-SGD through opacus (Abadi et al. 2016); strength = noise multiplier, clip 1.0, "
                "delta 1e-5.", "noise multiplier", 1.0, (0.01, 10000.0), (0.3, 5.0, 0.1),
                trainer=lambda **kw: train_dp_sgd(**kw)),
):
    DEFENSES.register(_spec)

DEFENSE_HELP = {s.name: s.help for s in DEFENSES.specs()}
DEFAULT_STRENGTH = {s.name: s.default_strength for s in DEFENSES.specs()}
ADVERSARIAL = tuple(s.name for s in DEFENSES.specs() if s.adversarial)


def make_objective(name: str, strength: float, ctx: DefenseContext) -> Objective:
    """The training objective of a defense that acts through one (plain training for the others)."""
    spec = DEFENSES.get(name)
    if strength < 0 or not math.isfinite(strength):
        raise ValueError(f"The strength of {name} must be a finite number >= 0, got {strength}.")
    return spec.objective(strength, ctx) if spec.objective else Objective()


# ----------------------------------------------------------------------------- DP-SGD


def train_dp_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                 noise_multiplier: float, max_grad_norm: float = 1.0, delta: float = 1e-5, seed: int = 0,
                 progress=None) -> dict:
    """DP-SGD (Abadi et al., CCS 2016) with opacus: per-sample clipping, Gaussian noise, Poisson sampling.
    Returns the epsilon spent at `delta` (RDP accountant)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    engine = PrivacyEngine(accountant="rdp")
    private, opt, loader = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                                               noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                                               noise_generator=torch.Generator(device=x.device).manual_seed(seed))
    losses = []
    for epoch in range(epochs):
        private.train()
        total, seen = 0.0, 0
        for xb, yb in loader:
            if len(xb) == 0:
                continue
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(private(xb), yb)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
            seen += len(xb)
        losses.append(total / max(seen, 1))
        if progress:
            progress("training (DP-SGD)", (epoch + 1) / epochs)
    private.eval()
    return {"epsilon": float(engine.get_epsilon(delta)), "delta": delta, "noise_multiplier": noise_multiplier,
            "max_grad_norm": max_grad_norm, "loss": losses}
