"""Every page through Streamlit's AppTest: widgets found by key and driven, no exception, the right numbers shown."""

import io
import re
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from mia_core import experiment as ex
from mia_core import views
from mia_core.models import build_model

from conftest import finish_jobs

PAGES = ["app_pages/overview.py", "app_pages/experiment.py", "app_pages/distances.py", "app_pages/attacks.py",
         "app_pages/defenses.py", "app_pages/playground.py", "app_pages/export.py"]
APP = str(Path(__file__).resolve().parents[1] / "app.py")
FAST = ex.ExperimentConfig(width=64, members=150, epochs=15, bootstrap_rounds=20, reference_scored=100,
                           distance_method="deepfool", lira_shadows=4, label_only_queries=300)


@pytest.fixture(scope="module")
def app_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("appstore")
    mp = pytest.MonkeyPatch()
    mp.setenv("MIA_STORE", str(root))
    mp.setattr(ex, "DEFAULT_CONFIG", FAST)  # the demo button runs a smaller model in tests
    yield root
    mp.undo()


def _app():
    return AppTest.from_file(APP, default_timeout=120)


def _open(page, store, run_id=None):
    at = _app()
    runs = ex.list_runs(store)
    if run_id or runs:
        at.query_params["run"] = run_id or runs[0].run_id
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _shown(markdown):
    """What a reader sees of an escaped Markdown message (dashboard.state.plain escapes special characters)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def _frame(at, column):
    """The table that has `column` (AppTest's dataframes carry no key; a column names a table as well)."""
    found = [df.value for df in at.dataframe if column in df.value.columns]
    assert len(found) == 1, f"{len(found)} tables with a column '{column}'"
    return found[0]


def _fast_run(store):
    return ex.run_experiment(FAST, store=store)


def test_demo_button_trains_and_shows_headline(app_store):
    at = _app().run()
    assert not at.exception
    at.button(key="demo").click().run()
    assert not at.exception, at.exception
    assert any("Computing the demo in the background" in i.value for i in at.info)  # the page returned at once
    assert at.query_params["job"]
    finish_jobs(at, app_store)
    assert not at.exception, at.exception
    assert "job" not in at.query_params
    runs = ex.list_runs(app_store)
    assert len(runs) == 1
    rec = runs[0].record
    shown = {m.label: m.value for m in at.metric}
    assert shown["test accuracy"] == f"{rec.test_accuracy:.3f}"
    head = views.headline(rec)
    assert shown[f"highest attack AUC ({head.best_attack}, picked on this evaluation)"] == f"{head.auc:.3f}"
    assert at.query_params["run"] == runs[0].run_id  # shareable in the URL


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(app_store, page):
    _fast_run(app_store)
    _open(page, app_store)


def test_a_run_id_outside_the_store_is_not_opened(app_store, tmp_path):
    elsewhere = tmp_path / "other"
    run = ex.run_experiment(FAST, store=elsewhere)
    for rid in (str(run.eval_dir), f"../{elsewhere.name}/{run.run_id}", "/etc/passwd"):
        at = _app()
        at.query_params["run"] = rid
        at.run()
        at.switch_page("app_pages/attacks.py").run()
        assert not at.exception
        assert any("No run is open yet" in i.value for i in at.info)


def test_distances_page_toggles_and_shows_auc(app_store):
    rec = _fast_run(app_store).record
    at = _open("app_pages/distances.py", app_store, _fast_run(app_store).run_id)
    shown = {m.label: m.value for m in at.metric}
    assert shown["distance attack AUC"] == f"{rec.attacks['distance_l2'].auc:.3f}"
    at.radio(key="hist_norm").set_value("L-inf").run()
    assert not at.exception
    shown = {m.label: m.value for m in at.metric}
    assert shown["distance attack AUC"] == f"{rec.attacks['distance_linf'].auc:.3f}"
    at.toggle(key="hist_log").set_value(True).run()
    assert not at.exception


def test_attacks_page_threshold_and_table(app_store):
    run = _fast_run(app_store)
    rec = run.record
    at = _open("app_pages/attacks.py", app_store, run.run_id)
    table = _frame(at, "AUC 95% CI")
    auc = dict(zip(table["id"], table["AUC"]))
    assert list(table["id"]) == list(rec.attacks)
    assert auc["loss"] == pytest.approx(rec.attacks["loss"].auc)
    at.slider(key="thr_percentile").set_value(90.0).run()
    assert not at.exception
    # at the 90th percentile at most ~10% of all evaluated samples are flagged
    confusion = [t.value for t in at.table if "predicted member" in t.value.columns][0]
    flagged = int(confusion["predicted member"].sum())
    assert flagged <= 0.11 * (rec.n_members + rec.n_nonmembers) + 2
    at.toggle(key="roc_log").set_value(True).run()
    assert not at.exception
    rules = _frame(at, "rule")
    assert any("ORACLE" in r for r in rules["rule"]) and any("shadow" in r for r in rules["rule"])
    assert set(rules["rule"]) == set(rec.thresholds)
    ranking = _frame(at, "exposure (FPR)")
    assert ranking["exposure (FPR)"].is_monotonic_increasing and ranking["exposure (FPR)"].nunique() >= 2
    assert ranking["exposure (FPR)"].iloc[0] < 0.05  # the most exposed records beat a 5% reference FPR


def test_attacks_page_offers_no_calibrated_threshold_without_reference_scores(app_store):
    """LiRA has no reference scores: the page shows no 'calibrated' row for it (it used to show threshold -1
    with FPR 0.565), and does show one for an attack that has them."""
    run = _fast_run(app_store)
    at = _open("app_pages/attacks.py", app_store, run.run_id)
    rows = _frame(at, "precision")
    assert any(r.startswith("calibrated") for r in rows["threshold"])
    at.selectbox(key="thr_attack").set_value("lira_online_fixed").run()
    assert not at.exception
    rows = _frame(at, "precision")
    assert not any(r.startswith("calibrated") for r in rows["threshold"])
    assert any("no reference scores" in c.value for c in at.caption)


def test_experiment_page_trains_with_form(app_store):
    at = _open("app_pages/experiment.py", app_store)
    at.number_input(key="cfg_members").set_value(100)
    at.number_input(key="cfg_epochs").set_value(5)
    at.selectbox(key="cfg_distance_method").set_value("deepfool")
    at.number_input(key="cfg_label_only_queries_False").set_value(250)
    at.number_input(key="cfg_lira_shadows_False").set_value(2)
    at.button(key="train").click().run()
    assert not at.exception, at.exception
    finish_jobs(at, app_store)
    runs = [r for r in ex.list_runs(app_store) if r.record.n_members == 100 and r.record.config.epochs == 5]
    assert runs and runs[0].record.config.label_only_queries == 250 and runs[0].record.config.lira_shadows == 2


def test_experiment_page_leaves_the_label_only_budget_to_the_probes_until_a_number_is_typed(app_store, monkeypatch):
    """The default label_only_queries is none (200 queries with low-frequency probes, 400 with Gaussian ones):
    its box starts empty and says so, and a typed number replaces it (the run carries it: the test above)."""
    monkeypatch.setattr(ex, "DEFAULT_CONFIG", FAST.replace(label_only_queries=None))
    at = _open("app_pages/experiment.py", app_store)
    box = at.number_input(key="cfg_label_only_queries_False")
    assert box.value is None and box.proto.placeholder == "automatic"
    box.set_value(120).run()
    assert not at.exception and at.number_input(key="cfg_label_only_queries_False").value == 120


def test_experiment_page_refuses_an_out_of_range_strength(app_store):
    """Label smoothing of strength 5 used to reach training and crash with a traceback; now the form's config
    is validated first and the user reads what is allowed."""
    before = len(ex.list_runs(app_store))
    at = _open("app_pages/experiment.py", app_store)
    at.selectbox(key="cfg_defense").set_value("label_smoothing")
    at.number_input(key="cfg_defense_strength").set_value(5.0)
    at.button(key="train").click().run()
    assert not at.exception
    assert any("label_smoothing must be in [0, 1]" in _shown(e.value) for e in at.error), [e.value for e in at.error]
    assert len(ex.list_runs(app_store)) == before


def test_bad_checkpoint_upload_path_gets_a_clear_message(app_store, tmp_path, monkeypatch):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    monkeypatch.setenv("MIA_CHECKPOINT_DIR", str(tmp_path))  # the operator allows this folder
    before = len(ex.list_runs(app_store))
    at = _open("app_pages/experiment.py", app_store)
    at.text_input(key="ckpt_path").set_value("bad.pt")
    at.button(key="ckpt_evaluate").click().run()
    assert not at.exception
    assert any("not a readable checkpoint" in _shown(e.value) for e in at.error)
    assert len(ex.list_runs(app_store)) == before


def test_playground_retrains_on_slider(app_store):
    at = _open("app_pages/playground.py", app_store)
    first = {m.label: m.value for m in at.metric}
    at.select_slider(key="pg_weight_decay").set_value(1e-2).run()
    assert not at.exception
    second = {m.label: m.value for m in at.metric}
    assert first != second


def test_export_page_offers_downloads(app_store):
    run = _fast_run(app_store)
    at = _open("app_pages/export.py", app_store, run.run_id)
    labels = [b.label for b in at.get("download_button")]
    assert "Per-sample table (CSV)" in labels and "Summary (JSON)" in labels and labels.count("HTML") == 4


def test_defenses_page_trains_and_compares(app_store):
    _fast_run(app_store)
    at = _open("app_pages/defenses.py", app_store)
    at.multiselect(key="def_chosen").set_value(["label_smoothing"])
    at.run()
    at.button(key="def_train").click().run()
    assert not at.exception, at.exception
    finish_jobs(at, app_store)
    assert "label_smoothing" in {r.record.config.defense for r in ex.list_runs(app_store)}
    table = _frame(at, "leakage_sd")
    assert "label_smoothing" in set(table["defense"])
    assert (table["seeds"] == 1).all()  # one seed each, however many evaluations a model has
    at.radio(key="def_measure").set_value("TPR at 1% FPR").run()
    assert not at.exception


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_upload_is_validated_and_never_unpickled(app_store, capsys):
    evil = io.BytesIO()
    torch.save({"w": _Evil()}, evil)
    at = _open("app_pages/experiment.py", app_store)
    at.file_uploader(key="ckpt_upload").upload("model.pt", evil.getvalue()).run()
    at.button(key="ckpt_evaluate").click().run()
    assert not at.exception
    assert any("not a readable checkpoint" in _shown(e.value) for e in at.error), [e.value for e in at.error]
    assert "pwned" not in capsys.readouterr().out
    uploads = app_store / "uploads"
    assert not uploads.exists() or not [p for p in uploads.iterdir()]  # the refused file was not kept

    good = io.BytesIO()
    torch.manual_seed(0)
    torch.save(build_model("mlp", (1, 8, 8), 10, width=ex.DEFAULT_CONFIG.width).state_dict(), good)
    at = _open("app_pages/experiment.py", app_store)
    at.file_uploader(key="ckpt_upload").upload("model.pt", good.getvalue()).run()
    at.button(key="ckpt_evaluate").click().run()
    assert not at.exception, at.exception
    finish_jobs(at, app_store)
    assert not at.error, [e.value for e in at.error]
    assert len(list((app_store / "uploads").glob("*.pt"))) == 1
    assert any(r.record.config.checkpoint for r in ex.list_runs(app_store))


def test_every_page_shows_a_runs_first_results_and_names_what_is_still_computed(app_store, tmp_path):
    """While a job runs, its first results (stored by the worker in a `first-` folder) are what the pages show."""
    import shutil

    kept = {}

    def keep(run_id):  # the folder is replaced by the next ones at the end: keep a copy, as seen mid-job
        kept[run_id] = tmp_path / run_id.split("/")[1]
        shutil.copytree(ex.Store(app_store).eval_path(run_id), kept[run_id])

    final = ex.run_experiment(FAST.replace(seed=3), store=app_store, first_results=keep).eval_dir
    assert len(kept) == 2  # the softmax signals first, then with the white-box searches
    final.rename(tmp_path / "final")  # the store as it is mid-job: first results, no finished evaluation
    for first_id, copy in kept.items():
        shutil.copytree(copy, ex.Store(app_store).root / first_id)
        for page in PAGES:
            at = _open(page, app_store, first_id)
            if page in ("app_pages/overview.py", "app_pages/distances.py", "app_pages/attacks.py", "app_pages/export.py"):
                assert any("Still being computed:" in _shown(i.value) and "Label-only distance" in _shown(i.value)
                           for i in at.info), (page, first_id)
        if first_id.split("/")[1].startswith("first0"):
            assert any("Boundary distance" in _shown(i.value) for i in at.info)  # pending at the first level
            discard = ex.Store(app_store).root / first_id  # replaced by the next level, as the worker does
            shutil.rmtree(discard)
    # a session that follows the job (no run chosen yet) is shown its first results while the job runs
    import os

    from mia_core.jobs import JobFiles, Status, job_id

    cfg = FAST.replace(seed=3)
    files = JobFiles(app_store, job_id(cfg))
    files.create(cfg, "mid-job", None)
    files.write_status(status=Status.RUNNING.value, pid=os.getpid(), stage="label-only search", fraction=0.4,
                       first_run_id=first_id)
    at = _app()
    at.query_params["job"] = job_id(cfg)
    at.run()
    assert not at.exception, at.exception
    assert any("Still being computed" in _shown(i.value) for i in at.info)
    assert at.metric[0].label == "test accuracy"  # the headline of the first results
    # a new tab (no run chosen, no job followed: another visitor's job, or a closed tab's) is offered the running
    # job; opening it shows its first results, and the sidebar follows the job
    _fast_run(app_store)  # and the store has a finished run
    newest = ex.list_runs(app_store)[0]
    at = _app()
    at.run()
    at.switch_page("app_pages/attacks.py").run()
    assert not at.exception, at.exception
    offer = [_shown(i.value) for i in at.info if "Being computed on this server: " in _shown(i.value)]
    assert offer and "(label-only search, 40%" in offer[0] and "first results are ready" in offer[0], offer
    assert any(b.key == "demo_inline" for b in at.button)  # the running job is not the demo
    at.button(key="follow_active").click().run()
    assert not at.exception, at.exception
    assert any("Still being computed" in _shown(i.value) for i in at.info)
    first = ex.load_run(first_id, store=app_store).record
    table = _frame(at, "AUC 95% CI")
    assert dict(zip(table["id"], table["AUC"]))["loss"] == pytest.approx(first.attacks["loss"].auc)
    assert any(b.key == "job_cancel" for b in at.sidebar.button)  # the sidebar follows it now
    files.write_status(status=Status.FAILED.value, error="ended by the test")
    # with no job active, a new tab is offered the newest finished run
    at = _app()
    at.run()
    at.switch_page("app_pages/attacks.py").run()
    assert not any("Being computed on this server: " in _shown(i.value) for i in at.info)
    at.button(key="open_newest").click().run()
    assert not at.exception, at.exception
    table = _frame(at, "AUC 95% CI")
    assert dict(zip(table["id"], table["AUC"]))["loss"] == pytest.approx(newest.record.attacks["loss"].auc)
    # while the demo itself runs, a new tab is offered it, not a second "Run the demo" (seen in a Chromium trial)
    demo = JobFiles(app_store, job_id(ex.DEFAULT_CONFIG))
    demo.create(ex.DEFAULT_CONFIG, "the demo", None)
    demo.write_status(status=Status.RUNNING.value, pid=os.getpid(), stage="training", fraction=0.1)
    at = _app()
    at.run()
    at.switch_page("app_pages/attacks.py").run()
    assert not at.exception, at.exception
    assert any("Being computed on this server: the demo (training, 10%" in _shown(i.value) for i in at.info)
    assert any(b.key == "follow_active" for b in at.button) and not any(b.key == "demo_inline" for b in at.button)
    # the demo finishes before the click arrives (the rerun no longer draws the offer): the click still opens its run
    demo.write_status(status=Status.DONE.value, run_id=newest.run_id, finished=1.0)
    at.button(key="follow_active").click().run()
    assert not at.exception, at.exception
    assert at.query_params["run"] == newest.run_id
    table = _frame(at, "AUC 95% CI")
    assert dict(zip(table["id"], table["AUC"]))["loss"] == pytest.approx(newest.record.attacks["loss"].auc)
    at = _open("app_pages/attacks.py", app_store, first_id)
    table = _frame(at, "AUC 95% CI")
    shown = dict(zip(table["id"], table["AUC"]))
    assert shown["lira_online"] != shown["lira_online"]  # pending: no number yet (NaN)
    assert shown["loss"] == shown["loss"]
    # first results whose run has finished are garbage once the job is over
    (tmp_path / "final").rename(final)
    gone = ex.collect_garbage(app_store).first_results
    assert [p.name for p in gone] == [first_id.split("/")[1]] and not (ex.Store(app_store).root / first_id).exists()
