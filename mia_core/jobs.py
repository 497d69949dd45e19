"""Background jobs: experiments and audits of uploaded models that run outside the page (or the shell) that
asked for them.

A job is one configuration to run (`run_experiment`), or an uploaded model's audit (`AuditRequest`, its checked
data, split and ONNX file in the job's `inputs/`), kept in the store under `jobs/<job id>/`: `request.json` (the
config, a label, when it was submitted; written once), `status.json` (written only by the process doing the
work: status, stage, fraction, times, error, run id, pid), `attached` (one line per request that joined the job
instead of starting it again) and `cancel` (a flag). The job id is the hash of the configuration's
result-deciding fields (and of the audit's inputs), so identical requests, from any browser session or the CLI,
attach to one computation. An audit's inputs are removed when its job ends, however it ends: the finished run
keeps its own copy, and a user's data is not left behind by a failed one.

`JobQueue` (one per server process; the app keeps it in `st.cache_resource`) starts queued jobs, each in a fresh
Python process of its own session (`python -m mia_core.jobs STORE JOB`: nothing of the server's state, such as
Streamlit's script module, is inherited), at most `Limits.max_jobs` at a time; a watcher thread starts the
next one when a slot frees. Anyone can read the jobs' state from the files, so a closed or reloaded page loses
nothing. Cancel terminates the job's process (the store only ever receives finished stages, written atomically,
so nothing partial is left); a worker that dies is reported failed, and running the job again resumes from the
stages already stored.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .config import ExperimentConfig, Stage, TrainingRecipe
from .store import (
    Store, StoreError, atomic_folder, config_hash, discard_folder, read_json, remove_stale_temporaries, write_json,
)

if TYPE_CHECKING:
    from .user_audit import PreparedUpload

JOBS = "jobs"


class Status(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (Status.QUEUED, Status.RUNNING)


@dataclass(frozen=True)
class AuditRequest:
    """What an audit job needs besides its evaluation config and its inputs (the checked data, split and ONNX
    file): the names the run is labelled with, and how to train reference copies of the ONNX graph, if at all."""

    model_name: str  # the uploaded file's name
    data_label: str  # what was read, as the run's audit record says it
    reference: str  # how the reference pool was chosen
    recipe: TrainingRecipe | None = None  # reference models (LiRA, RMIA): re-initialized copies trained with it
    batch_norm: bool = False  # the copies get a batch norm after each convolution (the exporter folded them)

    @classmethod
    def from_dict(cls, values: dict) -> "AuditRequest":
        recipe = values.get("recipe")
        return cls(str(values["model_name"]), str(values["data_label"]), str(values["reference"]),
                   None if recipe is None else TrainingRecipe.from_dict(recipe), bool(values.get("batch_norm")))


@dataclass(frozen=True)
class Job:
    """A job's request and its latest state."""

    id: str
    config: ExperimentConfig
    label: str
    submitted: float
    status: Status
    stage: str = ""
    fraction: float = 0.0
    started: float | None = None
    updated: float | None = None
    stage_started: float | None = None
    finished: float | None = None
    error: str | None = None
    run_id: str | None = None
    first_run_id: str | None = None  # the cheap attacks' results, stored while the expensive ones run
    pid: int | None = None
    estimate: float | None = None  # seconds, from the most similar stored run, if any
    attached: int = 0  # requests that joined this job instead of computing again
    audit: AuditRequest | None = None  # an uploaded model's audit (else an experiment of `config`)

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    @property
    def remaining(self) -> float | None:
        """Seconds left by the estimate (from the most similar stored run): the estimate minus the time spent; 0
        for an ended job; None without an estimate, or once the job has run longer than it."""
        if self.status is not Status.RUNNING:
            return 0.0 if not self.status.active else self.estimate
        if self.estimate is not None and self.estimate > self.elapsed:
            return self.estimate - self.elapsed
        return None

    @property
    def stage_remaining(self) -> float | None:
        """Seconds left in the current stage, extrapolated from its fraction done at its last report (stages
        report their own 0-1 fraction); None before 2% of a stage, once the extrapolated time has run out (the
        stage reports coarsely, or is slower than it was), or while no stage is running."""
        if self.status is not Status.RUNNING or self.stage_started is None or self.updated is None:
            return None
        if not 0.02 <= self.fraction < 1.0:
            return None
        spent = max(self.updated - self.stage_started, 0.0)
        left = spent * (1.0 - self.fraction) / self.fraction - (time.time() - self.updated)
        return left if left > 0 else None


