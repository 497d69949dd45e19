import numpy as np
import pandas as pd
import streamlit as st

from dashboard import state
from mia_core import figures
from mia_core import metrics as mt
from mia_core.attacks import ATTACK_HELP, ATTACKS

st.title("Attacks")
run = state.require_run()
eval_dir = str(run.eval_dir)
st.caption(state.describe(run.config) + f" · {run.summary['n_members']} members vs {run.summary['n_nonmembers']} "
           "non-members · thresholds calibrated on the reference pool, never on the evaluation's membership")

st.dataframe(pd.DataFrame(state.metrics_table(run.summary)), hide_index=True, width="stretch",
             column_config=state.metric_column_config())


@st.fragment
def roc_panel() -> None:
    c1, c2, c3 = st.columns([3, 1, 1])
    chosen = c1.multiselect("attacks", list(ATTACKS), default=["distance_l2", "label_only_l2", "loss",
                                                                "lira_online_fixed"])
    log = c2.toggle("log-log axes", help="Low-FPR behaviour is what matters for real attacks (Carlini et al. 2022).")
    bands = c3.toggle("95% bootstrap bands")
    curves = {a: state.roc_data(eval_dir, a) for a in chosen}
    band = {a: state.roc_band_data(eval_dir, a, log) for a in chosen} if bands else None
    st.plotly_chart(figures.roc_figure(curves, aucs={a: run.summary["attacks"][a]["auc"] for a in chosen},
                                       log=log, bands=band), width="stretch")


roc_panel()


@st.fragment
def threshold_panel() -> None:
    st.subheader("Choose a threshold")
    c1, c2, c3 = st.columns(3)
    attack = c1.selectbox("attack", list(ATTACKS), help="; ".join(f"{k}: {v}" for k, v in ATTACK_HELP.items()))
    target_fpr = c2.select_slider("calibration FPR (on reference data)", [0.001, 0.01, 0.05, 0.1, 0.2], value=0.01)
    prevalence = c3.slider("member prevalence among targets", 0.01, 0.99, 0.5,
                           help="Precision depends on how many of the targets really are members.")
    m, n = run.scores(attack, "members"), run.scores(attack, "nonmembers")
    ref = run.scores(attack, "reference")
    calibrated = mt.threshold_at_fpr(ref, target_fpr)
    oracle = mt.oracle_threshold(m, n)
    both = mt.finite_scores(np.r_[m, n])
    pct = st.slider("threshold (percentile of all evaluated scores)", 0.0, 100.0,
                    float(np.clip(np.mean(both <= calibrated) * 100, 0, 100)), step=0.5)
    thr = float(np.percentile(both, pct))
    conf = mt.confusion_at_threshold(m, n, thr)
    tpr, fpr = conf["tp"] / len(m), conf["fp"] / len(n)
    fig = figures.distance_histogram(m, n, norm_label=attack + " score", title=f"{attack} scores")
    fig.update_layout(xaxis_title=f"{attack} score (higher = more member-like)")
    for value, name, dash in ((thr, "your threshold", "solid"), (calibrated, f"calibrated @ {target_fpr:g} FPR", "dash"),
                              (oracle, "oracle (uses true membership)", "dot")):
        fig.add_vline(x=value, line_dash=dash, annotation_text=name)
    st.plotly_chart(fig, width="stretch")
    a, b = st.columns(2)
    with a:
        st.markdown(f"**Confusion at threshold {thr:.4g}** (member if score ≥ threshold)")
        st.table(pd.DataFrame({"predicted member": [conf["tp"], conf["fp"]],
                               "predicted non-member": [conf["fn"], conf["tn"]]},
                              index=["members", "non-members"]))
    with b:
        cal_tpr, cal_fpr = mt.rates_at_threshold(m, n, calibrated)
        orc_tpr, orc_fpr = mt.rates_at_threshold(m, n, oracle)
        st.dataframe(pd.DataFrame([
            {"threshold": "yours", "value": thr, "TPR": tpr, "FPR": fpr,
             "precision": mt.precision_at_prevalence(tpr, fpr, prevalence)},
            {"threshold": f"calibrated on reference ({target_fpr:g})", "value": calibrated, "TPR": cal_tpr,
             "FPR": cal_fpr, "precision": mt.precision_at_prevalence(cal_tpr, cal_fpr, prevalence)},
            {"threshold": "ORACLE (not achievable)", "value": oracle, "TPR": orc_tpr, "FPR": orc_fpr,
             "precision": mt.precision_at_prevalence(orc_tpr, orc_fpr, prevalence)},
        ]), hide_index=True, width="stretch")


threshold_panel()

st.subheader("Thresholds an attacker can choose")
st.caption("Each rule is fixed without the evaluation's membership labels (shadow models, per-class shadow "
           "thresholds, the distances of random noise), then measured on the target. The ORACLE rows pick the "
           "threshold with the true labels: an upper bound no attacker reaches.")
st.dataframe(pd.DataFrame([{"rule": k, **v} for k, v in run.summary.get("thresholds", {}).items()]),
             hide_index=True, width="stretch",
             column_config={"accuracy": st.column_config.NumberColumn(
                 "balanced accuracy", help="(TPR + TNR) / 2 on the target's members and non-members", format="%.3f")})

st.subheader("Most vulnerable records")
st.caption("Each record's exposure is the smallest false-positive rate, over all attacks, at which a threshold "
           "calibrated on reference data would flag it. Membership labels are shown, never used.")
table = state.vulnerability_table(eval_dir)
st.dataframe(table.head(25), hide_index=True, width="stretch",
             column_config={"exposure (FPR)": st.column_config.NumberColumn(format="%.4f",
                                                                            help="lower = more exposed")})
