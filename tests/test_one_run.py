"""One-run DP auditing (Steinke, Nasr & Jagielski 2023): the p-value, the epsilon bound, and a real audit."""

import math

import numpy as np
import pytest
from scipy.stats import binom

from mia_core.config import ExperimentConfig
from mia_core.one_run import guess_accuracy_at, one_run_audit, one_run_epsilon, one_run_p_value


def test_p_value_is_the_binomial_tail_without_delta():
    assert one_run_p_value(1000, 100, 70, 1.0, 0.0) == pytest.approx(binom.sf(69, 100, math.e / (1 + math.e)))
    assert one_run_p_value(1000, 100, 0, 1.0, 0.0) == 1.0


def test_delta_term_by_the_definition():
    m, r, v, eps, delta = 500, 60, 45, 0.5, 1e-4
    q = math.exp(eps) / (1 + math.exp(eps))
    alpha = max(sum(binom.pmf(v - j, r, q) for j in range(1, i + 1)) / i for i in range(1, v + 1))
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(binom.sf(v - 1, r, q) + 2 * m * delta * alpha)


def test_epsilon_bound_is_where_the_p_value_crosses_the_level():
    eps = one_run_epsilon(1000, 200, 180, delta=0.0, confidence=0.95)
    assert eps > 0
    assert one_run_p_value(1000, 200, 180, eps, 0.0) <= 0.05 + 1e-9
    assert one_run_p_value(1000, 200, 180, eps + 1e-3, 0.0) > 0.05
    assert one_run_epsilon(1000, 200, 100, delta=0.0) == 0.0  # chance-level guessing rules nothing out
    assert one_run_epsilon(1000, 200, 180, delta=1e-5) <= eps  # delta can only weaken the bound


def test_the_bound_is_sound_for_randomised_response():
    """An eps-DP mechanism guessing at exactly its allowed accuracy gets a bound above eps with probability at most
    5%: summed exactly over every possible number of correct guesses."""
    for eps, r in ((0.5, 100), (1.0, 200), (2.0, 300)):
        q = guess_accuracy_at(eps)
        p_over = sum(binom.pmf(v, r, q) for v in range(r + 1) if one_run_epsilon(10 * r, r, v, delta=0.0) > eps)
        assert 0.01 < p_over <= 0.05, (eps, p_over)


def test_a_real_audit_finds_leakage_without_dp_and_stays_under_the_accountant_with_it():
    base = ExperimentConfig(width=256, members=200, epochs=60, reference_scored=200)
    plain = one_run_audit(base, canaries=400, kind="mislabelled")
    assert plain.guesses == 80 and plain.correct > 60 and plain.epsilon > 0.5
    dp = one_run_audit(base.replace(defense="dp_sgd", defense_strength=3.0), canaries=400, kind="mislabelled")
    assert dp.accountant_epsilon is not None and dp.epsilon <= dp.accountant_epsilon
    assert dp.epsilon < plain.epsilon
    with pytest.raises(ValueError, match="free for canaries"):
        one_run_audit(base, canaries=5000)


def test_the_cli_runs_a_one_run_audit(capsys):
    from mia_core.cli import main

    assert main(["audit-one-run", "--width", "64", "--members", "100", "--epochs", "20", "--canaries", "200",
                 "--kind", "natural", "--reference-scored", "100"]) == 0
    out = capsys.readouterr().out
    assert "200 natural canaries" in out and "one-run audit: epsilon >=" in out
    assert main(["audit-one-run", "--canaries", "100000"]) == 2
    assert "free for canaries" in capsys.readouterr().err
