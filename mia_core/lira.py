"""LiRA, the likelihood-ratio attack (Carlini et al., S&P 2022), with shadow models trained many at once.

N shadow models, each trained on a random half of the evaluation pool (members and non-members), so every
point is IN for about half of them and OUT for the rest. For each point, the logit-scaled confidence
phi = log p_y - log sum_{k != y} p_k on the IN and the OUT models is fitted by Gaussians; the target
model's phi is scored by their likelihood ratio (online) or against the OUT Gaussian alone (offline), with a
per-example or a global (fixed) variance. The shadows train stacked: one `torch.func.functional_call`
under `vmap` runs every model's batch in one call, and one Adam steps them all (a plain MLP on the CPU runs as
batched matrix products, `models.stacked_forward`, with autograd's gradients computed without its engine,
`models.stacked_gradients`, in mixed precision on weights stored in their gradients' layout,
`models.in_features_major`: the same bits). With `training="fast"` that
Adam is fused, and on the CPU convolutional models train one at a time in channels-last memory instead
(vmap turns a stack of convolutions into grouped convolutions, slower there than one model's); "mixed" adds
bfloat16 forward and backward passes where the device computes them natively (weights, optimiser state and
the scored outputs stay float32).
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.stats import norm as gaussian
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from .config import SHADOW_TRAINING
from .models import in_features_major, is_convolutional, logits_in_rows, stacked_forward, stacked_gradients
from .probabilities import precise_log_softmax
from .training import make_optimizer
from .store import atomic_folder, config_hash, discard_damaged, folder_problem

VARIANTS = ("lira_online", "lira_online_fixed", "lira_offline", "lira_offline_fixed")
SHADOW_EXECUTORS = ("auto", "local", "threads", "ray")
_GLOBAL_RNG = threading.Lock()  # a chunk seeds torch's global generator and builds its models under it
_owns_its_process = False


def claim_process() -> None:
    """Say that this process computes one thing at a time (the CLI, a job's worker process): `auto` then trains
    shadow chunks in threads, which sets MKL's thread count, one setting for the whole process, while they run.
    The app's server process never claims it (other visitors' computations run beside its playground)."""
    global _owns_its_process
    _owns_its_process = True


def resolve_executor(executor: str) -> str:
    """`auto` as it applies in this process: threads where the process is claimed, else local."""
    if executor not in SHADOW_EXECUTORS:
        raise ValueError(f"shadow executor must be one of {', '.join(SHADOW_EXECUTORS)}, got '{executor}'.")
    return ("threads" if _owns_its_process else "local") if executor == "auto" else executor


def phi_from_log_probs(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """phi = log p_y - log(1 - p_y) (the logit-scaled confidence) from precise log-probabilities [..., K]."""
    lpy = np.take_along_axis(logp, np.broadcast_to(y, logp.shape[:-1])[..., None], axis=-1)[..., 0]
    return lpy - np.log(-np.expm1(np.minimum(lpy, -1e-300)))


@dataclass(frozen=True)
class ShadowSet:
    logp: np.ndarray  # [models, points, classes] precise log-softmax of each pool point on each shadow
    inside: np.ndarray  # [models, points] bool, the point was in that shadow's training set
    population_logp: np.ndarray | None = None  # [models, population, classes]: points no shadow trained on

    def phi(self, y: np.ndarray, mask: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """[models, points] phi, after the same output masking as the target's API (if any)."""
        return phi_from_log_probs(mask(self.logp) if mask else self.logp, y)

    def held_out_accuracy(self, y: np.ndarray) -> float:
        """Mean over models of each model's accuracy on the pool points it did not train on."""
        right = self.logp.argmax(-1) == np.asarray(y)[None]
        return float(np.mean([right[m][~self.inside[m]].mean() for m in range(len(self.inside))]))


