import tempfile

import streamlit as st

from dashboard import state
from dashboard.forms import field_input
from mia_core import views
from mia_core.config import ExperimentConfig, TrainingRecipe
from mia_core.jobs import Status
from mia_core.user_audit import plan_upload_audit, prepare_upload
from mia_core.user_data import likely_id_column, likely_label_column, upload_columns
from mia_core.user_models import max_upload_bytes

FAST_PRESET = {"label_only_queries": 200, "lira_shadows": 4, "reference_scored": 200, "bootstrap_rounds": 50}
NONE = "(none)"

st.title("Audit your own model")
st.caption(
    "Upload a trained classifier as **ONNX** and the data it was trained on, say who was in training, and get the "
    "same audit as a run trained here. The ONNX file is parsed as a protocol buffer, never unpickled, converted to "
    "torch with onnx2torch and refused unless it agrees with ONNX Runtime on your data; its outputs may be logits "
    "or probabilities (a softmax at its end: the logits before it are read), or, for two classes, one output "
    "(a logit, or a sigmoid's probability). The reference-model attacks "
    "(LiRA, RMIA) need models of your architecture: train copies of your model's graph below, or give its code "
    "from the command line (`--model-factory`) or `mia_core.audit(...)`. "
    f"Uploads up to {max_upload_bytes() / 2**20:.0f} MB. The audit runs in the background: leaving the page "
    "does not stop it, and your files are deleted from the job when it ends (a finished audit keeps its own copy).")

c1, c2 = st.columns(2)
data = c1.file_uploader("your data: a table (.csv, .parquet), a .zip of an image folder (one sub-folder per class), "
                        "or an .npz of arrays x and y", type=["csv", "tsv", "parquet", "zip", "npz"],
                        key="audit_data")
model = c2.file_uploader("your model (.onnx)", type=["onnx"], key="audit_model")

label_column = membership_column = id_column = None
if data is not None and data.name.lower().endswith((".csv", ".tsv", ".parquet")):
    try:
        with tempfile.TemporaryDirectory(prefix="mia-columns-") as work:
            columns = upload_columns(data.getvalue(), data.name, work)
    except state.RUN_ERRORS as err:
        state.show_error(err)
        st.stop()
    a, b, c = st.columns(3)
    label_column = a.selectbox("label column", columns, key="audit_label_column",
                               index=columns.index(likely_label_column(columns)))
    membership_column = b.selectbox("membership column (1 = in training)", [NONE, *columns], key="audit_member_column",
                                    index=1 + columns.index("member") if "member" in columns else 0)
    guess = likely_id_column(columns)
    id_column = c.selectbox("id column", [NONE, *columns], key="audit_id_column",
                            index=1 + columns.index(guess) if guess else 0)
ids_file = st.file_uploader("…or a file of member ids, one per line (a table's id column or row numbers, an image's "
                            "path inside the .zip, an .npz's row numbers)", type=["txt", "csv"], key="audit_ids")

with st.expander("Input box, reference pool and attack cost"):
    b1, b2, b3 = st.columns(3)
    low = b1.number_input("inputs' low bound", value=0.0, key="audit_low",
                          help="Your data is read scaled to [0, 1] and mapped linearly to the box your model expects "
                               "(e.g. 0..255 for raw pixels); every distance is measured in that box.")
    high = b2.number_input("inputs' high bound", value=1.0, key="audit_high")
    share = b3.slider("share of the non-members used as the attacker's reference pool", 0.1, 0.9, 0.5, 0.05,
                      key="audit_share")
    fast = st.toggle("fast preset", key="audit_fast", help="; ".join(f"{k} {v}" for k, v in FAST_PRESET.items()))
    d = ExperimentConfig()
    k1, k2, k3 = st.columns(3)
    cost = {name: field_input(col, name, FAST_PRESET[name] if fast else getattr(d, name), key=f"audit_{name}_{fast}")
            for col, name in zip((k1, k2, k3), ("label_only_queries", "reference_scored", "bootstrap_rounds"))}
    method = field_input(st, "distance_method", d.distance_method, key="audit_method")

