"""The evaluation's steps one by one, on a trained model: groups, scores, metrics, thresholds, record, store."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mia_core.attacks import ATTACKS
from mia_core.config import ExperimentConfig
from mia_core.evaluation import (
    EvaluationInputs, calibrate_thresholds, compute_metrics, score_groups, scored_groups, store_evaluation, summarise,
    validation_indices,
)
from mia_core.records import GroupScores, RunRecord, ScoreTable, TrainingRecord
from mia_core.store import folder_problem, read_json

CFG = ExperimentConfig(members=300, width=64, reference_scored=150, lira_shadows=2, label_only_queries=60,
                       distance_method="deepfool", bootstrap_rounds=10, epochs=20)


@pytest.fixture(scope="module")
def scored(trained_mlp, digits, tmp_path_factory):
    model, split = trained_mlp
    folder = tmp_path_factory.mktemp("stages")
    inputs = EvaluationInputs(CFG, digits, split, model, torch.device("cpu"), shadow_dir=folder / "shadows",
                              stage_dir=folder)
    return inputs, score_groups(inputs, scored_groups(split, CFG))


def test_scored_groups_are_disjoint_and_never_touch_the_defenders_validation_set(trained_mlp):
    _, split = trained_mlp
    groups = scored_groups(split, CFG)
    val = validation_indices(split, CFG.validation_size, CFG.seed)
    assert len(groups["reference"]) == CFG.reference_scored
    assert not set(groups["reference"]) & set(val)
    assert not set(groups["reference"]) & (set(split.members) | set(split.nonmembers))
    assert groups["members"] is split.members and groups["nonmembers"] is split.nonmembers


def test_score_groups_scores_every_registered_attack_for_every_sample(scored, digits):
    inputs, result = scored
    table = result.table
    assert list(table) == ["members", "nonmembers", "reference"]
    for g in table:
        gs = table[g]
        assert list(gs.scores) == list(ATTACKS) and all(v.shape == (len(gs),) for v in gs.scores.values())
        logp = torch.log_softmax(inputs.model(torch.from_numpy(digits.x[gs.index])).double(), 1).detach().numpy()
        np.testing.assert_allclose(gs.scores["loss"], logp[np.arange(len(gs)), gs.label], atol=1e-6)
        assert np.array_equal(gs.prediction, logp.argmax(1))
    assert np.isnan(table.scores("lira_online", "reference")).all()  # not in the shadows' pool
    assert np.isfinite(table.scores("lira_online", "members")).all()
    assert "x_adv_distance_l2" in table["members"].artifacts and "x_adv_distance_l2" not in table["reference"].artifacts
    assert result.distance_seconds > 0 and result.label_only_seconds > 0


def test_compute_metrics_matches_scikit_learn_and_marks_undefined_attacks(scored):
    _, result = scored
    metrics = compute_metrics(result.table, bootstrap_rounds=10, seed=0)
    m, n = result.table.member_nonmember("loss")
    assert metrics["loss"].auc == pytest.approx(roc_auc_score(np.r_[np.ones(len(m)), np.zeros(len(n))], np.r_[m, n]))
    assert metrics["loss"].calibrated and not metrics["lira_online"].calibrated  # LiRA: no reference scores
    nan = {g: GroupScores(gs.index, gs.label, gs.prediction, {**gs.scores, "loss": np.full(len(gs), np.nan)})
           for g, gs in result.table.groups.items()}
    assert not compute_metrics(ScoreTable(nan), bootstrap_rounds=0, seed=0)["loss"].defined


def test_calibrated_thresholds_mark_the_oracle_rules(scored):
    inputs, result = scored
    rules = calibrate_thresholds(inputs, result)
    assert {k for k, v in rules.items() if v.oracle} == {k for k in rules if "ORACLE" in k}
    assert all(0 <= v.tpr <= 1 and 0 <= v.fpr <= 1 for v in rules.values())


def test_summarise_and_store_write_a_record_that_reads_back(scored, tmp_path):
    inputs, result = scored
    metrics = compute_metrics(result.table, bootstrap_rounds=0, seed=0)
    training = TrainingRecord(1.0, 0.9, 0.9, 1.0, "cpu")
    record = summarise(inputs, result, metrics, calibrate_thresholds(inputs, result), training, "k")
    assert (record.n_members, record.n_nonmembers, record.n_reference_scored) == (300, 300, 150)
    assert record.timings.label_only_seconds == result.label_only_seconds
    store_evaluation(tmp_path / "eval-x", result.table, record)
    assert folder_problem(tmp_path / "eval-x") is None
    assert RunRecord.from_json(read_json(tmp_path / "eval-x" / "summary.json")).to_json() == record.to_json()
