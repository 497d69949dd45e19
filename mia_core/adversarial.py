"""Projected gradient descent (Madry et al., ICLR 2018): adversarial examples in an L-inf or L2 ball, used by
adversarial training, robust accuracy and the I_A attack."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .models import gradient_slices, logits_in_rows, search_model
from .tensors import l2_project


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy (or `loss_fn(logits)`) within an L-inf or L2 ball of
    radius eps around x, clipped to [0, 1] (Madry et al., ICLR 2018). Step size 2.5 eps / steps by default."""
    step_size = 2.5 * eps / steps if step_size is None else step_size
    was_training = model.training
    model.eval()
    delta = torch.zeros_like(x)
    if random_start:
        delta = (torch.rand_like(x) * 2 - 1) * eps if norm == "linf" else l2_project(torch.randn_like(x) * eps, eps)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        if loss_fn is None:  # the summed cross-entropy: a sum over samples, differentiated chunk by chunk
            g = torch.cat([_loss_gradient(model, x[r], y[r], delta[r], None) for r in gradient_slices(model, len(x))])
        else:
            g = _loss_gradient(model, x, y, delta, loss_fn)
        with torch.no_grad():
            if norm == "linf":
                delta = (delta + step_size * g.sign()).clamp(-eps, eps)
            else:
                gn = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
                delta = l2_project(delta + step_size * g / gn, eps)
            delta = (x + delta).clamp(0, 1) - x
    model.train(was_training)
    return (x + delta).detach()


def _loss_gradient(model, x, y, delta, loss_fn) -> torch.Tensor:
    """The gradient with respect to delta of the summed cross-entropy (or `loss_fn(logits)`) at x + delta."""
    delta = delta.detach().requires_grad_(True)
    logits = model(x + delta)
    loss = loss_fn(logits) if loss_fn else F.cross_entropy(logits, y, reduction="sum")
    return torch.autograd.grad(loss, delta)[0]


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
                    steps: int = 20, batch_size: int = 512, seed: int | None = None) -> float:
    """Accuracy under a PGD attack of radius eps (an upper bound of the true robust accuracy). With `seed`, PGD's
    random starts come from that seed, not from whatever state the global generator was left in. PGD steps on
    the model's search copy (channels-last on the CPU, `models.search_model`); the verdicts are the model's own,
    in evaluation mode."""
    fast = search_model(model, x)
    was_training = model.training
    model.eval()
    correct = 0
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for i in range(0, len(x), batch_size):
            xa = pgd(fast, x[i : i + batch_size], y[i : i + batch_size], eps=eps, norm=norm, steps=steps)
            with torch.no_grad():
                correct += int((logits_in_rows(model, xa).argmax(1) == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(x), 1)
