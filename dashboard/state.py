"""Cached helpers over mia_core and the current run (shared through the URL's query parameters).

Only caching and session state live here; every table and label comes from `mia_core.views`."""

from __future__ import annotations

import streamlit as st

from mia_core import experiment as ex
from mia_core import views
from mia_core.attacks import ATTACKS
from mia_core.config import ExperimentConfig
from mia_core.jobs import Job, JobQueue, Status, job_id
from mia_core.limits import Limits
from mia_core.metrics import roc_band, roc_points
from mia_core.store import Store, StoreError

RUN_ERRORS = (ValueError, OSError)
"""What a page catches when it starts work: bad configurations (ConfigError), datasets, checkpoints and store
errors are ValueErrors; a full disk or an unreadable file is an OSError."""


_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*_[]()#!|<>~$"})


def plain(text: object) -> str:
    """`text` with Markdown's special characters escaped, so a user's file name or path is shown as written
    (an image link in it is never fetched)."""
    return str(text).translate(_MARKDOWN)


def show_error(err: BaseException) -> None:
    st.error(plain(err))


@st.cache_resource(show_spinner=False)
def housekeeping(root: str) -> ex.Collected:
    """Once per server process and store: remove leftovers of interrupted writes and unused uploads older than
    an hour (mia_core.experiment.collect_garbage)."""
    return ex.collect_garbage(Store(root))


def store() -> Store:
    """The store the app reads and writes: $MIA_STORE, else ./mia_runs (resolved on every call)."""
    return Store.resolve()


@st.cache_resource(max_entries=8, show_spinner="Opening the run…")
def open_run(root: str, run_id: str) -> ex.RunResult:
    """A stored run with its model, kept in memory across reruns and sessions."""
    return ex.load_run(run_id, store=Store(root))


def set_current(run_id: str) -> None:
    st.session_state["run"] = run_id
    st.query_params["run"] = run_id


def current_run() -> ex.RunResult | None:
    """The run chosen in this session (or shared in the URL), if it is a finished run in the store; a followed
    background job that has finished makes its run the current one, and while it runs, its first results
    (the cheap attacks, `record.pending` naming the rest) are the current run once they are stored."""
    if (job := followed_job()) is not None and job.status is Status.DONE and job.run_id:
        _stop_following()
        set_current(job.run_id)
    elif job is not None and job.status.active and job.first_run_id:
        s = store()
        try:
            s.eval_path(job.first_run_id)
            return open_run(str(s.root), job.first_run_id)
        except StoreError:  # replaced by the finished run a moment ago
            pass
    rid = st.query_params.get("run") or st.session_state.get("run")
    if not rid:
        return None
    s = store()
    try:
        s.eval_path(rid)
        run = open_run(str(s.root), rid)
    except StoreError as err:  # not a run of this store, or a damaged one
        if not str(err).startswith(("No finished run", f"'{rid}' is not a run id")):
            st.warning(plain(err))
        return None
    st.session_state["run"] = rid
    if st.query_params.get("run") != rid:
        st.query_params["run"] = rid
    return run


def run_with_progress(config: ExperimentConfig, label: str = "Running the experiment", *,
                      make_current: bool = True) -> ex.RunResult:
    """Run (or reuse) an experiment with a live status box and progress bar; by default make it current."""
    config.validate()
    with st.status(label, expanded=True) as status:
        bar = st.progress(0.0, text="starting")

        def progress(stage: str, frac: float) -> None:
            bar.progress(min(max(frac, 0.0), 1.0), text=stage)

        result = ex.run_experiment(config, store=store(), progress=progress)
        status.update(label=f"{label}: done" + (" (reused from the store)" if result.reused else ""),
                      state="complete", expanded=False)
    if make_current:
        set_current(result.run_id)
    return result


@st.cache_resource(show_spinner=False)
def job_queue(root: str) -> JobQueue:
    """The server's job queue for a store: one per process, shared by every session."""
    return JobQueue(Store(root))


def submit(config: ExperimentConfig, label: str, *, follow: bool = True) -> Job | None:
    """Start `config` in the background (a job; identical requests share one), within the server's limits.
    A configuration already in the store opens at once instead (None is returned). With `follow`, the sidebar
    follows the job and opens its run when it is done."""
    config.validate()
    Limits.from_env().check(config)
    ex.check_checkpoint(config)  # a file that does not fit is refused now, not in the background
    if follow and (rid := ex.stored_run_id(config, store())) is not None:
        set_current(rid)
        return None
    guess = views.estimate_seconds(config, [r.record for r in all_runs()]).seconds
    job = job_queue(str(store().root)).submit(config, label=label, estimate=guess)
    if follow:
        follow_job(job.id)
    return job


