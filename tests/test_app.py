"""Every page through Streamlit's AppTest: widgets driven, no exception, the right numbers shown."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mia_core import experiment as ex

PAGES = ["pages/overview.py", "pages/experiment.py", "pages/distances.py", "pages/attacks.py",
         "pages/defenses.py", "pages/playground.py", "pages/export.py"]
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


def _open(page, store):
    at = _app()
    runs = ex.list_runs(store)
    if runs:
        at.query_params["run"] = "/".join(runs[0]["eval_dir"].split("/")[-2:])
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_demo_button_trains_and_shows_headline(app_store):
    at = _app().run()
    assert not at.exception
    demo = [b for b in at.button if b.label == "Run the demo"][0]
    demo.click().run()
    assert not at.exception, at.exception
    runs = ex.list_runs(app_store)
    assert len(runs) == 1
    s = runs[0]
    shown = {m.label: m.value for m in at.metric}
    assert shown["test accuracy"] == f"{s['test_accuracy']:.3f}"
    head = ex.headline(s)
    assert shown[f"best attack AUC ({head['best_attack']})"] == f"{head['auc']:.3f}"
    assert at.query_params["run"]  # shareable in the URL


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(app_store, page):
    if not ex.list_runs(app_store):
        ex.run_experiment(FAST, store_root=app_store)
    _open(page, app_store)


def test_distances_page_toggles_and_shows_auc(app_store):
    ex.run_experiment(FAST, store_root=app_store)
    at = _open("pages/distances.py", app_store)
    s = ex.list_runs(app_store)[0]
    shown = {m.label: m.value for m in at.metric}
    assert shown["distance attack AUC"] == f"{s['attacks']['distance_l2']['auc']:.3f}"
    norm = [r for r in at.radio if r.label == "norm"][0]
    norm.set_value("L-inf").run()
    assert not at.exception
    shown = {m.label: m.value for m in at.metric}
    assert shown["distance attack AUC"] == f"{s['attacks']['distance_linf']['auc']:.3f}"
    [t for t in at.toggle if t.label == "log distance axis"][0].set_value(True).run()
    assert not at.exception


def test_attacks_page_threshold_and_table(app_store):
    ex.run_experiment(FAST, store_root=app_store)
    at = _open("pages/attacks.py", app_store)
    s = ex.list_runs(app_store)[0]
    table = at.dataframe[0].value
    auc = dict(zip(table["attack"], table["AUC"]))
    assert auc["loss"] == pytest.approx(s["attacks"]["loss"]["auc"])
    [sl for sl in at.slider if sl.label.startswith("threshold")][0].set_value(90.0).run()
    assert not at.exception
    # at the 90th percentile at most ~20% of all evaluated samples are flagged
    conf = at.table[0].value
    flagged = int(conf["predicted member"].sum())
    assert flagged <= 0.11 * (s["n_members"] + s["n_nonmembers"]) + 2
    [t for t in at.toggle if t.label == "log-log axes"][0].set_value(True).run()
    assert not at.exception
    rules = [df.value for df in at.dataframe if "rule" in df.value.columns][0]
    assert any("ORACLE" in r for r in rules["rule"]) and any("shadow" in r for r in rules["rule"])
    assert set(rules["rule"]) == set(s["thresholds"])
    ranking = [df.value for df in at.dataframe if "exposure (FPR)" in df.value.columns][0]
    assert ranking["exposure (FPR)"].is_monotonic_increasing and ranking["exposure (FPR)"].nunique() >= 2
    assert ranking["exposure (FPR)"].iloc[0] < 0.05  # the most exposed records beat a 5% reference FPR


def test_experiment_page_trains_with_form(app_store):
    at = _open("pages/experiment.py", app_store)
    at.number_input[0].set_value(100)  # members
    at.slider[0].set_value(5)  # epochs
    [s for s in at.selectbox if s.label == "distance search"][0].set_value("deepfool")
    [b for b in at.button if b.label == "Train and score"][0].click().run()
    assert not at.exception, at.exception
    assert any(r["n_members"] == 100 and r["config"]["epochs"] == 5 for r in ex.list_runs(app_store))


def test_bad_checkpoint_upload_path_gets_a_clear_message(app_store, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    before = len(ex.list_runs(app_store))
    at = _open("pages/experiment.py", app_store)
    [t for t in at.text_input if t.label.startswith("…or a path")][0].set_value(str(bad))
    [b for b in at.button if b.label == "Evaluate checkpoint"][0].click().run()
    assert not at.exception
    assert any("not a readable checkpoint" in e.value for e in at.error)
    assert len(ex.list_runs(app_store)) == before


def test_playground_retrains_on_slider(app_store):
    at = _open("pages/playground.py", app_store)
    first = {m.label: m.value for m in at.metric}
    [s for s in at.select_slider if s.label == "defense: weight decay"][0].set_value(1e-2).run()
    assert not at.exception
    second = {m.label: m.value for m in at.metric}
    assert first != second


def test_export_page_offers_downloads(app_store):
    ex.run_experiment(FAST, store_root=app_store)
    at = _open("pages/export.py", app_store)
    labels = [b.label for b in at.get("download_button")]
    assert "Per-sample table (CSV)" in labels and "Summary (JSON)" in labels and labels.count("HTML") == 4
    json.dumps(ex.list_runs(app_store)[0])


def test_defenses_page_trains_and_compares(app_store):
    ex.run_experiment(FAST, store_root=app_store)
    at = _open("pages/defenses.py", app_store)
    [m for m in at.multiselect if m.label == "defenses"][0].set_value(["label_smoothing"])
    at.run()
    [b for b in at.button if b.label == "Train"][0].click().run()
    assert not at.exception, at.exception
    defenses = {s["config"]["defense"] for s in ex.list_runs(app_store)}
    assert "label_smoothing" in defenses
    table = [df.value for df in at.dataframe if "strength" in df.value.columns][0]
    assert "label_smoothing" in set(table["defense"])
    [r for r in at.radio if r.label == "leakage metric"][0].set_value("TPR at 1% FPR").run()
    assert not at.exception


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_upload_is_validated_and_never_unpickled(app_store, capsys):
    import io

    import torch

    from mia_core.models import build_model

    evil = io.BytesIO()
    torch.save({"w": _Evil()}, evil)
    at = _open("pages/experiment.py", app_store)
    at.file_uploader[0].upload("model.pt", evil.getvalue()).run()
    [b for b in at.button if b.label == "Evaluate checkpoint"][0].click().run()
    assert not at.exception
    assert any("not a readable checkpoint" in e.value for e in at.error), [e.value for e in at.error]
    assert "pwned" not in capsys.readouterr().out
    uploads = app_store / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())  # the refused file was not kept

    good = io.BytesIO()
    torch.manual_seed(0)
    torch.save(build_model("mlp", (1, 8, 8), 10, width=ex.DEFAULT_CONFIG.width).state_dict(), good)
    at = _open("pages/experiment.py", app_store)
    at.file_uploader[0].upload("model.pt", good.getvalue()).run()
    [b for b in at.button if b.label == "Evaluate checkpoint"][0].click().run()
    assert not at.exception, at.exception
    assert any("Checkpoint evaluated" in s.value for s in at.success), [e.value for e in at.error]
    assert len(list((app_store / "uploads").glob("*.pt"))) == 1
    assert any(s["config"]["checkpoint"] for s in ex.list_runs(app_store))
