"""Sweeps fill the store, resume after an interruption, and run on Ray."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mia_core.experiment import ExperimentConfig, list_runs
from mia_core.metrics import FPR_LEVELS, AttackMetrics
from mia_core.records import DefenseInfo, Environment, RunRecord, Timings
from mia_core.reproduce import format_findings, write_into_readme
from mia_core.sweep import parse_grid, run_sweep, sweep_points

ROOT = Path(__file__).resolve().parents[1]
BASE = ExperimentConfig(width=32, members=100, epochs=5, bootstrap_rounds=0, reference_scored=50,
                        distance_method="deepfool", lira_shadows=2, label_only_queries=200)
ARGS = ["--width", "32", "--members", "100", "--epochs", "5", "--bootstrap", "0", "--reference-scored", "50",
        "--method", "deepfool", "--lira-shadows", "2", "--label-only-queries", "200"]


def test_parse_grid():
    assert parse_grid(["none", "mixup=0.5,1"]) == {"none": [0.0], "mixup": [0.5, 1.0]}
    with pytest.raises(ValueError, match="Unknown defense"):
        parse_grid(["bogus=1"])
    with pytest.raises(ValueError, match="numbers"):
        parse_grid(["mixup=a"])


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "mia_core", "sweep", *ARGS, "--grid", "weight_decay=0,0.001,0.01,0.1",
           "--seeds", "0", "--executor", "serial", "--store", str(store)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while len(list_runs(store)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # a hard stop, half-way through a point
    proc.wait()
    finished = {r.eval_dir for r in list_runs(store)}
    assert 2 <= len(finished) < 4
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:] if line.strip()]
    reused = [r[-1] == "True" for r in rows]
    assert len(rows) == 4 and sum(reused) == len(finished)
    assert {r.eval_dir for r in list_runs(store)} >= finished and len(list_runs(store)) == 4


def test_process_pool_and_serial_agree(tmp_path):
    points = sweep_points(BASE, {"none": [0.0], "label_smoothing": [0.2]}, [0])
    par = run_sweep(points, store=tmp_path / "a", executor="process", workers=2)
    ser = run_sweep(points, store=tmp_path / "b", executor="serial")
    for (p, _), (s, _) in zip(par, ser):
        assert p.attacks["loss"].auc == pytest.approx(s.attacks["loss"].auc, abs=1e-6)
        assert p.config.defense == s.config.defense


def test_ray_executor_on_a_local_instance(tmp_path):
    pytest.importorskip("ray")
    points = sweep_points(BASE, {"none": [0.0], "mixup": [1.0]}, [0])
    out = run_sweep(points, store=tmp_path, executor="ray", workers=2)
    assert [r.config.defense for r, _ in out] == ["none", "mixup"]
    again = run_sweep(points, store=tmp_path, executor="serial")
    assert all(reused for _, reused in again)


def _fake(defense, **kw):
    """A RunRecord with chosen AUCs and oracle accuracies, to check the findings' verdicts."""
    def m(auc, orc):
        return AttackMetrics(auc=auc, tpr_at_fpr={f: 0.0 for f in FPR_LEVELS}, max_advantage=0.0, oracle_accuracy=orc)

    attacks = {a: m(0.6, 0.55) for a in ("distance_l2", "distance_linf", "loss", "confidence", "adv_confidence")}
    attacks["gap"] = m(0.55, 0.55)
    attacks.update({k: m(v["auc"], v["oracle_accuracy"]) for k, v in kw.items()})
    return RunRecord(config=BASE.replace(defense=defense), train_key="t", eval_key="e", train_accuracy=1.0,
                     test_accuracy=0.9, n_members=100, n_nonmembers=100, n_reference_scored=50, attacks=attacks,
                     thresholds={}, defense=DefenseInfo(robust_accuracy=0.5, epsilon=3.0),
                     timings=Timings(0.0, 0.0, 0.0), environment=Environment("x", "x", "cpu", "x", "x"),
                     label_only_queries_used=0.0)


def test_findings_table_and_readme_markers(tmp_path):
    by = {"none": [_fake("none")], "pgd_at": [_fake("pgd_at", adv_confidence={"auc": 0.7, "oracle_accuracy": 0.7},
                                                     confidence={"auc": 0.65, "oracle_accuracy": 0.6})]}
    table = format_findings(by, BASE, [0])
    assert "| 1 |" in table and "yes" in table.split("| 1 |")[1].split("\n")[0]  # 0.55 = 0.5 + 0.1/2
    assert "yes" in table.split("| 3 |")[1].split("\n")[0]
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- reproduce:start -->\nSTALE TABLE\n<!-- reproduce:end -->\n\ntail\n")
    write_into_readme(table, readme)
    text = readme.read_text()
    assert "STALE TABLE" not in text and "tail" in text and text.count("reproduce:start") == 1 and "| 3 |" in text
    # another data set's table gets its own markers and leaves the default one alone
    write_into_readme("MNIST TABLE", readme, "mnist5k")
    write_into_readme("MNIST TABLE 2", readme, "mnist5k")
    text = readme.read_text()
    assert text.count("reproduce-mnist5k:start") == 1 and "MNIST TABLE 2" in text and "MNIST TABLE\n" not in text
    assert "| 3 |" in text and "tail" in text
