import json

import streamlit as st

from dashboard import state
from mia_core import figures, views

st.title("Export")
run = state.require_run()
st.caption(views.describe(run.config))

rid = run.run_id.replace("/", "-")
st.download_button("Per-sample table (CSV)", run.frame().to_csv(index=False), f"per_sample-{rid}.csv", "text/csv",
                   help="One row per scored sample: dataset index, group, label, prediction and every attack's score.",
                   key="dl_csv")
st.download_button("Summary (JSON)", json.dumps(run.record.to_json(), indent=2), f"summary-{rid}.json",
                   "application/json", key="dl_json")

st.subheader("Figures")
st.caption("Interactive HTML downloads (plotly embedded: they open offline); every chart also has a camera button "
           "(top right) for a PNG.")
attacks = list(run.record.attacks)
aucs = {a: m.auc for a, m in run.record.attacks.items()}
figs = {
    "distance_histogram_l2": figures.distance_histogram(*run.table.member_nonmember("distance_l2"),
                                                        title="Distance to the decision boundary (L2)"),
    "distance_histogram_linf": figures.distance_histogram(*run.table.member_nonmember("distance_linf"),
                                                          norm_label="L-inf norm",
                                                          title="Distance to the decision boundary (L-inf)"),
    "roc": figures.roc_figure(state.rocs(run, attacks), aucs=aucs, title="ROC of every attack (linear axes)"),
    "roc_loglog": figures.roc_figure(state.rocs(run, attacks), aucs=aucs, log=True,
                                     title="ROC of every attack (log-log axes: the low-FPR regime)"),
}
for name, fig in figs.items():
    c1, c2 = st.columns([4, 1])
    c1.plotly_chart(fig, width="stretch", key=f"fig_{name}")
    c2.download_button("HTML", fig.to_html(include_plotlyjs=True), f"{name}-{rid}.html", "text/html",
                       key=f"dl_{name}")
