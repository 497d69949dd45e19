"""What every search goes through after it proposes candidates: pushed out to the adversarial side in strict
float32, pulled back to the boundary by a bracketing root search, and verified by the caller's own model."""

from __future__ import annotations

import torch
from torch import nn

from ..models import logits_in_rows
from ..tensors import flat_norm, per_sample, signed_margin


@torch.no_grad()
def boundary_bisection(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, *, steps: int = 8,
    margin_at_adv: torch.Tensor | None = None, margin_at_x: torch.Tensor | None = None, rtol: float = 1e-6,
) -> torch.Tensor:
    """Pull adversarial points back along the segment x -> x_adv to a crossing of the boundary.

    A bracketing root search on the logit margin along the segment: regula falsi with the Illinois
    correction (superlinear where the margin is near-linear, as it is close to the boundary), which keeps
    a bracket like bisection, so the returned point x + t (x_adv - x) is always on the adversarial side; and
    since the segment lies in the [0, 1] box, so does the point. A sample leaves the search once its bracket
    is narrower than `rtol` of t (its norm is then known to that relative precision), or after `steps`.
    """
    d = x_adv - x
    hi = torch.ones(x.shape[0], device=x.device)
    g_hi = signed_margin(model(x_adv), y) if margin_at_adv is None else margin_at_adv.clone()
    # searches end just past the boundary: bracket [0.9, 1] where 0.9 is still clean, else [0, 1]
    g_lo = signed_margin(model(x + 0.9 * d), y)
    lo = torch.full_like(hi, 0.9)
    start_low = g_lo < 0
    if start_low.any():
        lo[start_low] = 0.0
        g_lo[start_low] = (signed_margin(model(x[start_low]), y[start_low]) if margin_at_x is None
                           else margin_at_x[start_low])
    side = torch.zeros_like(hi)  # which end moved last: +1 hi, -1 lo (for the Illinois halving)
    open_ = torch.arange(x.shape[0], device=x.device)
    for _ in range(steps):
        open_ = open_[(hi[open_] - lo[open_]) > rtol * hi[open_]]
        if open_.numel() == 0:
            break
        h, lw, gh, gl, sd = hi[open_], lo[open_], g_hi[open_], g_lo[open_], side[open_]
        width = h - lw
        t = h - gh * width / (gh - gl).clamp(max=-1e-30)
        t = torch.minimum(torch.maximum(t, lw + 0.02 * width), h - 0.02 * width)
        g = signed_margin(model(x[open_] + per_sample(t, d) * d[open_]), y[open_])
        adv = g < 0
        g_hi[open_] = torch.where(adv, g, torch.where(sd < 0, gh / 2, gh))
        g_lo[open_] = torch.where(~adv, g, torch.where(sd > 0, gl / 2, gl))
        hi[open_] = torch.where(adv, t, h)
        lo[open_] = torch.where(adv, lw, t)
        side[open_] = torch.where(adv, 1.0, -1.0)
    return x + per_sample(hi, d) * d


def refined(model, x, y, cand, found, refine_steps, margins=None, clean_margins=None):
    """x where nothing was found, else the candidate pulled back to the boundary (`boundary_bisection`)."""
    out = x.clone()
    if found.any():
        out[found] = boundary_bisection(
            model, x[found], cand[found], y[found], steps=refine_steps,
            margin_at_adv=None if margins is None else margins[found],
            margin_at_x=None if clean_margins is None else clean_margins[found])
    return out


@torch.no_grad()
def push_out(model, x, y, cand, found, factors=(1.01, 1.05, 1.2, 1.5, 2.0)):
    """Make candidates adversarial under strict fp32: extend x -> cand along its direction (clipped to
    the box) until the prediction flips. Returns (points, signed margin at each point: negative exactly
    where it is adversarial, +inf where there is no candidate), so the refinement needs no second pass."""
    g = torch.where(found, signed_margin(model(cand), y), torch.inf)
    out = cand.clone()
    for f in factors:
        todo = found & (g >= 0)
        if not todo.any():
            break
        trial = (x[todo] + f * (cand[todo] - x[todo])).clamp(0, 1)
        g_trial = signed_margin(model(trial), y[todo])
        ok = g_trial < 0
        idx = todo.nonzero().squeeze(1)
        out[idx[ok]] = trial[ok]
        g[idx[ok]] = g_trial[ok]
    return out, g


@torch.no_grad()
def verified(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, norm: float):
    """The final check no search can skip: the caller's model predicts at every x_adv; a success is a
    changed prediction, its distance the true ||x_adv - x||_p in float64; a failure gets x_adv = x and +inf.
    Returns (distances, success, x_adv, predictions at x_adv)."""
    adv_pred = logits_in_rows(model, x_adv).argmax(1)
    success = adv_pred != y
    dist = flat_norm((x_adv - x).double(), norm)
    dist = torch.where(success, dist, torch.inf)
    return dist, success, torch.where(per_sample(success, x_adv), x_adv, x), adv_pred