def submit_audit(upload, config: ExperimentConfig, label: str, run_config: ExperimentConfig) -> Job:
    """Start the audit of a checked upload (`user_audit.PreparedUpload`) in the background, and follow it: the
    sidebar shows its progress (and the time left, scaled from a stored audit of the same data and model: the
    plan's `run_config`), and its run becomes the current one when it is done."""
    Limits.from_env().check_audit(run_config, trains_references=upload.request.recipe is not None)
    guess = views.estimate_seconds(run_config, [r.record for r in all_runs()]).seconds
    job = job_queue(str(store().root)).submit_audit(upload, config, label=label, estimate=guess)
    follow_job(job.id)
    return job


def followed_job() -> Job | None:
    jid = st.query_params.get("job") or st.session_state.get("job")
    return job_queue(str(store().root)).get(jid) if jid else None


def follow_job(jid: str) -> None:
    """This session follows job `jid` (any visitor's): its first results, then its run, become current."""
    st.session_state["job"] = jid
    st.query_params["job"] = jid


def _stop_following() -> None:
    st.session_state.pop("job", None)
    if "job" in st.query_params:
        del st.query_params["job"]


def job_panel() -> None:
    """The sidebar's view of the job this session follows: live stage, progress, times and Cancel; when it is
    done, its run becomes the current one. Polls every two seconds, only while a job is followed."""
    job = followed_job()
    if job is None:
        return

    def panel() -> None:
        job = followed_job()
        if job is None:
            return
        if job.status is Status.DONE and job.run_id:
            _stop_following()
            set_current(job.run_id)
            st.rerun(scope="app")
        if job.first_run_id and st.session_state.get("first_results_shown") != job.first_run_id:
            st.session_state["first_results_shown"] = job.first_run_id  # the pages show them: redraw once
            st.rerun(scope="app")
        box = st.container(border=True)
        box.markdown(f"**{plain(job.label or 'job')}**: {job.status.value}")
        if job.status.active:
            box.progress(min(max(job.fraction, 0.0), 1.0), text=plain(job.stage or "waiting for a free worker"))
            box.caption(f"{views.format_seconds(job.elapsed)} so far; left: {views.time_left(job)}. Leaving or reloading the page "
                        "loses nothing (Jobs page).")
            if box.button("Cancel", key="job_cancel"):
                job_queue(str(store().root)).cancel(job.id)
                st.rerun(scope="app")
        else:
            box.error(plain(job.error or job.status.value))
            if box.button("Dismiss", key="job_dismiss"):
                _stop_following()
                st.rerun(scope="app")

    st.fragment(panel, run_every=2.0 if job.status.active else None)()


def offer_runs() -> bool:
    """On a page with no run open: the newest job active on this server, to follow (a job another tab or
    visitor started shows its first results here while it runs), and the newest finished run, to open. Whether
    a prompt to run the demo would be redundant: this session follows an active job, or the demo is running."""
    if (job := followed_job()) is not None and job.status.active:
        st.info(f"Computing {plain(job.label or 'a job')} in the background (progress in the sidebar); its first "
                "results appear here as soon as they are stored.", icon=":material/hourglass_top:")
        return True
    active = [j for j in job_queue(str(store().root)).jobs() if j.status.active]
    if active:
        st.info(plain(views.job_line(active[0], others=len(active) - 1)), icon=":material/pending_actions:")
        # callbacks: the click counts even when the job has finished before it arrives (the rerun it starts
        # no longer draws the offer; seen in a Chromium trial of the demo)
        st.button("Open its first results" if active[0].first_run_id else "Follow it", key="follow_active",
                  on_click=follow_job, args=(active[0].id,))
    if runs := all_runs():
        newest = views.run_label(runs[0].record, run_names().get(runs[0].run_id))
        st.button(f"Open the newest finished run: {plain(newest)}", key="open_newest", on_click=set_current,
                  args=(runs[0].run_id,))
    return any(j.id == job_id(ex.DEFAULT_CONFIG) for j in active)