def train_shadow_chunk(
    build: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    subsets: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    population: torch.Tensor | None = None,
    optimizer: str = "adam",
    training: str = "stacked",
    threads: int | None = None,
    stop: threading.Event | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Train len(subsets) models at once, model i on x[subsets[i]]; return the precise log-softmax of every
    x on every model, [models, points, classes], and of every `population` point (never trained on).
    `threads` sets this thread's intra-op threads once the models' input statistics are fitted (those are fitted
    with the thread count it is called with, whose rounding they depend on; nothing after them does). A set
    `stop` ends the training at its next step (KeyboardInterrupt): how a chunk in a pool thread is interrupted.
    An architecture that cannot run stacked under vmap (batch norm's running statistics, data-dependent
    control flow) is trained model by model with the same subsets and recipe; so is a convolutional one on
    the CPU with `training="fast"` (see SHADOW_TRAINING)."""
    if training not in SHADOW_TRAINING:
        raise ValueError(f"shadow training must be one of {', '.join(SHADOW_TRAINING)}, got '{training}'.")
    fused = training != "stacked"
    mixed = training == "mixed" and bf16_native(x.device)
    with _GLOBAL_RNG:  # chunks training in threads build their models one at a time, each from its own seed
        torch.manual_seed(seed)
        models = [build().to(x.device) for _ in range(len(subsets))]
        for m, sub in zip(models, subsets):
            if hasattr(m, "normalize") and hasattr(m.normalize, "fit"):
                m.normalize.fit(x[sub])  # a reduction: its rounding depends on the thread count
    if threads is not None:
        torch.set_num_threads(threads)
    one_by_one = fused and x.device.type == "cpu" and is_convolutional(models[0])
    if one_by_one or not _stackable(models[0], x[:2], mixed=mixed):
        return _train_one_by_one(models, x, y, subsets, epochs=epochs, batch_size=batch_size, lr=lr,
                                 weight_decay=weight_decay, seed=seed, population=population, optimizer=optimizer,
                                 fast=fused, mixed=mixed)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def run(p, b, xb):
        return functional_call(base, (p, b), (xb,))

    stacked = stacked_forward(models[0]) if x.device.type == "cpu" else None  # same bits as vmap, less overhead
    gradients = stacked_gradients(models[0]) if stacked else None  # autograd's gradients, without its engine
    batched = stacked or vmap(run, randomness="different")
    # what the optimiser updates: under mixed, the weights in their gradients' own layout (same bits, fewer copies)
    leaves, transposed = in_features_major(params, mixed) if gradients is not None else (params, set())
    params = {name: leaf.transpose(1, 2) if name in transposed else leaf for name, leaf in leaves.items()}
    opt = make_optimizer(optimizer, leaves.values(), lr=lr, weight_decay=weight_decay, fused=fused)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n_models, per_model = subsets.shape
    for _ in range(epochs):
        order = torch.argsort(torch.rand(n_models, per_model, generator=gen), dim=1).to(x.device)
        shuffled = subsets.gather(1, order)
        for s in range(0, per_model, batch_size):
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt("stopped: another chunk failed, or the run was interrupted")
            idx = shuffled[:, s : s + batch_size]
            if gradients is not None:
                for name, grad in gradients(params, buffers, x[idx], y[idx], n_models, mixed).items():
                    leaves[name].grad = grad.transpose(1, 2) if name in transposed else grad
            else:
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=mixed):
                    logits = batched(params, buffers, x[idx])
                loss = F.cross_entropy(logits.float().flatten(0, 1), y[idx].flatten()) * n_models
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
    with torch.no_grad():
        params = {name: p.contiguous() for name, p in params.items()}  # float32 products: the layout they trained in
        for m in models:
            m.eval()
        base.eval()
        def outputs(points: torch.Tensor) -> torch.Tensor:
            each = stacked or vmap(run)
            logits = torch.cat([each(params, buffers, points[None].expand(n_models, *points.shape)[:, i : i + 2048])
                                for i in range(0, len(points), 2048)], dim=1)
            return precise_log_softmax(logits.flatten(0, 1)).view(n_models, len(points), -1)

        return outputs(x), None if population is None or not len(population) else outputs(population)


def _stackable(model: nn.Module, xb: torch.Tensor, *, mixed: bool = False) -> bool:
    """Whether two copies of the model run (forward and backward) stacked under vmap, in the training's own
    precision: on CUDA, batch norm under vmap and bfloat16 autocast fails in its backward pass (running
    statistics in float32, activations in bfloat16), so such a model trains one by one there."""
    try:
        params, buffers = stack_module_state([copy.deepcopy(model), copy.deepcopy(model)])
        base = copy.deepcopy(model).to("meta")
        with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=mixed):
            out = vmap(lambda p, b, xx: functional_call(base, (p, b), (xx,)), randomness="different")(
                params, buffers, xb[None].expand(2, *xb.shape))
        out.float().sum().backward()
        return True
    except Exception:
        return False


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 products natively (a GPU that supports it; a CPU with AVX512-BF16 or
    AMX), so that mixed precision speeds training up instead of emulating it."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def _train_one_by_one(models, x, y, subsets, *, epochs, batch_size, lr, weight_decay, seed, population, optimizer,
                      fast=False, mixed=False):
    """`train_shadow_chunk` model by model: each on its own subset with the same recipe (with `fast`, a fused
    optimiser and, for image inputs, channels-last memory: the CPU's faster convolutions; with `mixed`, the
    forward and backward passes in bfloat16)."""
    from .training import TrainConfig, train

    if fast and x.ndim == 4:
        models = [m.to(memory_format=torch.channels_last) for m in models]
        x = x.contiguous(memory_format=torch.channels_last)
        if population is not None:
            population = population.contiguous(memory_format=torch.channels_last)
    logps, pops = [], []
    for i, (m, sub) in enumerate(zip(models, subsets)):
        train(m, x[sub], y[sub], TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                             seed=seed + i, optimizer=optimizer, fused=fast, mixed_precision=mixed,
                                             track_accuracy=False))
        m.eval()
        # one inference chunk a pass, 2,048 samples where it is not bounded (2,048 through a 28x28 CNN of width
        # 256 took 0.7 GB, the audit's peak): the same bits
        logps.append(precise_log_softmax(logits_in_rows(m, x, 2048)))
        if population is not None and len(population):
            pops.append(precise_log_softmax(logits_in_rows(m, population, 2048)))
    return torch.stack(logps), torch.stack(pops) if pops else None


def shadow_set(
    build: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_models: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    cache_dir: Path | None = None,
    chunk: int = 8,
    progress=None,
    population: torch.Tensor | None = None,
    optimizer: str = "adam",
    executor: str = "local",
    address: str | None = None,
    training: str = "stacked",
) -> ShadowSet:
    """`n_models` shadows on random halves of (x, y), trained `chunk` at a time, and their outputs on `population`
    (points none of them trained on, for RMIA). With `cache_dir`, each finished chunk is stored atomically and
    reused, so an interrupted computation resumes; `cache_dir` must be specific to the population.
    `executor="ray"` trains the missing chunks as Ray tasks (a local Ray instance, or the cluster at `address`,
    one GPU per task where the data lives on a GPU); each chunk is written into the store as it arrives, so a
    cluster run and a local run leave the same files and either resumes the other. `executor="threads"` trains
    a plain MLP's chunks on the CPU concurrently, one thread each (`auto`: where the process is claimed,
    `claim_process`); every executor gives the same bits."""
    rng = np.random.default_rng(seed + 1000)
    n = len(x)
    half = n // 2
    # balanced inclusion: each point is IN for exactly half of every pair of models
    subsets = []
    for _ in range(0, n_models, 2):
        perm = rng.permutation(n)
        subsets += [np.sort(perm[:half]), np.sort(perm[half : 2 * half])]
    subsets = np.array(subsets[:n_models])
    starts = list(range(0, n_models, chunk))
    folders = {c: cache_dir / f"chunk-{c // chunk:03d}" if cache_dir else None for c in starts}
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for c in starts:
        if folders[c] is not None and (stored := _read_chunk(folders[c])) is not None:
            results[c] = stored
    todo = [c for c in starts if c not in results]
    recipe = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                  training=training)

    def finished(c: int, logp: np.ndarray, pop: np.ndarray) -> None:
        if folders[c] is not None:
            discard_damaged(folders[c])  # a damaged chunk is replaced; one another process finished is kept
            with atomic_folder(folders[c]) as tmp:  # a unique temporary name: writers never collide
                np.savez(tmp / "logp.npz", logp=logp, population=pop)
        results[c] = (logp, pop)
        if progress:
            progress("shadow models (LiRA)", len(results) / len(starts))

    executor = resolve_executor(executor)
    workers = min(torch.get_num_threads(), len(todo))
    if executor == "ray" and todo:
        _ray_chunks(build, x, y, population, subsets, chunk, todo, seed, recipe, address, finished)
    elif executor == "threads" and workers > 1 and x.device.type == "cpu" and _builds_plain_mlp(build):
        _threaded_chunks(build, x, y, population, subsets, chunk, todo, seed, recipe, workers, finished)
    else:
        for c in todo:
            sub = torch.from_numpy(subsets[c : c + chunk]).to(x.device)
            finished(c, *_chunk_arrays(build, x, y, sub, population, seed + 7919 * (c + 1), recipe))
    parts = [results[c][0] for c in starts]
    pop_parts = [results[c][1] for c in starts]
    inside = np.zeros((n_models, n), dtype=bool)
    for i, sub in enumerate(subsets):
        inside[i, sub] = True
    pop_logp = np.concatenate(pop_parts)
    return ShadowSet(logp=np.concatenate(parts), inside=inside,
                     population_logp=pop_logp if pop_logp.shape[1] else None)


def _chunk_arrays(build, x, y, sub, population, seed, recipe) -> tuple[np.ndarray, np.ndarray]:
    """One chunk trained here: (log-probabilities on the pool, on the population) as arrays."""
    logp, pop = train_shadow_chunk(build, x, y, sub, seed=seed, population=population, **recipe)
    logp = logp.cpu().numpy()
    return logp, np.zeros((len(sub), 0, logp.shape[-1])) if pop is None else pop.cpu().numpy()


def _builds_plain_mlp(build) -> bool:
    """Whether `build` makes a model `models.stacked_forward` runs (no dropout, no batch statistics: its
    training draws nothing from the global generator), built without moving that generator."""
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        return stacked_forward(build()) is not None


def _one_thread_chunk(threads, build, x, y, sub, population, seed, recipe) -> tuple[np.ndarray, np.ndarray]:
    """A chunk trained in a pool thread: its models fitted with the caller's `threads` (as a chunk trained in
    the caller's thread is), then trained with one intra-op thread (OpenMP's count is each thread's own)."""
    # torch gives a thread the process-wide count (which the other chunks change) at the thread's first call:
    # that call is made here, then the count set, so it does not happen at an operation mid-way
    torch.get_num_threads()
    torch.set_num_threads(threads)
    return _chunk_arrays(build, x, y, sub, population, seed, recipe | {"threads": 1})


