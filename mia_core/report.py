"""A self-contained audit report of one run: setup, model and data, accuracy, every attack's table and log-log ROC,
the distance histograms, where it leaks, the epsilon bounds, the most exposed records, the defenses compared, and
the software versions. HTML with plotly embedded (it opens offline); a PDF printed from it by the machine's Chromium.
"""

from __future__ import annotations

import html
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import plotly.graph_objects as go
import plotly.offline

from . import __version__, figures, views
from .metrics import roc_points
from .slices import slice_metrics

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic")


def _figure(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displayModeBar": False})


def _table(frame, **kw) -> str:
    return frame.to_html(index=False, border=0, classes="t", float_format=lambda v: f"{v:.3f}", na_rep="-", **kw)


def _versions() -> str:
    names = ("torch", "numpy", "scikit-learn", "plotly", "streamlit", "opacus")
    rows = [("mia_core", __version__), ("python", platform.python_version()), ("platform", platform.platform())]
    for n in names:
        try:
            rows.append((n, metadata.version(n)))
        except metadata.PackageNotFoundError:
            pass
    return "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>" for a, b in rows)


def report_html(run, *, family=None) -> str:
    """The report of a RunResult (mia_core.experiment) as one HTML page. `family`: the store's runs
    (StoredRun) to compare defenses over, if any."""
    rec, table, cfg = run.record, run.table, run.config
    attacks = rec.defined_attacks()
    rocs = {a: roc_points(*table.member_nonmember(a)) for a in attacks}
    aucs = {a: rec.attacks[a].auc for a in attacks}
    head = views.headline(rec)
    parts = [f"<h1>Membership leakage audit</h1><p class=sub>{html.escape(views.run_label(rec))}<br>run "
             f"<code>{html.escape(run.run_id)}</code>, finished {html.escape(rec.environment.finished_at)}</p>"]
    setup = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                    for k, v in cfg.to_dict().items() if k not in ("data_dir", "device"))
    parts.append(f"<h2>Setup</h2><table class=t>{setup}</table><p>{rec.n_members} members, {rec.n_nonmembers} "
                 f"non-members, {rec.n_reference_scored} reference samples scored "
                 f"({rec.n_reference_searched} of them by the per-sample searches); train accuracy "
                 f"{rec.train_accuracy:.3f}, test accuracy {rec.test_accuracy:.3f}.</p>")
    if note := views.audit_note(rec):
        parts.append(f"<p>{html.escape(note)}</p>")
    if unavailable := {a: why for a, why in rec.unavailable.items()}:
        parts.append("<p class=sub>Not measured here: " + html.escape("; ".join(
            f"{views.attack_title(a)} ({why})" for a, why in unavailable.items())) + ".</p>")
    parts.append(f"<h2>Headline</h2><p>Highest attack AUC {head.auc:.3f} ({html.escape(views.attack_title(head.best_attack))}"
                 f", picked on this evaluation: an optimistic choice), its TPR at 1% FPR {head.tpr_at_1pct_fpr:.3f}.</p>")
    if note := views.privacy_summary(rec):
        parts.append(f"<h2>Privacy</h2><p>{html.escape(note)}</p>")
    if note := views.resolution_note(rec.n_nonmembers):
        parts.append(f"<p class=sub>{html.escape(note)}</p>")
    parts.append("<h2>Every attack</h2>" + _table(views.metrics_table(rec)))
    parts.append(_figure(figures.roc_figure(rocs, aucs=aucs, log=True, title="ROC of every attack (log-log axes)")))
    parts.append("<h2>Distances to the decision boundary</h2>")
    for name, unit in (("distance_l2", "L2"), ("distance_linf", "L-inf")):
        parts.append(_figure(figures.distance_histogram(*table.member_nonmember(name), norm_label=f"{unit} norm",
                                                        box=run.dataset.bounds,
                                                        title=f"Distance to the decision boundary ({unit})")))
    parts.append("<h2>Where it leaks</h2>")
    for attack, slicing in ((head.best_attack, "class"), ("distance_l2", "correctly classified"),
                            ("loss", "distance decile")):
        rows = slice_metrics(table, attack, slicing, bootstrap_rounds=100, seed=cfg.seed)
        parts.append(_figure(figures.slice_figure(rows, title=f"{views.attack_title(attack)} by {slicing}")))
    exposed = views.vulnerability_table(table).head(20)
    parts.append("<h2>Most exposed records</h2><p class=sub>Lowest reference-calibrated FPR at which any attack "
                 "flags the record; membership shown, never used.</p>" + _table(exposed))
    if family:
        frame = views.runs_frame(family)
        frame = frame[(frame["dataset"] == cfg.dataset) & (frame["model"] == cfg.model)
                      & (frame["members"] == rec.n_members) & ~frame["checkpoint"]]
        if frame["defense"].nunique() > 1:
            parts.append("<h2>Defenses compared</h2>" + _table(views.aggregate_over_seeds(frame)))
    parts.append(f"<h2>Software</h2><table class=t>{_versions()}</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222} .sub{color:#666}"
             " table.t{border-collapse:collapse;font-size:12px} .t td,.t th{border-bottom:1px solid #ddd;"
             "padding:3px 8px;text-align:left} h2{margin-top:1.6em;page-break-after:avoid}"
             " .plotly-graph-div{page-break-inside:avoid}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>Membership leakage audit — "
            f"{html.escape(run.run_id)}</title><style>{style}</style>"
            f"<script>{plotly.offline.get_plotlyjs()}</script></head><body>{''.join(parts)}</body></html>")


def chromium() -> str | None:
    """The machine's Chromium, if any (Debian's `chromium`, or `chromium-browser` / `google-chrome`)."""
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def print_pdf(html_path: Path, pdf_path: Path, *, timeout_s: float = 120) -> Path:
    """Print an HTML file to PDF with headless Chromium, after its scripts (the plotly charts) have run."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("No Chromium on this machine for the PDF: install Debian's `chromium` (the HTML report "
                           "has everything the PDF would).")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                        "--no-pdf-header-footer", f"--print-to-pdf={pdf_path}", html_path.resolve().as_uri()],
                       check=True, capture_output=True, timeout=timeout_s)
    if not pdf_path.is_file() or pdf_path.read_bytes()[:4] != b"%PDF":
        raise RuntimeError("Chromium did not write the PDF.")
    return pdf_path


def figure_png(fig, path: Path, *, width: int = 900, height: int = 520) -> Path:
    """A static PNG of a plotly figure, drawn by the machine's Chromium (the report's PDF path)."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("No Chromium on this machine for PNG export: install Debian's `chromium`.")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "figure.html"
        figure = go.Figure(fig).update_layout(width=width, height=height)  # a copy: the caller's is untouched
        page.write_text(figure.to_html(include_plotlyjs=True, full_html=True, config={"displayModeBar": False}),
                        encoding="utf-8")
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile", "--virtual-time-budget=10000",
                        "--hide-scrollbars", f"--window-size={width + 20},{height + 20}",
                        f"--screenshot={path.resolve()}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    if not path.is_file() or path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise RuntimeError("Chromium did not write the PNG.")
    return path


@dataclass(frozen=True)
class Report:
    html: Path
    pdf: Path | None
    seconds: float


def write_report(run, out_dir: str | Path, *, pdf: bool = True, family=None) -> Report:
    """Write report.html (and report.pdf) for a run into `out_dir`."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = out / "report.html"
    page.write_text(report_html(run, family=family), encoding="utf-8")
    printed = print_pdf(page, out / "report.pdf") if pdf else None
    return Report(page, printed, time.perf_counter() - t0)
