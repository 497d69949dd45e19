"""The audit report: generated from a real run, opened in the real browser, its figures present; and its PDF."""

import os
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mia_core.cli import main
from mia_core.config import ExperimentConfig
from mia_core.experiment import list_runs, run_experiment
from mia_core.report import chromium, write_report

ROOT = Path(__file__).resolve().parents[1]
FAST = ExperimentConfig(width=64, members=120, epochs=10, bootstrap_rounds=20, reference_scored=60,
                        distance_method="deepfool", lira_shadows=2, label_only_queries=50)
SECTIONS = ("Setup", "Headline", "Privacy", "Every attack", "Distances to the decision boundary", "Where it leaks",
            "Most exposed records", "Defenses compared", "Software")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("reportstore")
    run_experiment(FAST, store=root)
    run_experiment(FAST.replace(defense="label_smoothing", defense_strength=0.1), store=root)
    return root


def test_the_report_has_every_section_and_opens_offline(store, tmp_path):
    from mia_core.experiment import load_run

    run = load_run([r for r in list_runs(store) if r.record.config.defense == "none"][0].run_id, store=store)
    rep = write_report(run, tmp_path, pdf=False, family=list_runs(store))
    text = rep.html.read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in text, section
    assert '<script src="http' not in text and "cdn.plot.ly/plotly" not in text.split("<body>")[1]
    assert "lira_online_fixed" in text and "label_smoothing" in text


@pytest.mark.skipif(chromium() is None and not os.environ.get("CI"), reason="Debian's chromium is not installed")
def test_the_report_renders_its_figures_in_chromium_and_prints_a_pdf(store, tmp_path):
    from mia_core.experiment import load_run

    sync_api = pytest.importorskip("playwright.sync_api")
    run = load_run(list_runs(store)[0].run_id, store=store)
    rep = write_report(run, tmp_path, pdf=True, family=list_runs(store))
    assert rep.pdf.read_bytes()[:4] == b"%PDF" and rep.pdf.stat().st_size > 20_000
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(rep.html.resolve().as_uri())
        page.wait_for_timeout(1500)
        plots = page.locator(".js-plotly-plot")
        assert plots.count() == 6  # ROC, two histograms, three slice charts
        assert page.locator(".js-plotly-plot .main-svg").count() >= 6  # drawn, not just placeholders
        browser.close()
    assert not errors, errors


def test_the_cli_writes_a_report(store, tmp_path, capsys):
    rid = list_runs(store)[0].run_id
    assert main(["report", rid, "--store", str(store), "--out", str(tmp_path / "r"), "--no-pdf"]) == 0
    assert (tmp_path / "r" / "report.html").is_file() and "wrote" in capsys.readouterr().out
    assert main(["report", "../elsewhere/eval-x", "--store", str(store)]) == 2
    assert "not a run id" in capsys.readouterr().err


def _export_page_after(button, store, monkeypatch):
    """The Export page of the store's newest run after pressing `button` (a key)."""
    monkeypatch.setenv("MIA_STORE", str(store))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.query_params["run"] = list_runs(store)[0].run_id
    at.run()
    at.switch_page("app_pages/export.py").run()
    at.button(key=button).click().run()
    assert not at.exception, at.exception
    return at


def test_the_export_page_builds_the_report(store, monkeypatch):
    at = _export_page_after("report_build", store, monkeypatch)
    labels = [b.label for b in at.get("download_button")]
    assert "Report (HTML)" in labels
    assert ("Report (PDF)" in labels) == (shutil.which("chromium") is not None)


@pytest.mark.skipif(chromium() is None and not os.environ.get("CI"), reason="Debian's chromium is not installed")
def test_the_export_page_draws_png_files_through_chromium(store, monkeypatch):
    at = _export_page_after("png_build", store, monkeypatch)
    pngs = [b for b in at.get("download_button") if b.label == "PNG"]
    assert len(pngs) == 4
