"""The dashboard as a new user sees it (issue: two wrong numbers, runs that cannot be told apart, charts that
mislead, needless waits). Each test failed before the fix it names."""

import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from mia_core import evaluation, figures, views
from mia_core import experiment as ex
from mia_core.jobs import JobQueue
from mia_core.label_only import CONV_ROWS_PER_CALL, label_only_distance
from mia_core.metrics import roc_points
from mia_core.models import build_model
from mia_core.store import Store

from conftest import finish_jobs

ROOT = Path(__file__).resolve().parents[1]
FAST = ex.ExperimentConfig(width=64, members=120, epochs=10, bootstrap_rounds=20, reference_scored=60,
                           distance_method="deepfool", lira_shadows=2, label_only_queries=100)


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("MIA_STORE", str(tmp_path))
    monkeypatch.setattr(ex, "DEFAULT_CONFIG", FAST)

    def open_page(page, run_id=None):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        if run_id:
            at.query_params["run"] = run_id
        at.run()
        at.switch_page(page).run()
        assert not at.exception, at.exception
        return at

    return open_page


def _figures(at):
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


# ----------------------------------------------------------------------------- wrong numbers


def test_a_checkpoint_is_evaluated_on_the_split_the_user_set(app, tmp_path):
    """The checkpoint button used the form's stale values: 300 members typed, a run with 200 stored."""
    at = app("app_pages/experiment.py")
    at.number_input(key="cfg_members").set_value(300)
    at.number_input(key="cfg_width").set_value(64)
    at.run()
    buf = io.BytesIO()
    torch.manual_seed(0)
    torch.save(build_model("mlp", (1, 8, 8), 10, width=64).state_dict(), buf)
    at.file_uploader(key="ckpt_upload").upload("mine.pt", buf.getvalue()).run()
    at.button(key="ckpt_evaluate").click().run()
    assert not at.exception, at.exception
    finish_jobs(at, tmp_path)
    runs = ex.list_runs(tmp_path)
    assert [r.record.n_members for r in runs] == [300]
    assert at.query_params["run"] == runs[0].run_id
    assert "checkpoint" in views.describe(runs[0].record.config)
    frame = views.runs_frame(runs)
    assert views.defense_families(frame).empty  # a checkpoint never poses as a trained configuration


# ----------------------------------------------------------------------------- runs a user can tell apart


def test_run_labels_say_what_differs(tmp_path):
    dp = ex.run_experiment(FAST.replace(defense="dp_sgd", defense_strength=1.0), store=tmp_path).record
    assert "dp_sgd (noise multiplier 1)" in views.run_label(dp) and "ε = " in views.run_label(dp)
    a = ex.run_experiment(FAST, store=tmp_path).record
    b = ex.run_experiment(FAST.replace(distance_method="superdeepfool"), store=tmp_path).record
    masked = ex.run_experiment(FAST.replace(output_mask="label"), store=tmp_path).record
    labels = {views.run_label(r) for r in (a, b, masked)}
    assert len(labels) == 3 and any("API returns label" in x for x in labels)
    frame, differing = views.compare_runs([a, b, dp], ["a", "b", "dp"])
    assert set(differing) == {"distance_method", "defense", "defense_strength", "DP epsilon"}
    assert list(frame.columns) == ["a", "b", "dp"] and frame.loc["test accuracy", "a"] == a.test_accuracy
    auto = dataclasses.replace(a, config=a.config.replace(label_only_queries=None))  # the probes decide
    frame, differing = views.compare_runs([a, auto], ["a", "auto"])
    assert differing == ["label_only_queries"] and frame.loc["label_only_queries", "auto"] == "automatic"


def test_runs_can_be_named_filtered_and_deleted_keeping_the_store_consistent(app, tmp_path):
    a = ex.run_experiment(FAST, store=tmp_path)
    b = ex.run_experiment(FAST.replace(distance_method="superdeepfool"), store=tmp_path)  # same model
    c = ex.run_experiment(FAST.replace(seed=1), store=tmp_path)
    store = Store(tmp_path)
    store.set_name(a.run_id, "baseline  for class")
    assert store.names() == {a.run_id: "baseline for class"}
    at = app("app_pages/experiment.py")
    listed = at.data_editor[0].value
    assert len(listed) == 3 and "baseline for class" in set(listed["name"])
    at.text_input(key="runs_filter").set_value("baseline class").run()
    assert not at.exception and list(at.data_editor[0].value["run"]) == [a.run_id]
    at.text_input(key="runs_filter").set_value("superdeepfool").run()
    assert list(at.data_editor[0].value["run"]) == [b.run_id]
    store.delete_run(a.run_id)  # its model stays: b still uses it
    assert a.run_dir.is_dir() and not a.eval_dir.exists() and store.names() == {}
    store.delete_run(b.run_id)  # the last evaluation: the model and its cached stages go too
    assert not b.run_dir.exists()
    assert [r.run_id for r in ex.list_runs(tmp_path)] == [c.run_id]


