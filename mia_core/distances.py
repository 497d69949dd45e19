"""Minimal adversarial perturbations: each sample's L2 / L-inf distance to the decision boundary.

The norm of the smallest input change that flips a prediction is a membership signal: members tend to
sit farther from the boundary (Li & Zhang, CCS 2021; Choquette-Choo et al., ICML 2021; Kadoche et al. 2022).

Three searches, fastest to tightest, all batched on the model's device with finished samples leaving the batch:
  * `deepfool`       — Moosavi-Dezfooli et al., CVPR 2016: iterated linearisation of the nearest class
                       boundaries, with box-aware steps.
  * `superdeepfool`  — Abdollahpourrostam, Abroshan & Moosavi-Dezfooli, NeurIPS 2024: DeepFool that, once
                       across, projects its perturbation onto the boundary normal and goes again.
  * `fmn`            — Pintor et al., NeurIPS 2021 (Fast Minimum-Norm): a norm budget that shrinks while the
                       point is adversarial and grows while it is not, with projected normalised-gradient
                       steps. Here it starts from the SuperDeepFool point, so it is never looser than it.
Every candidate is then pulled back to the boundary by bisection along the segment x -> x_adv and
verified in one final forward pass: a reported success really flips the prediction, stays in [0, 1],
and carries its true norm ||x_adv - x||.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from .models import search_model

Progress = Callable[[str, float], None]


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


def _flat_norm(d: torch.Tensor, p: float) -> torch.Tensor:
    return d.flatten(1).norm(p=p, dim=1)


def _dual(p: float) -> float:
    return 1.0 if math.isinf(p) else p / (p - 1.0)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{k != y} z_k: positive while the prediction is still y."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -torch.inf).amax(1)
    return true - other


def _is_adversarial(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Adversarial with a tiny logit margin, so that the verdict survives float noise between batch sizes."""
    tol = 2e-6 * (1.0 + logits.detach().abs().amax(1))
    return _margin(logits, y) < -tol


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


