"""Benchmark: the app's cold start, the demo, and how fast a view-only slider redraws. Run by hand:

    .venv/bin/python bench/app.py

Starts `streamlit run app.py` on 127.0.0.1 with an empty store, drives Debian's Chromium with Playwright, and
prints: server start, first page rendered, demo (click to headline), and the redraw time of the histogram's
`bins` slider on the Distances page (a view-only change, served from the caches), median of 5 moves.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def wait_idle(page) -> None:
    page.wait_for_timeout(150)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=300_000)


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tempfile.mkdtemp()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"], cwd=ROOT,
                            env=dict(os.environ, MIA_STORE=store), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        t_server = time.perf_counter() - t0
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_role("button", name="Run the demo").first.wait_for(timeout=120_000)
            t_page = time.perf_counter() - t0
            t1 = time.perf_counter()
            page.get_by_role("button", name="Run the demo").first.click()
            page.get_by_text("Headline").first.wait_for(timeout=300_000)
            wait_idle(page)
            t_demo = time.perf_counter() - t1
            page.get_by_role("link", name="Distances").first.click()
            wait_idle(page)
            slider = page.get_by_role("slider").first
            times = []
            for _ in range(5):
                slider.focus()
                t2 = time.perf_counter()
                page.keyboard.press("ArrowRight")
                wait_idle(page)
                times.append(time.perf_counter() - t2)
            browser.close()
    finally:
        proc.terminate()
        shutil.rmtree(store, ignore_errors=True)
    print(f"{'step':<46}{'seconds':>9}")
    print(f"{'server up (python -m streamlit run app.py)':<46}{t_server:>9.2f}")
    print(f"{'first page rendered in Chromium':<46}{t_page:>9.2f}")
    print(f"{'demo: click to headline (train + all attacks)':<46}{t_demo:>9.2f}")
    print(f"{'cold start to results (sum)':<46}{t_page + t_demo:>9.2f}")
    print(f"{'view-only slider redraw (median of 5)':<46}{statistics.median(times):>9.2f}")


if __name__ == "__main__":
    main()
