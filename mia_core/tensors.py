"""Small tensor helpers shared by the searches, the label-only search and PGD: per-sample norms, broadcasting
a per-sample value over an input batch, logit margins, and the [0, 1] box."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch


def flat_norm(d: torch.Tensor, p: float) -> torch.Tensor:
    """||d_i||_p of every sample of a batch [B, ...] -> [B]."""
    return d.flatten(1).norm(p=p, dim=1)


def dual(p: float) -> float:
    """The dual exponent q of p (1/p + 1/q = 1): 1 for L-inf, 2 for L2."""
    return 1.0 if math.isinf(p) else p / (p - 1.0)


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector [B] viewed as [B, 1, ..., 1] to broadcast over a batch shaped like `like`."""
    return v.view(-1, *([1] * (like.ndim - 1)))


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{k != y} z_k: positive while the prediction is still y."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -torch.inf).amax(1)
    return true - other


def verdict_tolerance(logits: torch.Tensor) -> torch.Tensor:
    """The logit margin a verdict keeps, so that it survives float noise between batch compositions."""
    return 2e-6 * (1.0 + logits.detach().abs().amax(1))


def is_adversarial(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Clearly adversarial: the margin is below minus the verdict tolerance."""
    return margin(logits, y) < -verdict_tolerance(logits)


@torch.no_grad()
def signed_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Negative exactly when `is_adversarial` says so."""
    return margin(logits, y) + verdict_tolerance(logits)


def box_blocked(w: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Zero the components of step directions `w` that would push a pixel of `at` (broadcast) out of [0, 1]."""
    return torch.where(((at <= 0) & (w < 0)) | ((at >= 1) & (w > 0)), 0.0, w)


def l2_project(d: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale each sample of d into the L2 ball of radius eps."""
    n = flat_norm(d, 2.0).clamp_min(1e-12)
    return d * per_sample((eps / n).clamp(max=1.0), d)


@contextlib.contextmanager
def strict_float32() -> Iterator[None]:
    """Disable TF32 in cuDNN convolutions and matmuls for the duration (PyTorch enables it for convolutions
    by default on Ampere and later). Under TF32 a point on the boundary can change side between two batch
    compositions, so verdicts would not survive a re-check; in strict float32 they do."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights live (its first parameter or buffer; the CPU for a model with neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")