def _box_blocked(w: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Zero the components of step directions `w` that would push a pixel of `at` (broadcast) out of [0, 1]."""
    return torch.where(((at <= 0) & (w < 0)) | ((at >= 1) & (w > 0)), 0.0, w)


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
        xa = (x[active] + (1 + overshoot) * r_tot[active]).clamp(0, 1).requires_grad_(True)
        logits = model(xa)
        ya = y[active]
        crossed = _is_adversarial(logits.detach(), ya)
        d_norm = _flat_norm(xa.detach() - x[active], norm)
        better = crossed & (d_norm < best[active])
        x_adv[active[better]] = xa.detach()[better]
        best[active[better]] = d_norm[better]
        done = crossed & (rounds_left[active] <= 0)
        if bool(done.all()):
            break
        classes = _candidate_classes(logits.detach(), ya, candidates if it == 0 else later_candidates)  # y first
        c = classes.shape[1]
        # logit differences z_k - z_y directly: C - 1 backward passes, not C
        grad_out = torch.zeros(c - 1, *logits.shape, device=x.device, dtype=logits.dtype)
        grad_out.scatter_(2, classes[:, 1:].T[:, :, None], 1.0)
        grad_out.scatter_(2, classes[None, :, :1].expand(c - 1, -1, -1), -1.0)
        w = _vjps(logits, xa, grad_out)  # [C-1, B, ...] = grad of z_k - z_y
        keep = ~done
        active, classes, w, crossed = active[keep], classes[keep], w[:, keep], crossed[keep]
        x0, xk = x[active], xa.detach()[keep]
        z = logits.detach()[keep].gather(1, classes)  # [B, C], z[:, 0] = z_y
        f = (z[:, 1:] - z[:, :1]).T  # [C-1, B], negative while not adversarial
        # A DeepFool step goes from the current point to the linearised boundary f + w . s = 0. A crossed
        # sample is projected instead: from the clean point onto the tangent hyperplane w . (x' - x0) = w . r - f
        # of the class it crossed to (the highest other logit, candidate 0). Directions blocked by the box
        # at the point a step starts from are dropped.
        w = _box_blocked(w, torch.where(_view(crossed, x0), x0, xk)[None])
        w_norm = w.flatten(2).norm(p=_dual(norm), dim=2).clamp_min(1e-12)  # [C-1, B]
        value = f.abs() + 1e-4
        if crossed.any():  # only with projections: plain DeepFool has dropped its crossed samples
            tangent = (w * (xk - x0)).flatten(2).sum(2) - f
            value = torch.where(crossed, tangent.clamp_min(0), value)
        k = torch.where(crossed, 0, (value / w_norm).argmin(0))
        rows = torch.arange(active.numel(), device=x.device)
        wk, vk, nk = w[k, rows], value[k, rows], w_norm[k, rows]
        step = _view(vk / nk, wk) * wk.sign() if math.isinf(norm) else _view(vk / nk**2, wk) * wk
        r_tot[active] = torch.where(_view(crossed, step), step, r_tot[active] + step)
        rounds_left[active[crossed]] -= 1
    return x_adv, torch.isfinite(best)


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
    q = _dual(norm)
    best_norm = torch.full((x.shape[0],), torch.inf, device=x.device)
    best_adv = x.clone()
    delta = torch.zeros_like(x)
    if init is not None:
        with torch.no_grad():  # a refined start sits at the verdict threshold: accept any flip, not only a clear one
            ok = _margin(model(init), y) < 0
        delta = torch.where(_view(ok, x), init - x, delta)
        best_norm = torch.where(ok, _flat_norm(delta, norm), best_norm)
        best_adv = torch.where(_view(ok, x), init, best_adv)
    eps = best_norm.clone()
    for i in range(steps):
        cos = (1 + math.cos(math.pi * i / steps)) / 2
        alpha = alpha_final + (alpha_init - alpha_final) * cos
        gamma = gamma_final + (gamma_init - gamma_final) * cos
        delta.requires_grad_(True)
        xa = x + delta
        logits = model(xa)
        m = _margin(logits, y)
        (grad,) = torch.autograd.grad(m.sum(), delta)
        delta = delta.detach()
        m = m.detach()
        # Directions that would leave the [0, 1] box are blocked: drop them, or the search stalls at the box.
        xa = xa.detach()
        grad = -_box_blocked(-grad, xa)  # FMN steps along -grad
        is_adv = _is_adversarial(logits.detach(), y)
        d_norm = _flat_norm(delta, norm)
        better = is_adv & (d_norm < best_norm)
        best_norm = torch.where(better, d_norm, best_norm)
        best_adv = torch.where(_view(better, x), xa, best_adv)
        g_dual = _flat_norm(grad, q).clamp_min(1e-12)
        never_found = torch.isinf(best_norm)
        eps = torch.where(
            is_adv,
            torch.minimum(eps, d_norm) * (1 - gamma),
            torch.where(never_found, d_norm + m.clamp_min(0) / g_dual, eps * (1 + gamma)),
        )
        g2 = _flat_norm(grad, 2.0).clamp_min(1e-12)
        delta = delta - _view(alpha / g2, grad) * grad
        if math.isinf(norm):
            delta = torch.maximum(torch.minimum(delta, _view(eps, delta)), -_view(eps, delta))
        else:
            scale = (eps / _flat_norm(delta, 2.0).clamp_min(1e-12)).clamp(max=1.0)
            delta = delta * _view(scale, delta)
        delta = (x + delta).clamp(0, 1) - x
    xa = x + delta
    with torch.no_grad():
        last_adv = _is_adversarial(model(xa), y) & (_flat_norm(delta, norm) < best_norm)
    best_adv = torch.where(_view(last_adv, x), xa, best_adv)
    return best_adv.detach(), torch.isfinite(best_norm) | last_adv


@torch.no_grad()
def _signed_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Negative exactly when `_is_adversarial` says so."""
    return _margin(logits, y) + 2e-6 * (1.0 + logits.abs().amax(1))


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
    g_hi = _signed_margin(model(x_adv), y) if margin_at_adv is None else margin_at_adv.clone()
    # searches end just past the boundary: bracket [0.9, 1] where 0.9 is still clean, else [0, 1]
    g_lo = _signed_margin(model(x + 0.9 * d), y)
    lo = torch.full_like(hi, 0.9)
    start_low = g_lo < 0
    if start_low.any():
        lo[start_low] = 0.0
        g_lo[start_low] = (_signed_margin(model(x[start_low]), y[start_low]) if margin_at_x is None
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
        g = _signed_margin(model(x[open_] + _view(t, d) * d[open_]), y[open_])
        adv = g < 0
        g_hi[open_] = torch.where(adv, g, torch.where(sd < 0, gh / 2, gh))
        g_lo[open_] = torch.where(~adv, g, torch.where(sd > 0, gl / 2, gl))
        hi[open_] = torch.where(adv, t, h)
        lo[open_] = torch.where(adv, lw, t)
        side[open_] = torch.where(adv, 1.0, -1.0)
    return x + _view(hi, d) * d


def _refined(model, x, y, cand, found, refine_steps, margins=None, clean_margins=None):
    out = x.clone()
    if found.any():
        out[found] = boundary_bisection(
            model, x[found], cand[found], y[found], steps=refine_steps,
            margin_at_adv=None if margins is None else margins[found],
            margin_at_x=None if clean_margins is None else clean_margins[found])
    return out


def _deepfool_search(model, x, y, norm, steps):
    return deepfool(model, x, y, norm=norm, **({} if steps is None else {"steps": steps}))


def _superdeepfool_search(model, x, y, norm, steps):
    return deepfool(model, x, y, norm=norm, projections=SUPERDEEPFOOL_PROJECTIONS,
                    **({} if steps is None else {"steps": steps}))


def _fmn_search(model, x, y, norm, steps):
    """FMN warm-started from the refined SuperDeepFool point, so it is never looser than SuperDeepFool."""
    cand, found = _superdeepfool_search(model, x, y, norm, None)
    start = _refined(model, x, y, cand, found, 8)
    return fmn(model, x, y, norm=norm, init=start, **({} if steps is None else {"steps": steps}))


SUPERDEEPFOOL_PROJECTIONS = 2
"""Projection rounds: on the MNIST CNN one round left the median norm 9% above three rounds, two rounds 2%,
at two thirds of three rounds' cost."""

METHODS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "deepfool": _deepfool_search, "superdeepfool": _superdeepfool_search, "fmn": _fmn_search,
}
"""Search name -> fn(model, x, y, norm, steps) returning (candidate points, found), fastest to tightest."""

PRECISIONS = ("fp32", "tf32", "bf16")


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


@torch.no_grad()
def _push_out(model, x, y, cand, found, factors=(1.01, 1.05, 1.2, 1.5, 2.0)):
    """Make candidates adversarial under strict fp32: extend x -> cand along its direction (clipped to
    the box) until the prediction flips. Returns (points, signed margin at each point: negative exactly
    where it is adversarial, +inf where there is no candidate), so the refinement needs no second pass."""
    g = torch.where(found, _signed_margin(model(cand), y), torch.inf)
    out = cand.clone()
    for f in factors:
        todo = found & (g >= 0)
        if not todo.any():
            break
        trial = (x[todo] + f * (cand[todo] - x[todo])).clamp(0, 1)
        g_trial = _signed_margin(model(trial), y[todo])
        ok = g_trial < 0
        idx = todo.nonzero().squeeze(1)
        out[idx[ok]] = trial[ok]
        g[idx[ok]] = g_trial[ok]
    return out, g


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
) -> Perturbation:
    """Per-sample minimal L2 / L-inf perturbation that changes the model's prediction.

    Relative to the model's own prediction unless `labels` is given; then a misclassified sample has
    distance 0 (x_adv = x). `method` is 'deepfool', 'superdeepfool' or 'fmn' (see METHODS). Runs on the
    model's device in batches of `batch_size` (memory stays bounded), pulls each found point back to the
    boundary (`boundary_bisection`) and verifies it with the caller's model.
    `precision` sets the search arithmetic ('fp32', 'tf32' or 'bf16'; TF32 and bf16 only speed up GPUs);
    the bisection and the verification always run in strict fp32. Inputs must lie in [0, 1].
    """
    if norm not in (2.0, math.inf):
        raise ValueError(f"norm must be 2.0 or math.inf, got {norm}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'.")
    if method not in METHODS:
        raise ValueError(f"Unknown method '{method}'. Choose one of {', '.join(METHODS)}.")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("Inputs must lie in [0, 1]; normalisation belongs inside the model.")
    with strict_float32():
        return _minimal_perturbation(model, x, norm, labels, method, steps, batch_size, refine_steps, precision,
                                     progress)


