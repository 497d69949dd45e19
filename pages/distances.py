import numpy as np
import pandas as pd
import streamlit as st

from dashboard import state
from mia_core import experiment as ex
from mia_core import figures
from mia_core.distances import METHODS

st.title("Distances to the decision boundary")
run = state.require_run()
st.caption(state.describe(run.config) + f" · search: {run.config.distance_method}")

c1, _ = st.columns([2, 3])
method = c1.radio("search", list(METHODS), index=list(METHODS).index(run.config.distance_method), horizontal=True,
                  help="deepfool is the fastest, superdeepfool tighter, fmn the tightest. Switching computes that "
                       "search on the same trained model (once; then it is stored).")
if method != run.config.distance_method:
    run = state.run_with_progress(ex.ExperimentConfig(**{**run.config.__dict__, "distance_method": method}),
                                  f"Computing {method} distances")
    st.rerun()


@st.fragment
def histogram_panel(eval_dir: str) -> None:
    run = state.open_run(eval_dir)
    a, b, c, d = st.columns(4)
    norm = a.radio("norm", ["L2", "L-inf"], horizontal=True)
    log_x = b.toggle("log distance axis")
    density = c.toggle("density instead of counts")
    bins = d.slider("bins", 10, 100, 40, step=5)
    attack = "distance_l2" if norm == "L2" else "distance_linf"
    m, n = run.scores(attack, "members"), run.scores(attack, "nonmembers")
    st.plotly_chart(figures.distance_histogram(m, n, norm_label=figures.NORM_UNITS[attack], log_x=log_x,
                                               density=density, bins=bins), width="stretch")
    metrics = run.summary["attacks"][attack]
    k1, k2, k3, k4 = st.columns(4)
    k1.metric("distance attack AUC", f"{metrics['auc']:.3f}", help=state.METRIC_HELP["AUC"])
    k2.metric("TPR at 1% FPR", f"{metrics['tpr_at_fpr']['0.01']:.3f}", help=state.METRIC_HELP["TPR@1%"])
    k3.metric("median member distance", f"{np.median(m):.4f}")
    k4.metric("median non-member distance", f"{np.median(n):.4f}")
    stats = pd.DataFrame({
        g: {"n": len(v), "mean": np.mean(state.finite(v)), "median": np.median(v), "10th pct": np.quantile(v, 0.1),
            "90th pct": np.quantile(v, 0.9), "zero (misclassified)": int(np.sum(v == 0)),
            "none found": int(np.sum(~np.isfinite(v)))}
        for g, v in (("members", m), ("non-members", n))
    }).T
    st.dataframe(stats, width="stretch")


histogram_panel(str(run.eval_dir))

st.subheader("Label-only against white-box distance")
st.caption(f"The label-only search sees predicted labels only ({run.summary.get('label_only_queries_used', 0):.0f} "
           "queries a sample on average); every point it returns is misclassified, so its distance is an upper bound "
           "of the minimal one. Points above the diagonal: the white-box search found a closer boundary point.")
lo_norm = st.radio("scatter norm", ["L2", "L-inf"], horizontal=True, key="scatter_norm")
wb_key, lo_key = ("distance_l2", "label_only_l2") if lo_norm == "L2" else ("distance_linf", "label_only_linf")
wb = np.r_[run.scores(wb_key, "members"), run.scores(wb_key, "nonmembers")]
lo = np.r_[run.scores(lo_key, "members"), run.scores(lo_key, "nonmembers")]
member = np.r_[np.ones(len(run.scores(wb_key, "members")), bool), np.zeros(len(run.scores(wb_key, "nonmembers")), bool)]
st.plotly_chart(figures.scatter_figure(wb, lo, member, x_title=f"white-box distance ({lo_norm})",
                                       y_title=f"label-only distance ({lo_norm})",
                                       title="Each sample's distance, two ways"), width="stretch")
st.caption(f"label-only ≥ white-box for {np.mean(lo[wb > 0] >= wb[wb > 0] * (1 - 1e-6)):.1%} of samples; "
           f"label-only attack AUC {run.summary['attacks'][lo_key]['auc']:.3f} vs white-box "
           f"{run.summary['attacks'][wb_key]['auc']:.3f}.")

st.subheader("Per-sample explorer")
norm = st.radio("explorer norm", ["L2", "L-inf"], horizontal=True, key="explorer_norm")
attack = "distance_l2" if norm == "L2" else "distance_linf"
count = st.slider("samples per group", 1, 8, 4)
amplify = st.slider("perturbation amplification", 1, 50, 10,
                    help="The perturbation is scaled by this factor around mid-grey to make it visible.")
groups = {
    "members farthest from the boundary (most exposed)": ("members", -1),
    "members nearest the boundary (least exposed)": ("members", 1),
    "non-members farthest (most likely to be wrongly accused)": ("nonmembers", -1),
    "non-members nearest": ("nonmembers", 1),
}
for title, (group, order) in groups.items():
    scores = run.scores(attack, group)
    finite_idx = np.flatnonzero(np.isfinite(scores) & (scores > 0))
    pick = finite_idx[np.argsort(order * scores[finite_idx], kind="stable")[:count]]
    st.markdown(f"**{title}**")
    x_clean = run.dataset.x[run.arrays[f"{group}/index"][pick]]
    x_adv = run.arrays[f"{group}/x_adv_{attack}"][pick]
    labels, adv_labels = run.arrays[f"{group}/label"][pick], run.arrays[f"{group}/adv_label_{attack}"][pick]
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