def job_id(config: ExperimentConfig) -> str:
    """The id of the job that computes `config`: every field but the runtime ones (device, data folder)."""
    fields = ExperimentConfig.stage_fields(Stage.DATA, Stage.TRAINING, Stage.EVALUATION)
    return config_hash({k: getattr(config, k) for k in fields})


def audit_job_id(prepared: "PreparedUpload", config: ExperimentConfig) -> str:
    """The id of the job that audits `prepared` (its data, split and model file) with `config`'s evaluation."""
    split = prepared.data.split
    return "audit-" + config_hash({
        "config": job_id(config), "data": prepared.data.dataset.fingerprint(), "model": prepared.model.digest,
        "members": config_hash({k: v.tolist() for k, v in split.to_arrays().items()}),
        "request": asdict(prepared.request)})


def _alive(pid: int | None) -> bool:
    """Whether a process with this pid is running (a zombie counts as gone)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


class JobFiles:
    """The files of one job in the store."""

    def __init__(self, root: Path, jid: str):
        self.folder = root / JOBS / jid
        self.id = jid

    @property
    def request(self) -> Path:
        return self.folder / "request.json"

    @property
    def status(self) -> Path:
        return self.folder / "status.json"

    @property
    def inputs(self) -> Path:
        """An audit job's checked inputs: data.npz, split.npz, model.onnx."""
        return self.folder / "inputs"

    def create(self, config: ExperimentConfig, label: str, estimate: float | None, *,
               audit: "PreparedUpload | None" = None) -> None:
        """Write a new job's request (and an audit's inputs first, atomically), replacing the state of an
        earlier job with this id."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in ("request.json", "status.json", "cancel", "attached"):
            (self.folder / stale).unlink(missing_ok=True)
        self.discard_inputs()
        if audit is not None:
            from .data import save_dataset

            with atomic_folder(self.inputs) as tmp:
                save_dataset(audit.data.dataset, tmp / "data.npz")
                np.savez(tmp / "split.npz", **audit.data.split.to_arrays())
                (tmp / "model.onnx").write_bytes(audit.model.data)
        write_json(self.request, {"config": config.to_dict(), "label": label, "submitted": time.time(),
                                  "estimate": estimate} | ({"audit": asdict(audit.request)} if audit else {}))

    def discard_inputs(self) -> None:
        """Remove an audit's inputs (its run keeps its own copy)."""
        if self.inputs.is_dir():
            shutil.rmtree(self.inputs, ignore_errors=True)

    def attach(self) -> None:
        """Count one more request that joined this job instead of computing again."""
        with open(self.folder / "attached", "a") as fh:
            fh.write(f"{time.time()}\n")

    def write_status(self, **values) -> None:
        old = read_json(self.status) if self.status.is_file() else {}
        write_json(self.status, old | values | {"updated": time.time()})

    def read(self) -> Job | None:
        try:
            req = read_json(self.request)
            st = read_json(self.status) if self.status.is_file() else {"status": Status.QUEUED.value}
        except (OSError, ValueError):
            return None
        attached = (self.folder / "attached").read_text().count("\n") if (self.folder / "attached").is_file() else 0
        return Job(id=self.id, config=ExperimentConfig.from_dict(req["config"]), label=req.get("label", ""),
                   submitted=req["submitted"], status=Status(st["status"]), stage=st.get("stage", ""),
                   fraction=float(st.get("fraction", 0.0)), started=st.get("started"), updated=st.get("updated"),
                   finished=st.get("finished"), error=st.get("error"), run_id=st.get("run_id"),
                   stage_started=st.get("stage_started"),
                   first_run_id=st.get("first_run_id"), pid=st.get("pid"),
                   estimate=req.get("estimate"), attached=attached,
                   audit=AuditRequest.from_dict(req["audit"]) if req.get("audit") else None)


