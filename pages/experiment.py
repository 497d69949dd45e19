import hashlib
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import state
from mia_core import experiment as ex
from mia_core.attacks import OUTPUT_MASKS
from mia_core.data import DATASETS, DatasetError, EMBEDDED
from mia_core.defenses import DEFAULT_STRENGTH, DEFENSE_HELP, DEFENSES
from mia_core.distances import METHODS
from mia_core.models import MODELS
from mia_core.training import CheckpointError, read_state_dict

MAX_UPLOAD_MB = 100
d = ex.DEFAULT_CONFIG

st.title("Experiment")
st.caption("Train a model on a seeded member / non-member split, or load your own weights, then score every attack.")

with st.form("experiment"):
    c1, c2, c3 = st.columns(3)
    dataset = c1.selectbox("dataset", list(DATASETS), index=list(DATASETS).index(d.dataset),
                           help="digits, mnist5k, moons and blobs ship with the app; mnist, fashion_mnist and "
                                "cifar10 need a local torchvision folder.")
    data_dir = c1.text_input("data folder (torchvision sets)", value="data")
    model = c2.selectbox("model", list(MODELS), index=list(MODELS).index(d.model))
    width = c2.select_slider("hidden width", [16, 32, 64, 128, 256, 512], value=d.width)
    members = c3.number_input("members (training-set size)", 10, 50000, d.members, step=50)
    epochs = c3.slider("epochs", 1, 200, d.epochs)
    c4, c5, c6 = st.columns(3)
    seed = c4.number_input("seed", 0, 10_000, d.seed)
    method = c5.selectbox("distance search", list(METHODS), index=list(METHODS).index(d.distance_method),
                          help="deepfool: fastest linearisation; superdeepfool: DeepFool with boundary projections, tighter; "
                               "fmn: Fast Minimum-Norm from the SuperDeepFool point, the tightest.")
    weight_decay = c6.select_slider("weight decay", [0.0, 1e-5, 1e-4, 1e-3, 1e-2], value=d.weight_decay)
    c7, c8, c9 = st.columns(3)
    output_mask = c9.selectbox("what the attacker's API returns", list(OUTPUT_MASKS),
                               format_func=lambda k: f"{k}: {OUTPUT_MASKS[k]}",
                               help="Confidence masking: label-only attacks see through it, confidence attacks do not.")
    defense = c7.selectbox("defense", list(DEFENSES), help="; ".join(f"{k}: {v}" for k, v in DEFENSE_HELP.items()))
    strength = c8.number_input("defense strength (0 = the defense's typical value)", 0.0, 1000.0, 0.0,
                               help="PGD/TRADES epsilon or beta, MMD lambda, mix-up alpha, smoothing, decay, "
                                    "dropout rate, patience, or DP noise multiplier.")
    submitted = st.form_submit_button("Train and score", type="primary")

config = ex.ExperimentConfig(dataset=dataset, model=model, width=int(width), members=int(members), epochs=int(epochs),
                             seed=int(seed), distance_method=method, weight_decay=float(weight_decay),
                             defense=defense, defense_strength=float(strength or DEFAULT_STRENGTH[defense]),
                             output_mask=output_mask,
                             data_dir=data_dir if dataset not in EMBEDDED else None)
if submitted:
    try:
        state.run_with_progress(config)
        st.success("Done: open **Distances** or **Attacks** to see the results.")
    except (DatasetError, CheckpointError, ValueError) as err:
        st.error(str(err))

with st.expander("Load a checkpoint instead of training"):
    st.write("A `state_dict` of a built-in architecture (the choices above), as `.safetensors` or a `torch.save` "
             "file. Files are read with safetensors or `torch.load(weights_only=True)`: nothing is unpickled. The "
             "members are those of the split above (same dataset, size and seed).")
    upload = st.file_uploader("checkpoint file", type=["safetensors", "pt", "pth", "bin"])
    path = st.text_input("…or a path on the server")
    if st.button("Evaluate checkpoint"):
        target = None
        if upload is not None:
            data = upload.getvalue()
            if len(data) > MAX_UPLOAD_MB * 2**20:
                st.error(f"{upload.name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_UPLOAD_MB} MB.")
            else:  # validated in a temporary file; only a readable state_dict is kept in the store
                suffix = ".safetensors" if upload.name.endswith(".safetensors") else ".pt"
                with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as tmp:
                    tmp.write(data)
                try:
                    read_state_dict(tmp.name)
                    digest = hashlib.sha256(data).hexdigest()[:16]
                    target = state.store_root() / "uploads" / f"{digest}{suffix}"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(tmp.name, target)
                except CheckpointError as err:
                    st.error(f"{upload.name}: {err}")
                finally:
                    Path(tmp.name).unlink(missing_ok=True)
        elif path:
            target = path
        else:
            st.warning("Choose a file or give a path.")
        if target is not None:
            try:
                read_state_dict(target)  # validate before anything is stored
                state.run_with_progress(ex.ExperimentConfig(**{**config.__dict__, "checkpoint": str(target)}),
                                        "Evaluating the checkpoint")
                st.success("Checkpoint evaluated.")
            except (CheckpointError, DatasetError, ValueError, FileNotFoundError) as err:
                st.error(str(err))

st.subheader("Earlier runs")
runs = state.store_summaries(state.store_version())
if not runs:
    st.write("The store is empty.")
else:
    rows = pd.DataFrame([{
        "open": False, "finished": s["finished_at"], "dataset": s["config"]["dataset"], "model": s["config"]["model"],
        "width": s["config"]["width"], "members": s["n_members"], "epochs": s["config"]["epochs"],
        "seed": s["config"]["seed"], "defense": s["config"].get("defense", "none"),
        "test acc": s["test_accuracy"],
        "best AUC": s["attacks"][ex.best_attack(s)]["auc"], "run": state.run_id(s["eval_dir"]),
    } for s in runs])
    edited = st.data_editor(rows, hide_index=True, disabled=[c for c in rows.columns if c != "open"],
                            column_config={"open": st.column_config.CheckboxColumn("open", help="make it the current run")},
                            key="runs_table")
    chosen = edited[edited["open"]]
    if len(chosen):
        rid = chosen.iloc[0]["run"]
        if st.session_state.get("run") != rid:
            state.set_current(state.store_root() / rid)
            st.rerun()
current = state.current_run()
if current is not None:
    st.info("Current run: " + state.describe(current.config))
