import numpy as np
import pandas as pd
import streamlit as st

from dashboard import state
from mia_core import figures, views
from mia_core.distances import SEARCHES

st.title("Distances to the decision boundary")
run = state.require_run()
st.caption(views.describe(run.config))
if note := views.audit_note(run.record):
    st.caption(state.plain(note))
if "distance_l2" in run.record.pending:
    st.stop()  # the first results hold no distance yet: the note above says what is being computed

c1, _ = st.columns([2, 3])
method = c1.radio("search", list(SEARCHES), index=list(SEARCHES).index(run.config.distance_method), horizontal=True,
                  key="search_method",
                  help="; ".join(f"{s.name}: {s.help}" for s in SEARCHES.specs()) + ". Switching computes that "
                       "search on the same trained model (once; then it is stored).")
if method != run.config.distance_method:
    try:
        state.submit(run.config.replace(distance_method=method), f"{method} distances")
        st.rerun()
    except state.RUN_ERRORS as err:
        state.show_error(err)


@st.fragment
def histogram_panel(root: str, run_id: str) -> None:
    run = state.open_run(root, run_id)
    a, b, c, d = st.columns(4)
    norm = a.radio("norm", ["L2", "L-inf"], horizontal=True, key="hist_norm", persist_state="session")
    log_x = b.toggle("log distance axis", key="hist_log", persist_state="session")  # kept across page visits
    density = c.toggle("density instead of counts", key="hist_density", persist_state="session")
    bins = d.slider("bins", 10, 100, 40, step=5, key="hist_bins")
    attack = "distance_l2" if norm == "L2" else "distance_linf"
    m, n = run.table.member_nonmember(attack)
    st.plotly_chart(figures.distance_histogram(m, n, norm_label=figures.NORM_UNITS[attack], log_x=log_x, box=run.dataset.bounds,
                                               density=density, bins=bins,
                                               title=f"Distance to the decision boundary ({norm})"), width="stretch")
    metrics = run.record.attacks[attack]
    k1, k2, k3, k4 = st.columns(4)
    k1.metric("distance attack AUC", f"{metrics.auc:.3f}", help=views.METRIC_HELP["AUC"])
    k2.metric("TPR at 1% FPR", f"{metrics.tpr_at_fpr[0.01]:.3f}", help=views.METRIC_HELP["TPR@1%"])
    k3.metric("median member distance", f"{np.median(m):.4f}")
    k4.metric("median non-member distance", f"{np.median(n):.4f}")
    st.dataframe(views.distance_stats(m, n), width="stretch", key="distance_stats")


histogram_panel(str(run.store.root), run.run_id)

st.subheader("Label-only against white-box distance")
if "label_only_l2" in run.record.pending:
    st.caption("The label-only search is still running: this comparison appears when it is done.")
else:
    st.caption(f"The label-only search sees predicted labels only ({run.record.label_only_queries_used:.0f} "
               "queries a sample on average); every point it returns is misclassified, so its distance is an upper "
               "bound of the minimal one. Points above the diagonal: the white-box search found a closer boundary "
               "point.")
    lo_norm = st.radio("scatter norm", ["L2", "L-inf"], horizontal=True, key="scatter_norm")
    wb_key, lo_key = ("distance_l2", "label_only_l2") if lo_norm == "L2" else ("distance_linf", "label_only_linf")
    wb_m, wb_n = run.table.member_nonmember(wb_key)
    wb, lo = np.r_[wb_m, wb_n], np.r_[run.table.member_nonmember(lo_key)]
    member = np.r_[np.ones(len(wb_m), bool), np.zeros(len(wb_n), bool)]
    st.plotly_chart(figures.scatter_figure(wb, lo, member, x_title=f"white-box distance ({lo_norm})",
                                           y_title=f"label-only distance ({lo_norm})",
                                           title="Each sample's distance, two ways"), width="stretch")
    st.caption(f"label-only ≥ white-box for {views.label_only_agreement(wb, lo):.1%} of samples; "
               f"label-only attack AUC {run.record.attacks[lo_key].auc:.3f} vs white-box "
               f"{run.record.attacks[wb_key].auc:.3f}.")

st.subheader("Per-sample explorer")
norm = st.radio("explorer norm", ["L2", "L-inf"], horizontal=True, key="explorer_norm")
attack = "distance_l2" if norm == "L2" else "distance_linf"
count = st.slider("samples per group", 1, 8, 4, key="explorer_count")
if run.dataset.is_image:
    amplify = st.slider("perturbation amplification", 1, 50, 10, key="explorer_amplify",
                        help="The perturbation is scaled by this factor around mid-grey to make it visible.")
for title, (group, which) in views.EXPLORER_GROUPS.items():
    gs = run.table[group]
    scores = gs.scores[attack]
    pick = views.extreme_samples(scores, which, count)
    st.markdown(f"**{title}**")
    x_clean = run.dataset.x[gs.index[pick]]
    x_adv = gs.artifacts[f"x_adv_{attack}"][pick]
    labels, adv_labels = gs.label[pick], gs.artifacts[f"adv_label_{attack}"][pick]
    if run.dataset.is_table:  # a table row and the features that had to change, in the table's units
        name = views.class_name(run.dataset)
        choices = [f"#{i} · {name(lab)} → {name(alab)} · distance {dist:.3f}"
                   for i, lab, alab, dist in zip(gs.index[pick], labels, adv_labels, scores[pick])]
        if not choices:
            st.caption("No sample with a found, non-zero distance in this group.")
            continue
        sel = st.selectbox("sample", range(len(choices)), format_func=choices.__getitem__, key=f"explore_{which}_{group}")
        changes = views.feature_changes(run.dataset, x_clean[sel], x_adv[sel])
        left, right = st.columns([3, 2])
        left.dataframe(changes, hide_index=True, width="stretch", key=f"changes_{which}_{group}")
        right.plotly_chart(figures.feature_change_figure(changes.head(12), title="the largest changes"),
                           width="stretch", key=f"changes_fig_{which}_{group}")
        continue
    if not run.dataset.is_image:
        st.dataframe(pd.DataFrame({"input": [np.round(v, 3).tolist() for v in x_clean],
                                   "adversarial": [np.round(v, 3).tolist() for v in x_adv],
                                   "label": labels, "label after": adv_labels, "distance": scores[pick]}))
        continue
    cols = st.columns(count)
    for col, xc, xa, lab, alab, dist in zip(cols, x_clean, x_adv, labels, adv_labels, scores[pick]):
        pert = np.clip(0.5 + amplify * (xa - xc), 0, 1)
        to_img = (lambda a: a.transpose(1, 2, 0) if a.shape[0] == 3 else a[0])
        col.image([to_img(xc), to_img(xa), to_img(pert)], width=70, clamp=True,
                  caption=[f"label {lab}", f"→ {alab}", f"d={dist:.3f}"])