# ----------------------------------------------------------------------------- charts that say what they mean


def test_defense_charts_keep_one_colour_per_defense_and_their_own_strength_axes():
    agg = pd.DataFrame({"defense": ["none", "pgd_at", "pgd_at", "dp_sgd", "mmd_mixup"],
                        "strength": [0.0, 0.05, 0.1, 1.0, 3.0], "leakage": [0.6, 0.62, 0.65, 0.52, 0.58],
                        "leakage_sd": [0.01] * 5})
    fig = figures.strength_figure(agg, x="strength", y="leakage", group="defense", error="leakage_sd",
                                  strength_labels={"pgd_at": "epsilon", "dp_sgd": "noise multiplier",
                                                   "mmd_mixup": "lambda"})
    titles = [fig.layout[ax].title.text for ax in ("xaxis", "xaxis2", "xaxis3")]
    assert titles == ["pgd_at: epsilon", "dp_sgd: noise multiplier", "mmd_mixup: lambda"]
    colours = {t.name: t.line.color for t in fig.data if t.name in ("pgd_at", "dp_sgd", "mmd_mixup")}
    scatter = figures.tradeoff_figure(np.array([0.9, 0.8, 0.7]), np.array([0.6, 0.6, 0.5]), ["a", "b", "c"],
                                      np.array([0]), groups=["none", "pgd_at", "dp_sgd"])
    assert {t.name: t.marker.color for t in scatter.data} == {"none": figures.defense_color("none"),
                                                              "pgd_at": colours["pgd_at"],
                                                              "dp_sgd": colours["dp_sgd"]}
    assert "Pareto front" not in {t.name for t in scatter.data}  # one point is no front: no legend entry


def test_roc_curves_stay_distinguishable_past_eight_attacks():
    rocs = {f"a{i}": type("R", (), {"fpr": np.r_[0.0, 1.0], "tpr": np.r_[0.0, 1.0]})() for i in range(12)}
    fig = figures.roc_figure(rocs)
    styles = {(t.line.color, t.line.dash) for t in fig.data if t.name.startswith("a")}
    assert len(styles) == 12


def test_overview_roc_includes_the_headline_attack(app, tmp_path):
    run = ex.run_experiment(FAST, store=tmp_path)
    head = views.headline(run.record)
    at = app("app_pages/overview.py", run.run_id)
    names = {t.get("name", "") for f in _figures(at) for t in f["data"]}
    assert any(n.startswith(head.best_attack + " (AUC") for n in names)


def test_attacks_page_shows_every_attack_and_says_which_tpr_levels_are_unresolved(app, tmp_path):
    run = ex.run_experiment(FAST.replace(members=90), store=tmp_path)  # 90 non-members: FPR 1% is < 1 sample
    at = app("app_pages/attacks.py", run.run_id)
    table = [el.value for el in at.dataframe if "AUC 95% CI" in el.value.columns][0]
    assert len(table) == len(run.record.attacks) and views.table_height(len(table)) > 35 * len(table)
    note = [c.value for c in at.caption if "needs at least" in c.value]
    assert len(note) == 1 and "TPR@0.1% needs at least 1,000" in note[0] and "TPR@1% needs at least 100" in note[0]
    assert "TPR@10%" not in note[0]
    assert views.resolution_note(1000) is None
    sliced = [f for f in _figures(at) if " by class" in f["layout"]["title"]["text"]]
    assert len(sliced) == 1 and sliced[0]["data"][0]["type"] == "bar"
    at.radio(key="slice_by").set_value("distance decile").run()
    assert not at.exception
    assert len([f for f in _figures(at) if " by distance decile" in f["layout"]["title"]["text"]]) == 1
    thr = [f for f in _figures(at) if "scores" in f["layout"]["title"]["text"]][0]
    ys = [a["y"] for a in thr["layout"]["annotations"]]
    assert len(ys) == len(set(ys)) == 3  # the three threshold labels sit on separate lines


