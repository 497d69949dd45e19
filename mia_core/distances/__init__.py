"""Minimal adversarial perturbations: each sample's L2 / L-inf distance to the decision boundary.

The norm of the smallest input change that flips a prediction is a membership signal: members tend to
sit farther from the boundary (Li & Zhang, CCS 2021; Choquette-Choo et al., ICML 2021; Kadoche et al. 2022).

Three searches (the SEARCHES registry), fastest to tightest, one file each, all batched on the model's device:
  * `deepfool`       (deepfool.py) Moosavi-Dezfooli et al., CVPR 2016, with box-aware steps.
  * `superdeepfool`  (deepfool.py) Abdollahpourrostam, Abroshan & Moosavi-Dezfooli, NeurIPS 2024.
  * `fmn`            (fmn.py) Pintor et al., NeurIPS 2021, started from the SuperDeepFool point.
A search only proposes candidates. `minimal_perturbation` then pushes each to the adversarial side, pulls it
back to the boundary and verifies it with the caller's model (refine.py), so no search can skip the check: a
reported success really flips the prediction, stays in [0, 1], and carries its true norm ||x_adv - x||.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..box import Box, UnitBoxView, back_in_box
from ..models import logits_in_rows, search_model
from ..registry import Registry
from ..tensors import model_device, signed_margin, strict_float32
from .deepfool import SUPERDEEPFOOL_PROJECTIONS, deepfool, deepfool_search, superdeepfool_search
from .fmn import fmn, fmn_search
from .refine import boundary_bisection, push_out, refined, verified

Progress = Callable[[str, float], None]
SearchFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, float, "int | None"], "tuple[torch.Tensor, torch.Tensor]"]

__all__ = ["Perturbation", "SearchSpec", "SEARCHES", "PRECISIONS", "minimal_perturbation", "deepfool",
           "fmn", "boundary_bisection", "strict_float32", "search_precision", "SUPERDEEPFOOL_PROJECTIONS"]


@dataclass(frozen=True)
class SearchSpec:
    """A minimal-perturbation search: fn(model, x, y, norm, steps) -> (candidate points, found)."""

    name: str
    search: SearchFn
    help: str


SEARCHES: Registry[SearchSpec] = Registry("distance search")
SEARCHES.register(SearchSpec("deepfool", deepfool_search,
                             "fastest: iterated linearisation of the nearest boundaries (Moosavi-Dezfooli et al. 2016)"))
SEARCHES.register(SearchSpec("superdeepfool", superdeepfool_search,
                             "tighter: DeepFool with boundary projections (Abdollahpourrostam et al. 2024)"))
SEARCHES.register(SearchSpec("fmn", fmn_search,
                             "tightest: Fast Minimum-Norm (Pintor et al. 2021) from the SuperDeepFool point"))

PRECISIONS = ("fp32", "tf32", "bf16")

SEARCH_BATCH_BYTES = 32 * 2**20
"""The most one of a search batch's per-sample tensors may take (inputs, candidates, gradients, best points: a
dozen are alive at once). 512 samples of up to 16,384 values (64x64 RGB) run as before; 224x224 RGB ones 55 at a
time (512 of them would hold about 300 MB a tensor, several GB in all)."""


def search_batch(shape: tuple[int, ...], batch_size: int) -> int:
    """Samples a white-box search batch holds: `batch_size`, or fewer where SEARCH_BATCH_BYTES says so."""
    return max(1, min(batch_size, SEARCH_BATCH_BYTES // max(4 * math.prod(shape), 1)))


@dataclass(frozen=True)
class Perturbation:
    """Result of `minimal_perturbation`, one entry per input sample."""

    norms: np.ndarray  # [N] float64, ||x_adv - x||_p; +inf where none was found; 0 if already misclassified
    success: np.ndarray  # [N] bool, the prediction at x_adv differs from `labels`
    x_adv: torch.Tensor  # like x; equals x where no adversarial example was found
    labels: np.ndarray  # [N] the label each sample was attacked from (prediction or given label)
    adv_labels: np.ndarray  # [N] the model's prediction at x_adv
    norm: float  # 2.0 or math.inf
    method: str


@contextlib.contextmanager
def search_precision(mode: str, device: torch.device) -> Iterator[None]:
    """Arithmetic for the search phase only: strict fp32, TF32 matmuls and convolutions, or bf16 autocast.
    Whatever it is, the candidates are re-checked, pulled to the boundary and verified in strict fp32."""
    if mode == "fp32":
        with strict_float32():
            yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        if mode == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def minimal_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    *,
    norm: float = 2.0,
    labels: torch.Tensor | np.ndarray | None = None,
    method: str = "fmn",
    steps: int | None = None,
    batch_size: int = 512,
    refine_steps: int = 8,
    precision: str = "tf32",
    progress: Progress | None = None,
    bounds: Box | tuple[float, float] | None = None,
    out: np.ndarray | None = None,
) -> Perturbation:
    """Per-sample minimal L2 / L-inf perturbation that changes the model's prediction.

    Relative to the model's own prediction unless `labels` is given; then a misclassified sample has
    distance 0 (x_adv = x). `method` names a search in SEARCHES. Runs on the model's device in batches of
    `batch_size`, fewer for large inputs (`search_batch`: memory stays bounded), pulls each found point back to
    the boundary (`boundary_bisection`) and verifies it with the caller's model (`refine.verified`).
    `precision` sets the search arithmetic ('fp32', 'tf32' or 'bf16'; TF32 and bf16 only speed up GPUs);
    the bisection and the verification always run in strict fp32.
    Inputs must lie in `bounds` ((low, high), the same for every coordinate; [0, 1] by default). Other boxes are
    searched in the unit box through the model's affine view (box.py) and re-verified in the caller's space,
    where the norms are measured, batch by batch.
    `out`: a writable float32 array shaped like `x` (a memory-mapped `.npy` file, say) that receives each
    batch's adversarial examples as the batch is verified; the result's `x_adv` is then `out` itself (on the CPU),
    so the search holds one batch of them, not the whole set twice over.
    """
    if norm not in (2.0, math.inf):
        raise ValueError(f"norm must be 2.0 or math.inf, got {norm}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'.")
    if out is not None and (tuple(out.shape) != tuple(x.shape) or out.dtype != np.float32):
        raise ValueError(f"out must be a float32 array of shape {tuple(x.shape)}, got {out.dtype} "
                         f"{tuple(out.shape)}.")
    search = SEARCHES.get(method).search
    box = Box.of(bounds)
    box.check(x)
    n = x.shape[0]
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}.")
    batch_size = search_batch(tuple(x.shape[1:]), batch_size)  # the search's batches and their re-verification
    searched = model if box.is_unit else UnitBoxView(model, box)
    device = model_device(model)
    was_training = model.training
    searched.eval()  # and so the model
    fast = search_model(searched, x)  # what the search queries; the verdicts come from `searched` and `model`
    sink = _Batches(x, out)
    try:
        with strict_float32():
            for start in range(0, n, batch_size):
                xb = x[start : start + batch_size].to(device, torch.float32)
                yb = None if labels is None else labels[start : start + batch_size].to(device)
                if box.is_unit:
                    sink.add(start, *_search_batch(searched, fast, xb, yb, norm, search, steps, refine_steps, precision))
                else:  # searched in the unit box, re-verified and measured in the caller's
                    y, dist, _, u_adv, _ = _search_batch(searched, fast, box.to_unit(xb), yb, norm, search, steps,
                                                         refine_steps, precision)
                    sink.add(start, y, *back_in_box(model, xb, u_adv, y, dist == 0, box, norm, batch_size))
                if progress:
                    progress(f"distances ({method}, L{'inf' if math.isinf(norm) else 2})",
                             min(1.0, (start + batch_size) / n))
    finally:
        model.train(was_training)
    return sink.perturbation(norm, method)


class _Batches:
    """A search's verified batches, gathered into one Perturbation: the adversarial examples written into `out`
    as they come where it is given, else kept on the device and joined at the end."""

    def __init__(self, x: torch.Tensor, out: np.ndarray | None):
        self.x, self.out, self.parts = x, out, []

    def add(self, start: int, y, dist, success, x_adv, adv_pred) -> None:
        if self.out is not None:
            self.out[start : start + len(x_adv)] = x_adv.cpu().numpy()
            x_adv = None
        self.parts.append((y, dist, success, adv_pred, x_adv))

    def perturbation(self, norm: float, method: str) -> Perturbation:
        if not self.parts:
            empty = np.zeros(0)
            x_adv = self.x.clone() if self.out is None else torch.from_numpy(self.out)
            return Perturbation(empty, empty.astype(bool), x_adv, empty.astype(int), empty.astype(int), norm, method)
        y, dist, success, adv_pred = (torch.cat(p) for p in list(zip(*self.parts))[:4])
        if self.out is None:
            x_adv = torch.cat([p[4] for p in self.parts]).to(self.x.device)
        else:
            x_adv = torch.from_numpy(self.out)
        return Perturbation(norms=dist.cpu().numpy(), success=success.cpu().numpy(), x_adv=x_adv,
                            labels=y.cpu().numpy(), adv_labels=adv_pred.cpu().numpy(), norm=norm, method=method)


def _search_batch(model, fast, xb, labels, norm, search, steps, refine_steps, precision):
    """One batch: search on `fast` (`search_model`'s copy), push out, refine, and verify with `model` (in eval
    mode, strict fp32 outside the search). Returns (labels, distances, success, x_adv, predictions at x_adv)."""
    logits = logits_in_rows(model, xb)
    pred = logits.argmax(1)
    y = pred if labels is None else labels
    correct = pred == y
    x_adv = xb.clone()
    if correct.any():
        xs, ys = xb[correct], y[correct]
        with search_precision(precision, xb.device):
            cand, found = search(fast, xs, ys, norm, steps)
        cand, margins = push_out(fast, xs, ys, cand.float(), found)
        retry = margins >= 0
        if precision != "fp32" and retry.any():  # rare: search again in strict fp32
            cand_r, found_r = search(fast, xs[retry], ys[retry], norm, steps)
            with torch.no_grad():
                g_r = signed_margin(fast(cand_r), ys[retry])
            cand[retry], margins[retry] = cand_r, torch.where(found_r, g_r, torch.inf)
        x_adv[correct] = refined(fast, xs, ys, cand, margins < 0, refine_steps, margins,
                                 signed_margin(logits[correct], ys))
    return (y, *verified(model, xb, x_adv, y, norm))  # the verdict comes from the caller's model
