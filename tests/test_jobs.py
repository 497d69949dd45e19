"""Background jobs: they outlive the page, identical requests compute once, Cancel and dead workers leave the
store clean, a resubmission resumes, the CLI joins the app's job, and the operator's limits refuse."""

import os
import signal
import time

import pytest
from pathlib import Path

from mia_core import experiment as ex
from mia_core import views
from mia_core.jobs import Job, JobQueue, Status, job_id, run_attached
from mia_core.limits import LimitError, Limits

FAST = ex.ExperimentConfig(width=64, members=120, epochs=10, bootstrap_rounds=20, reference_scored=60,
                           distance_method="deepfool", lira_shadows=2, label_only_queries=100)
ROOT = Path(__file__).resolve().parents[1]
SLOW = FAST.replace(members=300, epochs=200, label_only_queries=3000, lira_shadows=8)  # tens of seconds


def _wait_for_stage(queue, jid, words, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = queue.get(jid)
        if job.status is Status.RUNNING and any(w in job.stage for w in words):
            return job
        assert job.status.active, (job.status, job.error)
        time.sleep(0.1)
    raise AssertionError(f"job never reached {words}: {queue.get(jid)}")


def _temporaries(store):
    return [p for p in store.rglob(".tmp-*")]


def test_identical_requests_compute_once_and_the_next_job_waits_for_a_slot(tmp_path):
    queue = JobQueue(tmp_path, max_jobs=1)
    first = queue.submit(FAST, label="first")
    again = queue.submit(FAST, label="again")  # another session pressing the same button
    other = queue.submit(FAST.replace(seed=1), label="other")
    assert again.id == first.id and again.attached == 1
    assert other.status is Status.QUEUED  # one slot: it waits
    assert len(queue._processes) == 1  # one worker started, not two
    for j in (first, other):
        assert queue.wait(j.id, timeout=300).status is Status.DONE
    runs = ex.list_runs(tmp_path)
    assert len(runs) == 2 and {r.run_id for r in runs} == {queue.get(first.id).run_id, queue.get(other.id).run_id}
    done = queue.get(first.id)
    assert done.fraction == 1.0 and done.elapsed > 0 and done.remaining == 0.0
    # the worker stored the first results on the way, and the finished run replaced them
    assert done.first_run_id == done.run_id.replace("/eval-", "/first1-")
    assert not list(tmp_path.glob("*/first*"))


def test_cancel_stops_the_worker_and_leaves_no_partial_run(tmp_path):
    queue = JobQueue(tmp_path, max_jobs=1)
    job = queue.submit(SLOW, label="slow")
    running = _wait_for_stage(queue, job.id, ("training", "distances", "label-only"))
    pid = running.pid
    assert running.fraction >= 0.0 and pid
    cancelled = queue.cancel(job.id)
    assert cancelled.status is Status.CANCELLED and not list(tmp_path.glob("*/first*"))
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
    assert ex.list_runs(tmp_path) == [] and _temporaries(tmp_path) == []
    assert queue.get(job.id).status is Status.CANCELLED  # stays cancelled, not "failed"


def test_a_job_without_an_estimate_tells_its_current_stages_time_left(tmp_path):
    queue = JobQueue(tmp_path, max_jobs=1)
    job = queue.submit(SLOW.replace(epochs=3000), label="slow")  # no stored run to estimate from; seconds of training
    deadline = time.monotonic() + 180
    while (running := queue.get(job.id)).stage_remaining is None or running.stage_remaining < 1:  # a stage under way
        assert running.status.active and time.monotonic() < deadline, running
        time.sleep(0.05)
    assert running.remaining is None and running.stage_started <= running.updated
    spent = running.updated - running.stage_started
    expected = spent * (1 - running.fraction) / running.fraction - (time.time() - running.updated)
    assert expected > 0 and abs(running.stage_remaining - expected) < 0.5
    assert views.time_left(running).startswith("unknown (this stage: about ")
    queue.cancel(job.id)
    assert views.time_left(queue.get(job.id)) == ""


def test_a_job_past_its_estimate_says_so_instead_of_a_second_left():
    now, config = time.time(), ex.ExperimentConfig()
    running = Job(id="j", config=config, label="", submitted=now - 30, status=Status.RUNNING, started=now - 30,
                  estimate=20.0, stage="training", fraction=0.5, stage_started=now - 10, updated=now)
    assert running.remaining is None and 9 <= running.stage_remaining <= 10
    assert views.time_left(running) == "more than estimated (this stage: about 10 s)"
    within = Job(id="j", config=config, label="", submitted=now - 5, status=Status.RUNNING, started=now - 5,
                 estimate=125.0)
    assert views.time_left(within) == "about 2 min" and within.stage_remaining is None
    overdue = Job(id="j", config=config, label="", submitted=now - 30, status=Status.RUNNING, started=now - 30,
                  stage="training", fraction=0.5, stage_started=now - 20, updated=now - 15)  # 10 s at 50%, 15 s ago
    assert overdue.stage_remaining is None and views.time_left(overdue) == "unknown"


def test_a_killed_worker_fails_the_job_and_a_resubmission_resumes_from_the_stored_stages(tmp_path):
    queue = JobQueue(tmp_path, max_jobs=1)
    job = queue.submit(SLOW, label="slow")
    running = _wait_for_stage(queue, job.id, ("label-only", "shadow"))  # training is stored by now
    assert running.first_run_id and len(list(tmp_path.glob("*/first1-*"))) == 1  # and the first results
    trained = [p for p in tmp_path.iterdir() if (p / "model.safetensors").is_file()]
    assert len(trained) == 1
    manifest = (trained[0] / "MANIFEST.json").stat().st_mtime_ns
    searched = {p: (p / "MANIFEST.json").stat().st_mtime_ns for p in trained[0].glob("distances-*")}
    assert len(searched) >= 4  # the members' and non-members' L2 and L-inf searches came before the first results
    os.killpg(running.pid, signal.SIGKILL)  # out of memory, or an operator's kill
    queue._processes.pop(job.id).wait()
    failed = queue.get(job.id)
    assert failed.status is Status.FAILED and "stopped before finishing" in failed.error
    assert ex.list_runs(tmp_path) == [] and not list(tmp_path.glob("*/first*"))
    again = queue.submit(SLOW.replace(lira_shadows=8), label="again")
    assert again.id == job.id and again.status is Status.RUNNING
    assert queue.wait(job.id, timeout=600).status is Status.DONE
    assert (trained[0] / "MANIFEST.json").stat().st_mtime_ns == manifest  # the trained model was reused
    assert {p: (p / "MANIFEST.json").stat().st_mtime_ns for p in searched} == searched  # so were the searches
    assert len(ex.list_runs(tmp_path)) == 1


def test_the_command_line_joins_the_apps_job_instead_of_computing_again(tmp_path):
    queue = JobQueue(tmp_path, max_jobs=1)
    job = queue.submit(FAST, label="from the app")
    seen = []
    result = run_attached(FAST, tmp_path, lambda stage, f: seen.append(stage))
    assert queue.get(job.id).attached == 1 and queue.get(job.id).status is Status.DONE
    assert result.run_id == queue.get(job.id).run_id and result.reused
    assert any("started elsewhere" in s for s in seen)
    # a job of the command line's own is listed for the app too, and a failed one leaves no trace
    run_attached(FAST.replace(seed=2), tmp_path)
    assert {j.label for j in queue.jobs()} == {"from the app", "command line"}


def test_job_ids_ignore_runtime_fields_only():
    assert job_id(FAST) == job_id(FAST.replace(device="cpu", data_dir="elsewhere"))
    assert job_id(FAST) != job_id(FAST.replace(seed=1))


def test_each_limit_refuses_with_its_name(monkeypatch):
    for var, value, config, words in (
        ("MIA_MAX_MEMBERS", "100", FAST, "members 120 is over this server's limit of 100 (MIA_MAX_MEMBERS)"),
        ("MIA_MAX_EPOCHS", "5", FAST, "epochs 10 is over this server's limit of 5 (MIA_MAX_EPOCHS)"),
        ("MIA_MODELS", "linear, mlp", FAST.replace(model="cnn"), "the model 'cnn' is not allowed"),
        ("MIA_MAX_SHADOWS", "1", FAST, "2 shadow models is over this server's limit of 1 (MIA_MAX_SHADOWS)"),
    ):
        monkeypatch.setenv(var, value)
        with pytest.raises(LimitError, match=words.replace("(", r"\(").replace(")", r"\)")):
            Limits.from_env().check(config)
        monkeypatch.delenv(var)
        Limits.from_env().check(config)
    monkeypatch.setenv("MIA_MAX_JOBS", "3")
    assert Limits.from_env().max_jobs == 3
    monkeypatch.setenv("MIA_MAX_JOBS", "many")
    with pytest.raises(LimitError, match="MIA_MAX_JOBS='many' is not a number"):
        Limits.from_env()


def test_a_job_outlives_the_page_and_a_reload_finds_it(tmp_path, monkeypatch):
    """Press the demo, leave for another page, reload the tab (a new session with the URL): the job is found,
    listed on the Jobs page, and its run opens when it is done. Cancel on the Jobs page stops another."""
    from streamlit.testing.v1 import AppTest

    from conftest import finish_jobs

    monkeypatch.setenv("MIA_STORE", str(tmp_path))
    monkeypatch.setattr(ex, "DEFAULT_CONFIG", SLOW.replace(epochs=40))
    app = lambda: AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)  # noqa: E731
    at = app().run()
    at.button(key="demo").click().run()
    jid = at.query_params["job"]
    at.switch_page("app_pages/attacks.py").run()  # leaving the page does not stop it
    assert JobQueue(tmp_path).get(jid).status.active
    reloaded = app()
    reloaded.query_params["job"] = jid
    reloaded.run()
    assert any("Computing the demo in the background" in i.value for i in reloaded.info)
    reloaded.switch_page("app_pages/jobs.py").run()
    table = [d.value for d in reloaded.dataframe if "status" in d.value.columns][0]
    assert table["job"].tolist() == ["the demo"] and table["status"].iloc[0] in ("queued", "running")
    finish_jobs(reloaded, tmp_path)
    reloaded.switch_page("app_pages/overview.py").run()
    assert reloaded.query_params["run"] == JobQueue(tmp_path).get(jid).run_id
    assert any(m.label == "test accuracy" for m in reloaded.metric)
    # the Jobs page's Cancel really stops a job
    queue = JobQueue(tmp_path)
    slow = queue.submit(SLOW.replace(seed=7), label="to cancel")
    _wait_for_stage(queue, slow.id, ("training", "distances", "label-only", "starting"))
    reloaded.switch_page("app_pages/jobs.py").run()
    reloaded.selectbox(key="jobs_active_pick").set_value(slow.id)
    reloaded.button(key="jobs_follow").click().run()  # another visitor's job, followed from the Jobs page
    assert reloaded.query_params["job"] == slow.id and any(b.key == "job_cancel" for b in reloaded.sidebar.button)
    reloaded.button(key="jobs_cancel").click().run()
    assert queue.get(slow.id).status is Status.CANCELLED and _temporaries(tmp_path) == []