def test_export_html_opens_offline_and_titles_differ(app, tmp_path):
    run = ex.run_experiment(FAST, store=tmp_path)
    at = app("app_pages/export.py", run.run_id)
    titles = [f["layout"]["title"]["text"] for f in _figures(at)]
    assert len(set(titles)) == len(titles) == 4
    html = figures.roc_figure({"loss": roc_points(*run.table.member_nonmember("loss"))}).to_html(
        include_plotlyjs=True)  # what the page's HTML buttons offer
    assert '<script src="https://cdn.plot.ly' not in html and len(html) > 1_000_000  # plotly.js is inside


def test_playground_shows_classes_a_histogram_a_lesson_and_the_spread_over_seeds(app):
    at = app("app_pages/playground.py")
    figs = _figures(at)
    assert any("distance" in f["layout"]["title"]["text"].lower() and f["data"][0]["type"] == "bar" for f in figs)
    points = [t for t in figs[0]["data"] if t.get("name") in ("members", "non-members") and t["x"] != [None]]
    assert all(t["marker"]["line"]["color"] == "#222222" and len(set(t["marker"]["symbol"])) >= 2 for t in points)
    at.button(key="lesson_1").click().run()
    assert not at.exception
    assert at.slider(key="pg_members").value == 30 and at.select_slider(key="pg_epochs").value == 800
    at.button(key="pg_spread").click().run()
    assert not at.exception
    shown = {m.label: m.value for m in at.metric}
    assert "±" in shown["distance attack AUC over 3 seeds"]


# ----------------------------------------------------------------------------- needless waits


def test_switching_the_search_reuses_the_label_only_stage(tmp_path, monkeypatch):
    calls = []
    real = evaluation.label_only_distance

    def counting(*args, **kw):
        calls.append(kw.get("norm"))
        return real(*args, **kw)

    monkeypatch.setattr(evaluation, "label_only_distance", counting)
    a = ex.run_experiment(FAST, store=tmp_path)
    assert len(calls) == 6  # two norms x three groups
    b = ex.run_experiment(FAST.replace(distance_method="superdeepfool"), store=tmp_path)
    assert len(calls) == 6  # nothing searched again
    np.testing.assert_array_equal(a.scores("label_only_l2", "members"), b.scores("label_only_l2", "members"))
    assert b.record.timings.label_only_seconds < a.record.timings.label_only_seconds
    ex.run_experiment(FAST.replace(label_only_queries=120), store=tmp_path)
    assert calls[6:] == [2.0] * 3  # a different L2 budget is a different L2 stage; L-inf has its own budget
    ex.run_experiment(FAST.replace(label_only_queries=120, label_only_linf_queries=120), store=tmp_path)
    assert calls[9:] == [math.inf] * 3


def test_estimates_come_from_stored_runs(tmp_path):
    run = ex.run_experiment(FAST, store=tmp_path)
    assert views.estimate_seconds(FAST, []).seconds is None
    one = views.estimate_seconds(FAST, [run.record]).seconds
    assert one == pytest.approx(run.record.timings.train_seconds + run.record.timings.evaluation_seconds, rel=0.05)
    more = views.estimate_seconds(FAST.replace(epochs=40, lira_shadows=8), [run.record]).seconds
    assert more > 1.5 * one
    dp = ex.run_experiment(FAST.replace(defense="dp_sgd", defense_strength=1.0, seed=3), store=tmp_path).record
    assert "dp_sgd" not in views.estimate_seconds(FAST, [dp, run.record]).basis  # a like-for-like run first
    assert "dp_sgd" in views.estimate_seconds(FAST.replace(defense="dp_sgd"), [run.record, dp]).basis
    # DP-SGD's reference models cost far more: that must not make the plain run look like one that reused its stages
    t = run.record.timings
    slow_dp = dataclasses.replace(dp, timings=dataclasses.replace(
        dp.timings, shadow_seconds=10 * t.shadow_seconds, label_only_seconds=10 * t.label_only_seconds))
    assert "dp_sgd" not in views.estimate_seconds(FAST, [slow_dp, run.record]).basis
    # a like run that reused its stages from the store (they took about no time) is the second choice
    reused = dataclasses.replace(run.record, config=run.record.config.replace(seed=7), timings=dataclasses.replace(
        t, shadow_seconds=0.01 * t.shadow_seconds, label_only_seconds=0.01 * t.label_only_seconds))
    assert "seed 7" not in views.estimate_seconds(FAST, [reused, run.record]).basis
    assert "seed 7" in views.estimate_seconds(FAST, [reused]).basis


