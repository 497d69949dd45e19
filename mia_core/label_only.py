"""Label-only boundary distance: a batched decision-based search that sees only predicted labels.

Follows HopSkipJump (Chen, Jordan & Wainwright, S&P 2020): start from any misclassified point, walk it to
the boundary by binary search, estimate the boundary's normal from the labels of random probes around the
boundary point, step along it with a geometrically shrinking step, and binary-search back to the boundary.
With `probe_distribution="low-frequency"` the probes are drawn on a coarser grid and upsampled (QEBA's spatial
subspace, Li et al., CVPR 2020), which on 28x28 images finds ~19% shorter L2 distances in the same queries.
For the L-inf norm, `linf_search="rays"` follows RayS (Chen & Gu, KDD 2020) instead: the boundary radius
along sign directions, their blocks flipped at halving block sizes, a flip kept when one query at the current
radius says it does better. Both start, when the caller gives the attacker's own samples, from the closest
boundary point towards the nearest samples the model labels otherwise, as decision-based attacks start from an
image of another class (Brendel et al., ICLR 2018). With 400 queries these two find shorter distances than
0.4.0's noise-started HopSkipJump did with 1000 (measured in bench/label_only.py).
Every returned point was seen misclassified by a label query, so its norm is an upper bound of the true
minimal distance (the white-box search gives a tighter one on the same samples). Used as a membership score
by Choquette-Choo et al. (ICML 2021) and Li & Zhang (CCS 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .box import Box, UnitBoxView, back_in_box
from .models import is_convolutional, logits_in_rows, search_model
from .tensors import flat_norm as _dist
from .tensors import model_device
from .tensors import per_sample as _view


@dataclass(frozen=True)
class LabelOnlyResult:
    norms: np.ndarray  # [N], +inf where no misclassified point was found
    success: np.ndarray  # [N] bool
    x_adv: torch.Tensor
    queries: np.ndarray  # [N] label queries spent per sample, with its share of the starting pool's labels


CONV_ROWS_PER_CALL = 2048
"""Queries a convolutional network answers per forward pass. A probe round asks up to 256 samples x 128 probes
at once; on a 28x28 CNN of width 256 that was ~6.6 GB for one activation (8.5 GB server memory seen), now
bounded by this count (about 0.4 GB; on the CPU the search copy answers 128 of them at a time, models.RowChunks),
and by CONV_QUERY_BYTES of inputs a pass. Dense models answer a whole round in one pass, as before."""

CONV_QUERY_BYTES = 64 * 2**20
"""The most input a convolutional network is asked at once: 2,048 queries of up to 8,192 values (a 32x32 RGB image
has 3,072), 111 of a 224x224 RGB image (2,048 of them would be 1.2 GB of probes before the network's activations)."""


PROBE_ROUND_BYTES = 512 * 2**20
"""The most a HopSkipJump batch's probe directions may take ([samples, probes, *shape] float32, at the round's
largest probe count, 4x `probes`). 256 samples x 128 probes of a 32x32 RGB image take 402 MB and run as before; of
a 224x224 RGB one they would take 19.7 GB, so such inputs are searched a few samples at a time (`probe_batch`)."""


def probe_batch(shape: tuple[int, ...], probes: int, batch_size: int) -> int:
    """Samples a HopSkipJump batch may hold so that its largest probe round fits PROBE_ROUND_BYTES: `batch_size`
    (256) for inputs of up to 4,096 values at the default 32 probes (32x32 RGB, 64x64 grey), fewer for larger ones
    (at least one)."""
    per_sample = 4 * probes * math.prod(shape) * 4
    return max(1, min(batch_size, PROBE_ROUND_BYTES // max(per_sample, 1)))


PROBE_DISTRIBUTIONS = ("low-frequency", "gaussian")

HOPSKIPJUMP_SEARCH_STEPS = 12
RAYS_SEARCH_STEPS = 8
"""Binary-search steps a boundary point: HopSkipJump's (towards the start and after each step) and RayS's radius
search. RayS spends most of its queries on radii; with 8 steps (each radius known to 0.4%) instead of 12 it
makes more block flips of the same budget, and its medians were 1-6% shorter at 400 queries (digits MLP,
mnist5k CNN; bench/label_only.py)."""


def _check_probe_distribution(distribution: str) -> None:
    if distribution not in PROBE_DISTRIBUTIONS:
        raise ValueError(f"unknown probe distribution '{distribution}'; choose one of {PROBE_DISTRIBUTIONS}.")


def low_frequency_factor(shape: tuple[int, ...]) -> int:
    """How much coarser the grid of low-frequency probes is than an input of `shape` (C, H, W): a side of 14
    pixels or more per step, up to 4 (28x28 -> 14x14, 224x224 -> 56x56); 1 (full-resolution Gaussian probes)
    for smaller images and for inputs that are not images."""
    if len(shape) != 3:
        return 1
    return max(1, min(4, min(shape[1:]) // 14))


def probe_directions(n: int, k: int, shape: tuple[int, ...], gen: torch.Generator,
                     distribution: str = "gaussian") -> torch.Tensor:
    """`k` random probe directions for each of `n` samples, [n, k, *shape] (not normalised).
    gaussian: i.i.d. standard normal, as HopSkipJump (Chen et al., S&P 2020). low-frequency: standard normal on a
    grid `low_frequency_factor(shape)` times coarser, bilinearly upsampled, so every probe lies in the image's
    low-frequency subspace, where the boundary's normal of an image classifier mostly lies (QEBA, Li et al., CVPR
    2020); Gaussian where that factor is 1. Drawn on the CPU from `gen`, so a seed gives the same probes
    everywhere."""
    _check_probe_distribution(distribution)
    f = low_frequency_factor(shape) if distribution == "low-frequency" else 1
    if f == 1:
        return torch.randn((n, k, *shape), generator=gen)
    c, h, w = shape
    coarse = torch.randn((n * k, c, -(-h // f), -(-w // f)), generator=gen)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).view(n, k, *shape)


class _Oracle:
    """The model as a label-only oracle that counts queries per sample."""

    def __init__(self, model: nn.Module, n: int, device, shape: tuple[int, ...]):
        self.model, self.count = model, torch.zeros(n, dtype=torch.long, device=device)
        size = 4 * math.prod(shape)
        self.rows = max(1, min(CONV_ROWS_PER_CALL, CONV_QUERY_BYTES // size)) if is_convolutional(model) else None

    @torch.no_grad()
    def labels(self, x: torch.Tensor) -> torch.Tensor:
        if not len(x):  # an empty batch is not asked: some models (attention reshapes) cannot take one
            return torch.zeros(0, dtype=torch.long, device=x.device)
        rows = self.rows or len(x)
        return torch.cat([self.model(x[i : i + rows]).argmax(1) for i in range(0, len(x), max(rows, 1))])

    @torch.no_grad()
    def is_adversarial(self, x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        if not len(x):
            return torch.zeros(0, dtype=torch.bool, device=x.device)
        self.count.index_add_(0, owner, torch.ones_like(owner))
        if self.rows is None or len(x) <= self.rows:
            return self.model(x).argmax(1) != y
        return torch.cat([self.model(x[i : i + self.rows]).argmax(1) for i in range(0, len(x), self.rows)]) != y


def _towards(x, xa, t, p):
    """A point between x (t=0) and xa (t=1): along the segment (L2) or by clipping the difference (L-inf)."""
    d = xa - x
    if math.isinf(p):
        lim = _view(t * _dist(d, p), d)
        return x + torch.maximum(torch.minimum(d, lim), -lim)
    return x + _view(t, d) * d


def _binary_search(oracle, x, xa, y, owner, p, steps):
    lo = torch.zeros(len(x), device=x.device)
    hi = torch.ones(len(x), device=x.device)
    for _ in range(steps):
        mid = (lo + hi) / 2
        adv = oracle.is_adversarial(_towards(x, xa, mid, p), y, owner)
        hi, lo = torch.where(adv, mid, hi), torch.where(adv, lo, mid)
    return _towards(x, xa, hi, p)


def label_only_distance(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | np.ndarray,
    *,
    norm: float = 2.0,
    max_queries: int = 1000,
    probes: int = 32,
    search_steps: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    bounds: Box | tuple[float, float] | None = None,
    progress: Callable[[float], None] | None = None,
    start_pool: torch.Tensor | None = None,
    linf_search: str = "hopskipjump",
    probe_distribution: str = "gaussian",
    keep_points: bool = True,
) -> LabelOnlyResult:
    """Per-sample distance to the boundary from label queries only, within `max_queries` queries a sample.

    Relative to the true labels `y`: a sample already misclassified has distance 0 and spends one query.
    Inputs lie in `bounds` ([0, 1] by default); another box is searched through the model's unit-box view
    (box.py) with the same queries, and the points are re-verified and the norms measured in the caller's box.
    `start_pool`: the attacker's own samples (any labels; each label costs one query, shared by all samples);
    the search starts from the closest boundary point towards the 3 nearest pool samples labelled otherwise
    (RayS: from the sign direction towards the nearest), and from noise where there is none.
    `linf_search`: "hopskipjump" or "rays" for the L-inf norm (L2 is always HopSkipJump).
    `probe_distribution`: HopSkipJump's probes, "gaussian" or "low-frequency" (see `probe_directions`).
    `search_steps`: binary-search steps a boundary point (default: HOPSKIPJUMP_SEARCH_STEPS, RAYS_SEARCH_STEPS).
    `keep_points`: False returns an empty `x_adv` and holds no batch's points past its verification (a caller
    that reads only the distances keeps memory to a batch, not the data set).
    """
    if norm not in (2.0, math.inf):
        raise ValueError(f"norm must be 2.0 or math.inf, got {norm}.")
    _check_probe_distribution(probe_distribution)
    box = Box.of(bounds)
    box.check(x)
    searched = model if box.is_unit else UnitBoxView(model, box)  # the search works in the unit box
    device = model_device(model)
    was_training = model.training
    searched.eval()  # and so the model
    gen = torch.Generator(device="cpu").manual_seed(seed)
    y_all = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).to(device)
    norms, succ, advs, queries = [], [], [], []
    oracle_model = search_model(searched, x)  # queried during the search; the final verdicts use `model`
    pool = None
    if start_pool is not None and len(start_pool):
        points = (start_pool if box.is_unit else box.to_unit(start_pool)).to(device, torch.float32)
        labels = _Oracle(oracle_model, 1, device, tuple(x.shape[1:])).labels(points)
        pool = (points, labels)
    rays = math.isinf(norm) and linf_search == "rays"
    search_size = batch_size if rays else probe_batch(tuple(x.shape[1:]), probes, batch_size)
    in_box = None if box.is_unit else _BackInBox(model, x, y_all, box, norm, batch_size)
    try:
        for s in range(0, len(x), search_size):
            xb = x[s : s + search_size]
            xb = (xb if box.is_unit else box.to_unit(xb)).to(device, torch.float32)
            yb = y_all[s : s + search_size]
            done = s / max(len(x), 1)
            share = len(xb) / max(len(x), 1)
            report = None if progress is None else (lambda spent, done=done, share=share: progress(done + share * spent))
            if rays:
                r = _ray_search_batch(searched, oracle_model, xb, yb, max_queries, search_steps or RAYS_SEARCH_STEPS,
                                      pool, report)
            else:
                r = _search_batch(searched, oracle_model, xb, yb, norm, max_queries, probes,
                                  search_steps or HOPSKIPJUMP_SEARCH_STEPS, gen, report, pool, probe_distribution)
            queries.append(r[3])
            if in_box is None:
                norms.append(r[0]), succ.append(r[1]), advs.append(r[2] if keep_points else _none_of(r[2]))
            else:  # re-verified and measured in the caller's box
                if (group := in_box.add(r[2], r[0] == 0, last=s + search_size >= len(x))) is not None:
                    dist, success, x_adv = group
                    norms.append(dist), succ.append(success), advs.append(x_adv if keep_points else _none_of(x_adv))
    finally:
        model.train(was_training)
    spent = np.concatenate(queries).astype(np.float64) if queries else np.zeros(0)
    if pool is not None:  # the pool's labels were asked once for all samples: each pays its share
        spent += len(pool[0]) / max(len(x), 1)
    if not norms:
        return LabelOnlyResult(np.zeros(0), np.zeros(0, bool), x.clone() if keep_points else x[:0].clone(), spent)
    x_adv = torch.cat(advs).to(x.device)
    return LabelOnlyResult(np.concatenate(norms), np.concatenate(succ), x_adv, spent)


def _none_of(points: torch.Tensor) -> torch.Tensor:
    """An empty tensor of `points`' kind that does not share (and so keep alive) their storage."""
    return points.new_empty((0, *points.shape[1:]))


class _BackInBox:
    """Maps a unit-box search's points back to the caller's box and verifies them there (`back_in_box`), in the
    same groups of `size` samples whatever the search's own batches: the model's verdict on a point right at the
    boundary can depend on which points share its pass, so the groups are those of one call over all samples."""

    def __init__(self, model, x, y, box, norm, size):
        self.model, self.x, self.y, self.box, self.norm, self.size = model, x, y, box, norm, size
        self.done, self.pending, self.zero = 0, [], []

    def add(self, u_adv: torch.Tensor, zero: np.ndarray, last: bool):
        """Take a search batch's points; return (distances, success, x_adv) of the groups it completes, if any."""
        self.pending.append(u_adv)
        self.zero.append(torch.as_tensor(zero))
        waiting = sum(len(u) for u in self.pending)
        take = waiting if last else waiting // self.size * self.size
        if take == 0:
            return None
        u, zero_all = torch.cat(self.pending), torch.cat(self.zero)
        self.pending, self.zero = [u[take:]], [zero_all[take:]]
        lo, dev = self.done, u.device
        self.done += take
        dist, success, x_adv, _ = back_in_box(
            self.model, self.x[lo : lo + take].to(dev, torch.float32), u[:take], self.y[lo : lo + take],
            zero_all[:take].to(dev), self.box, self.norm, self.size)
        return dist.cpu().numpy(), success.cpu().numpy(), x_adv


def _nearest_start(oracle, x, y, pool, p, steps, todo, k=3):
    """The closest boundary point on the segments from each x to its `k` nearest pool samples that the model
    labels other than y (pool = (points, their labels), queried once by the caller): ([B, ...], found [B])."""
    points, labels = pool
    d = torch.cdist(x.flatten(1), points.flatten(1), p=p)
    d[labels[None, :] == y[:, None]] = torch.inf
    d[~todo] = torch.inf
    k = min(k, len(points))
    dk, ik = d.topk(k, dim=1, largest=False)
    everyone = torch.arange(len(x), device=x.device)
    best, best_norm = x.clone(), torch.full((len(x),), torch.inf, device=x.device)
    for j in range(k):
        ok = torch.isfinite(dk[:, j])
        if not ok.any():
            break
        b = _binary_search(oracle, x[ok], points[ik[ok, j]], y[ok], everyone[ok], p, steps)
        n = _dist(b - x[ok], p)
        sel = ok.nonzero().squeeze(1)
        closer = n < best_norm[sel]
        best[sel[closer]], best_norm[sel[closer]] = b[closer], n[closer]
    return best, torch.isfinite(best_norm)


def _probe_verdicts(oracle, xa, delta, u, y, owner) -> torch.Tensor:
    """Whether each probe xa_i + delta_i u_ij (clipped to the box) is adversarial, [n * k] in the order of u
    [n, k, ...]; the probes are built and asked as many at a time as the oracle answers in one pass (one slice of
    them in memory for a convolutional network; a dense one answers the whole round at once)."""
    n, k = u.shape[:2]
    flat_u = u.flatten(0, 1)
    step = oracle.rows or max(n * k, 1)
    verdicts = []
    for start in range(0, n * k, step):
        rows = torch.arange(start, min(start + step, n * k), device=u.device)
        of = rows // k
        probe = flat_u[rows] * _view(delta[of], flat_u[rows])
        verdicts.append(oracle.is_adversarial(probe.add_(xa[of]).clamp_(0, 1), y[of], owner[of]))
    return torch.cat(verdicts)


def _search_batch(model, oracle_model, x, y, p, max_queries, probes, search_steps, gen, report=None, pool=None,
                  probe_distribution="gaussian"):
    n, dim = len(x), x[0].numel()
    oracle = _Oracle(oracle_model, n, x.device, tuple(x.shape[1:]))
    everyone = torch.arange(n, device=x.device)
    wrong = oracle.is_adversarial(x, y, everyone)
    # 1. a misclassified starting point: the boundary point between x and the nearest of the attacker's own
    #    samples the model labels differently, if any; else uniform noise, drawn until the label differs
    start = x.clone()
    found = wrong.clone()
    near = None
    if pool is not None:
        near = _nearest_start(oracle, x, y, pool, p, search_steps, ~wrong)
        found = found | near[1]
    for _ in range(25):
        todo = ~found
        if not todo.any():
            break
        noise = torch.rand((int(todo.sum()), *x.shape[1:]), generator=gen).to(x.device)
        ok = oracle.is_adversarial(noise, y[todo], everyone[todo])
        idx = everyone[todo][ok]
        start[idx], found[idx] = noise[ok], True
    act = found & ~wrong
    best = x.clone()
    if near is None:
        best[act] = _binary_search(oracle, x[act], start[act], y[act], everyone[act], p, search_steps)
    else:
        noise = act & ~near[1]
        best[noise] = _binary_search(oracle, x[noise], start[noise], y[noise], everyone[noise], p, search_steps)
        best[near[1]] = near[0][near[1]]
    # 2. HopSkipJump iterations on the samples that are not done
    t = 0
    while True:
        t += 1
        n_probe = int(min(probes * math.sqrt(t), 4 * probes))
        cost = n_probe + 10 + search_steps
        act = act & (oracle.count + cost <= max_queries)
        if report is not None:  # the share of the batch's query budget spent or given up
            report(float(torch.where(act, oracle.count, max_queries).float().mean()) / max_queries)
        if not act.any():
            break
        idx = everyone[act]
        xa, xo, ya = best[act], x[act], y[act]
        dist = _dist(xa - xo, p)
        delta = (dist / math.sqrt(dim) if p == 2.0 else dist / 4).clamp_min(1e-6)
        u = probe_directions(len(idx), n_probe, tuple(x.shape[1:]), gen, probe_distribution).to(x.device)
        u /= _dist(u.flatten(0, 1), 2.0).view(len(idx), n_probe, *([1] * (x.ndim - 1)))
        phi = _probe_verdicts(oracle, xa, delta, u, ya, idx).float()
        phi = (2 * phi - 1).view(len(idx), n_probe)
        phi = phi - phi.mean(1, keepdim=True)  # baseline, as in HopSkipJump
        g = u.mul_(phi.view(len(idx), n_probe, *([1] * (x.ndim - 1)))).mean(1)  # the probes are not needed after
        g = g.sign() if math.isinf(p) else g / _dist(g, 2.0).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
        eps = dist / math.sqrt(t)
        cand = xa.clone()
        pending = torch.ones(len(idx), dtype=torch.bool, device=x.device)
        for _ in range(10):  # geometric step-size search: halve until the step stays adversarial
            trial = (xa[pending] + _view(eps[pending], xa) * g[pending]).clamp(0, 1)
            ok = oracle.is_adversarial(trial, ya[pending], idx[pending])
            sel = pending.nonzero().squeeze(1)
            cand[sel[ok]] = trial[ok]
            pending[sel[ok]] = False
            eps = torch.where(pending, eps / 2, eps)
            if not pending.any():
                break
        moved = _binary_search(oracle, xo, cand, ya, idx, p, search_steps)
        better = _dist(moved - xo, p) < dist
        best[idx[better]] = moved[better]
    with torch.no_grad():
        final_adv = logits_in_rows(model, best).argmax(1) != y
    success = (found & final_adv) | wrong
    norms = torch.where(success, _dist((best - x).double(), p), torch.inf)
    norms = torch.where(wrong, 0.0, norms)
    best = torch.where(_view(success, x), best, x)
    return norms.cpu().numpy(), success.cpu().numpy(), best, oracle.count.cpu().numpy()


def _ray_search_batch(model, oracle_model, x, y, max_queries, search_steps, pool=None, report=None):
    """L-inf distance along sign directions by RayS (Chen & Gu, KDD 2020): the boundary radius along a direction
    d in {-1, 1}^D is found by binary search; then d's blocks are flipped, halving the block size stage by stage,
    and a flip is kept when the flipped ray is adversarial at the current best radius (one query), after which
    its radius is binary-searched below it. The start direction points at the nearest pool sample labelled
    otherwise when there is one."""
    n, dim = len(x), x[0].numel()
    oracle = _Oracle(oracle_model, n, x.device, tuple(x.shape[1:]))
    everyone = torch.arange(n, device=x.device)
    wrong = oracle.is_adversarial(x, y, everyone)
    flat = x.flatten(1)
    d = torch.ones_like(flat)
    if pool is not None:
        points, labels = pool
        dist = torch.cdist(flat, points.flatten(1), p=math.inf)
        dist[labels[None, :] == y[:, None]] = torch.inf
        j = dist.argmin(1)
        toward = (points.flatten(1)[j] - flat).sign()
        d = torch.where(toward == 0, d, toward)

    def point(idx, dirs, r):
        return (flat[idx] + r[:, None] * dirs).clamp(0, 1).view(len(idx), *x.shape[1:])

    def radius(idx, dirs, hi):  # smallest adversarial radius along dirs in [0, hi], hi adversarial
        lo = torch.zeros_like(hi)
        for _ in range(search_steps):
            mid = (lo + hi) / 2
            adv = oracle.is_adversarial(point(idx, dirs, mid), y[idx], idx)
            hi, lo = torch.where(adv, mid, hi), torch.where(adv, lo, mid)
        return hi

    # the box's corner along a sign direction is radius 1: a direction whose corner is not adversarial has no
    # radius yet (inf), and its flips are tried at the corner until one is
    r_best = torch.full((n,), torch.inf, device=x.device)
    act = ~wrong
    block, start = dim, 0
    first = True
    while True:
        act = act & (oracle.count + 1 + search_steps <= max_queries)
        if report is not None:
            report(float(torch.where(act, oracle.count, max_queries).float().mean()) / max_queries)
        if not act.any():
            break
        idx = everyone[act]
        trial = d[idx].clone()
        if not first:
            trial[:, start : start + block] *= -1
        better = oracle.is_adversarial(point(idx, trial, r_best[idx].clamp_max(1.0)), y[idx], idx)
        if better.any():
            sel = idx[better]
            d[sel] = trial[better]
            r_best[sel] = radius(sel, trial[better], r_best[sel].clamp_max(1.0))
        if first:
            first = False
            continue
        start += block
        if start >= dim:  # the next stage: blocks of half the size (back to whole rays after single pixels)
            block = dim if block == 1 else max(1, block // 2)
            start = 0
    success = torch.isfinite(r_best)
    with torch.no_grad():
        best = torch.where(_view(success, x), point(everyone, d, torch.where(success, r_best, 0.0)), x)
        final_adv = logits_in_rows(model, best).argmax(1) != y
    success = (success & final_adv) | wrong
    norms = torch.where(success, _dist((best - x).double(), math.inf), torch.inf)
    norms = torch.where(wrong, 0.0, norms)
    best = torch.where(_view(success, x), best, x)
    return norms.cpu().numpy(), success.cpu().numpy(), best, oracle.count.cpu().numpy()
