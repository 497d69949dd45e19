import numpy as np
import pandas as pd
import streamlit as st

from dashboard import state
from mia_core import experiment as ex
from mia_core import figures
from mia_core.attacks import ATTACKS
from mia_core.defenses import DEFAULT_STRENGTH, DEFENSE_HELP, DEFENSES
from mia_core.metrics import pareto_front
from mia_core.reproduce import reproduce

st.title("Defenses and the trade-off")
st.caption("Train defended models, then compare test accuracy against leakage over every run in the store.")

RANGES = {"pgd_at": (0.0, 0.3, 0.02), "trades": (0.0, 6.0, 0.5), "mmd_mixup": (0.0, 30.0, 1.0),
          "mixup": (0.0, 4.0, 0.1), "label_smoothing": (0.0, 0.5, 0.05), "weight_decay": (0.0, 0.05, 0.001),
          "dropout": (0.0, 0.8, 0.05), "early_stopping": (1.0, 30.0, 1.0), "dp_sgd": (0.3, 5.0, 0.1)}

with st.expander("Train defended models", expanded=False):
    opened = state.current_run()
    base = opened.config if opened else ex.DEFAULT_CONFIG
    base = ex.ExperimentConfig(**{**base.__dict__, "checkpoint": None})
    st.write("Base experiment: " + state.describe(base))
    chosen = st.multiselect("defenses", [d for d in DEFENSES if d != "none"], default=["pgd_at", "mmd_mixup"],
                            help="; ".join(f"{k}: {v}" for k, v in DEFENSE_HELP.items()))
    strengths = {}
    cols = st.columns(max(len(chosen), 1))
    for col, d in zip(cols, chosen):
        lo, hi, step = RANGES[d]
        strengths[d] = col.slider(f"{d} strength", lo, hi, float(DEFAULT_STRENGTH[d]), step=step,
                                  help=DEFENSE_HELP[d])
    seeds = st.slider("seeds per point", 1, 5, 1)
    if st.button("Train", type="primary"):
        configs = [ex.ExperimentConfig(**{**base.__dict__, "defense": d, "defense_strength": s, "seed": seed})
                   for d, s in [("none", 0.0), *strengths.items()] for seed in range(seeds)]
        for i, cfg in enumerate(configs, 1):
            state.run_with_progress(cfg, f"[{i}/{len(configs)}] {cfg.defense} {cfg.defense_strength:g} seed {cfg.seed}",
                                    make_current=False)
    st.divider()
    st.write("**Reproduce the papers' findings** on the embedded data (natural, PGD-AT, TRADES, MMD + mix-up, "
             "DP-SGD; three seeds; about a minute on 2 cores the first time, instant afterwards).")
    if st.button("Run the reproduction preset"):
        bar = st.progress(0.0)
        table = reproduce(ex.DEFAULT_CONFIG, store_root=state.store_root(), executor="serial",
                          progress=lambda stage, f: bar.progress(min(f, 1.0), text=stage))
        st.session_state["reproduce_table"] = table
    if "reproduce_table" in st.session_state:
        st.markdown(st.session_state["reproduce_table"])

runs = state.store_summaries(state.store_version())
if not runs:
    st.info("The store is empty: train some models first.")
    st.stop()

c1, c2, c3 = st.columns(3)
attack = c1.selectbox("leakage measured by", ["best attack", *ATTACKS])
measure = c2.radio("leakage metric", ["AUC", "TPR at 1% FPR"], horizontal=True)


def leak(s: dict) -> float:
    key = (lambda m: m["auc"]) if measure == "AUC" else (lambda m: m["tpr_at_fpr"]["0.01"])
    if attack == "best attack":
        return key(s["attacks"][ex.best_attack(s, key)])
    return key(s["attacks"][attack])


table = pd.DataFrame([{
    "run": state.run_id(s["eval_dir"]), "dataset": s["config"]["dataset"], "model": s["config"]["model"],
    "members": s["n_members"], "defense": s["config"].get("defense", "none"),
    "strength": s["config"].get("defense_strength", 0.0), "seed": s["config"]["seed"],
    "test accuracy": s["test_accuracy"], "leakage": leak(s),
    "robust accuracy": s.get("defense", {}).get("robust_accuracy", np.nan),
} for s in runs])
groups = table.groupby(["dataset", "model", "members"]).size().sort_values(ascending=False)
options = [f"{d} · {m} · {n} members" for d, m, n in groups.index]
current = state.current_run()
key = (current.config.dataset, current.config.model, current.config.members) if current else None
pick = c3.selectbox("experiment family", options, index=list(groups.index).index(key) if key in groups.index else 0,
                    help="Runs that differ only in defense, strength and seed are compared together.")
d, m, n = groups.index[options.index(pick)]
sub = table[(table["dataset"] == d) & (table["model"] == m) & (table["members"] == n)].reset_index(drop=True)

front = pareto_front(sub["test accuracy"].to_numpy(), sub["leakage"].to_numpy())
labels = [f"{r.defense} {r.strength:g} · seed {r.seed}" for r in sub.itertuples()]
st.plotly_chart(figures.tradeoff_figure(sub["test accuracy"].to_numpy(), sub["leakage"].to_numpy(), labels, front,
                                        leak_name=f"{attack} {measure}", groups=list(sub["defense"])),
                width="stretch")

agg = (sub.groupby(["defense", "strength"])
       .agg(leakage=("leakage", "mean"), leakage_sd=("leakage", "std"), accuracy=("test accuracy", "mean"),
            accuracy_sd=("test accuracy", "std"), robust=("robust accuracy", "mean"), seeds=("seed", "count"))
       .reset_index().fillna({"leakage_sd": 0.0, "accuracy_sd": 0.0}))
a, b = st.columns(2)
a.plotly_chart(figures.strength_figure(agg, x="strength", y="leakage", group="defense", error="leakage_sd",
                                       y_title=f"{attack} {measure} (mean ± sd over seeds)"), width="stretch")
b.plotly_chart(figures.strength_figure(agg, x="strength", y="accuracy", group="defense", error="accuracy_sd",
                                       y_title="test accuracy (mean ± sd over seeds)"), width="stretch")
st.dataframe(agg, hide_index=True, width="stretch",
             column_config={"robust": st.column_config.NumberColumn(
                 "robust accuracy", help="Accuracy on non-members under a 20-step PGD attack at adv_epsilon.",
                 format="%.3f")})

st.subheader("Two runs side by side")
ids = list(sub["run"])
names = dict(zip(ids, labels))
l, r = st.columns(2)
left = l.selectbox("left", ids, format_func=names.get, index=0)
right = r.selectbox("right", ids, format_func=names.get, index=min(1, len(ids) - 1))
for col, rid in ((l, left), (r, right)):
    run = state.open_run(str(state.store_root() / rid))
    col.plotly_chart(figures.distance_histogram(run.scores("distance_l2", "members"),
                                                run.scores("distance_l2", "nonmembers"), title=names[rid]),
                     width="stretch", key=f"hist_{col is l}")
    col.plotly_chart(figures.roc_figure({a_: state.roc_data(str(run.eval_dir), a_) for a_ in
                                         ("distance_l2", "loss", "adv_confidence")},
                                        aucs={a_: run.summary["attacks"][a_]["auc"] for a_ in
                                              ("distance_l2", "loss", "adv_confidence")}),
                     width="stretch", key=f"roc_{col is l}")
