import numpy as np
import pandas as pd
import streamlit as st

from dashboard import state
from mia_core import figures, views
from mia_core import metrics as mt
from mia_core.slices import SLICINGS

st.title("Attacks")
run = state.require_run()
rec, root, rid = run.record, str(run.store.root), run.run_id
scored = views.scored_attacks(rec)  # all of them once the run is finished; the cheap ones in its first results
st.caption(views.describe(run.config) + f" · {rec.n_members} members vs {rec.n_nonmembers} "
           "non-members · thresholds calibrated on the reference pool, never on the evaluation's membership")

metrics = views.metrics_table(rec)
st.dataframe(metrics, hide_index=True, width="stretch", column_config=state.metric_column_config(),
             key="metrics_table", height=views.table_height(len(metrics)))  # every attack, no inner scroll
if note := views.resolution_note(rec.n_nonmembers):
    st.caption(note)
if privacy := views.privacy_summary(rec):
    st.info(privacy, icon=":material/policy:")


@st.fragment
def roc_panel() -> None:
    c1, c2, c3 = st.columns([3, 1, 1])
    chosen = c1.multiselect("attacks", scored, default=[a for a in ("distance_l2", "label_only_l2", "loss",
                                                                    "lira_online_fixed") if a in scored],
                            format_func=views.attack_title, key="roc_attacks")
    log = c2.toggle("log-log axes", key="roc_log", persist_state="session",  # kept across page visits
                    help="Low-FPR behaviour is what matters for real attacks (Carlini et al. 2022).")
    bands = c3.toggle("95% bootstrap bands", key="roc_bands", persist_state="session")
    band = {a: state.roc_band_data(root, rid, a, log) for a in chosen} if bands else None
    st.plotly_chart(figures.roc_figure(state.rocs(run, chosen), aucs={a: rec.attacks[a].auc for a in chosen},
                                       log=log, bands=band), width="stretch")


roc_panel()


@st.fragment
def threshold_panel() -> None:
    st.subheader("Choose a threshold")
    c1, c2, c3 = st.columns(3)
    attack = c1.selectbox("attack", scored, format_func=views.attack_title, help=state.attack_help(),
                          key="thr_attack")
    target_fpr = c2.select_slider("calibration FPR (on reference data)", [0.001, 0.01, 0.05, 0.1, 0.2], value=0.01,
                                  key="thr_fpr")
    prevalence = c3.slider("member prevalence among targets", 0.01, 0.99, 0.5, key="thr_prevalence",
                           help="Precision depends on how many of the targets really are members.")
    m, n = run.table.member_nonmember(attack)
    ref = run.table.reference_scores(attack)
    both = mt.finite_scores(np.r_[m, n])
    start = mt.threshold_at_fpr(ref, target_fpr) if ref is not None else float(np.median(both))
    pct = st.slider("threshold (percentile of all evaluated scores)", 0.0, 100.0,
                    float(np.clip(np.mean(both <= start) * 100, 0, 100)), step=0.5, key="thr_percentile")
    thr = float(np.percentile(both, pct))
    rows = views.threshold_rows(run.table, attack, thr, target_fpr, prevalence)
    if ref is None:
        st.caption(f"{views.attack_title(attack)} has no reference scores (its points must be in the shadow models' "
                   "pool), so no threshold can be calibrated on reference data for it.")
    conf = mt.confusion_at_threshold(m, n, thr)
    fig = figures.distance_histogram(m, n, norm_label=attack + " score", box=None, title=f"{views.attack_title(attack)} scores")
    fig.update_layout(xaxis_title=f"{attack} score (higher = more member-like)")
    for i, (r, dash) in enumerate(zip(rows, ("solid", "dash", "dot") if len(rows) == 3 else ("solid", "dot"))):
        fig.add_vline(x=r.threshold, line_dash=dash)  # labels stacked at the top, one line each: never overprint
        fig.add_annotation(x=r.threshold, y=1 - 0.08 * i, yref="paper", text=r.rule, showarrow=False,
                           xanchor="left", bgcolor="rgba(255,255,255,0.8)")
    st.plotly_chart(fig, width="stretch")
    a, b = st.columns(2)
    with a:
        st.markdown(f"**Confusion at threshold {thr:.4g}** (member if score ≥ threshold)")
        st.table(pd.DataFrame({"predicted member": [conf["tp"], conf["fp"]],
                               "predicted non-member": [conf["fn"], conf["tn"]]},
                              index=["members", "non-members"]))
    with b:
        st.dataframe(pd.DataFrame([{"threshold": r.rule, "value": r.threshold, "TPR": r.tpr, "FPR": r.fpr,
                                    "precision": r.precision} for r in rows]),
                     hide_index=True, width="stretch", key="thr_rows")


threshold_panel()

st.subheader("Where it leaks")
st.caption("The attack's AUC within slices of the evaluation, with 95% bootstrap intervals: per class, per correctly "
           "or wrongly classified sample, per decile of the boundary distance (D1 nearest). Slices with fewer than "
           "5 members or non-members are left empty.")
s1, s2 = st.columns(2)
slice_attack = s1.selectbox("attack", [a for a, m in rec.attacks.items() if m.defined], key="slice_attack",
                            format_func=views.attack_title, index=0)
slicing = s2.radio("slice by", SLICINGS, horizontal=True, key="slice_by", persist_state="session")
st.plotly_chart(figures.slice_figure(state.slice_rows(root, rid, slice_attack, slicing),
                                     title=f"{views.attack_title(slice_attack)} by {slicing}"), width="stretch")

if rec.is_first_results:
    st.info("Thresholds an attacker can choose and the most vulnerable records need the reference pool's scores: "
            "they appear when the run is finished.")
    st.stop()

st.subheader("Thresholds an attacker can choose")
st.caption("Each rule is fixed without the evaluation's membership labels (shadow models, per-class shadow "
           "thresholds, the distances of random noise), then measured on the target. The ORACLE rows pick the "
           "threshold with the true labels: an upper bound no attacker reaches.")
st.dataframe(pd.DataFrame([{"rule": k, "threshold": v.threshold, "tpr": v.tpr, "fpr": v.fpr, "accuracy": v.accuracy}
                           for k, v in rec.thresholds.items()]),
             hide_index=True, width="stretch", key="rules_table",
             column_config={"accuracy": st.column_config.NumberColumn(
                 "balanced accuracy", help="(TPR + TNR) / 2 on the target's members and non-members", format="%.3f")})

st.subheader("Most vulnerable records")
st.caption("Each record's exposure is the smallest false-positive rate, over all attacks with reference scores, "
           "at which a threshold calibrated on reference data would flag it. Membership labels are shown, never used.")
table = state.vulnerability_table(root, rid)
st.dataframe(table.head(25), hide_index=True, width="stretch", key="vulnerable_table",
             column_config={"exposure (FPR)": st.column_config.NumberColumn(format="%.4f",
                                                                            help="lower = more exposed")})
