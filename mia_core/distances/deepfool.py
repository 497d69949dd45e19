"""DeepFool (Moosavi-Dezfooli et al., CVPR 2016) and SuperDeepFool (Abdollahpourrostam, Abroshan &
Moosavi-Dezfooli, NeurIPS 2024), L2 or L-inf, batched, with box-aware steps."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models import gradient_slices
from ..tensors import box_blocked, dual, flat_norm, is_adversarial, per_sample


def _vjps(outputs: torch.Tensor, inputs: torch.Tensor, grad_outputs: torch.Tensor) -> torch.Tensor:
    """Several vector-Jacobian products: [C, *inputs.shape] for grad_outputs [C, *outputs.shape].

    One vmapped backward on a GPU (fewer launches); a loop of backward passes on the CPU, where it measured
    about 30% faster for a small CNN. Ops without a batching rule fall back to the loop too."""
    n = len(grad_outputs)
    if inputs.is_cuda:
        try:
            return torch.autograd.grad(outputs, inputs, grad_outputs=grad_outputs, is_grads_batched=True)[0]
        except RuntimeError:
            pass
    return torch.stack([torch.autograd.grad(outputs, inputs, grad_outputs=g, retain_graph=i < n - 1)[0]
                        for i, g in enumerate(grad_outputs)])


def _candidate_classes(logits: torch.Tensor, y: torch.Tensor, candidates: int) -> torch.Tensor:
    """[B, C]: the attacked class y first, then the C - 1 other classes with the highest logits."""
    c = min(candidates, logits.shape[1])
    others = logits.scatter(1, y[:, None], -torch.inf).topk(c - 1, dim=1).indices
    return torch.cat([y[:, None], others], dim=1)


def deepfool(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: float, steps: int = 50, overshoot: float = 0.02,
    candidates: int = 4, later_candidates: int = 2, projections: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepFool (Moosavi-Dezfooli et al., CVPR 2016), L2 or L-inf, batched; samples leave once they are done.

    Returns (x_adv [B, ...], found [B]). Each step linearises the boundaries z_k = z_y of the C - 1 classes
    with the highest other logits (their gradients come from C - 1 backward passes over one forward) and
    takes the smallest step onto the nearest one. C is `candidates` at the first step, which picks the
    direction, and `later_candidates` after it: once a step has been taken towards class k, k leads the
    other logits, and following it alone gave the same norms on every model we measured (bench/distances.py)
    at a third of the backward passes. The linearisation is box-aware: gradient components that would push a
    pixel already at 0 or 1 out of the box are dropped, so on images with a black background a search needs
    about 3 steps where the unconstrained step, clipped, needs about 10. (The exact box-constrained step of
    Croce & Hein's FAB was tried too: on our CNNs it was 20% slower and 2% looser in L2.)

    `projections` > 0 gives SuperDeepFool (Abdollahpourrostam, Abroshan & Moosavi-Dezfooli, NeurIPS 2024):
    once a sample crosses, its perturbation is replaced by the smallest one that reaches the boundary's
    tangent hyperplane at the crossing point (the perturbation's projection onto the boundary normal), and
    DeepFool resumes from there; after `projections` such rounds the smallest crossing point is returned.
    """
    b = x.shape[0]
    r_tot = torch.zeros_like(x)
    x_adv = x.clone()
    best = torch.full((b,), torch.inf, device=x.device)
    rounds_left = torch.full((b,), projections, device=x.device)
    active = torch.arange(b, device=x.device)
    for it in range(steps + 1):
        xa = (x[active] + (1 + overshoot) * r_tot[active]).clamp(0, 1)
        ya = y[active]
        # the logits, and the gradients of z_k - z_y for the C - 1 candidates k of the samples not done, chunk
        # by chunk (models.gradient_slices: one chunk's graph at a time)
        parts = [_linearised(model, xa[rows], ya[rows], rounds_left[active[rows]] <= 0,
                             candidates if it == 0 else later_candidates) for rows in gradient_slices(model, len(xa))]
        logits, crossed, classes = (torch.cat(p) for p in list(zip(*parts))[:3])
        d_norm = flat_norm(xa - x[active], norm)
        better = crossed & (d_norm < best[active])
        x_adv[active[better]] = xa[better]
        best[active[better]] = d_norm[better]
        done = crossed & (rounds_left[active] <= 0)
        if bool(done.all()):
            break
        keep = ~done
        w = torch.cat([p[3] for p in parts if p[3] is not None], dim=1)  # [C-1, B kept, ...]
        active, classes, crossed = active[keep], classes[keep], crossed[keep]
        x0, xk = x[active], xa[keep]
        z = logits[keep].gather(1, classes)  # [B, C], z[:, 0] = z_y
        f = (z[:, 1:] - z[:, :1]).T  # [C-1, B], negative while not adversarial
        # A DeepFool step goes from the current point to the linearised boundary f + w . s = 0. A crossed
        # sample is projected instead: from the clean point onto the tangent hyperplane w . (x' - x0) = w . r - f
        # of the class it crossed to (the highest other logit, candidate 0). Directions blocked by the box
        # at the point a step starts from are dropped.
        w = box_blocked(w, torch.where(per_sample(crossed, x0), x0, xk)[None])
        w_norm = w.flatten(2).norm(p=dual(norm), dim=2).clamp_min(1e-12)  # [C-1, B]
        value = f.abs() + 1e-4
        if crossed.any():  # only with projections: plain DeepFool has dropped its crossed samples
            tangent = (w * (xk - x0)).flatten(2).sum(2) - f
            value = torch.where(crossed, tangent.clamp_min(0), value)
        k = torch.where(crossed, 0, (value / w_norm).argmin(0))
        rows = torch.arange(active.numel(), device=x.device)
        wk, vk, nk = w[k, rows], value[k, rows], w_norm[k, rows]
        step = per_sample(vk / nk, wk) * wk.sign() if math.isinf(norm) else per_sample(vk / nk**2, wk) * wk
        r_tot[active] = torch.where(per_sample(crossed, step), step, r_tot[active] + step)
        rounds_left[active[crossed]] -= 1
    return x_adv, torch.isfinite(best)


