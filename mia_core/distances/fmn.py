"""Fast Minimum-Norm (Pintor et al., NeurIPS 2021), L2 or L-inf, batched, warm-started from SuperDeepFool."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models import gradient_slices
from ..tensors import box_blocked, dual, flat_norm, is_adversarial, margin, per_sample
from .deepfool import superdeepfool_search
from .refine import refined


def fmn(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: float,
    steps: int = 50,
    alpha_init: float = 1.0,
    alpha_final: float | None = None,
    gamma_init: float = 0.05,
    gamma_final: float = 0.001,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021), L2 or L-inf, batched.

    Keeps a per-sample norm budget eps: while x + delta is adversarial eps shrinks by (1 - gamma); while
    not, it grows by (1 + gamma), or, before any success, jumps to the linear estimate ||delta|| + m / ||g||_q.
    delta takes a normalised gradient step on the logit margin m, is projected onto the eps-ball and the
    [0, 1] box; gradient components that point out of the box are dropped. Step size alpha and gamma
    decay on a cosine schedule. `init` (e.g. a DeepFool point) warm-starts the search: where it is
    adversarial it is the first best point and sets eps. Returns (best x_adv, found).
    """
    alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
    q = dual(norm)
    best_norm = torch.full((x.shape[0],), torch.inf, device=x.device)
    best_adv = x.clone()
    delta = torch.zeros_like(x)
    if init is not None:
        with torch.no_grad():  # a refined start sits at the verdict threshold: accept any flip, not only a clear one
            ok = margin(model(init), y) < 0
        delta = torch.where(per_sample(ok, x), init - x, delta)
        best_norm = torch.where(ok, flat_norm(delta, norm), best_norm)
        best_adv = torch.where(per_sample(ok, x), init, best_adv)
    eps = best_norm.clone()
    for i in range(steps):
        cos = (1 + math.cos(math.pi * i / steps)) / 2
        alpha = alpha_final + (alpha_init - alpha_final) * cos
        gamma = gamma_final + (gamma_init - gamma_final) * cos
        logits, grad = _margin_gradient(model, x, delta, y)
        xa = x + delta
        m = margin(logits, y)
        # Directions that would leave the [0, 1] box are blocked: drop them, or the search stalls at the box.
        grad = -box_blocked(-grad, xa)  # FMN steps along -grad
        is_adv = is_adversarial(logits, y)
        d_norm = flat_norm(delta, norm)
        better = is_adv & (d_norm < best_norm)
        best_norm = torch.where(better, d_norm, best_norm)
        best_adv = torch.where(per_sample(better, x), xa, best_adv)
        g_dual = flat_norm(grad, q).clamp_min(1e-12)
        never_found = torch.isinf(best_norm)
        eps = torch.where(
            is_adv,
            torch.minimum(eps, d_norm) * (1 - gamma),
            torch.where(never_found, d_norm + m.clamp_min(0) / g_dual, eps * (1 + gamma)),
        )
        g2 = flat_norm(grad, 2.0).clamp_min(1e-12)
        delta = delta - per_sample(alpha / g2, grad) * grad
        if math.isinf(norm):
            delta = torch.maximum(torch.minimum(delta, per_sample(eps, delta)), -per_sample(eps, delta))
        else:
            scale = (eps / flat_norm(delta, 2.0).clamp_min(1e-12)).clamp(max=1.0)
            delta = delta * per_sample(scale, delta)
        delta = (x + delta).clamp(0, 1) - x
    xa = x + delta
    with torch.no_grad():
        last_adv = is_adversarial(model(xa), y) & (flat_norm(delta, norm) < best_norm)
    best_adv = torch.where(per_sample(last_adv, x), xa, best_adv)
    return best_adv.detach(), torch.isfinite(best_norm) | last_adv


def _margin_gradient(model, x, delta, y) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits at x + delta, gradient of the logit margin with respect to delta), chunk by chunk
    (`models.gradient_slices`)."""
    logits, grads = [], []
    for rows in gradient_slices(model, len(x)):
        d = delta[rows].detach().requires_grad_(True)
        out = model(x[rows] + d)
        (g,) = torch.autograd.grad(margin(out, y[rows]).sum(), d)
        logits.append(out.detach())
        grads.append(g)
    return torch.cat(logits), torch.cat(grads)


def fmn_search(model, x, y, norm, steps):
    """The `fmn` search: FMN warm-started from the refined SuperDeepFool point, so never looser than it."""
    cand, found = superdeepfool_search(model, x, y, norm, None)
    start = refined(model, x, y, cand, found, 8)
    return fmn(model, x, y, norm=norm, init=start, **({} if steps is None else {"steps": steps}))
