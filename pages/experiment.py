import streamlit as st

from dashboard import state
from dashboard.forms import field_input
from mia_core import experiment as ex
from mia_core import views
from mia_core.data import DATASETS, EMBEDDED
from mia_core.defenses import DEFENSES
from mia_core.probabilities import OUTPUT_MASKS
from mia_core.uploads import (
    CHECKPOINT_DIR_ENV, checkpoint_folder, discard_unused_upload, server_checkpoint, store_checkpoint_upload,
)

d = ex.DEFAULT_CONFIG

st.title("Experiment")
st.caption("Train a model on a seeded member / non-member split, or load your own weights, then score every attack.")

with st.form("experiment"):
    c1, c2, c3 = st.columns(3)
    dataset = field_input(c1, "dataset", d.dataset, options=list(DATASETS))
    data_dir = c1.text_input("data folder (torchvision sets)", value="data", key="cfg_data_dir",
                             help="mnist, fashion_mnist and cifar10 need a local torchvision folder.")
    model = field_input(c2, "model", d.model)
    width = field_input(c2, "width", d.width)
    members = field_input(c3, "members", d.members)
    epochs = field_input(c3, "epochs", d.epochs)
    c4, c5, c6 = st.columns(3)
    seed = field_input(c4, "seed", d.seed)
    method = field_input(c5, "distance_method", d.distance_method)
    weight_decay = field_input(c6, "weight_decay", d.weight_decay)
    c7, c8, c9 = st.columns(3)
    defense = field_input(c7, "defense", d.defense,
                          format_func=lambda k: f"{k} ({DEFENSES.get(k).strength_label})" if k != "none" else k)
    strength = c8.number_input("defense strength (0 = the defense's typical value)", 0.0, None, 0.0,
                               key="cfg_defense_strength",
                               help="; ".join(f"{s.name}: {s.strength_label} in [{s.valid[0]:g}, "
                                              f"{s.valid[1]:g}], typically {s.default_strength:g}"
                                              for s in DEFENSES.specs() if s.name != "none"))
    output_mask = field_input(c9, "output_mask", d.output_mask, format_func=lambda k: f"{k}: {OUTPUT_MASKS[k]}")
    submitted = st.form_submit_button("Train and score", type="primary", key="train")

config = ex.ExperimentConfig(
    dataset=dataset, model=model, width=width, members=members, epochs=epochs, seed=seed, distance_method=method,
    weight_decay=weight_decay, defense=defense,
    defense_strength=float(strength or DEFENSES.get(defense).default_strength), output_mask=output_mask,
    data_dir=data_dir if dataset not in EMBEDDED else None)
if submitted:
    try:
        state.run_with_progress(config)
        st.success("Done: open **Distances** or **Attacks** to see the results.")
    except state.RUN_ERRORS as err:
        state.show_error(err)

with st.expander("Load a checkpoint instead of training"):
    st.write("A `state_dict` of a built-in architecture (the choices above), as `.safetensors` or a `torch.save` "
             "file. Files are read with safetensors or `torch.load(weights_only=True)`: nothing is unpickled. The "
             "members are those of the split above (same dataset, size and seed).")
    upload = st.file_uploader("checkpoint file", type=["safetensors", "pt", "pth", "bin"], key="ckpt_upload")
    server_dir = checkpoint_folder()
    path = st.text_input(f"…or a file name in the server's checkpoint folder", key="ckpt_path") if server_dir else ""
    if server_dir is None:
        st.caption(f"Reading checkpoints from the server's disk is off; an operator can allow one folder with "
                   f"{CHECKPOINT_DIR_ENV}=/path.")
    if st.button("Evaluate checkpoint", key="ckpt_evaluate"):
        target, stored = None, None
        try:
            if upload is not None:
                target = stored = store_checkpoint_upload(state.store(), upload.name, upload.getvalue())
            elif path:
                target = server_checkpoint(server_dir, path)
            else:
                st.warning("Choose a file or give a path.")
            if target is not None:
                state.run_with_progress(config.replace(checkpoint=str(target)), "Evaluating the checkpoint")
                st.success("Checkpoint evaluated.")
        except state.RUN_ERRORS as err:
            if stored is not None:
                discard_unused_upload(state.store(), stored)  # keep only uploads that a run uses
            state.show_error(err)

st.subheader("Earlier runs")
for bad in state.damaged_runs():
    st.warning(f"Damaged run {state.plain(bad.run_id)}: {state.plain(bad.reason)}. It is left out; its configuration "
               "is recomputed the next time it is run.", icon=":material/warning:")
runs = state.all_runs()
if not runs:
    st.write("The store is empty.")
else:
    rows = views.runs_frame(runs)
    rows.insert(0, "open", False)
    shown = rows[["open", "finished", "label", "test accuracy", "leakage", "run"]].rename(
        columns={"label": "run settings", "leakage": "best AUC (on the evaluation)"})
    edited = st.data_editor(shown, hide_index=True, disabled=[c for c in shown.columns if c != "open"],
                            column_config={"open": st.column_config.CheckboxColumn("open", help="make it the current run")},
                            key="runs_table")
    chosen = edited[edited["open"]]
    if len(chosen):
        rid = chosen.iloc[0]["run"]
        if st.session_state.get("run") != rid:
            state.set_current(rid)
            st.rerun()
current = state.current_run()
if current is not None:
    st.info("Current run: " + views.describe(current.config))
