import numpy as np
import streamlit as st

from dashboard import state
from mia_core import figures, views
from mia_core.config import ExperimentConfig
from mia_core.models import probability_grid

st.title("Playground")
st.caption("A 2-D classroom demo: watch a model overfit its training points, and watch leakage appear and shrink.")

for key, value in dict(pg_dataset="blobs", pg_width=128, pg_epochs=400, pg_weight_decay=0.0, pg_members=40).items():
    st.session_state.setdefault(key, value)  # defaults once; the lesson's buttons may set them

with st.expander("A lesson in three steps", expanded=False):
    for i, (title, values, text) in enumerate(views.LESSON, 1):
        a, b = st.columns([1, 4])
        if a.button(f"Step {i}: {title}", key=f"lesson_{i}"):
            st.session_state.update(values)
        b.write(text)

c1, c2, c3, c4 = st.columns(4)
dataset = c1.radio("dataset", ["blobs", "moons"], horizontal=True, key="pg_dataset",
                   help="blobs: three overlapping classes, memorisation is easy to see; moons: two half-moons.")
width = c2.select_slider("model width", [4, 8, 16, 32, 64, 128, 256], key="pg_width")
epochs = c3.select_slider("training epochs", [10, 50, 100, 200, 400, 800], key="pg_epochs")
weight_decay = c4.select_slider("defense: weight decay", [0.0, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1], key="pg_weight_decay",
                                help="An L2 penalty on the weights: a simple regulariser that smooths the boundary.")
members = st.slider("members (training points)", 20, 250, step=10, key="pg_members",
                    help="Fewer training points make memorisation easier to see.")
config = ExperimentConfig(dataset=dataset, model="mlp", width=width, members=members, epochs=epochs,
                          weight_decay=weight_decay, batch_size=32, lr=3e-3, distance_method="deepfool",
                          reference_scored=200, bootstrap_rounds=50, seed=0, lira_shadows=8,
                          label_only_queries=300)
run = state.run_with_progress(config, "Training the 2-D model", make_current=False)


@st.cache_data(max_entries=32, show_spinner=False)
def grid(root: str, run_id: str):
    return probability_grid(state.open_run(root, run_id).model, lo=-0.05, hi=1.05, resolution=120)


xs, ys, prob = grid(str(run.store.root), run.run_id)
groups = [run.table["members"], run.table["nonmembers"]]
pts = np.concatenate([run.dataset.x[g.index] for g in groups])
member = np.r_[np.ones(len(groups[0]), bool), np.zeros(len(groups[1]), bool)]
dist = np.concatenate([g.scores["distance_l2"] for g in groups])
labels = np.concatenate([g.label for g in groups])
left, right = st.columns([3, 2])
left.plotly_chart(figures.boundary_figure(xs, ys, prob, pts, member, dist, labels), width="stretch")
right.plotly_chart(figures.distance_histogram(*run.table.member_nonmember("distance_l2"), bins=15,
                                              title="Members vs non-members: distance"), width="stretch")
rec = run.record
k1, k2, k3, k4 = st.columns(4)
k1.metric("train accuracy", f"{rec.train_accuracy:.3f}", help=views.METRIC_HELP["train accuracy"])
k2.metric("test accuracy", f"{rec.test_accuracy:.3f}", help=views.METRIC_HELP["test accuracy"])
k3.metric("distance attack AUC", f"{rec.attacks['distance_l2'].auc:.3f}", help=views.METRIC_HELP["AUC"])
k4.metric("loss attack AUC", f"{rec.attacks['loss'].auc:.3f}", help=views.METRIC_HELP["AUC"])
if st.button("Spread over seeds (3 seeds)", key="pg_spread",
             help="The same setting on three random splits and initialisations: with few points the AUC swings."):
    aucs = [state.run_with_progress(config.replace(seed=s), f"seed {s}", make_current=False).record
            .attacks["distance_l2"].auc for s in (0, 1, 2)]
    st.session_state["pg_spread_result"] = (config, views.spread(aucs))
if st.session_state.get("pg_spread_result", (None,))[0] == config:
    sp = st.session_state["pg_spread_result"][1]
    st.metric("distance attack AUC over 3 seeds", f"{sp.mean:.3f} ± {sp.sd:.3f}",
              help=f"range {sp.low:.3f} to {sp.high:.3f} over {sp.n} seeds")
st.caption("Try: a wide model trained long on few points (memorises, leaks), then raise weight decay.")