def test_an_estimate_resolves_an_automatic_label_only_budget_for_the_datasets_images(tmp_path):
    """On 28x28 images an automatic L2 budget is 200 queries (low-frequency probes), not 400: a run measured with
    the automatic budget scales to an explicit 400 by (400 + 200) / (200 + 200) in its label-only seconds, and on
    8x8 digits (Gaussian probes, 400 either way) the two estimates agree."""
    from mia_core.config import LABEL_ONLY_QUERIES_GAUSSIAN, LABEL_ONLY_QUERIES_LOW_FREQUENCY

    assert views.dataset_input_shape("mnist5k") == (1, 28, 28)
    assert views.dataset_input_shape("no-such-dataset") is None
    run = ex.run_experiment(FAST, store=tmp_path).record  # a real record; its config names the images below
    auto = ex.ExperimentConfig(dataset="mnist5k", model=FAST.model, members=FAST.members, label_only_queries=None)
    measured = dataclasses.replace(run, config=auto)
    explicit = auto.replace(label_only_queries=LABEL_ONLY_QUERIES_GAUSSIAN)
    extra = views.estimate_seconds(explicit, [measured]).seconds - views.estimate_seconds(auto, [measured]).seconds
    linf = auto.label_only_budget("linf")
    ratio = (LABEL_ONLY_QUERIES_GAUSSIAN + linf) / (LABEL_ONLY_QUERIES_LOW_FREQUENCY + linf)
    assert extra == pytest.approx(run.timings.label_only_seconds * (ratio - 1), rel=1e-9)
    on_digits = dataclasses.replace(run, config=auto.replace(dataset="digits"))
    assert views.estimate_seconds(explicit.replace(dataset="digits"), [on_digits]).seconds == pytest.approx(
        views.estimate_seconds(auto.replace(dataset="digits"), [on_digits]).seconds)


def test_view_toggles_survive_a_visit_to_another_page(app, tmp_path):
    run = ex.run_experiment(FAST, store=tmp_path)
    at = app("app_pages/attacks.py", run.run_id)
    at.toggle(key="roc_log").set_value(True).run()
    at.switch_page("app_pages/overview.py").run()
    at.switch_page("app_pages/attacks.py").run()
    assert at.toggle(key="roc_log").value is True


class _RowCounter(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, x):
        self.rows.append(len(x))
        return self.model(x)


def test_the_label_only_search_bounds_a_cnn_forward_pass(trained_cnn, digits):
    model, split = trained_cnn
    spy = _RowCounter(model)
    x = torch.from_numpy(digits.x[split.nonmembers[:256]])
    r = label_only_distance(spy, x, digits.y[split.nonmembers[:256]], max_queries=600)
    assert np.isfinite(r.norms).mean() > 0.9
    assert max(spy.rows) <= CONV_ROWS_PER_CALL < 256 * 64  # a probe round used to be one 256 x 128 batch


