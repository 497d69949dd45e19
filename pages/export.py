import json

import streamlit as st

from dashboard import state
from mia_core import figures

st.title("Export")
run = state.require_run()
st.caption(state.describe(run.config))

rid = state.run_id(run.eval_dir).replace("/", "-")
st.download_button("Per-sample table (CSV)", run.table().to_csv(index=False), f"per_sample-{rid}.csv", "text/csv",
                   help="One row per scored sample: dataset index, group, label, prediction and every attack's score.")
st.download_button("Summary (JSON)", json.dumps(run.summary, indent=2), f"summary-{rid}.json", "application/json")

st.subheader("Figures")
st.caption("Interactive HTML downloads; every chart also has a camera button (top right) for a PNG.")
figs = {
    "distance_histogram_l2": figures.distance_histogram(run.scores("distance_l2", "members"),
                                                        run.scores("distance_l2", "nonmembers")),
    "distance_histogram_linf": figures.distance_histogram(run.scores("distance_linf", "members"),
                                                          run.scores("distance_linf", "nonmembers"),
                                                          norm_label="L-inf norm"),
    "roc": figures.roc_figure({a: state.roc_data(str(run.eval_dir), a) for a in run.summary["attacks"]},
                              aucs={a: m["auc"] for a, m in run.summary["attacks"].items()}),
    "roc_loglog": figures.roc_figure({a: state.roc_data(str(run.eval_dir), a) for a in run.summary["attacks"]},
                                     aucs={a: m["auc"] for a, m in run.summary["attacks"].items()}, log=True),
}
for name, fig in figs.items():
    c1, c2 = st.columns([4, 1])
    c1.plotly_chart(fig, width="stretch", key=f"fig_{name}")
    c2.download_button("HTML", fig.to_html(include_plotlyjs="cdn"), f"{name}-{rid}.html", "text/html",
                       key=f"dl_{name}")