class ProgressWriter:
    """A progress callback that writes the job's stage and fraction, at most every `every` seconds per stage."""

    def __init__(self, files: JobFiles, every: float = 0.5, echo: Callable[[str, float], None] | None = None):
        self.files, self.every, self.echo, self.last, self.stage, self.frac = files, every, echo, 0.0, None, 0.0

    def __call__(self, stage: str, frac: float) -> None:
        if self.echo:
            self.echo(stage, frac)
        now = time.monotonic()
        if stage == self.stage and frac < 1.0 and now - self.last < self.every:
            return
        new_stage = stage != self.stage or frac < self.frac  # a stage run again starts its clock again
        started = {"stage_started": time.time()} if new_stage else {}
        self.last, self.stage, self.frac = now, stage, frac
        self.files.write_status(stage=stage, fraction=float(frac), **started)
        if (self.files.folder / "cancel").exists():
            raise KeyboardInterrupt("cancelled")


def _work(store_root: str, jid: str) -> None:
    """The job's process: run the experiment, writing progress, and end with done / failed / cancelled."""
    from .lira import claim_process

    claim_process()  # this process computes this job alone: shadow chunks may train in threads
    files = JobFiles(Path(store_root), jid)
    job = files.read()
    files.write_status(status=Status.RUNNING.value, started=time.time(), pid=os.getpid(), stage="starting",
                       fraction=0.0)
    try:
        run_job(job, Store(store_root), files)
    except (Exception, KeyboardInterrupt):  # recorded in status.json; the page shows it
        pass


def run_job(job: Job, store: Store, files: JobFiles, echo: Callable[[str, float], None] | None = None,
            first_results: Callable[[str], None] | None = None):
    """Run a job's experiment (or audit) in this process, record how it ended, and return the RunResult (an
    error is recorded, then raised again). The first results' run id is recorded as soon as they are stored."""
    from .experiment import run_experiment

    def ended(**values) -> None:
        with contextlib.suppress(OSError):  # a full disk must not hide the error itself
            files.write_status(finished=time.time(), **values)

    shown: list[str] = []

    def first(run_id: str) -> None:
        shown.append(run_id)
        files.write_status(first_run_id=run_id)
        if first_results is not None:
            first_results(run_id)

    try:
        if job.audit is not None:
            from .user_audit import audit_job_inputs

            result = audit_job_inputs(files.inputs, job.audit, job.config, store=store,
                                      progress=ProgressWriter(files, echo=echo))
        else:
            result = run_experiment(job.config, store=store, progress=ProgressWriter(files, echo=echo),
                                    first_results=first)
    except KeyboardInterrupt:
        ended(status=Status.CANCELLED.value, stage="cancelled")
        discard_first_results(store, shown[-1] if shown else None)
        raise
    except Exception as err:
        discard_first_results(store, shown[-1] if shown else None)
        ended(status=Status.FAILED.value, error=f"{err}" if isinstance(err, (ValueError, OSError))
              else f"{type(err).__name__}: {err}")
        raise
    finally:
        files.discard_inputs()
    ended(status=Status.DONE.value, fraction=1.0, stage="done", run_id=result.run_id)
    return result


def discard_first_results(store: Store, run_id: str | None) -> None:
    """A job that ended without its run leaves no first results behind."""
    if run_id:
        with contextlib.suppress(StoreError):  # replaced by the finished run, or removed already
            discard_folder(store.eval_path(run_id))


