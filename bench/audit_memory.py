"""Benchmark: peak memory of a whole audit against the size of its data and scores.
Run by hand (minutes to an hour, by the flags):

    .venv/bin/python bench/audit_memory.py --dataset mnist5k --model cnn --members 2000 [--epochs 20] [--queries 400]
        [--shadows 16]
    .venv/bin/python bench/audit_memory.py --synthetic-images 12000 --model mlp --members 5000 --epochs 5 \
        --queries 20 --shadows 2

`--synthetic-images N` audits N synthetic, class-structured 3x32x32 images (bench/gpu_audit.py's, written to a
temporary .npz) instead of `--dataset`: a data set large enough for the part of the memory that grows with it
(the groups' inputs, their adversarial examples, the label-only searches' points) to show beside the fixed part
(torch's working set, a batch's activations).

Two fresh processes are measured (peak resident set, `getrusage`, and the peak of its anonymous part, sampled
every 20 ms): a baseline that imports the core, loads the data set and runs the model once (what every process
pays: torch's libraries and kernels), and the audit itself (`run_experiment` into a temporary store, every attack).
It prints both, the data set's bytes, the stored scores' bytes (every array of the evaluation, uncompressed:
scores, adversarial examples, query counts) and the audit's growth over the baseline as a multiple of data +
scores, for the resident set and for its anonymous part (the resident set also counts the libraries' code pages
an audit first touches: file-backed, shared, dropped under pressure).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.memory import peak_mb  # noqa: E402
from bench.runs import run_config, run_parser  # noqa: E402
from mia_core.records import ScoreTable  # noqa: E402


class AnonymousPeak:
    """The peak of this process's anonymous resident memory (RssAnon: the heap, tensors, the allocator's cache),
    sampled every 20 ms in a thread. The resident set's peak also counts file-backed pages (the libraries' code
    that a computation first touches), which are shared with other processes and dropped under pressure."""

    def __init__(self) -> None:
        import threading

        self.peak_mb, self._stop = self.now_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now_mb() -> float:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("RssAnon:")) / 1024

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, self.now_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak_mb, self.now_mb())


def child(kind: str, config_json: str, store: str) -> None:
    """Run in a fresh process: the baseline or the audit; print its peak RSS and peak anonymous memory (MB) as
    JSON."""
    import torch

    from mia_core.config import ExperimentConfig
    from mia_core.data import load_dataset
    from mia_core.experiment import run_experiment
    from mia_core.models import build_model

    cfg = ExperimentConfig.from_dict(json.loads(config_json))
    anonymous = AnonymousPeak()
    t0 = time.perf_counter()
    if kind == "baseline":
        ds = load_dataset(cfg.dataset, seed=cfg.seed)
        model = build_model(cfg.model, ds.input_shape, ds.num_classes, width=cfg.width)
        with torch.no_grad():
            model(torch.from_numpy(ds.x[:64]))
        out = {"data_bytes": int(ds.x.nbytes + ds.y.nbytes)}
    else:
        run = run_experiment(cfg, store=store)
        out = {"eval_dir": str(run.eval_dir)}
    out.update(peak_mb=peak_mb(), anon_peak_mb=anonymous.stop(), seconds=time.perf_counter() - t0)
    print(json.dumps(out))


def measure(kind: str, cfg, store: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, json.dumps(cfg.to_dict()), store]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def stored_array_bytes(eval_dir: Path) -> int:
    """Every array of an evaluation folder, uncompressed."""
    table = ScoreTable.load(eval_dir)
    return sum(a.nbytes for gs in table.groups.values()
               for a in (gs.index, gs.label, gs.prediction, *gs.scores.values(), *gs.artifacts.values()))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--synthetic":
        from bench.gpu_audit import synthetic_cifar

        x, y = synthetic_cifar(int(sys.argv[2]))
        np.savez(sys.argv[3], x=x, y=y)
        return
    ap = run_parser(__doc__)
    ap.add_argument("--queries", type=int, default=None, help="label-only queries (default: the default run's)")
    ap.add_argument("--shadows", type=int, default=None, help="shadow models (default: the default run's)")
    ap.add_argument("--synthetic-images", type=int, default=None, metavar="N",
                    help="audit N synthetic 3x32x32 images instead of --dataset")
    a = ap.parse_args()
    extra = {k: v for k, v in (("label_only_queries", a.queries), ("lira_shadows", a.shadows)) if v is not None}
    with tempfile.TemporaryDirectory() as store:
        if a.synthetic_images:  # made in a process of its own: a child's peak RSS starts at its parent's
            path = Path(store) / "synthetic.npz"
            subprocess.run([sys.executable, __file__, "--synthetic", str(a.synthetic_images), str(path)], check=True)
            a.dataset = f"npz:{path}"
        cfg = run_config(a, **extra)
        base = measure("baseline", cfg, store)
        audit = measure("audit", cfg, store)
        scores = stored_array_bytes(Path(audit["eval_dir"]))
    mb = 1 / 2**20
    data = base["data_bytes"]
    growth = audit["peak_mb"] - base["peak_mb"]
    print(f"{cfg.dataset} {cfg.model}, {cfg.members} members, {cfg.epochs} epochs, "
          f"{cfg.label_only_queries or 'automatic'} label-only queries, {cfg.lira_shadows} shadow models")
    print(f"{'':<48}{'peak RSS':>10}   {'of it anonymous (peak)':>22}")
    print(f"{'baseline process (imports, data, one forward)':<48}{base['peak_mb']:>7.0f} MB   "
          f"{base['anon_peak_mb']:>19.0f} MB")
    print(f"{'the audit (every attack)':<48}{audit['peak_mb']:>7.0f} MB   {audit['anon_peak_mb']:>19.0f} MB   "
          f"{audit['seconds']:.0f} s")
    print(f"{'data set (x, y)':<48}{data * mb:>10.1f} MB")
    print(f"{'stored scores (every array, uncompressed)':<48}{scores * mb:>10.1f} MB")
    print(f"{'growth over the baseline / (data + scores)':<48}{growth / ((data + scores) * mb):>10.2f} x")
    anon_growth = audit["anon_peak_mb"] - base["anon_peak_mb"]
    print(f"{'anonymous growth / (data + scores)':<48}{anon_growth / ((data + scores) * mb):>10.2f} x")


if __name__ == "__main__":
    main()