def _minimal_perturbation(model, x, norm, labels, method, steps, batch_size, refine_steps, precision,
                          progress) -> Perturbation:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = x.shape[0]
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}.")
    fast = search_model(model, x)
    out_adv, out_y, out_pred = [], [], []
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size].to(device, torch.float32)
        with torch.no_grad():
            logits = model(xb)
        pred = logits.argmax(1)
        y = pred if labels is None else labels[start : start + batch_size].to(device)
        correct = pred == y
        x_adv = xb.clone()
        if correct.any():
            xs, ys = xb[correct], y[correct]
            with search_precision(precision, device):
                cand, found = METHODS[method](fast, xs, ys, norm, steps)
            cand, margins = _push_out(fast, xs, ys, cand.float(), found)
            retry = margins >= 0
            if precision != "fp32" and retry.any():  # rare: search again in strict fp32
                cand_r, found_r = METHODS[method](fast, xs[retry], ys[retry], norm, steps)
                with torch.no_grad():
                    g_r = _signed_margin(fast(cand_r), ys[retry])
                cand[retry], margins[retry] = cand_r, torch.where(found_r, g_r, torch.inf)
            x_adv[correct] = _refined(fast, xs, ys, cand, margins < 0, refine_steps, margins,
                                      _signed_margin(logits[correct], ys))
        with torch.no_grad():  # the verdict comes from the caller's model itself
            adv_pred = model(x_adv).argmax(1)
        out_adv.append(x_adv)
        out_y.append(y)
        out_pred.append(adv_pred)
        if progress:
            progress(f"distances ({method}, L{'inf' if math.isinf(norm) else 2})", min(1.0, (start + batch_size) / n))
    model.train(was_training)
    if n == 0:
        empty = np.zeros(0)
        return Perturbation(empty, empty.astype(bool), x.clone(), empty.astype(int), empty.astype(int), norm, method)
    x_adv = torch.cat(out_adv)
    y_all = torch.cat(out_y)
    adv_pred = torch.cat(out_pred)
    success = adv_pred != y_all
    dist = _flat_norm((x_adv - x.to(device, torch.float32)).double(), norm)
    dist = torch.where(success, dist, torch.inf)
    x_adv = torch.where(_view(success, x_adv), x_adv, x.to(device, torch.float32))
    return Perturbation(
        norms=dist.cpu().numpy(),
        success=success.cpu().numpy(),
        x_adv=x_adv.to(x.device),
        labels=y_all.cpu().numpy(),
        adv_labels=adv_pred.cpu().numpy(),
        norm=norm,
        method=method,
    )