def _linearised(model, xa, ya, last_round, candidates):
    """One chunk of a DeepFool step: (logits, crossed, the candidate classes [B, C] with y first, and the gradients
    of z_k - z_y [C-1, B', ...] for the B' samples not done (crossed in their last round), None if there are none).
    The logit differences are differentiated directly: C - 1 backward passes, not C."""
    xa = xa.detach().requires_grad_(True)
    logits = model(xa)
    out = logits.detach()
    crossed = is_adversarial(out, ya)
    classes = _candidate_classes(out, ya, candidates)
    keep = ~(crossed & last_round)
    if not keep.any():
        return out, crossed, classes, None
    c = classes.shape[1]
    grad_out = torch.zeros(c - 1, *logits.shape, device=xa.device, dtype=logits.dtype)
    grad_out.scatter_(2, classes[:, 1:].T[:, :, None], 1.0)
    grad_out.scatter_(2, classes[None, :, :1].expand(c - 1, -1, -1), -1.0)
    return out, crossed, classes, _vjps(logits, xa, grad_out)[:, keep]


SUPERDEEPFOOL_PROJECTIONS = 2
"""Projection rounds: on the MNIST CNN one round left the median norm 9% above three rounds, two rounds 2%,
at two thirds of three rounds' cost."""


def deepfool_search(model, x, y, norm, steps):
    """The `deepfool` search: candidate points and whether each was found."""
    return deepfool(model, x, y, norm=norm, **({} if steps is None else {"steps": steps}))


def superdeepfool_search(model, x, y, norm, steps):
    """The `superdeepfool` search: DeepFool with SUPERDEEPFOOL_PROJECTIONS projection rounds."""
    return deepfool(model, x, y, norm=norm, projections=SUPERDEEPFOOL_PROJECTIONS,
                    **({} if steps is None else {"steps": steps}))
