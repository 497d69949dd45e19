import numpy as np
import streamlit as st

from dashboard import state
from mia_core import figures, views
from mia_core.config import ExperimentConfig
from mia_core.models import probability_grid

st.title("Playground")
st.caption("A 2-D classroom demo: watch a model overfit its training points, and watch leakage appear and shrink.")

c1, c2, c3, c4 = st.columns(4)
dataset = c1.radio("dataset", ["blobs", "moons"], horizontal=True, key="pg_dataset",
                   help="blobs: three overlapping classes, memorisation is easy to see; moons: two half-moons.")
width = c2.select_slider("model width", [4, 8, 16, 32, 64, 128, 256], value=128, key="pg_width")
epochs = c3.select_slider("training epochs", [10, 50, 100, 200, 400, 800], value=400, key="pg_epochs")
weight_decay = c4.select_slider("defense: weight decay", [0.0, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1], value=0.0,
                                key="pg_weight_decay",
                                help="An L2 penalty on the weights: a simple regulariser that smooths the boundary.")
members = st.slider("members (training points)", 20, 250, 40, step=10, key="pg_members",
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
fig = figures.boundary_figure(xs, ys, prob, pts, member, dist)
left, right = st.columns([3, 1])
left.plotly_chart(fig, width="stretch")
rec = run.record
right.metric("train accuracy", f"{rec.train_accuracy:.3f}", help=views.METRIC_HELP["train accuracy"])
right.metric("test accuracy", f"{rec.test_accuracy:.3f}", help=views.METRIC_HELP["test accuracy"])
right.metric("distance attack AUC", f"{rec.attacks['distance_l2'].auc:.3f}", help=views.METRIC_HELP["AUC"])
right.metric("loss attack AUC", f"{rec.attacks['loss'].auc:.3f}", help=views.METRIC_HELP["AUC"])
right.caption("Try: a wide model trained long on few points (memorises, leaks), then raise weight decay.")
