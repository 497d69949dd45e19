"""RMIA (Zarifzadeh, Liu & Shokri, ICML 2024): the vectorised score against the formula computed directly."""

import numpy as np
import pytest
import torch

from mia_core.config import ExperimentConfig
from mia_core.experiment import run_experiment
from mia_core.lira import shadow_set
from mia_core.models import build_model
from mia_core.rmia import A_FALLBACK, choose_offline_a, rmia_scores


def _slow_rmia(target_x, target_z, ref_x, ref_z, inside, gamma, a):
    """Score(x) = share of z with LR(x, z) >= gamma, one pair at a time, exactly as the paper writes it."""
    k, n = ref_x.shape
    out = []
    for i in range(n):
        if a is None:
            pr_x = sum(ref_x[j, i] for j in range(k)) / k
        else:
            outs = [ref_x[j, i] for j in range(k) if not inside[j, i]] or [ref_x[j, i] for j in range(k)]
            pr_x = 0.5 * ((1 + a) * sum(outs) / len(outs) + (1 - a))
        hits = 0
        for m in range(len(target_z)):
            pr_z = sum(ref_z[j, m] for j in range(k)) / k
            if a is not None:
                pr_z = 0.5 * ((1 + a) * pr_z + (1 - a))
            lr = (target_x[i] / pr_x) / (target_z[m] / pr_z)
            hits += lr >= gamma
        out.append(hits / len(target_z))
    return np.array(out)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("a", [None, 0.0, 0.3, 1.0])
def test_rmia_matches_the_formula_computed_directly(gamma, a):
    rng = np.random.default_rng(int(gamma * 10) + (0 if a is None else int(a * 10) + 1))
    k, n, m = 4, 30, 25
    ref_x, ref_z = rng.uniform(0.05, 1, (k, n)), rng.uniform(0.05, 1, (k, m))
    target_x, target_z = rng.uniform(0.05, 1, n), rng.uniform(0.05, 1, m)
    inside = rng.random((k, n)) < 0.5
    inside[:, 0] = True  # a point every model trained on: offline falls back to all models
    fast = rmia_scores(target_x, target_z, ref_x, ref_z, inside, gamma=gamma, a=a)
    np.testing.assert_allclose(fast, _slow_rmia(target_x, target_z, ref_x, ref_z, inside, gamma, a))


def test_rmia_ranks_a_point_the_target_fits_better_higher():
    ref_x, ref_z = np.full((4, 2), 0.5), np.full((4, 100), 0.5)
    target_z = np.linspace(0.1, 0.9, 100)
    s = rmia_scores(np.array([0.95, 0.2]), target_z, ref_x, ref_z)
    assert s[0] > s[1] and s[0] == pytest.approx(1.0) and s[1] == pytest.approx(np.mean(target_z <= 0.2))


def test_offline_a_is_chosen_on_reference_models_only(trained_mlp, digits):
    x, y = torch.from_numpy(digits.x[:240]), torch.from_numpy(digits.y[:240])
    pop = torch.from_numpy(digits.x[1000:1100])
    shadows = shadow_set(lambda: build_model("mlp", digits.input_shape, 10, width=32), x, y, n_models=6, epochs=8,
                         batch_size=32, lr=1e-3, weight_decay=0.0, seed=0, population=pop)
    assert shadows.population_logp.shape == (6, 100, 10)
    p_x = np.exp(np.take_along_axis(shadows.logp, digits.y[:240][None, :, None], 2)[..., 0])
    p_z = np.exp(np.take_along_axis(shadows.population_logp, digits.y[1000:1100][None, :, None], 2)[..., 0])
    a = choose_offline_a(p_x, p_z, shadows.inside)
    assert 0.0 <= a <= 1.0
    assert choose_offline_a(p_x[:2], p_z[:2], shadows.inside[:2]) == A_FALLBACK


def test_rmia_is_in_every_run_and_its_parameters_are_recorded(tmp_path):
    cfg = ExperimentConfig(width=64, members=120, epochs=15, bootstrap_rounds=0, reference_scored=80,
                           distance_method="deepfool", lira_shadows=4, label_only_queries=50)
    run = run_experiment(cfg, store=tmp_path)
    rec = run.record
    assert {"rmia_online", "rmia_offline"} <= set(rec.attacks)
    assert rec.attacks["rmia_online"].auc > 0.5 and not rec.attacks["rmia_online"].calibrated
    assert np.isnan(run.scores("rmia_online", "reference")).all()
    assert 0 <= rec.attack_parameters["rmia_offline_a"] <= 1
    fixed = run_experiment(cfg.replace(rmia_offline_a=0.7, rmia_gamma=2.0), store=tmp_path)
    assert fixed.record.attack_parameters["rmia_offline_a"] == 0.7
    assert fixed.run_dir == run.run_dir  # evaluation parameters: the trained model is reused
