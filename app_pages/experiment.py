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
FAST_PRESET = {"label_only_queries": 200, "lira_shadows": 4, "reference_scored": 200, "bootstrap_rounds": 50}

st.title("Experiment")
st.caption("Train a model on a seeded member / non-member split, or load your own weights on that split, then score "
           "every attack. Every value below is used as shown, by both buttons.")

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
                           help="; ".join(f"{s.name}: {s.strength_label} in [{s.valid[0]:g}, {s.valid[1]:g}], "
                                          f"typically {s.default_strength:g}" for s in DEFENSES.specs()
                                          if s.name != "none"))
output_mask = field_input(c9, "output_mask", d.output_mask, format_func=lambda k: f"{k}: {OUTPUT_MASKS[k]}")
with st.expander("Attack cost: label-only queries, shadow models, reference samples, bootstrap"):
    fast = st.toggle("fast preset", key="cfg_fast",
                     help="; ".join(f"{k} {v}" for k, v in FAST_PRESET.items()) + ": a quicker, noisier audit.")
    k1, k2, k3, k4 = st.columns(4)
    cost = {name: field_input(col, name, FAST_PRESET[name] if fast else getattr(d, name), key=f"cfg_{name}_{fast}")
            for col, name in zip((k1, k2, k3, k4), FAST_PRESET)}

config = ex.ExperimentConfig(
    dataset=dataset, model=model, width=width, members=members, epochs=epochs, seed=seed, distance_method=method,
    weight_decay=weight_decay, defense=defense,
    defense_strength=float(strength or DEFENSES.get(defense).default_strength), output_mask=output_mask,
    data_dir=data_dir if dataset not in EMBEDDED else None, **cost)
estimate = views.estimate_seconds(config, [r.record for r in state.all_runs()])
st.caption(f"Estimated time: {views.format_seconds(estimate.seconds)} on this server ({estimate.basis}); a stored "
           "configuration opens at once.")
if st.button("Train and score", type="primary", key="train"):
    try:
        if state.submit(config, views.describe(config)) is None:
            st.success("Already in the store: it is the current run. Open **Distances** or **Attacks**.")
        else:
            st.rerun()
    except state.RUN_ERRORS as err:
        state.show_error(err)

with st.expander("Evaluate your own weights on this split instead of training"):
    st.write(f"A `state_dict` of the architecture above ({model}, width {width}), as `.safetensors` or a "
             "`torch.save` file, read with safetensors or `torch.load(weights_only=True)`: nothing is unpickled. "
             f"Its members are taken to be the split above: {dataset}, {members} members, seed {seed}. The run is "
             "labelled as a checkpoint and never joins the defense comparisons.")
    upload = st.file_uploader("checkpoint file", type=["safetensors", "pt", "pth", "bin"], key="ckpt_upload")
    server_dir = checkpoint_folder()
    path = st.text_input("…or a file name in the server's checkpoint folder", key="ckpt_path") if server_dir else ""
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
                ckpt = config.replace(checkpoint=str(target))
                if state.submit(ckpt, f"checkpoint {target.name}") is None:
                    st.success("This checkpoint was evaluated on this split before: it is the current run.")
                else:
                    st.rerun()
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
    names = state.run_names()
    rows = views.runs_frame(runs)
    rows["name"] = [names.get(r, "") for r in rows["run"]]
    query = st.text_input("filter", key="runs_filter", placeholder="e.g. dp_sgd, mnist5k, cnn, a name",
                          help="Shows the runs whose name or settings contain every word.")
    words = query.lower().split()
    keep = [all(w in f"{n} {lab}".lower() for w in words) for n, lab in zip(rows["name"], rows["label"])]
    shown = rows[keep][["finished", "name", "label", "test accuracy", "leakage", "run"]].rename(
        columns={"label": "settings", "leakage": "best AUC (on the evaluation)"})
    shown.insert(0, "select", False)
    edited = st.data_editor(shown, hide_index=True, disabled=[c for c in shown.columns if c != "select"],
                            column_config={"select": st.column_config.CheckboxColumn("select")}, key="runs_table")
    chosen = list(edited[edited["select"]]["run"])
    a, b, c = st.columns([1, 2, 1])
    if a.button("Open", key="runs_open", disabled=len(chosen) != 1, help="Make the selected run the current one."):
        state.set_current(chosen[0])
        st.rerun()
    new_name = b.text_input("name the selected run", key="runs_name", label_visibility="collapsed",
                            placeholder="a name for the selected run")
    if b.button("Name", key="runs_rename", disabled=len(chosen) != 1):
        state.store().set_name(chosen[0], new_name)
        st.rerun()
    sure = c.checkbox("really delete", key="runs_delete_sure")
    if c.button("Delete", key="runs_delete", disabled=not chosen or not sure,
                help="Deletes the selected runs (and a trained model no other run uses)."):
        for rid in chosen:
            state.store().delete_run(rid)
        st.rerun()
    if len(chosen) >= 2:
        by_id = {r.run_id: r.record for r in runs}
        frame, differing = views.compare_runs([by_id[r] for r in chosen], [names.get(r) or r for r in chosen])
        st.markdown("**The selected runs side by side** (settings that differ are highlighted)")
        st.dataframe(frame.style.apply(lambda row: ["background-color: #FFF3C4" if row.name in differing else ""
                                                    for _ in row], axis=1), width="stretch", key="runs_compare")
current = state.current_run()
if current is not None:
    st.info("Current run: " + views.run_label(current.record, state.run_names().get(current.run_id)))