def test_an_onnx_model_and_a_table_uploaded_in_the_app_are_audited(app, tmp_path):
    """Issue 11: upload an ONNX model and its CSV, pick the membership column, audit; the run opens everywhere,
    its scores are the torch original's, and the tabular explorer shows which features had to change."""
    from user_files import onnx_for_table, patients_csv

    csv = tmp_path / "patients.csv"
    frame = patients_csv(csv)
    blob, net, x, y = onnx_for_table(csv)
    at = app("app_pages/audit.py")
    assert at.button(key="audit_run").disabled
    at.file_uploader(key="audit_data").set_value(("patients.csv", csv.read_bytes(), "text/csv")).run()
    at.file_uploader(key="audit_model").set_value(("clinic.onnx", blob, "application/octet-stream")).run()
    assert at.selectbox(key="audit_member_column").value == "member"
    at.selectbox(key="audit_label_column").set_value("diagnosis")
    at.selectbox(key="audit_id_column").set_value("patient_id")
    at.toggle(key="audit_fast").set_value(True).run()
    at.button(key="audit_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("in the background" in i.value for i in at.info)  # a job: leaving the page does not stop it
    finish_jobs(at, tmp_path)
    assert "audited on" in at.success[0].value and not at.error
    assert not list(tmp_path.glob("jobs/*/inputs"))  # the job's copy of the user's files is gone
    jobs = {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("jobs/*/request.json")}
    at.button(key="audit_run").click().run()  # the same files and settings again: open at once, no new job
    assert "audited on" in at.success[0].value and not at.info and not at.error
    assert {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("jobs/*/request.json")} == jobs and jobs
    # other settings: a new job, whose time left is scaled from the stored audit of the same data and model
    at.number_input(key="audit_label_only_queries_True").set_value(300)
    at.button(key="audit_run").click().run()
    job = JobQueue(tmp_path).get(at.query_params["job"])
    assert job.id not in jobs and job.estimate is not None and job.estimate > 0
    finish_jobs(at, tmp_path)
    assert JobQueue(tmp_path).get(job.id).status.value == "done" and len(ex.list_runs(tmp_path)) == 2
    run = ex.list_runs(tmp_path)[0]
    assert run.record.audit.model_kind == "onnx" and run.record.n_members == frame.member.sum()
    assert run.record.config.model == "your model: clinic"
    # the same loss scores as the torch model, sample by sample
    opened = ex.load_run(run.run_id, store=tmp_path)
    g = opened.table["members"]
    with torch.no_grad():
        logp = torch.log_softmax(net(torch.from_numpy(x[g.index])).double(), 1).numpy()
    np.testing.assert_allclose(g.scores["loss"], logp[np.arange(len(g.index)), g.label], atol=1e-4)
    at.switch_page("app_pages/overview.py").run()
    assert any("Your model: clinic.onnx" in i.value and "input box" in i.value for i in at.info), [i.value for i in at.info]
    at.switch_page("app_pages/distances.py").run()
    assert not at.exception
    changes = [d.value for d in at.dataframe if "at the boundary" in d.value.columns][0]
    assert {"feature", "value", "at the boundary", "change"} <= set(changes.columns) and len(changes) >= 1
    assert changes["feature"].iloc[0] in frame.columns
    assert "mean radius" in changes["feature"].tolist() or len(changes) < 30  # in the table's own names
    # a bad upload: a clear message and nothing stored
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    at.switch_page("app_pages/audit.py").run()
    at.file_uploader(key="audit_data").set_value(("patients.csv", csv.read_bytes(), "text/csv")).run()
    at.file_uploader(key="audit_model").set_value(("clinic.onnx", b"not a model", "application/octet-stream")).run()
    at.button(key="audit_run").click().run()
    assert "not an ONNX model" in at.error[0].value
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "upload" not in p.name} == before


