import json

import streamlit as st

from dashboard import state
from mia_core import figures, views
from mia_core.report import chromium as report_pdf_available

st.title("Export")
run = state.require_run()
st.caption(views.describe(run.config))
if run.record.is_first_results:
    st.stop()  # a report or a table of half a run would be mistaken for the whole: exported when it is done

rid = run.run_id.replace("/", "-")
st.download_button("Per-sample table (CSV)", run.frame().to_csv(index=False), f"per_sample-{rid}.csv", "text/csv",
                   help="One row per scored sample: dataset index, group, label, prediction and every attack's score.",
                   key="dl_csv")
st.download_button("Summary (JSON)", json.dumps(run.record.to_json(), indent=2), f"summary-{rid}.json",
                   "application/json", key="dl_json")

st.subheader("Audit report")
st.caption("Setup, accuracy, every attack's table and log-log ROC, distances, where it leaks, epsilon bounds, the "
           "most exposed records, defenses compared and software versions, in one page that opens offline.")
if st.button("Build the report", key="report_build"):
    try:
        with st.spinner("Writing the report…"):
            built = state.build_report(str(run.store.root), run.run_id, with_pdf=report_pdf_available())
        st.session_state["report"] = (run.run_id, built)
    except (RuntimeError, OSError, ValueError) as err:
        state.show_error(err)
if st.session_state.get("report", (None,))[0] == run.run_id:
    built = st.session_state["report"][1]
    r1, r2 = st.columns(2)
    r1.download_button("Report (HTML)", built["html"], f"report-{rid}.html", "text/html", key="dl_report_html")
    if built.get("pdf"):
        r2.download_button("Report (PDF)", built["pdf"], f"report-{rid}.pdf", "application/pdf", key="dl_report_pdf")
    else:
        r2.caption("No Chromium on this server: HTML only.")

st.subheader("Figures")
st.caption("Interactive HTML downloads (plotly embedded: they open offline); every chart also has a camera button "
           "(top right) for a PNG.")
attacks = list(run.record.attacks)
aucs = {a: m.auc for a, m in run.record.attacks.items()}
figs = {
    "distance_histogram_l2": figures.distance_histogram(*run.table.member_nonmember("distance_l2"),
                                                        box=run.dataset.bounds, title="Distance to the decision boundary (L2)"),
    "distance_histogram_linf": figures.distance_histogram(*run.table.member_nonmember("distance_linf"),
                                                          norm_label="L-inf norm", box=run.dataset.bounds,
                                                          title="Distance to the decision boundary (L-inf)"),
    "roc": figures.roc_figure(state.rocs(run, attacks), aucs=aucs, title="ROC of every attack (linear axes)"),
    "roc_loglog": figures.roc_figure(state.rocs(run, attacks), aucs=aucs, log=True,
                                     title="ROC of every attack (log-log axes: the low-FPR regime)"),
}
if report_pdf_available() and st.button("Make PNG files of these figures", key="png_build",
                                       help="Drawn on the server by Chromium, as the report's PDF is."):
    try:
        with st.spinner("Drawing PNG files…"):
            st.session_state["pngs"] = (run.run_id, state.figure_pngs(figs))
    except (RuntimeError, OSError) as err:
        state.show_error(err)
pngs = st.session_state["pngs"][1] if st.session_state.get("pngs", (None,))[0] == run.run_id else {}
for name, fig in figs.items():
    c1, c2 = st.columns([4, 1])
    c1.plotly_chart(fig, width="stretch", key=f"fig_{name}")
    c2.download_button("HTML", fig.to_html(include_plotlyjs=True), f"{name}-{rid}.html", "text/html",
                       key=f"dl_{name}")
    if name in pngs:
        c2.download_button("PNG", pngs[name], f"{name}-{rid}.png", "image/png", key=f"dl_png_{name}")
