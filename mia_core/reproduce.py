"""The `reproduce` preset: the seed papers' qualitative findings, measured on the embedded data.

1. Leakage tracks the generalisation gap: the gap attack's accuracy is exactly 1/2 + (train - test)/2
   (Yeom et al. 2018).
2. Members sit farther from the decision boundary than non-members (Li & Zhang 2021; Choquette-Choo et
   al. 2021; Kadoche et al. 2022).
3. Adversarial training raises leakage, most with inference on adversarial inputs (Song, Shokri & Mittal,
   CCS 2019).
4. MMD + mix-up lowers leakage at a small accuracy cost (Li, Li & Ribeiro, CODASPY 2021).
5. DP-SGD lowers even the boundary-distance attack, at a utility cost (Abadi et al. 2016).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import DEFAULT_CONFIG, ExperimentConfig
from .records import RunRecord
from .store import Store
from .sweep import run_sweep, sweep_points

PRESET: dict[str, list[float]] = {
    "none": [0.0], "pgd_at": [0.1], "trades": [1.0], "mmd_mixup": [3.0], "dp_sgd": [3.0],
}
SONG_REFERENCE = {  # membership inference accuracy I_B / I_A, Song, Shokri & Mittal (CCS 2019)
    "none": "CIFAR-10 57.4 / 50.9; F-MNIST 57.1 / 51.0",
    "pgd_at": "CIFAR-10 74.9 / 75.7; F-MNIST 58.3 / 64.5",
    "trades": "CIFAR-10 61.2 / 67.1",
}


def _ms(values, pct: bool = False) -> str:
    v = np.asarray(values, dtype=float) * (100 if pct else 1)
    fmt = "{:.1f}" if pct else "{:.3f}"
    s = fmt.format(v.mean()) + (" ± " + fmt.format(v.std()) if len(v) > 1 else "")
    return s + ("%" if pct else "")


def _mean(runs, f) -> float:
    return float(np.mean([f(s) for s in runs]))


def _verdict(ok: bool, partly: bool = False) -> str:
    return "yes" if ok else ("partly" if partly else "**no**")


def _robust(r: RunRecord) -> float:
    return np.nan if r.defense.robust_accuracy is None else r.defense.robust_accuracy


def format_findings(by: dict[str, list[RunRecord]], base: ExperimentConfig, seeds) -> str:
    """Markdown: one row per finding with what was measured, whether it holds here, and the reference."""
    nat = by["none"]
    auc = lambda a: (lambda r: r.attacks[a].auc)  # noqa: E731
    orc = lambda a: (lambda r: r.attacks[a].oracle_accuracy)  # noqa: E731
    acc = lambda r: r.test_accuracy  # noqa: E731
    col = lambda runs, f: [f(s) for s in runs]  # noqa: E731
    gap_err = max(abs(r.attacks["gap"].oracle_accuracy - (0.5 + (r.train_accuracy - r.test_accuracy) / 2))
                  for r in nat)
    rows = [(
        "1", "gap attack accuracy = 1/2 + (train acc - test acc)/2",
        f"max deviation {gap_err:.1e} over {len(nat)} runs (gap attack {_ms(col(nat, orc('gap')), True)})",
        _verdict(gap_err < 1e-6), "exact identity (Yeom et al. 2018)")]
    d_l2, d_li = col(nat, auc("distance_l2")), col(nat, auc("distance_linf"))
    rows.append((
        "2", "members sit farther from the decision boundary",
        f"distance-attack AUC: L2 {_ms(d_l2)}, L-inf {_ms(d_li)} (> 0.5 means members farther)",
        _verdict(np.mean(d_l2) - np.std(d_l2) > 0.5, np.mean(d_l2) > 0.5), "members more distant (Li & Zhang 2021)"))
    for d, name in (("pgd_at", "PGD-AT"), ("trades", "TRADES")):
        if d not in by:
            continue
        r = by[d]
        ib, ia = _mean(r, orc("confidence")), _mean(r, orc("adv_confidence"))
        nib, nia = _mean(nat, orc("confidence")), _mean(nat, orc("adv_confidence"))
        rows.append((
            "3", f"{name} raises leakage, most with inference on adversarial inputs",
            f"I_B / I_A accuracy {_ms(col(r, orc('confidence')), True)} / {_ms(col(r, orc('adv_confidence')), True)} "
            f"vs natural {_ms(col(nat, orc('confidence')), True)} / {_ms(col(nat, orc('adv_confidence')), True)}; "
            f"robust accuracy {_ms([_robust(s) for s in r])} vs {_ms([_robust(s) for s in nat])}",
            _verdict(ia > nia and ib > nib and ia >= ib, ia > nia and ia >= ib),
            f"{SONG_REFERENCE[d]} (natural: {SONG_REFERENCE['none']})"))
    if "mmd_mixup" in by:
        m = by["mmd_mixup"]
        lower = _mean(m, auc("loss")) < _mean(nat, auc("loss"))
        lower_lira = _mean(m, auc("lira_online_fixed")) < _mean(nat, auc("lira_online_fixed"))
        small_cost = _mean(nat, acc) - _mean(m, acc) < 0.03
        rows.append((
            "4", "MMD + mix-up lowers leakage at a small accuracy cost",
            f"test acc {_ms(col(m, acc))} vs {_ms(col(nat, acc))}; loss AUC {_ms(col(m, auc('loss')))} vs "
            f"{_ms(col(nat, auc('loss')))}; distance AUC {_ms(col(m, auc('distance_l2')))} vs {_ms(d_l2)}; "
            f"LiRA (online, fixed variance) AUC {_ms(col(m, auc('lira_online_fixed')))} vs "
            f"{_ms(col(nat, auc('lira_online_fixed')))}",
            _verdict(lower and small_cost, lower_lira and small_cost),
            "lower leakage (Li, Li & Ribeiro 2021; their numbers not quoted)"))
    if "dp_sgd" in by:
        p = by["dp_sgd"]
        lower = _mean(p, auc("distance_l2")) < np.mean(d_l2)
        rows.append((
            "5", "DP-SGD lowers even the boundary-distance attack, at a utility cost",
            f"distance AUC {_ms(col(p, auc('distance_l2')))} vs {_ms(d_l2)}; test acc {_ms(col(p, acc))} vs "
            f"{_ms(col(nat, acc))}; epsilon {_ms(col(p, lambda r: r.defense.epsilon))} at delta 1e-5",
            _verdict(lower and _mean(p, acc) < _mean(nat, acc)), "DP bounds every attack (Choquette-Choo et al. 2021)"))
    head = (f"Measured on `{base.dataset}`, `{base.model}` (width {base.width}), {base.members} members and as many "
            f"non-members, {base.epochs} epochs, seeds {list(seeds)}: mean ± std over seeds. Attack accuracies are "
            "ORACLE accuracies (threshold chosen on the evaluation itself), the metric Song et al. report; AUCs are "
            f"threshold-free. The scale differs from the papers ({base.dataset} and a small {base.model}, not CIFAR-10 "
            "and wide ResNets): compare directions, not magnitudes.")
    table = ["| # | finding | measured here | holds here? | papers' reference |", "|---|---|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    return head + "\n\n" + "\n".join(table)


def reproduce_points(base: ExperimentConfig = DEFAULT_CONFIG, seeds=(0, 1, 2)) -> list:
    """The preset's runs: PRESET defenses x seeds on `base`, without bootstrap intervals."""
    return sweep_points(replace(base, bootstrap_rounds=0), PRESET, list(seeds))


def reproduce(base: ExperimentConfig = DEFAULT_CONFIG, *, seeds=(0, 1, 2), store: Store | str | Path | None = None,
              executor: str = "process", workers: int | None = None, progress=None) -> str:
    """Run the preset (PRESET defenses x seeds on `base`, reusing stored runs) and return the findings."""
    points = reproduce_points(base, seeds)
    results = run_sweep(points, store=store, executor=executor, workers=workers, progress=progress)
    base = replace(base, bootstrap_rounds=0)
    by: dict[str, list[RunRecord]] = {}
    for p, (record, _) in zip(points, results):
        by.setdefault(p.config.defense, []).append(record)
    return format_findings(by, base, seeds)


def readme_markers(dataset: str) -> tuple[str, str]:
    """The README markers a dataset's table lives between: the default data set's are the plain ones."""
    tag = "reproduce" if dataset == DEFAULT_CONFIG.dataset else f"reproduce-{dataset}"
    return f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"


def write_into_readme(table: str, readme: str | Path, dataset: str = DEFAULT_CONFIG.dataset) -> None:
    """Replace the text between the dataset's reproduce markers in the README (appending them if absent)."""
    start, end = readme_markers(dataset)
    path = Path(readme)
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{table}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
