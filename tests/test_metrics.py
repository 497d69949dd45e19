"""Metrics against scikit-learn and against values the math gives exactly."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mia_core.attacks import gap_score, modified_entropy_score, softmax_scores
from mia_core.metrics import (
    attack_metrics, auc, bootstrap_intervals, oracle_accuracy, rates_at_threshold, roc_points, threshold_at_fpr,
    tpr_at_fpr,
)


def test_auc_matches_sklearn():
    r = np.random.default_rng(0)
    m, n = r.normal(0.5, 1, 400), r.normal(0, 1, 300)
    assert auc(m, n) == pytest.approx(roc_auc_score(np.r_[np.ones(400), np.zeros(300)], np.r_[m, n]))


def test_infinite_scores_keep_their_rank():
    m = np.array([1.0, np.inf, 3.0])
    n = np.array([0.5, 2.0, np.inf])
    expected = roc_auc_score([1, 1, 1, 0, 0, 0], [1.0, 1e9, 3.0, 0.5, 2.0, 1e9])
    assert auc(m, n) == pytest.approx(expected)


def test_tpr_at_fpr_never_exceeds_the_fpr_budget():
    # members 10..19, non-members 0..9 and one non-member at 15: at FPR <= 0 only members above 15 count
    m = np.arange(10, 20, dtype=float)
    n = np.r_[np.arange(0, 9, dtype=float), 15.0]
    roc = roc_points(m, n)
    assert tpr_at_fpr(roc, 0.0) == pytest.approx(0.4)  # 16..19
    assert tpr_at_fpr(roc, 0.1) == pytest.approx(1.0)
    assert tpr_at_fpr(roc, 0.05) == pytest.approx(0.4)


def test_oracle_accuracy_of_gap_attack_is_half_plus_half_gap():
    """On a balanced set the gap attack's accuracy is exactly 1/2 + (train acc - test acc)/2 (Yeom et al.)."""
    r = np.random.default_rng(1)
    k = 10
    n = 1000
    y_m, y_n = r.integers(0, k, n), r.integers(0, k, n)
    p_m, p_n = r.dirichlet(np.ones(k), n), r.dirichlet(np.ones(k), n)
    p_m[np.arange(n)[:900], y_m[:900]] += 5  # 90% correct on members
    p_n[np.arange(n)[:700], y_n[:700]] += 5  # 70% on non-members
    p_m /= p_m.sum(1, keepdims=True)
    p_n /= p_n.sum(1, keepdims=True)
    train_acc, test_acc = np.mean(p_m.argmax(1) == y_m), np.mean(p_n.argmax(1) == y_n)
    g_m, g_n = gap_score(np.log(p_m), y_m), gap_score(np.log(p_n), y_n)
    roc = roc_points(g_m, g_n)
    assert oracle_accuracy(roc, n, n) == pytest.approx(0.5 + (train_acc - test_acc) / 2)


def test_calibrated_threshold_controls_fpr_on_fresh_nonmembers():
    r = np.random.default_rng(2)
    ref, fresh = r.normal(0, 1, 20000), r.normal(0, 1, 20000)
    members = r.normal(1, 1, 20000)
    thr = threshold_at_fpr(ref, 0.01)
    tpr, fpr = rates_at_threshold(members, fresh, thr)
    assert fpr == pytest.approx(0.01, abs=0.003)
    assert tpr > fpr


def test_attack_metrics_fields_and_intervals():
    r = np.random.default_rng(3)
    m, n = r.normal(0.3, 1, 500), r.normal(0, 1, 500)
    out = attack_metrics(m, n, reference=r.normal(0, 1, 500), bootstrap_rounds=100)
    lo, hi = out.auc_ci
    assert lo < out.auc < hi
    assert set(out.tpr_at_fpr) == {0.001, 0.01, 0.1}
    assert 0.5 < out.oracle_accuracy < 1 and 0 < out.max_advantage < 1
    assert set(out.calibrated) == {0.001, 0.01, 0.1}
    assert all(c.fpr <= 0.1 + 0.05 for c in out.calibrated.values())
    # a random score has AUC near one half
    assert auc(r.normal(0, 1, 2000), r.normal(0, 1, 2000)) == pytest.approx(0.5, abs=0.03)


def test_modified_entropy_by_hand():
    p = np.array([[0.7, 0.2, 0.1]])
    y = np.array([0])
    mentr = -(0.3) * np.log(0.7) - 0.2 * np.log(0.8) - 0.1 * np.log(0.9)
    assert modified_entropy_score(np.log(p), y)[0] == pytest.approx(-mentr)
    s = softmax_scores(np.log(p), y)
    assert s["loss"][0] == pytest.approx(np.log(0.7))
    assert s["confidence"][0] == pytest.approx(0.7)
    assert s["entropy"][0] == pytest.approx(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    assert s["gap"][0] == 1.0


def test_loss_score_keeps_rank_when_saturated():
    """Two very confident samples whose p_y both round to 1.0 in float64 keep distinct losses."""
    import torch

    from mia_core.attacks import precise_log_softmax

    logits = torch.tensor([[40.0, 0.0, 1.0], [50.0, 0.0, -3.0], [0.3, 0.1, 0.2]])
    logp = precise_log_softmax(logits).numpy()
    np.testing.assert_allclose(np.exp(logp).sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(logp[2], torch.log_softmax(logits[2].double(), 0).numpy(), rtol=1e-10)
    s = softmax_scores(logp[:2], np.array([0, 0]))
    assert s["confidence"][0] == s["confidence"][1] == 1.0
    assert s["loss"][1] > s["loss"][0]


def test_the_bootstraps_counted_roc_is_scikit_learns_to_the_bit(monkeypatch):
    """bootstrap_intervals draws its thousands of ROC curves without scikit-learn's input checks: the points
    (ties, integer-valued and continuous scores, uneven groups) and so every interval equal roc_curve's exactly."""
    from mia_core import metrics

    rng = np.random.default_rng(5)
    for trial in range(400):
        m = rng.integers(0, 20, rng.integers(1, 80)) / rng.choice([1.0, 3.0, 7.0])
        n = rng.integers(0, 20, rng.integers(1, 80)) / rng.choice([1.0, 3.0, 7.0])
        if trial % 2:
            m, n = rng.normal(0.3, 1, len(m)), rng.normal(size=len(n))
        ref, fast = roc_points(m, n), metrics._counted_roc(m, n)
        for field in ("fpr", "tpr", "thresholds"):
            assert np.array_equal(getattr(ref, field), getattr(fast, field)), (trial, field)
    m = np.r_[rng.normal(0.4, 1, 150), np.inf, np.inf]  # no adversarial example found: the highest rank
    n = np.r_[rng.integers(0, 5, 140).astype(float), -np.inf]
    fast = bootstrap_intervals(m, n, rounds=300, seed=2)
    monkeypatch.setattr(metrics, "_counted_roc", roc_points)
    assert bootstrap_intervals(m, n, rounds=300, seed=2) == fast
