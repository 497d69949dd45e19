"""Hardening: a store that checks and repairs itself, nothing outside the store reachable, clear errors instead
of tracebacks, and no process left behind. Each test reproduces one fault a hostile or careless user found."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from mia_core.cli import main
from mia_core.config import ExperimentConfig
from mia_core.experiment import collect_garbage, list_runs, load_run, repair_store, run_experiment, scan_store
from mia_core.models import build_model
from mia_core.store import Store, StoreError, atomic_folder, folder_problem
from mia_core.uploads import server_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FAST = ExperimentConfig(width=32, members=100, epochs=5, bootstrap_rounds=0, reference_scored=50,
                        distance_method="deepfool", lira_shadows=2, label_only_queries=50)
SMALL = ["--width", "32", "--members", "100", "--epochs", "5", "--bootstrap", "0", "--reference-scored", "50",
         "--method", "deepfool", "--lira-shadows", "2", "--label-only-queries", "50"]


def _strict_json(text):
    """json.loads that refuses NaN / Infinity (they are not JSON)."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


# ----------------------------------------------------------------------------- the store checks and repairs itself


def test_every_finished_folder_has_a_manifest(tmp_path):
    run = run_experiment(FAST, store=tmp_path)
    for folder in (run.run_dir, run.eval_dir):
        assert folder_problem(folder) is None
        names = set(json.loads((folder / "MANIFEST.json").read_text())["files"])
        assert names == {p.name for p in folder.iterdir() if p.is_file()} - {"MANIFEST.json"}