def test_an_uploaded_onnx_models_audit_trains_reference_copies_of_its_graph_within_the_limits(app, tmp_path,
                                                                                                 monkeypatch):
    """The audit page's 'Reference models' box: copies of the uploaded graph, re-initialized and trained with the
    recipe given, make LiRA and RMIA available; the server's limits on epochs and shadow models apply to them."""
    from user_files import onnx_for_table, patients_csv

    csv = tmp_path / "patients.csv"
    patients_csv(csv)
    blob, _, _, _ = onnx_for_table(csv, epochs=100)
    at = app("app_pages/audit.py")
    at.file_uploader(key="audit_data").set_value(("patients.csv", csv.read_bytes(), "text/csv")).run()
    at.file_uploader(key="audit_model").set_value(("clinic.onnx", blob, "application/octet-stream")).run()
    at.selectbox(key="audit_label_column").set_value("diagnosis")
    at.selectbox(key="audit_id_column").set_value("patient_id")
    at.toggle(key="audit_fast").set_value(True).run()
    at.checkbox(key="audit_references").check()
    at.number_input(key="audit_recipe_epochs").set_value(20)
    monkeypatch.setenv("MIA_MAX_SHADOWS", "2")  # the fast preset's 4 reference models are over it
    at.button(key="audit_run").click().run()
    assert "4 shadow models is over this server's limit of 2 (MIA_MAX_SHADOWS)" in at.error[0].value.replace("\\", "")
    assert not list(tmp_path.glob("jobs/*"))
    monkeypatch.delenv("MIA_MAX_SHADOWS")
    at.button(key="audit_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    finish_jobs(at, tmp_path)
    run = ex.list_runs(tmp_path)[0]
    rec = run.record
    assert rec.audit.retraining.startswith("copies of clinic.onnx's graph, re-initialized")
    assert "20 epochs of adam" in rec.audit.retraining
    assert rec.config.lira_shadows == 4 and rec.config.epochs == 20
    for attack in ("lira_online", "rmia_online"):
        assert rec.attacks[attack].defined and attack not in rec.unavailable
    assert any("reference models: copies of clinic.onnx's graph" in c.value.replace("\\", "") for c in at.caption)


def test_a_job_line_says_where_a_job_stands_and_what_can_be_opened(tmp_path):
    """The line a tab with no run open shows of a server's job, from a real job's state files."""
    from mia_core.jobs import JobFiles, Status

    cfg = ex.ExperimentConfig(members=120, epochs=3)
    files = JobFiles(tmp_path, "j1")
    files.create(cfg, views.describe(cfg), None)
    queued = files.read()
    assert views.job_line(queued) == (f"Being computed on this server: {views.describe(cfg)} (queued, waiting for a "
                                      "free worker). Follow it to see its first results here as soon as they are "
                                      "stored.")
    files.write_status(status=Status.RUNNING.value, started=1.0, stage="label-only search", fraction=0.42,
                       first_run_id="r/first1-x")
    running = files.read()
    line = views.job_line(running, others=2)
    assert "(label-only search, 42%, " in line and line.endswith(
        "so far). Its first results are ready to open. 2 more jobs are active (Jobs page).")
    assert views.job_line(running, others=1).endswith("1 more job is active (Jobs page).")


def test_the_audit_page_restores_batch_norms_in_the_reference_copies_of_an_uploaded_cnn(app, tmp_path):
    """'Restore a batch norm after each convolution': the job's copies of an uploaded CNN get them back and the run
    says so; for a graph without convolutions the page refuses it with the reason and starts nothing."""
    from test_user_data import _onnx_bytes, batch_norm_cnn
    from user_files import onnx_for_table, patients_csv

    from mia_core.data import load_dataset

    digits = load_dataset("digits")
    x, y = digits.x[:400], digits.y[:400]
    torch.manual_seed(0)
    net = batch_norm_cnn().eval()
    data = io.BytesIO()
    np.savez(data, x=x, y=y)
    at = app("app_pages/audit.py")
    at.file_uploader(key="audit_data").set_value(("digits.npz", data.getvalue(), "application/octet-stream")).run()
    at.file_uploader(key="audit_model").set_value(("bn.onnx", _onnx_bytes(net, torch.from_numpy(x[:2])),
                                                   "application/octet-stream")).run()
    at.file_uploader(key="audit_ids").set_value(("members.txt", "\n".join(map(str, range(0, 400, 2))).encode(),
                                                 "text/plain")).run()
    at.toggle(key="audit_fast").set_value(True).run()
    at.checkbox(key="audit_references").check().run()
    at.checkbox(key="audit_batch_norm").check()
    at.number_input(key="audit_recipe_epochs").set_value(3)
    at.number_input(key="audit_shadows_True").set_value(2)
    at.button(key="audit_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job = JobQueue(tmp_path).get(at.query_params["job"])
    assert job.audit.batch_norm and job.audit.recipe.epochs == 3
    finish_jobs(at, tmp_path)
    run = ex.list_runs(tmp_path)[0].record
    assert "a batch norm restored after each convolution" in run.audit.retraining
    assert run.attacks["lira_online"].defined
    # a table's MLP has no convolution to restore one after: refused before any job
    csv = tmp_path / "patients.csv"
    patients_csv(csv)
    blob, _, _, _ = onnx_for_table(csv, epochs=20)
    at.file_uploader(key="audit_data").set_value(("patients.csv", csv.read_bytes(), "text/csv")).run()
    at.file_uploader(key="audit_model").set_value(("clinic.onnx", blob, "application/octet-stream")).run()
    at.file_uploader(key="audit_ids").set_value(None).run()
    at.selectbox(key="audit_label_column").set_value("diagnosis")
    jobs = sorted(p.name for p in tmp_path.glob("jobs/*"))
    at.button(key="audit_run").click().run()
    assert "no convolution to restore a batch norm after" in at.error[0].value
    assert sorted(p.name for p in tmp_path.glob("jobs/*")) == jobs
