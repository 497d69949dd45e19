"""The input box: the range [low, high] every input coordinate lives in (the same for every coordinate).

Built-in datasets live in [0, 1]. A user's model may expect any box (pixels in 0..255, standardised
features in [-3, 3], ...). The searches run in the unit box on a view of the model composed with the affine
map u -> low + width * u; since that map scales every L2 and L-inf norm by `width` exactly, a minimal
perturbation found there is the minimal perturbation in the user's box, and every distance is re-measured
and every flip re-verified in the user's own space (`minimal_perturbation`, `label_only_distance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


CHECK_VALUES = 2**20
"""Values `Box.check` reads at a time (4 MB of float32)."""


@dataclass(frozen=True)
class Box:
    """Every input coordinate lies in [low, high]."""

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or not self.low < self.high:
            raise ValueError(f"bounds must be finite with low < high, got ({self.low}, {self.high}).")

    @classmethod
    def of(cls, bounds: "Box | tuple[float, float] | None") -> "Box":
        if bounds is None:
            return cls()
        if isinstance(bounds, Box):
            return bounds
        lo, hi = bounds
        return cls(float(lo), float(hi))

    @property
    def width(self) -> float:
        return self.high - self.low

    @property
    def is_unit(self) -> bool:
        return self.low == 0.0 and self.high == 1.0

    def check(self, x: torch.Tensor, what: str = "Inputs") -> None:
        """Raise ValueError when some coordinate of x lies outside the box or is not finite. Read in slices of
        at most CHECK_VALUES values: checking a whole group at once held about 5 bytes a value of temporaries
        (161 MB for 8,000 CIFAR-sized images), the peak of an audit's label-only stage."""
        if not x.numel():
            return
        rows = x.reshape(1) if x.ndim == 0 else x
        lows, highs = [], []
        for part in rows.split(max(1, CHECK_VALUES // max(rows[0].numel(), 1))):
            if not torch.isfinite(part).all():
                raise ValueError(f"{what} contain NaN or infinite values.")
            lows.append(part.min()), highs.append(part.max())
        low, high = torch.stack(lows).min(), torch.stack(highs).max()  # compared in x's own precision, as before
        if low < self.low or high > self.high:
            raise ValueError(
                f"{what} must lie in [{self.low:g}, {self.high:g}] (the bounds), but range over "
                f"[{float(low):g}, {float(high):g}]; pass the box your model's inputs live in as bounds."
                + (" Normalisation belongs inside the model." if self.is_unit else ""))

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.low) / self.width).clamp(0, 1)

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """low + width * u, the map `UnitBoxView` applies (u is kept in [0, 1] by every search)."""
        return self.low + self.width * u


class UnitBoxView(nn.Module):
    """model(low + width * u) for u in [0, 1]: the model as seen by a search that works in the unit box."""

    def __init__(self, model: nn.Module, box: Box):
        super().__init__()
        self.model, self.box = model, box

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.model(self.box.low + self.box.width * u)


def unit_view(model: nn.Module, x: torch.Tensor, box: Box) -> tuple[nn.Module, torch.Tensor]:
    """(model, x) unchanged for the unit box, else the model's unit-box view and x mapped into [0, 1]."""
    if box.is_unit:
        return model, x
    return UnitBoxView(model, box), box.to_unit(x)


@torch.no_grad()
def back_in_box(model: nn.Module, x: torch.Tensor, u_adv: torch.Tensor, y: torch.Tensor, zero: torch.Tensor,
                box: Box, norm: float, batch_size: int = 512):
    """Map unit-box adversarial points back to the user's box and verify them there with the caller's model:
    x_adv = low + width * u_adv (x itself where the distance was 0), a success is a changed prediction and its
    distance the true ||x_adv - x||_p in float64 (+inf and x_adv = x otherwise).
    Returns (distances, success, x_adv, predictions at x_adv) as tensors."""
    from .distances.refine import verified

    parts = []
    for s in range(0, len(x), batch_size):
        xb, yb = x[s : s + batch_size], y[s : s + batch_size]
        xa = torch.where(zero[s : s + batch_size].view(-1, *([1] * (x.ndim - 1))), xb,
                         box.from_unit(u_adv[s : s + batch_size]).clamp(box.low, box.high))
        parts.append(verified(model, xb, xa, yb, norm))
    if not parts:
        return (torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool), x.clone(),
                torch.zeros(0, dtype=torch.long))
    return tuple(torch.cat(p) for p in zip(*parts))
