"""A real browser: Debian's Chromium driven by Playwright against the app served on 127.0.0.1.

Runs the demo, visits every page, moves a slider, and checks that no page shows an exception.
With MIA_SCREENSHOTS=DIR it also saves one screenshot per page (the README's pictures come from here;
MIA_SCREENSHOT_STORE=./mia_runs starts from a copy of a store that holds the reproduction runs).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGES = ["Overview", "Experiment", "Audit your model", "Distances", "Attacks", "Defenses", "Playground", "Export",
         "Jobs"]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the browser test (scripts/test.sh installs it).")
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    store = tmp_path_factory.mktemp("browserstore") / "store"
    seed_store = os.environ.get("MIA_SCREENSHOT_STORE")  # screenshots of a store with many runs (a copy)
    if seed_store:
        shutil.copytree(seed_store, store)
    env = dict(os.environ, MIA_STORE=str(store))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=1).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("the Streamlit server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def _settle(page):
    """Wait until the script run has finished: no 'running' widget for two checks a second apart."""
    for _ in range(2):
        page.wait_for_timeout(1000)
        page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                               timeout=180_000)


def _no_exception(page, where):
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, f"{where}: {errors.first.inner_text()[:500]}"


def test_the_first_visitor_of_a_fresh_server_on_a_deep_link_gets_the_apps_pages(server):
    """Runs first on a fresh server. The app's pages live in app_pages/: with a `pages/` folder beside app.py,
    Streamlit served a deep link opened before any session had run app.py as a legacy page (its file names in the
    sidebar, no job panel), and that session's page never refreshed while its job ran."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server + "/attacks", wait_until="networkidle")
        _settle(page)
        nav = page.locator('[data-testid="stSidebarNav"]')
        assert nav.get_by_role("link", name="Overview").count() == 1, nav.inner_text()
        assert nav.get_by_role("link", name="app", exact=True).count() == 0
        assert page.get_by_role("heading", name="Attacks").count() >= 1
        browser.close()


def test_demo_and_every_page_in_chromium(server):
    shots = os.environ.get("MIA_SCREENSHOTS")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page_errors = []
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.goto(server, wait_until="networkidle")
        page.get_by_role("button", name="Run the demo").first.click()
        page.get_by_text("Computing the demo in the background").first.wait_for(timeout=60_000)
        page.reload(wait_until="networkidle")  # a reload loses nothing: the job runs on, the URL names it
        page.get_by_text("Headline").first.wait_for(timeout=180_000)  # the first results, or the finished run
        page.get_by_text("Still being computed").first.wait_for(state="detached", timeout=300_000)  # finished
        _settle(page)
        _no_exception(page, "Overview")
        assert page.get_by_text("highest attack AUC").count() >= 1
        for name in PAGES:
            page.get_by_role("link", name=name).first.click()
            _settle(page)
            _no_exception(page, name)
            if name == "Playground":
                page.get_by_text("Decision boundary").first.wait_for(timeout=180_000)
                _settle(page)
            if name == "Distances":
                slider = page.get_by_role("slider").first
                slider.focus()
                for _ in range(5):
                    page.keyboard.press("ArrowRight")
                _settle(page)
                _no_exception(page, "Distances after moving a slider")
            if shots:
                Path(shots).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(shots) / f"{name.lower()}.png"), full_page=True)
        browser.close()
    assert not page_errors, page_errors


def test_an_onnx_model_uploaded_in_chromium_is_audited(server, tmp_path):
    """Issue 11: a model exported with torch.onnx.export and its CSV, uploaded through the real browser."""
    sys.path.insert(0, str(Path(__file__).parent))
    from user_files import onnx_for_table, patients_csv

    csv = tmp_path / "patients.csv"
    patients_csv(csv)
    blob, _, _, _ = onnx_for_table(csv)
    model = tmp_path / "clinic.onnx"
    model.write_bytes(blob)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server, wait_until="networkidle")
        page.get_by_role("link", name="Audit your model").first.click()
        _settle(page)
        inputs = page.locator('input[type="file"]')
        inputs.nth(0).set_input_files(str(csv))
        _settle(page)
        inputs.nth(1).set_input_files(str(model))
        _settle(page)
        page.get_by_role("button", name="Audit", exact=True).click()
        page.get_by_text("Audited on").first.wait_for(timeout=300_000)
        _settle(page)
        _no_exception(page, "Audit your model")
        page.get_by_role("link", name="Distances").first.click()
        _settle(page)
        _no_exception(page, "Distances of the audit")
        assert page.get_by_text("at the boundary").count() >= 1
        page.get_by_role("link", name="Overview").first.click()
        _settle(page)
        assert page.get_by_text("Your model: clinic.onnx").count() >= 1
        browser.close()