def test_the_app_refuses_a_job_over_the_servers_limits(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MIA_STORE", str(tmp_path))
    monkeypatch.setenv("MIA_MAX_MEMBERS", "150")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/experiment.py").run()
    at.number_input(key="cfg_members").set_value(200)
    at.button(key="train").click().run()
    assert any("members 200 is over this server's limit of 150 (MIA_MAX_MEMBERS)" in e.value.replace("\\", "")
               for e in at.error), [e.value for e in at.error]
    assert JobQueue(tmp_path).jobs() == [] and ex.list_runs(tmp_path) == []


def _clinic_upload(tmp_path):
    """The patients table and an ONNX model trained on its members, read and checked as the audit page does."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from user_files import onnx_for_table, patients_csv

    from mia_core.user_audit import prepare_upload

    csv = tmp_path / "patients.csv"
    patients_csv(csv)
    blob, _, _, _ = onnx_for_table(csv)
    columns = dict(label_column="diagnosis", membership_column="member", id_column="patient_id")
    upload = lambda: prepare_upload(csv.read_bytes(), "patients.csv", blob, "clinic.onnx", **columns)  # noqa: E731
    return upload, csv, blob, columns


def test_an_uploaded_models_audit_runs_as_a_job_and_leaves_no_copy_of_the_users_files(tmp_path):
    """The audit page's job: identical uploads share it, it stores the same run as an audit in this process
    would (which then reuses it), and the job's copy of the user's data and model is removed when it ends."""
    from mia_core.jobs import JobFiles
    from mia_core.user_audit import audit_upload

    upload, csv, blob, columns = _clinic_upload(tmp_path)
    store = tmp_path / "store"
    queue = JobQueue(store, max_jobs=1)
    cfg = FAST.replace(label_only_queries=200)
    job = queue.submit_audit(upload(), cfg, label="audit of clinic.onnx")
    inputs = JobFiles(store, job.id).inputs
    assert (inputs / "model.onnx").read_bytes() == blob and job.audit.model_name == "clinic.onnx"
    again = queue.submit_audit(upload(), cfg, label="again")  # another tab uploading the same files
    assert again.id == job.id and again.attached == 1
    other = queue.submit_audit(upload(), cfg.replace(label_only_queries=150), label="other settings")
    assert other.id != job.id and other.status is Status.QUEUED
    done = queue.wait(job.id, timeout=300)
    assert done.status is Status.DONE, done.error
    assert not inputs.exists()
    here = audit_upload(csv.read_bytes(), "patients.csv", blob, "clinic.onnx", config=cfg, store=store, **columns)
    assert here.reused and here.run_id == done.run_id and here.record.audit.model == "clinic.onnx (ONNX)"
    assert queue.wait(other.id, timeout=300).status is Status.DONE
    assert not list(store.glob("jobs/*/inputs")) and len(ex.list_runs(store)) == 2


def test_a_cancelled_or_killed_audit_job_removes_the_users_files_and_stores_no_run(tmp_path):
    from mia_core.jobs import JobFiles

    upload, _, _, _ = _clinic_upload(tmp_path)
    store = tmp_path / "store"
    queue = JobQueue(store, max_jobs=1)
    slow = FAST.replace(label_only_queries=3000, bootstrap_rounds=200)
    job = queue.submit_audit(upload(), slow, label="to cancel")
    _wait_for_stage(queue, job.id, ("distances", "label-only", "loss"))
    assert JobFiles(store, job.id).inputs.is_dir()
    cancelled = queue.cancel(job.id)
    assert cancelled.status is Status.CANCELLED and not JobFiles(store, job.id).inputs.exists()
    assert ex.list_runs(store) == [] and _temporaries(store) == []
    job = queue.submit_audit(upload(), slow.replace(seed=1), label="to kill")
    running = _wait_for_stage(queue, job.id, ("distances", "label-only", "loss"))
    os.killpg(running.pid, signal.SIGKILL)
    queue._processes.pop(job.id).wait()
    failed = queue.get(job.id)
    assert failed.status is Status.FAILED and "stopped before finishing" in failed.error
    assert not JobFiles(store, job.id).inputs.exists() and ex.list_runs(store) == []


def test_an_audit_started_on_the_page_goes_on_after_the_tab_closes_and_a_new_tab_finds_it(tmp_path, monkeypatch):
    """Upload, press Audit, close the tab: a new tab's audit page offers the running audit, follows it, and
    opens its run when it is done."""
    from streamlit.testing.v1 import AppTest

    from conftest import finish_jobs

    _, csv, blob, _ = _clinic_upload(tmp_path)
    store = tmp_path / "store"
    monkeypatch.setenv("MIA_STORE", str(store))
    tab = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    tab.switch_page("app_pages/audit.py").run()
    tab.file_uploader(key="audit_data").set_value(("patients.csv", csv.read_bytes(), "text/csv")).run()
    tab.file_uploader(key="audit_model").set_value(("clinic.onnx", blob, "application/octet-stream")).run()
    tab.selectbox(key="audit_label_column").set_value("diagnosis")
    tab.number_input(key="audit_label_only_queries_False").set_value(3000)  # long enough to leave mid-way
    tab.number_input(key="audit_bootstrap_rounds_False").set_value(500)
    tab.button(key="audit_run").click().run()
    assert not tab.error, [e.value for e in tab.error]
    jid = tab.query_params["job"]
    del tab  # the tab is closed
    new = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    new.switch_page("app_pages/audit.py").run()
    offer = [i.value for i in new.info if "Being computed on this server" in i.value]
    assert offer and "audit of clinic.onnx on patients.csv" in offer[0] and "open its run when it is done" in offer[0]
    new.button(key="audit_follow").click().run()
    assert new.query_params["job"] == jid and any("in the background" in i.value for i in new.info)
    finish_jobs(new, store)
    assert new.query_params["run"] == JobQueue(store).get(jid).run_id
    assert "clinic.onnx" in new.success[0].value and "audited on 204 members" in new.success[0].value


def test_housekeeping_removes_the_users_files_of_audit_jobs_that_will_not_run(tmp_path):
    """A worker killed with its server, or a request never written, can leave an audit's inputs behind: the
    store's garbage collection (run once per server start, and by `mia_core gc`) removes those, not a queued
    job's."""
    import time

    from mia_core.jobs import JobFiles, audit_job_id

    upload, _, _, _ = _clinic_upload(tmp_path)
    store = tmp_path / "store"
    prepared = upload()
    queued = JobFiles(store, audit_job_id(prepared, FAST))
    queued.create(FAST, "queued", None, audit=prepared)
    ended = JobFiles(store, audit_job_id(prepared, FAST.replace(seed=1)))
    ended.create(FAST.replace(seed=1), "ended", None, audit=prepared)
    ended.write_status(status=Status.FAILED.value, finished=time.time())
    unsubmitted = JobFiles(store, "audit-never-submitted")
    unsubmitted.create(FAST, "lost", None, audit=prepared)
    unsubmitted.request.unlink()
    gone = ex.collect_garbage(store).job_inputs
    assert gone == [ended.inputs] and queued.inputs.is_dir() and unsubmitted.inputs.is_dir()
    assert ex.collect_garbage(store, older_than_s=-1).job_inputs == [unsubmitted.inputs]
    assert queued.inputs.is_dir() and (queued.inputs / "model.onnx").is_file()
