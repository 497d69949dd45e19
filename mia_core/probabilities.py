"""The model's outputs as an attacker sees them: precise log-probabilities and API output masking."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .training import predict_logits

OUTPUT_MASKS: dict[str, str] = {
    "none": "the full probability vector",
    "label": "the top-1 label only",
    "round2": "probabilities rounded to 2 decimals",
}


def precise_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log p_k = -softplus(logsumexp_{j != k}(z_j - z_k)), in float64.

    Unlike z_k - logsumexp(z), this keeps tiny losses distinct on a saturated model (log p_y of -1e-18
    and -1e-22 do not both round to 0), so confident members still rank by their loss.
    """
    z = logits.double()
    diff = z[:, None, :] - z[:, :, None]  # [N, k, j] = z_j - z_k
    diff.diagonal(dim1=1, dim2=2).fill_(-torch.inf)
    return -torch.nn.functional.softplus(torch.logsumexp(diff, dim=2))


def log_probabilities(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> np.ndarray:
    """Precise log-softmax outputs [N, K] in float64 (see precise_log_softmax)."""
    logits = predict_logits(model, x)
    return torch.cat([precise_log_softmax(logits[i : i + batch_size]) for i in range(0, len(logits), batch_size)]
                     ).cpu().numpy() if len(logits) else np.zeros((0, 0))


def mask_log_probs(logp: np.ndarray, mode: str) -> np.ndarray:
    """What an attacker sees through an API that masks its outputs (see OUTPUT_MASKS), as log-probabilities."""
    if mode == "none":
        return logp
    k = logp.shape[-1]
    if mode == "label":
        p = np.full(logp.shape, 1e-6 / (k - 1))
        np.put_along_axis(p, logp.argmax(-1)[..., None], 1 - 1e-6, axis=-1)
    elif mode == "round2":
        p = np.maximum(np.round(np.exp(logp), 2), 1e-4)
        p = p / p.sum(-1, keepdims=True)
    else:
        raise ValueError(f"Unknown output mask '{mode}'. Choose one of {', '.join(OUTPUT_MASKS)}.")
    return np.log(p)