def require_run() -> ex.RunResult:
    """The current run, or a prompt to create or open one (and stop the page)."""
    run = current_run()
    if run is None:
        if not offer_runs():
            guess = views.estimate_seconds(ex.DEFAULT_CONFIG, [r.record for r in all_runs()])
            when = views.format_seconds(guess.seconds) if guess.seconds is not None else "a first run, time not known yet"
            st.info(f"No run is open yet. Run the demo ({views.describe(ex.DEFAULT_CONFIG)}; {when}) or choose an "
                    "experiment on the Experiment page.")
            if st.button("Run the demo", type="primary", key="demo_inline"):
                submit(ex.DEFAULT_CONFIG, "the demo")
                st.rerun()
        st.stop()
    first_results_note(run)
    return run


def first_results_note(run: ex.RunResult) -> None:
    """Says, on a page showing a run's first results, what is still being computed."""
    if run.record.is_first_results:
        st.info(plain(views.first_results_note(run.record)), icon=":material/hourglass_top:")


@st.cache_data(max_entries=64, show_spinner=False)
def roc_data(root: str, run_id: str, attack: str):
    run = open_run(root, run_id)
    return roc_points(*run.table.member_nonmember(attack))


@st.cache_data(max_entries=64, show_spinner=False)
def roc_band_data(root: str, run_id: str, attack: str, log: bool):
    run = open_run(root, run_id)
    return roc_band(*run.table.member_nonmember(attack), log=log, rounds=100)


def rocs(run: ex.RunResult, attacks) -> dict:
    return {a: roc_data(str(run.store.root), run.run_id, a) for a in attacks}


@st.cache_data(show_spinner=False)
def store_scan(root: str, version: float) -> ex.StoreScan:
    """Every finished run in the store and every damaged one; `version` (Store.version) invalidates the cache."""
    return ex.scan_store(Store(root))


def all_runs() -> list[ex.StoredRun]:
    s = store()
    return store_scan(str(s.root), s.version()).runs


def damaged_runs() -> list[ex.DamagedRun]:
    s = store()
    return store_scan(str(s.root), s.version()).damaged


@st.cache_data(max_entries=16, show_spinner=False)
def vulnerability_table(root: str, run_id: str):
    return views.vulnerability_table(open_run(root, run_id).table)


@st.cache_data(max_entries=32, show_spinner="Slicing…")
def slice_rows(root: str, run_id: str, attack: str, slicing: str):
    from mia_core.slices import slice_metrics

    return slice_metrics(open_run(root, run_id).table, attack, slicing, bootstrap_rounds=200)


def build_report(root: str, run_id: str, *, with_pdf: bool) -> dict:
    """The run's audit report as bytes ({"html": ..., "pdf": ... or None}), written in a temporary folder."""
    import tempfile

    from mia_core.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        rep = write_report(open_run(root, run_id), tmp, pdf=with_pdf, family=all_runs())
        return {"html": rep.html.read_bytes(), "pdf": rep.pdf.read_bytes() if rep.pdf else None}


def figure_pngs(figs: dict) -> dict[str, bytes]:
    """PNG bytes of each figure, drawn by Chromium on the server (mia_core.report.figure_png)."""
    import tempfile
    from pathlib import Path

    from mia_core.report import figure_png

    with tempfile.TemporaryDirectory() as tmp:
        return {name: figure_png(fig, Path(tmp) / f"{name}.png").read_bytes() for name, fig in figs.items()}


def metric_column_config() -> dict:
    cfg = {k: st.column_config.NumberColumn(k, help=v, format="%.3f") for k, v in views.METRIC_HELP.items()}
    cfg["attack"] = st.column_config.TextColumn("attack", help="; ".join(
        f"{s.title} ({s.name}): {s.help}" for s in ATTACKS.specs()))
    cfg["ε lower bound"] = st.column_config.NumberColumn(
        "ε lower bound", format="%.2f", help="The DP epsilon (at δ = 1e-5) this attack's reference-calibrated "
        "thresholds rule out, with 95% confidence over all attacks together (Clopper-Pearson, Bonferroni).")
    cfg["id"] = st.column_config.TextColumn("id", help="the attack's identifier in the CLI, the store and exports")
    return cfg


def run_names() -> dict[str, str]:
    return store().names()


def attack_help() -> str:
    return "; ".join(f"{s.name}: {s.help}" for s in ATTACKS.specs())
