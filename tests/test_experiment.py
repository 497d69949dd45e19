"""The CLI and the store end to end on digits."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mia_core.attacks import ATTACKS
from mia_core.metrics import FPR_LEVELS
from mia_core.records import RunRecord
from mia_core.cli import main
from mia_core.experiment import ExperimentConfig, list_runs, run_experiment
from mia_core.models import build_model

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--dataset", "digits", "--model", "mlp", "--width", "64", "--members", "150", "--epochs", "15",
         "--lira-shadows", "4", "--label-only-queries", "300",
         "--bootstrap", "20", "--reference-scored", "100", "--method", "deepfool"]


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mia_core", "run", *SMALL, "--seed", "0", "--out", str(out),
                           "--store", str(tmp_path / "store")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    record = RunRecord.from_json(json.loads((out / "summary.json").read_text()))
    assert record.train_accuracy >= record.test_accuracy > 0.8
    assert list(record.attacks) == list(ATTACKS)
    for m in record.attacks.values():
        assert 0 <= m.auc <= 1 and set(m.tpr_at_fpr) == set(FPR_LEVELS)
    # an overfit model leaks: members are farther from the boundary and lower-loss
    assert record.attacks["distance_l2"].auc > 0.5 and record.attacks["loss"].auc > 0.5
    assert "distance_l2" in proc.stdout and "AUC" in proc.stdout  # the readable table
    assert "training" in proc.stderr  # progress was shown
    table = (out / "per_sample.csv").read_text().splitlines()
    assert len(table) == 1 + 150 + 150 + 100


def test_help_documents_every_command():
    proc = subprocess.run([sys.executable, "-m", "mia_core", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    for cmd in ("run", "runs", "sweep", "reproduce", "download"):
        assert cmd in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "mia_core", "run", "--help"], cwd=ROOT, capture_output=True,
                          text=True)
    for flag in ("--dataset", "--model", "--members", "--epochs", "--seed", "--out", "--method", "--checkpoint",
                 "--data-dir", "--device", "--store"):
        assert flag in proc.stdout


def _cfg(**kw):
    base = dict(dataset="digits", width=64, members=150, epochs=15, bootstrap_rounds=20, reference_scored=100,
                distance_method="deepfool", lira_shadows=4, label_only_queries=300)
    return ExperimentConfig(**(base | kw))


def test_same_config_is_reused_and_deterministic(store, tmp_path):
    a = run_experiment(_cfg(), store=store)
    b = run_experiment(_cfg(), store=store)
    assert not a.reused and b.reused and a.eval_dir == b.eval_dir
    c = run_experiment(_cfg(), store=tmp_path / "other")
    assert c.record.to_json()["attacks"] == a.record.to_json()["attacks"]
    np.testing.assert_array_equal(c.scores("distance_l2", "members"), a.scores("distance_l2", "members"))
    # a different search reuses the trained model and adds a second evaluation beside it
    d = run_experiment(_cfg(distance_method="fmn", distance_steps=30), store=store)
    assert d.run_dir == a.run_dir and d.eval_dir != a.eval_dir
    assert len(list_runs(store)) == 2


class Interrupt(Exception):
    pass


def test_interrupted_run_is_never_read_as_complete(store, snapshot):
    run_experiment(_cfg(seed=5), store=store)
    before = snapshot(store)

    def progress(stage, frac):
        if stage == "training" and frac > 0.5:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_experiment(_cfg(seed=6), store=store, progress=progress)
    assert snapshot(store) == before  # nothing half-written, nothing earlier lost
    assert [r.record.config.seed for r in list_runs(store)] == [5]

    def progress_late(stage, frac):
        if stage.startswith("distances") and "nonmembers" in stage:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_experiment(_cfg(seed=6), store=store, progress=progress_late)
    assert [r.record.config.seed for r in list_runs(store)] == [5]
    r = run_experiment(_cfg(seed=6), store=store)  # the trained stage is reused, evaluation completes
    assert not r.reused and len(list_runs(store)) == 2


def test_checkpoint_evaluation_and_bad_checkpoint(store, tmp_path, snapshot, digits, capsys):
    run_experiment(_cfg(), store=store)
    before = snapshot(store)
    good = tmp_path / "good.pt"
    torch.manual_seed(0)
    torch.save(build_model("mlp", digits.input_shape, 10, width=64).state_dict(), good)
    wrong = tmp_path / "wrong.pt"
    torch.save(build_model("mlp", digits.input_shape, 10, width=32).state_dict(), wrong)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for path, msg in ((wrong, "shape mismatch"), (corrupt, "not a readable checkpoint")):
        rc = main(["run", *SMALL, "--checkpoint", str(path), "--store", str(store)])
        assert rc == 2 and msg in capsys.readouterr().err
    assert main(["run", *SMALL, "--dataset", "nope", "--store", str(store)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert snapshot(store) == before
    r = run_experiment(_cfg(checkpoint=str(good)), store=store)
    # an untrained network is no better than chance on members vs non-members
    assert abs(r.record.train_accuracy - r.record.test_accuracy) < 0.15


def _run_in_process(args):
    store, seed = args
    from mia_core.experiment import run_experiment as run

    r = run(_cfg(seed=seed), store=store)
    return r.record.attacks["loss"].auc, str(r.eval_dir)


def test_two_sessions_at_once_share_the_store_safely(store):
    """Two processes run the same configuration into one store at the same time (as two browser sessions
    would): both finish, agree, and the store holds one complete run, no leftovers."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(2) as pool:
        (auc_a, dir_a), (auc_b, dir_b) = pool.map(_run_in_process, [(str(store), 3), (str(store), 3)])
    assert auc_a == pytest.approx(auc_b) and dir_a == dir_b
    runs = list_runs(store)
    assert len(runs) == 1
    assert not [p for p in store.rglob(".tmp-*")]
