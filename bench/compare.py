"""Benchmark: minimal_perturbation against foolbox 3, the Adversarial Robustness Toolbox and torchattacks.

Same trained model, same samples, one run. For each method: samples/s, success rate (checked here, by
re-running the model on the returned points), and the median over samples of its norm divided by the
smallest norm any method found for that sample (1.000 = the tightest). Run by hand, after
`bash bench/setup_compare.sh` (which installs the compared libraries apart from the app):

    .venv/bin/python bench/compare.py [--samples 200] [--models digits-cnn,mnist5k-cnn] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / ".compare-env"))  # the compared libraries, apart from the app's venv

from distances import trained  # noqa: E402  (bench/distances.py, beside this file)
from mia_core.distances import minimal_perturbation  # noqa: E402
from mia_core.models import pick_device  # noqa: E402


def _ours(method, norm, **kw):
    def run(model, x, y):
        r = minimal_perturbation(model, x, norm=norm, method=method, labels=y, **kw)
        return r.x_adv
    return run


def _foolbox(name, norm):
    import foolbox as fb

    cls = {("deepfool", 2.0): fb.attacks.L2DeepFoolAttack, ("deepfool", math.inf): fb.attacks.LinfDeepFoolAttack,
           ("fmn", 2.0): fb.attacks.L2FMNAttack, ("fmn", math.inf): fb.attacks.LInfFMNAttack}[(name, norm)]

    def run(model, x, y):
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        attack = cls(steps=50, overshoot=0.02) if name == "deepfool" else cls(steps=100)
        _, clipped, _ = attack(fmodel, x, y, epsilons=None)
        return clipped
    return run


def _art(name, norm, n_classes, shape):
    from art.attacks.evasion import DeepFool, HopSkipJump
    from art.estimators.classification import PyTorchClassifier

    class Float32(torch.nn.Module):  # ART's HopSkipJump feeds float64 arrays
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.float())

    def run(model, x, y):
        clf = PyTorchClassifier(model=Float32(model), loss=torch.nn.CrossEntropyLoss(), input_shape=shape,
                                nb_classes=n_classes, clip_values=(0.0, 1.0), device_type="cpu")
        if name == "deepfool":
            attack = DeepFool(clf, max_iter=50, epsilon=0.02, nb_grads=n_classes, batch_size=128, verbose=False)
        else:
            attack = HopSkipJump(clf, norm=2 if norm == 2.0 else np.inf, max_iter=20, max_eval=1000, init_eval=100,
                                 verbose=False)
        return torch.from_numpy(attack.generate(x.cpu().numpy().astype(np.float32)))
    return run


def _torchattacks(norm):
    import torchattacks

    def run(model, x, y):
        return torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--slow-samples", type=int, default=40, help="samples for the slowest methods (HSJ, torchattacks)")
    ap.add_argument("--models", default="digits-cnn,mnist5k-cnn")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    device = pick_device(a.device)
    print(f"{platform.machine()} {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<13}{'norm':<6}{'method':<26}{'n':>5}{'samples/s':>11}{'success':>9}{'median':>9}{'vs best':>9}")
    for setup in a.models.split(","):
        model, x_all = trained(setup, device)
        x_all = x_all[: a.samples]
        with torch.no_grad():
            y_all = model(x_all).argmax(1)
        shape, k = tuple(x_all.shape[1:]), int(model(x_all[:1]).shape[1])
        for norm in (2.0, math.inf):
            methods = {"ours deepfool": _ours("deepfool", norm),
                       "ours superdeepfool": _ours("superdeepfool", norm), "ours fmn": _ours("fmn", norm),
                       "foolbox deepfool": _foolbox("deepfool", norm), "foolbox fmn": _foolbox("fmn", norm),
                       "art hopskipjump (labels)": _art("hsj", norm, k, shape)}
            if norm == 2.0:
                methods["art deepfool"] = _art("deepfool", norm, k, shape)
                methods["torchattacks deepfool"] = _torchattacks(norm)
            rows = {}
            for name, run in methods.items():
                n = a.slow_samples if ("hopskip" in name or "torchattacks" in name) else len(x_all)
                x, y = x_all[:n], y_all[:n]
                run(model, x[:4], y[:4])  # warm-up, for every method alike
                t0 = time.perf_counter()
                x_adv = run(model, x, y).to(device).float()
                dt = time.perf_counter() - t0
                with torch.no_grad():
                    ok = (model(x_adv).argmax(1) != y) & (x_adv.min() >= -1e-6) & (x_adv.max() <= 1 + 1e-6)
                d = (x_adv - x).flatten(1).norm(p=norm, dim=1).cpu().numpy()
                d = np.where(ok.cpu().numpy(), d, np.inf)
                rows[name] = (n, n / dt, ok.float().mean().item(), d)
            best = np.min(np.stack([np.pad(r[3], (0, len(x_all) - len(r[3])), constant_values=np.inf)
                                    for r in rows.values()]), axis=0)
            for name, (n, rate, succ, d) in rows.items():
                fin = np.isfinite(d) & np.isfinite(best[:n]) & (best[:n] > 0)
                rel = np.median(d[fin] / best[:n][fin]) if fin.any() else float("nan")
                med = np.median(d) if succ > 0 else float("nan")
                print(f"{setup:<13}{'L2' if norm == 2 else 'Linf':<6}{name:<26}{n:>5}{rate:>11.1f}{succ:>9.3f}"
                      f"{med:>9.4f}{rel:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