def _threaded_chunks(build, x, y, population, subsets, chunk, todo, seed, recipe, workers, finished) -> None:
    """The missing chunks trained `workers` at a time in threads of this process, one intra-op thread each,
    and stored as each one finishes. A plain MLP's step is small (a digits shadow step for 8 models is about
    2 ms, a third of it Python and dispatch), so two chunks side by side keep two cores busy where one chunk
    with two intra-op threads does not: the same bits, 1.1-1.5x sooner on this machine's 2 cores (bench/shadows.py
    and single-chunk timings, which vary with the shared machine's load)."""
    threads = torch.get_num_threads()
    stop = threading.Event()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="mia-shadows") as pool:
            futures = {pool.submit(_one_thread_chunk, threads, build, x, y, torch.from_numpy(subsets[c : c + chunk]),
                                   population, seed + 7919 * (c + 1), recipe | {"stop": stop}): c for c in todo}
            try:
                for done in as_completed(futures):
                    finished(futures[done], *done.result())
            except BaseException:  # an error, Ctrl-C: the running chunks stop at their next step, the rest never
                stop.set()  # start, so the interrupt is not held up by a chunk's whole training
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        torch.set_num_threads(threads)  # MKL's count and torch's own are process-wide


def _ray_chunk(build, x, y, sub, population, seed, recipe, device):
    """A Ray task: one chunk on the worker's device (arrays in, arrays out)."""
    dev = torch.device(device if device == "cpu" or torch.cuda.is_available() else "cpu")
    as_tensor = lambda a: None if a is None else torch.from_numpy(a).to(dev)  # noqa: E731
    return _chunk_arrays(build, as_tensor(x), as_tensor(y), as_tensor(sub), as_tensor(population), seed, recipe)


