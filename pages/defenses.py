import numpy as np
import pandas as pd
import streamlit as st

from dashboard import state
from mia_core import figures
from mia_core.attacks import ATTACKS
from mia_core.metrics import pareto_front

st.title("Defenses and the trade-off")
st.caption("Every finished run in the store, test accuracy against leakage. Up and to the left is better.")

runs = state.store_summaries(state.store_version())
if len(runs) < 1:
    st.info("The store is empty: train some models on the Experiment page first.")
    st.stop()

c1, c2 = st.columns(2)
attack = c1.selectbox("leakage measured by", ["best attack", *ATTACKS])
measure = c2.radio("leakage metric", ["AUC", "TPR at 1% FPR"], horizontal=True)


def leak(s: dict) -> float:
    key = (lambda m: m["auc"]) if measure == "AUC" else (lambda m: m["tpr_at_fpr"]["0.01"])
    if attack == "best attack":
        return max(key(m) for m in s["attacks"].values())
    return key(s["attacks"][attack])


table = pd.DataFrame([{
    "run": state.run_id(s["eval_dir"]), "dataset": s["config"]["dataset"], "model": s["config"]["model"],
    "defense": s["config"].get("defense", "none"), "strength": s["config"].get("defense_strength", 0.0),
    "weight decay": s["config"]["weight_decay"], "members": s["n_members"], "seed": s["config"]["seed"],
    "test accuracy": s["test_accuracy"], "leakage": leak(s),
} for s in runs])
datasets = sorted(table["dataset"].unique())
ds = st.selectbox("dataset", datasets, index=datasets.index("digits") if "digits" in datasets else 0)
sub = table[table["dataset"] == ds].reset_index(drop=True)
front = pareto_front(sub["test accuracy"].to_numpy(), sub["leakage"].to_numpy())
labels = [f"{r.model} · {r.defense} {r.strength:g} · wd {r['weight decay']:g} · seed {r.seed}" for _, r in sub.iterrows()]
st.plotly_chart(figures.tradeoff_figure(sub["test accuracy"].to_numpy(), sub["leakage"].to_numpy(), labels, front,
                                        leak_name=f"{attack} {measure}", groups=list(sub["defense"])),
                width="stretch")
st.dataframe(sub.assign(pareto=np.isin(np.arange(len(sub)), front)), hide_index=True, width="stretch")
