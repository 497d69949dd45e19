"""Sweeps: a grid of defenses x strengths x seeds, each point a run in the store.

Resumable by construction: a finished point is a folder in the store and is reused, an interrupted one
left nothing behind. Points run in a local process pool by default, or on a Ray cluster (`executor="ray"`).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from .config import ExperimentConfig
from .defenses import DEFENSES
from .experiment import run_experiment
from .records import RunRecord
from .store import Store

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class SweepPoint:
    config: ExperimentConfig

    @property
    def label(self) -> str:
        c = self.config
        return f"{c.defense}={c.defense_strength:g} seed={c.seed}"


def sweep_points(base: ExperimentConfig, defenses: dict[str, list[float]], seeds: list[int]) -> list[SweepPoint]:
    """Every (defense, strength, seed) combination on top of `base`."""
    return [SweepPoint(replace(base, defense=d, defense_strength=float(s), seed=int(seed)))
            for d, strengths in defenses.items() for s in strengths for seed in seeds]


def parse_grid(items: list[str]) -> dict[str, list[float]]:
    """['pgd_at=0.05,0.1', 'none'] -> {'pgd_at': [0.05, 0.1], 'none': [0.0]}."""
    grid: dict[str, list[float]] = {}
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip()
        DEFENSES.get(name)  # an unknown name raises, listing the valid ones
        try:
            grid[name] = [float(v) for v in values.split(",")] if values else [0.0]
        except ValueError:
            raise ValueError(f"Strengths must be numbers separated by commas: '{item}'.") from None
    return grid


def _exit_with_parent(parent: int, interval_s: float = 1.0) -> None:
    """Pool-worker initializer: a daemon thread ends this worker as soon as its parent is gone (killed with -9,
    say), instead of finishing every queued point and idling at hundreds of MB for good."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _run_point(config: ExperimentConfig, store_root: str, threads: int) -> tuple[RunRecord, bool]:
    import torch

    torch.set_num_threads(threads)
    r = run_experiment(config, store=Store(store_root))
    return r.record, r.reused


def run_sweep(
    points: list[SweepPoint],
    *,
    store: Store | str | Path | None = None,
    executor: str = "process",
    workers: int | None = None,
    address: str | None = None,
    progress: Progress | None = None,
) -> list[tuple[RunRecord, bool]]:
    """Run every point (reusing finished ones) and return (record, reused) in the points' order.
    `store` defaults to $MIA_STORE, else ./mia_runs (Store.resolve).

    executor: "serial", "process" (a local pool of `workers` processes) or "ray" (`address` of a running
    cluster, e.g. "ray://head:10001" or "auto"; a local Ray instance when None).
    """
    store_root = str(Store.resolve(store).root)
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(points) or 1))
    threads = max(1, cores // workers)
    results: list[tuple[RunRecord, bool] | None] = [None] * len(points)

    def report(done: int, label: str) -> None:
        if progress:
            progress(f"sweep: {label}", done / max(len(points), 1))

    if executor == "serial" or workers == 1 and executor == "process":
        for i, p in enumerate(points):
            results[i] = _run_point(p.config, store_root, threads)
            report(i + 1, p.label)
    elif executor == "process":
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_run_point, p.config, store_root, threads): i for i, p in enumerate(points)}
            for done, fut in enumerate(as_completed(futures), 1):
                i = futures[fut]
                results[i] = fut.result()
                report(done, points[i].label)
    elif executor == "ray":
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True)
        try:
            remote = ray.remote(num_cpus=threads)(_run_point)
            refs = {remote.remote(p.config, store_root, threads): i for i, p in enumerate(points)}
            pending, done = list(refs), 0
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                i = refs[ready[0]]
                results[i] = ray.get(ready[0])
                done += 1
                report(done, points[i].label)
        finally:
            if started:
                ray.shutdown()
    else:
        raise ValueError(f"Unknown executor '{executor}'. Choose serial, process or ray.")
    return [r for r in results if r is not None]