class JobQueue:
    """The jobs of one store: submit, list, cancel; starts queued jobs in worker processes."""

    def __init__(self, store: Store | str | Path | None = None, *, max_jobs: int | None = None):
        from .limits import Limits

        self.store = Store.resolve(store)
        self.root = self.store.root
        self.max_jobs = max_jobs or Limits.from_env().max_jobs
        self._processes: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    # ------------------------------------------------------------------ reading

    def get(self, jid: str) -> Job | None:
        job = JobFiles(self.root, jid).read()
        return None if job is None else self._reconciled(job)

    def jobs(self) -> list[Job]:
        """Every job of the store, newest first, with dead workers reported as failed."""
        folder = self.root / JOBS
        found = [self.get(p.name) for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        return sorted([j for j in found if j is not None], key=lambda j: j.submitted, reverse=True)

    def _reconciled(self, job: Job) -> Job:
        """A running job whose process is gone failed (killed, or out of memory)."""
        starting = job.pid is None and job.started is not None and time.time() - job.started < 60
        if job.status is Status.RUNNING and not starting and not _alive(job.pid) and job.id not in self._processes:
            JobFiles(self.root, job.id).write_status(
                status=Status.FAILED.value, finished=time.time(),
                error="the worker stopped before finishing (killed, or out of memory); submit it again to resume "
                      "from the stages already stored")
            JobFiles(self.root, job.id).discard_inputs()
            discard_first_results(Store(self.root), job.first_run_id)
            return JobFiles(self.root, job.id).read() or job
        return job

    # ------------------------------------------------------------------ submitting

    def submit(self, config: ExperimentConfig, *, label: str = "", estimate: float | None = None) -> Job:
        """Queue `config` (validated first), or attach to the queued or running job that computes it."""
        config.validate()
        return self._submit(job_id(config), config, label, estimate, None)

    def submit_audit(self, prepared: "PreparedUpload", config: ExperimentConfig, *, label: str = "",
                     estimate: float | None = None) -> Job:
        """Queue the audit of an upload that `user_audit.prepare_upload` read and checked (its inputs are
        written into the job's folder), or attach to the queued or running job that computes it."""
        config.validate()
        return self._submit(audit_job_id(prepared, config), config, label, estimate, prepared)

    def _submit(self, jid: str, config: ExperimentConfig, label: str, estimate: float | None,
                audit: "PreparedUpload | None") -> Job:
        files = JobFiles(self.root, jid)
        with self._lock:
            current = self.get(jid)
            if current is not None and current.status.active:
                files.attach()
                return self.get(jid)
            files.create(config, label, estimate, audit=audit)
            self._start_queued()
        self._ensure_watcher()
        return self.get(jid)

    def _start_queued(self) -> None:
        """Start queued jobs, oldest first, while fewer than max_jobs run (called with the lock held)."""
        for jid, p in list(self._processes.items()):
            if p.poll() is not None:  # reaped
                del self._processes[jid]
        running = [j for j in self.jobs() if j.status is Status.RUNNING]
        queued = sorted((j for j in self.jobs() if j.status is Status.QUEUED), key=lambda j: j.submitted)
        for job in queued[: max(self.max_jobs - len(running), 0)]:
            files = JobFiles(self.root, job.id)
            files.write_status(status=Status.RUNNING.value, started=time.time(), stage="starting a worker",
                               fraction=0.0, pid=None)
            process = subprocess.Popen([sys.executable, "-m", "mia_core.jobs", str(self.root), job.id],
                                       start_new_session=True, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._processes[job.id] = process
            files.write_status(pid=process.pid)

    def _ensure_watcher(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._watch, name="mia-job-watcher", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        """Reap finished workers and start the next queued jobs, until nothing is left to do."""
        while True:
            time.sleep(0.5)
            with self._lock:
                self._start_queued()
                if not self._processes and not any(j.status is Status.QUEUED for j in self.jobs()):
                    self._watcher = None
                    return

    # ------------------------------------------------------------------ waiting and cancelling

    def wait(self, jid: str, timeout: float | None = None, poll: float = 0.25) -> Job:
        """Block until the job is no longer queued or running (or the timeout passes); returns its state."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(jid)
            if job is None or not job.status.active or (end is not None and time.monotonic() > end):
                return job
            time.sleep(poll)

    def cancel(self, jid: str) -> Job | None:
        """Stop a job: a queued one never starts, a running one's process group is terminated. Nothing partial
        reaches the store (stages are written atomically); its leftover temporary folders are removed."""
        files = JobFiles(self.root, jid)
        job = self.get(jid)
        if job is None or not job.status.active:
            return job
        (files.folder / "cancel").write_text("")
        if job.status is Status.RUNNING and job.pid and job.pid != os.getpid():
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(job.pid, sig)
                except (ProcessLookupError, PermissionError):
                    try:
                        os.kill(job.pid, sig)
                    except ProcessLookupError:
                        break
                deadline = time.monotonic() + 3
                while _alive(job.pid) and time.monotonic() < deadline:
                    p = self._processes.get(jid)
                    if p is not None:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            p.wait(0.1)
                    else:
                        time.sleep(0.1)
                if not _alive(job.pid):
                    break
        with self._lock:
            if (p := self._processes.pop(jid, None)) is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(1)
        files.write_status(status=Status.CANCELLED.value, finished=time.time(), stage="cancelled")
        files.discard_inputs()
        discard_first_results(Store(self.root), (self.get(jid) or job).first_run_id)
        if not any(j.status is Status.RUNNING for j in self.jobs()):
            remove_stale_temporaries(self.root, older_than_s=-1.0)  # every leftover: no other writer is at work
        return self.get(jid)


def discard_unused_inputs(store: Store, older_than_s: float) -> list[Path]:
    """Remove the inputs of audit jobs that will not run, and return their folders: of ended jobs (a worker killed
    with its server before it could remove them) and of requests never written (only older than `older_than_s`:
    a request being written now has none yet). A queued or running job's inputs are kept."""
    queue = JobQueue(store)
    removed = []
    for inputs in sorted((store.root / JOBS).glob("*/inputs")):
        job = queue.get(inputs.parent.name)
        unused = (job is None and time.time() - inputs.stat().st_mtime > older_than_s) or (
            job is not None and not job.status.active)
        if unused:
            shutil.rmtree(inputs, ignore_errors=True)
            removed.append(inputs)
    return removed


def run_attached(config: ExperimentConfig, store: Store | str | Path | None = None,
                 progress: Callable[[str, float], None] | None = None, *, label: str = "command line",
                 first_results: Callable[[str], None] | None = None):
    """The CLI's way to run: join the app's job for this configuration if one is queued or running (and wait
    for it), else run it here as a job of the same store, visible on the app's Jobs page. Returns the RunResult."""
    from .experiment import run_experiment

    config.validate()
    st = Store.resolve(store)
    queue = JobQueue(st)
    jid = job_id(config)
    existing = queue.get(jid)
    files = JobFiles(st.root, jid)
    if existing is not None and existing.status.active:
        files.attach()
        last = None
        while (job := queue.get(jid)) is not None and job.status.active:
            if progress and (job.stage, round(job.fraction, 2)) != last:
                progress(f"{job.stage} (job {jid}, started elsewhere)", job.fraction)
                last = (job.stage, round(job.fraction, 2))
            time.sleep(0.25)
        if job is None or job.status is not Status.DONE:
            raise RuntimeError(f"the job {jid} this run joined ended {job.status.value if job else 'missing'}"
                               + (f": {job.error}" if job and job.error else ""))
        return run_experiment(config, store=st)
    try:
        files.create(config, label, None)
        files.write_status(status=Status.RUNNING.value, started=time.time(), pid=os.getpid(), stage="starting",
                           fraction=0.0)
        return run_job(files.read(), st, files, echo=progress, first_results=first_results)
    except BaseException:
        job = files.read()
        if job is None or job.attached == 0:  # nobody else waits for it: the message is the CLI's own
            shutil.rmtree(files.folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                (st.root / JOBS).rmdir()  # only when empty
        raise


if __name__ == "__main__":  # a job's worker process: python -m mia_core.jobs STORE JOB
    _work(sys.argv[1], sys.argv[2])
