"""Epsilon lower bounds from attacks at thresholds calibrated on reference data (Jagielski et al. 2020)."""

import math

import numpy as np
import pytest
from scipy.stats import beta

from mia_core.experiment import run_experiment
from mia_core.config import ExperimentConfig
from mia_core.metrics import AttackMetrics, CalibratedThreshold
from mia_core.privacy import attack_epsilon_bound, clopper_pearson, epsilon_lower_bound, run_epsilon_bound
from mia_core import views


def test_clopper_pearson_is_the_exact_beta_interval():
    lo, hi = clopper_pearson(7, 50, 0.05)
    assert lo == pytest.approx(beta.ppf(0.025, 7, 44)) and hi == pytest.approx(beta.ppf(0.975, 8, 43))
    assert clopper_pearson(0, 50, 0.05)[0] == 0 and clopper_pearson(50, 50, 0.05)[1] == 1
    # coverage: over many draws the interval holds the true rate at least 95% of the time
    rng = np.random.default_rng(0)
    hits = [lo <= 0.1 <= hi for lo, hi in (clopper_pearson(int(k), 200, 0.05) for k in rng.binomial(200, 0.1, 2000))]
    assert np.mean(hits) >= 0.95


def test_epsilon_lower_bound_by_hand():
    # 900 of 1000 members caught, 10 of 1000 non-members accused
    alpha = 0.05
    tpr_lo, tpr_hi = beta.ppf(alpha / 4, 900, 101), beta.ppf(1 - alpha / 4, 901, 100)
    fpr_lo, fpr_hi = beta.ppf(alpha / 4, 10, 991), beta.ppf(1 - alpha / 4, 11, 990)
    expected = max(math.log((tpr_lo - 1e-5) / fpr_hi), math.log((1 - fpr_hi - 1e-5) / (1 - tpr_lo)))
    assert epsilon_lower_bound(900, 1000, 10, 1000, delta=1e-5, alpha=alpha) == pytest.approx(expected)
    assert epsilon_lower_bound(50, 100, 50, 100) == 0.0  # a coin flip rules nothing out
    assert epsilon_lower_bound(1, 1000, 0, 1000) == 0.0  # nor does one lucky hit
    # the bound is sound: for rates an eps-DP test can reach (TPR = e^eps FPR), it stays below eps most of the time
    rng = np.random.default_rng(1)
    eps, fpr = 1.0, 0.05
    tpr = math.exp(eps) * fpr
    over = [epsilon_lower_bound(rng.binomial(500, tpr), 500, rng.binomial(500, fpr), 500) > eps for _ in range(400)]
    assert np.mean(over) <= 0.05
    assert epsilon_lower_bound(900, 1000, 10, 1000, alpha=0.001) < epsilon_lower_bound(900, 1000, 10, 1000)


def test_bonferroni_makes_the_maximum_over_attacks_no_larger():
    m = AttackMetrics(auc=0.9, tpr_at_fpr={0.01: 0.5}, max_advantage=0.5, oracle_accuracy=0.8,
                      calibrated={0.01: CalibratedThreshold(1.0, 0.5, 0.01), 0.1: CalibratedThreshold(0.5, 0.8, 0.1)})
    alone = attack_epsilon_bound("a", m, 1000, 1000).epsilon
    among_ten = attack_epsilon_bound("a", m, 1000, 1000, tests=10).epsilon
    assert 0 < among_ten < alone
    best, per = run_epsilon_bound({"a": m, "b": m, "lira": AttackMetrics.undefined()}, 1000, 1000)
    assert set(per) == {"a", "b"} and best.epsilon == pytest.approx(attack_epsilon_bound("a", m, 1000, 1000,
                                                                                          tests=2).epsilon)


def test_a_dp_sgd_run_reports_its_bound_below_the_accountant(tmp_path):
    cfg = ExperimentConfig(width=64, members=150, epochs=10, bootstrap_rounds=0, reference_scored=100,
                           distance_method="deepfool", lira_shadows=2, label_only_queries=50, defense="dp_sgd",
                           defense_strength=1.0)
    rec = run_experiment(cfg, store=tmp_path).record
    assert rec.epsilon_bound is not None and 0 <= rec.epsilon_bound.epsilon <= rec.defense.epsilon
    assert "lira_online" not in rec.epsilon_bounds  # no reference scores, no calibrated threshold
    text = views.privacy_summary(rec)
    assert "accountant guarantees" in text and "below" in text