with st.expander("Reference models (LiRA, RMIA)"):
    references = st.checkbox(
        "train reference models: copies of your model's graph, re-initialized", key="audit_references",
        help="Each copy trains on a random half of the members and non-members with the recipe below; it should "
             "match how your model was trained. Exporters fold batch norms into convolutions and drop dropout, "
             "so the copies train without them (the batch norms can be restored below). Refused where the graph's "
             "weights are not in layers that can be re-initialized (use --model-factory from the command line "
             "then).")
    batch_norm = st.checkbox(
        "restore a batch norm after each convolution", key="audit_batch_norm", disabled=not references,
        help="Exporters fold batch norms into the convolutions before them; if your model trained with them (as "
             "ResNets do), its copies should too: each convolution gets one back, without its bias.")
    r = ExperimentConfig(epochs=30)
    r1, r2, r3, r4, r5 = st.columns(5)
    recipe_fields = {name: field_input(col, name, getattr(r, name), key=f"audit_recipe_{name}")
                     for col, name in zip((r1, r2, r3, r4), ("epochs", "optimizer", "lr", "batch_size"))}
    shadows = field_input(r5, "lira_shadows", FAST_PRESET["lira_shadows"] if fast else r.lira_shadows,
                          key=f"audit_shadows_{fast}")

if st.button("Audit", type="primary", key="audit_run", disabled=data is None or model is None):
    try:
        member_ids = (ids_file.getvalue().decode("utf-8", errors="replace").split() if ids_file is not None else None)
        config = ExperimentConfig(distance_method=method, **cost, **({"lira_shadows": shadows} if references else {}))
        config.validate()
        recipe = TrainingRecipe(**recipe_fields) if references else None
        with st.spinner("Reading your files and checking the model on them…"):
            upload = prepare_upload(
                data.getvalue(), data.name, model.getvalue(), model.name, label_column=label_column,
                membership_column=None if membership_column in (None, NONE) else membership_column,
                id_column=None if id_column in (None, NONE) else id_column, member_ids=member_ids,
                bounds=(float(low), float(high)), reference_share=share, seed=config.seed, recipe=recipe,
                batch_norm=bool(batch_norm and references))
        plan = plan_upload_audit(upload, config, state.store())
        if plan.stored_run_id is not None:
            state.set_current(plan.stored_run_id)  # audited before with these settings: it opens at once
        else:
            state.submit_audit(upload, config, f"audit of {model.name} on {data.name}", plan.run_config)
        st.rerun()
    except state.RUN_ERRORS as err:
        state.show_error(err)

job = state.followed_job()
if job is not None and job.audit is not None and job.status.active:
    st.info(f"Auditing {state.plain(job.audit.model_name)} in the background (progress in the sidebar). Leaving or "
            "closing this page loses nothing: the audit goes on, is listed on the Jobs page, and opens here when "
            "it is done.", icon=":material/hourglass_top:")
elif job is not None and job.audit is not None and job.status in (Status.FAILED, Status.CANCELLED):
    st.error(f"The audit of {state.plain(job.audit.model_name)} stopped: {state.plain(job.error or job.status.value)}")
elif audits := [j for j in state.job_queue(str(state.store().root)).jobs() if j.audit and j.status.active]:
    st.info(state.plain(views.job_line(audits[0], others=len(audits) - 1)), icon=":material/pending_actions:")
    st.button("Follow it", key="audit_follow", on_click=state.follow_job, args=(audits[0].id,))
run = state.current_run()
if run is not None and run.record.audit is not None:
    st.success(f"{state.plain(run.record.audit.model)}: audited on {run.record.n_members} members and "
               f"{run.record.n_nonmembers} non-members. Open **Overview**, **Distances** or **Attacks**.")
    st.caption(state.plain(views.audit_note(run.record)))
