import streamlit as st

from dashboard import state
from mia_core import experiment as ex
from mia_core import figures, views
from mia_core.config import TABLE_DEMO

st.title("Membership Leakage Explorer")
left, right = st.columns([3, 2])
with left:
    st.markdown(
        "**Membership inference** asks: *was this record in the model's training set?* "
        "A model that fits its training data closely treats those records differently — lower loss, higher "
        "confidence, and a larger **distance to the decision boundary** (the smallest change that flips the "
        "prediction). This dashboard trains a model, measures every sample's distance and the classic signals, "
        "and scores how well each separates members from non-members: ROC, AUC and TPR at low FPR."
    )
    guess = views.estimate_seconds(ex.DEFAULT_CONFIG, [r.record for r in state.all_runs()])
    if st.button("Run the demo", type="primary", key="demo",
                 help=views.describe(ex.DEFAULT_CONFIG) + (f"; {views.format_seconds(guess.seconds)}, {guess.basis}"
                                                           if guess.seconds is not None else "")):
        try:
            state.submit(ex.DEFAULT_CONFIG, "the demo")
            st.rerun()
        except state.RUN_ERRORS as err:
            state.show_error(err)
    st.caption("Demo: " + views.describe(ex.DEFAULT_CONFIG) + ". Data: scikit-learn's 8x8 digits, bundled.")
    if st.button("Run the table demo", key="demo_table",
                 help="Was this patient in the training set? " + views.describe(TABLE_DEMO) +
                      ": scikit-learn's breast-cancer table (569 patients, 30 features), bundled."):
        try:
            state.submit(TABLE_DEMO, "the table demo")
            st.rerun()
        except state.RUN_ERRORS as err:
            state.show_error(err)
    st.page_link("app_pages/audit.py", label="Audit your own model (ONNX) on your own data", icon=":material/upload:")
with right:
    st.plotly_chart(figures.schematic_figure(), width="stretch")

run = state.current_run()
if run is None:
    if not state.offer_runs():
        st.info("Press **Run the demo**, or set up your own model on the **Experiment** page.")
    st.stop()

state.first_results_note(run)
rec = run.record
head = views.headline(rec)
st.subheader("Headline — " + views.run_label(rec, state.run_names().get(run.run_id)))
if note := views.audit_note(rec):
    st.info(state.plain(note), icon=":material/fact_check:")
c1, c2, c3, c4 = st.columns(4)
c1.metric("test accuracy", f"{head.test_accuracy:.3f}", help=views.METRIC_HELP["test accuracy"])
c2.metric("train accuracy", f"{head.train_accuracy:.3f}", help=views.METRIC_HELP["train accuracy"])
c3.metric(f"highest attack AUC ({head.best_attack}, picked on this evaluation)", f"{head.auc:.3f}",
          help=views.METRIC_HELP["AUC"] + " The best of all attacks on this evaluation: an optimistic (oracle) "
                                          "choice, since it uses the evaluation's membership to pick the attack.")
c4.metric("its TPR at 1% FPR", f"{head.tpr_at_1pct_fpr:.3f}", help=views.METRIC_HELP["TPR@1%"])

a, b = st.columns(2)
with a:
    if "distance_l2" in rec.pending:
        st.caption("The boundary distances are being computed: their histogram appears here when they are done.")
    else:
        st.plotly_chart(figures.distance_histogram(*run.table.member_nonmember("distance_l2"), box=run.dataset.bounds),
                        width="stretch")
with b:
    scored = views.scored_attacks(rec)
    names = [n for n in dict.fromkeys([head.best_attack, "distance_l2", "loss", "modified_entropy"]) if n in scored]
    st.plotly_chart(figures.roc_figure(state.rocs(run, names), aucs={n: rec.attacks[n].auc for n in names}),
                    width="stretch")
st.page_link("app_pages/distances.py", label="Explore the distances", icon=":material/straighten:")
st.page_link("app_pages/attacks.py", label="Compare every attack", icon=":material/target:")