def test_an_empty_summary_is_reported_not_crashing_listings(tmp_path, capsys):
    run = run_experiment(FAST, store=tmp_path)
    good = run_experiment(FAST.replace(seed=1), store=tmp_path)
    (run.eval_dir / "summary.json").write_text("{}")
    scan = scan_store(tmp_path)
    assert [r.run_id for r in scan.runs] == [good.run_id]
    assert [d.run_id for d in scan.damaged] == [run.run_id]
    assert main(["runs", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "DAMAGED" in out.out and run.run_id in out.out and "--repair" in out.err
    # the app's pages that list the store keep working for every visitor, and say which run is damaged
    os.environ["MIA_STORE"] = str(tmp_path)
    try:
        for page in ("app_pages/experiment.py", "app_pages/defenses.py"):
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
            at.run()
            at.switch_page(page).run()
            assert not at.exception, at.exception
            if page == "app_pages/experiment.py":
                assert any("Damaged run" in w.value and "summary" in w.value for w in at.warning)
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.query_params["run"] = run.run_id
        at.run()
        at.switch_page("app_pages/attacks.py").run()
        assert not at.exception and any("damaged" in w.value for w in at.warning)
    finally:
        del os.environ["MIA_STORE"]


@pytest.mark.parametrize("victim", ["scores.npz", "split.npz", "model.safetensors"])
def test_a_damaged_file_is_detected_and_recomputed_on_the_next_request(tmp_path, victim):
    run = run_experiment(FAST, store=tmp_path)
    path = (run.eval_dir if victim == "scores.npz" else run.run_dir) / victim
    data = path.read_bytes()
    path.write_bytes(os.urandom(len(data)))  # same size: only the checksum tells
    assert scan_store(tmp_path).damaged == []  # the fast listing compares sizes
    assert [d.run_id for d in scan_store(tmp_path, checksums=True).damaged] == [run.run_id]
    with pytest.raises(StoreError, match="damaged"):
        load_run(run.run_id, store=tmp_path)
    again = run_experiment(FAST, store=tmp_path)  # recomputed, not reused
    assert not again.reused and again.run_id == run.run_id
    np.testing.assert_array_equal(again.scores("loss", "members"), run.scores("loss", "members"))
    assert folder_problem(again.eval_dir) is None and folder_problem(again.run_dir) is None


def test_truncated_files_are_listed_as_damaged_and_repaired(tmp_path, capsys):
    run = run_experiment(FAST, store=tmp_path)
    other = run_experiment(FAST.replace(seed=1), store=tmp_path)
    with open(run.run_dir / "model.safetensors", "r+b") as fh:
        fh.truncate(100)
    assert [d.run_id for d in scan_store(tmp_path).damaged] == [run.run_id]
    assert main(["runs", "--repair", "--store", str(tmp_path)]) == 0
    assert "1 damaged run(s) removed" in capsys.readouterr().out
    assert not run.run_dir.exists() and [r.run_id for r in list_runs(tmp_path)] == [other.run_id]
    assert repair_store(tmp_path) == []


def test_a_corrupt_shadow_chunk_is_recomputed_not_reused(tmp_path):
    run = run_experiment(FAST, store=tmp_path)
    [chunk] = run.run_dir.glob("shadows-*/chunk-000")
    assert folder_problem(chunk) is None
    (chunk / "logp.npz").write_bytes(b"random bytes, not an npz")
    # another evaluation of the same model reuses the shadows: the damaged chunk is trained again
    other = run_experiment(FAST.replace(distance_method="superdeepfool"), store=tmp_path)
    assert folder_problem(chunk) is None
    np.testing.assert_array_equal(other.scores("lira_online", "members"), run.scores("lira_online", "members"))


def _write_chunk(args):
    final, value = args
    with atomic_folder(Path(final)) as tmp:
        np.savez(tmp / "logp.npz", logp=np.full(3, value))
        time.sleep(0.5)  # widen the window in which both writers are inside
    return True


def test_two_writers_of_one_chunk_never_collide(tmp_path):
    import multiprocessing as mp

    final = tmp_path / "shadows" / "chunk-000"
    with mp.get_context("spawn").Pool(2) as pool:
        assert pool.map(_write_chunk, [(str(final), 1.0), (str(final), 2.0)]) == [True, True]
    assert folder_problem(final) is None
    assert not list(final.parent.glob(".tmp-*"))


def test_gc_removes_old_leftovers_and_unused_uploads(tmp_path, capsys):
    run = run_experiment(FAST, store=tmp_path)
    old = time.time() - 2 * 3600
    leftover = run.run_dir / ".tmp-eval-x-123"
    leftover.mkdir()
    fresh = run.run_dir / ".tmp-eval-y-456"
    fresh.mkdir()
    store = Store(tmp_path)
    store.uploads.mkdir()
    unused, used = store.uploads / "aaaa.pt", store.uploads / "bbbb.pt"
    torch.save(build_model("mlp", (1, 8, 8), 10, width=32).state_dict(), used)
    shutil.copy(used, unused)
    run_experiment(FAST.replace(checkpoint=str(used)), store=tmp_path)
    for p in (leftover, unused, used):
        os.utime(p, (old, old))
    assert main(["gc", "--store", str(tmp_path)]) == 0
    assert "removed 1 leftover(s) of interrupted writes, 1 unused upload(s) and 0 ended audit job(s)'" in capsys.readouterr().out
    assert not leftover.exists() and fresh.exists() and not unused.exists() and used.exists()
    assert collect_garbage(tmp_path).temporaries == 0


# ----------------------------------------------------------------------------- nothing outside the store


def test_server_checkpoints_only_from_the_operators_folder(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    torch.save(build_model("mlp", (1, 8, 8), 10, width=32).state_dict(), allowed / "ok.pt")
    outside = tmp_path / "secret.pt"
    shutil.copy(allowed / "ok.pt", outside)
    (allowed / "big.pt").write_bytes(b"PK" + b"\0" * 5000)
    assert server_checkpoint(allowed, "ok.pt") == allowed / "ok.pt"
    messages = set()
    for name in ("../secret.pt", str(outside), "missing.pt", "big.pt"):
        with pytest.raises(ValueError) as err:
            server_checkpoint(allowed, name, max_bytes=4000)
        messages.add(str(err.value).replace(name, "NAME"))
    assert messages == {"'NAME' is not a readable checkpoint in the server's checkpoint folder."}
    with pytest.raises(ValueError, match="off"):
        server_checkpoint(None, "ok.pt")


def _experiment_page(store, **env):
    for k, v in env.items():
        os.environ[k] = v
    try:
        os.environ["MIA_STORE"] = str(store)
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.run()
        at.switch_page("app_pages/experiment.py").run()
        return at
    finally:
        for k in ("MIA_STORE", *env):
            os.environ.pop(k, None)


def test_the_server_path_field_is_off_unless_an_operator_allows_a_folder(tmp_path):
    at = _experiment_page(tmp_path)
    assert not at.exception and not [t for t in at.text_input if t.key == "ckpt_path"]
    assert any("MIA_CHECKPOINT_DIR" in c.value for c in at.caption)
    at = _experiment_page(tmp_path, MIA_CHECKPOINT_DIR=str(tmp_path))
    assert at.text_input(key="ckpt_path") is not None


def test_an_upload_that_does_not_fit_is_not_kept_and_names_are_shown_as_written(tmp_path):
    import io

    buf = io.BytesIO()
    torch.save(build_model("mlp", (1, 8, 8), 10, width=32).state_dict(), buf)  # the form says width 256
    name = "![x](http://127.0.0.1:9/x.png).pt"
    os.environ["MIA_STORE"] = str(tmp_path)
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.run()
        at.switch_page("app_pages/experiment.py").run()
        at.file_uploader(key="ckpt_upload").upload(name, buf.getvalue()).run()
        at.button(key="ckpt_evaluate").click().run()
    finally:
        del os.environ["MIA_STORE"]
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("does not fit this architecture" in e.replace("\\", "") for e in errors), errors
    assert not list((tmp_path / "uploads").glob("*.pt"))  # refused against the architecture: not kept
    bad = io.BytesIO(b"not a checkpoint")
    os.environ["MIA_STORE"] = str(tmp_path)
    try:
        at.file_uploader(key="ckpt_upload").upload(name, bad.getvalue()).run()
        at.button(key="ckpt_evaluate").click().run()
    finally:
        del os.environ["MIA_STORE"]
    assert any(r"\!\[x\]\(http" in e.value for e in at.error), [e.value for e in at.error]


def test_visitors_never_see_tracebacks():
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["client"]["showErrorDetails"] == "none"


# ----------------------------------------------------------------------------- clear CLI errors, exit 2


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


def test_cli_bad_inputs_get_a_clear_message_and_exit_2(tmp_path, capsys):
    store = tmp_path / "store"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    rng = np.random.default_rng(0)
    x = rng.random((300, 4)).astype(np.float32)
    nan_sd = build_model("mlp", (1, 8, 8), 10, width=32).state_dict()
    nan_sd["body.1.weight"][0, 0] = float("nan")
    torch.save(nan_sd, tmp_path / "nan.pt")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    cases = [
        (["--device", "foo"], "device must be auto, cpu"),
        (["--store", str(a_file)], "is a file, not a folder"),
        (["--checkpoint", str(tmp_path / "missing.pt")], "is not a file"),
        (["--checkpoint", str(tmp_path)], "is not a file"),
        (["--dataset", _npz(tmp_path / "one.npz", x, np.zeros(300, int))], "a classifier needs at least 2 classes"),
        (["--dataset", _npz(tmp_path / "huge.npz", x, np.r_[np.zeros(299, int), 10**9])], "at most 10,000 classes"),
        (["--checkpoint", str(tmp_path / "nan.pt")], "NaN or infinite values"),
        (["--epochs", "0"], "epochs must be in [1"),
        (["--batch-size", "0"], "batch_size must be in [1"),
        (["--width", "0"], "width must be in [1"),
        (["--distance-steps", "0"], "distance_steps must be in [1"),
        (["--defense", "dp_sgd", "--strength", "0"], "dp_sgd must be in [0.01"),
    ]
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        cases.append((["--out", str(read_only / "out")], "is not a writable folder"))
    for extra, message in cases:
        args = ["run", *SMALL, "--store", str(store)] + extra
        assert main(args) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    assert not store.exists() or not list_runs(store)


@pytest.fixture
def full_disk(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_run(full_disk):
    proc = subprocess.run([sys.executable, "-m", "mia_core", "run", *SMALL, "--store", str(full_disk)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    assert not [p for p in full_disk.rglob("*") if p.name.startswith(".tmp-")]
    assert list_runs(full_disk) == []


def test_runs_json_is_valid_json(tmp_path, capsys):
    run_experiment(FAST.replace(model="resnet18", dataset="digits", epochs=1, width=8, members=40,
                                reference_scored=20, label_only_queries=20), store=tmp_path)
    assert main(["runs", "--json", "--store", str(tmp_path)]) == 0
    listed = _strict_json(capsys.readouterr().out)
    verified = [a for a in listed["runs"][0]["attacks"] if a["name"] == "verified_confidence"][0]
    assert verified["auc"] is None  # I_V is undefined on resnet18: null, not NaN
    summary = next(tmp_path.glob("*/eval-*/summary.json")).read_text()
    _strict_json(summary)


# ----------------------------------------------------------------------------- no process left behind


def _children(pid):
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sweep_workers_exit_when_their_parent_is_killed(tmp_path):
    cmd = [sys.executable, "-m", "mia_core", "sweep", *SMALL, "--epochs", "40", "--grid", "weight_decay=0,0.01,0.1",
           "--seeds", "0,1", "--executor", "process", "--workers", "2", "--store", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.5)
        workers = [c for c in _children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text(
            errors="ignore")] if _alive(proc.pid) else []
    assert len(workers) >= 2, "the pool did not start"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.5)
    assert not any(_alive(w) for w in workers)


def test_a_store_that_is_a_file_is_a_clear_message_in_the_app(tmp_path):
    a_file = tmp_path / "store"
    a_file.write_text("not a folder")
    os.environ["MIA_STORE"] = str(a_file)
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    finally:
        del os.environ["MIA_STORE"]
    assert not at.exception
    assert any("is a file, not a folder" in e.value for e in at.error)
