"""Cached helpers over mia_core and the current run (shared through the URL's query parameters)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import streamlit as st

from mia_core import experiment as ex
from mia_core.attacks import ATTACK_HELP, ATTACKS
from mia_core.metrics import roc_band, roc_points



def store_root() -> Path:
    """The store the app reads and writes: $MIA_STORE, else ./mia_runs."""
    return Path(os.environ.get("MIA_STORE", "mia_runs"))

METRIC_HELP = {
    "AUC": "Area under the ROC curve: the chance that a random member scores above a random non-member (0.5 = no leak).",
    "TPR@0.1%": "Share of members caught when at most 0.1% of non-members are wrongly accused.",
    "TPR@1%": "Share of members caught when at most 1% of non-members are wrongly accused.",
    "TPR@10%": "Share of members caught when at most 10% of non-members are wrongly accused.",
    "advantage": "max over thresholds of TPR - FPR (Yeom et al.'s membership advantage).",
    "oracle accuracy": "ORACLE upper bound: accuracy at the best threshold picked with the true membership; "
                       "no real attacker can pick it.",
    "test accuracy": "Accuracy on the held-out non-members.",
    "train accuracy": "Accuracy on the members (training set).",
}


def run_id(result_dir: str | Path) -> str:
    p = Path(result_dir)
    return f"{p.parent.name}/{p.name}"


@st.cache_resource(max_entries=8, show_spinner="Opening the run…")
def open_run(eval_dir: str) -> ex.RunResult:
    """A stored run with its model, kept in memory across reruns and sessions."""
    return ex.load_run(eval_dir)


def set_current(result_dir: str | Path) -> None:
    st.session_state["run"] = run_id(result_dir)
    st.query_params["run"] = run_id(result_dir)


def current_run() -> ex.RunResult | None:
    """The run chosen in this session (or shared in the URL), if it is in the store."""
    rid = st.query_params.get("run") or st.session_state.get("run")
    if not rid:
        return None
    path = store_root() / rid
    if not (path / "summary.json").is_file():
        return None
    st.session_state["run"] = rid
    if st.query_params.get("run") != rid:
        st.query_params["run"] = rid
    return open_run(str(path))


def run_with_progress(config: ex.ExperimentConfig, label: str = "Running the experiment", *,
                      make_current: bool = True) -> ex.RunResult:
    """Run (or reuse) an experiment with a live status box and progress bar; by default make it current."""
    with st.status(label, expanded=True) as status:
        bar = st.progress(0.0, text="starting")

        def progress(stage: str, frac: float) -> None:
            bar.progress(min(max(frac, 0.0), 1.0), text=stage)

        result = ex.run_experiment(config, store_root=store_root(), progress=progress)
        status.update(label=f"{label}: done" + (" (reused from the store)" if result.reused else ""),
                      state="complete", expanded=False)
    if make_current:
        set_current(result.eval_dir)
    return result


def require_run() -> ex.RunResult:
    """The current run, or a prompt to create one (and stop the page)."""
    run = current_run()
    if run is None:
        st.info("No run is open yet. Run the demo (digits, a small MLP, about ten seconds) or choose an "
                "experiment on the Experiment page.")
        if st.button("Run the demo", type="primary", key="demo_inline"):
            run_with_progress(ex.DEFAULT_CONFIG, "Training the demo model")
            st.rerun()
        st.stop()
    return run


@st.cache_data(max_entries=64, show_spinner=False)
def roc_data(eval_dir: str, attack: str):
    run = open_run(eval_dir)
    return roc_points(run.scores(attack, "members"), run.scores(attack, "nonmembers"))


@st.cache_data(max_entries=64, show_spinner=False)
def roc_band_data(eval_dir: str, attack: str, log: bool):
    run = open_run(eval_dir)
    return roc_band(run.scores(attack, "members"), run.scores(attack, "nonmembers"), log=log, rounds=100)


@st.cache_data(show_spinner=False)
def store_summaries(version: float) -> list[dict]:
    """Every finished run in the store; `version` (see store_version) invalidates the cache."""
    return ex.list_runs(store_root())


def store_version() -> float:
    paths = list(store_root().glob("*/eval-*"))
    return max((p.stat().st_mtime for p in paths), default=0.0) + len(paths)


def metrics_table(summary: dict) -> "list[dict]":
    rows = []
    for a in ATTACKS:
        m = summary["attacks"][a]
        rows.append({
            "attack": a, "AUC": m["auc"], "AUC 95% CI": f"[{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]",
            "TPR@0.1%": m["tpr_at_fpr"]["0.001"], "TPR@1%": m["tpr_at_fpr"]["0.01"],
            "TPR@10%": m["tpr_at_fpr"]["0.1"], "advantage": m["max_advantage"],
            "oracle accuracy": m["oracle_accuracy"],
        })
    return rows


def metric_column_config() -> dict:
    cfg = {k: st.column_config.NumberColumn(k, help=v, format="%.3f") for k, v in METRIC_HELP.items()}
    cfg["attack"] = st.column_config.TextColumn("attack", help="; ".join(f"{k}: {v}" for k, v in ATTACK_HELP.items()))
    return cfg


def describe(config: ex.ExperimentConfig) -> str:
    c = asdict(config)
    return f"{c['dataset']} · {c['model']} (width {c['width']}) · {c['members']} members · {c['epochs']} epochs · seed {c['seed']}"


def finite(a: np.ndarray) -> np.ndarray:
    return a[np.isfinite(a)]


@st.cache_data(max_entries=16, show_spinner=False)
def vulnerability_table(eval_dir: str):
    """Members and non-members ranked by merged exposure (mia_core.metrics.vulnerability)."""
    import pandas as pd

    from mia_core.metrics import vulnerability

    run = open_run(eval_dir)
    # attacks with reference scores only (LiRA's points must be in its shadows' pool; I_V may be undefined)
    usable = [a for a in ATTACKS if np.isfinite(run.scores(a, "reference")).any()]
    ref = {a: run.scores(a, "reference") for a in usable}
    frames = []
    for g in ("members", "nonmembers"):
        exposure = vulnerability({a: run.scores(a, g) for a in usable}, ref)
        frames.append(pd.DataFrame({"dataset index": run.arrays[f"{g}/index"], "group": g,
                                    "label": run.arrays[f"{g}/label"], "exposure (FPR)": exposure,
                                    "distance_l2": run.scores("distance_l2", g), "loss": -run.scores("loss", g)}))
    return pd.concat(frames).sort_values("exposure (FPR)", kind="stable").reset_index(drop=True)