def _ray_chunks(build, x, y, population, subsets, chunk, todo, seed, recipe, address, finished) -> None:
    """Submit every missing chunk as a Ray task and store each one as it finishes."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        gpu = x.device.type == "cuda"
        task = ray.remote(num_gpus=1 if gpu else 0, num_cpus=1)(_ray_chunk)
        xs, ys = ray.put(x.cpu().numpy()), ray.put(y.cpu().numpy())
        pop = ray.put(None if population is None else population.cpu().numpy())
        pending = {task.remote(build, xs, ys, subsets[c : c + chunk], pop, seed + 7919 * (c + 1), recipe,
                               x.device.type): c for c in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            c = pending.pop(ready[0])
            finished(c, *ray.get(ready[0]))
    finally:
        if started:
            ray.shutdown()


def _read_chunk(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """A stored chunk's log-probabilities (pool, population), or None when it is missing or damaged (then it
    is recomputed)."""
    if not folder.is_dir() or folder_problem(folder) is not None:
        return None
    try:
        with np.load(folder / "logp.npz", allow_pickle=False) as z:
            return z["logp"], z["population"]
    except (OSError, ValueError, KeyError):
        return None


def lira_scores(target_phi: np.ndarray, phi: np.ndarray, inside: np.ndarray) -> dict[str, np.ndarray]:
    """Online and offline LiRA scores from the target's phi [points] and the shadows' phi [models, points],
    each with per-example and with global (fixed) variance. Higher = more likely a member. Offline scores
    use only the OUT models."""
    out_w, in_w = (~inside).astype(float), inside.astype(float)

    def moments(w):
        cnt = np.maximum(w.sum(0), 1)
        mu = (phi * w).sum(0) / cnt
        var = ((phi - mu) ** 2 * w).sum(0) / np.maximum(cnt - 1, 1)
        return mu, np.sqrt(np.maximum(var, 1e-12))

    mu_in, sd_in = moments(in_w)
    mu_out, sd_out = moments(out_w)
    g_in, g_out = np.median(sd_in), np.median(sd_out)  # a robust global scale
    t = target_phi
    return {
        "lira_online": gaussian.logpdf(t, mu_in, sd_in) - gaussian.logpdf(t, mu_out, sd_out),
        "lira_online_fixed": gaussian.logpdf(t, mu_in, g_in) - gaussian.logpdf(t, mu_out, g_out),
        "lira_offline": gaussian.logcdf(t, mu_out, sd_out),
        "lira_offline_fixed": gaussian.logcdf(t, mu_out, g_out),
    }


def shadow_key(n_models: int, seed: int, population: str | None = None, training: str = "stacked") -> str:
    """The cache key of a shadow set: its size, seed, the digest of the population it also scores and how the
    models train (left out for "stacked", so 0.4.0's stored sets are found)."""
    key = {"n_models": n_models, "seed": seed, "population": population, "version": 3}
    if training != "stacked":
        key["training"] = training
    return config_hash(key)
