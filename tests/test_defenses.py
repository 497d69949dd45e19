"""Each defense trains and does what it should."""

import pytest
import torch
from torch.nn import functional as F

from mia_core.data import make_split
from mia_core.defenses import (
    DEFENSES, ClassMatchedSampler, DefenseContext, make_objective, mmd2, pgd, robust_accuracy, train_dp_sgd,
)
from mia_core.experiment import ExperimentConfig, run_experiment, validation_indices
from mia_core.models import build_model
from mia_core.training import TrainConfig, train


def _setup(digits, members=200):
    split = make_split(digits, members=members, seed=0)
    x, y = torch.from_numpy(digits.x), torch.from_numpy(digits.y)
    val = torch.from_numpy(validation_indices(split, 200, 0))
    return split, x, y, val


def _train(digits, defense, strength, epochs=30, seed=0):
    split, x, y, val = _setup(digits)
    xm, ym = x[split.members], y[split.members]
    torch.manual_seed(seed)
    model = build_model("mlp", digits.input_shape, 10, width=128)
    model.normalize.fit(xm)
    ctx = DefenseContext(x_train=xm, y_train=ym, x_val=x[val], y_val=y[val], num_classes=10, epochs=epochs,
                         batch_size=64, seed=seed, adv_epsilon=0.1)
    obj = make_objective(defense, strength, ctx)
    train(model, xm, ym, TrainConfig(epochs=epochs, seed=seed), step_loss=obj.step_loss, epoch_end=obj.epoch_end)
    if obj.finish:
        obj.finish(model)
    return model.eval(), obj, (x, y, split, val)


def test_pgd_stays_in_ball_and_box_and_raises_loss(trained_mlp, digits):
    model, split = trained_mlp
    x, y = torch.from_numpy(digits.x[split.nonmembers[:100]]), torch.from_numpy(digits.y[split.nonmembers[:100]])
    for norm in ("linf", "l2"):
        eps = 0.1 if norm == "linf" else 1.0
        xa = pgd(model, x, y, eps=eps, norm=norm, steps=10)
        d = (xa - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
        assert d.max() <= eps + 1e-5 and xa.min() >= 0 and xa.max() <= 1
        with torch.no_grad():
            assert F.cross_entropy(model(xa), y) > F.cross_entropy(model(x), y)


@pytest.mark.parametrize("defense", ["pgd_at", "trades"])
def test_adversarial_training_raises_robust_accuracy(digits, defense):
    natural, _, (x, y, split, _) = _train(digits, "none", 0.0)
    robust, _, _ = _train(digits, defense, 0.1 if defense == "pgd_at" else 3.0)
    xn, yn = x[split.nonmembers], y[split.nonmembers]
    r_nat = robust_accuracy(natural, xn, yn, eps=0.1)
    r_rob = robust_accuracy(robust, xn, yn, eps=0.1)
    assert r_rob > r_nat + 0.05, (r_nat, r_rob)


def test_mmd_pass_lowers_mmd_between_train_and_validation_outputs(digits):
    plain, _, (x, y, split, val) = _train(digits, "mixup", 1.0)
    mmd_model, obj, _ = _train(digits, "mmd_mixup", 30.0)
    assert obj.info["mmd_passes"]  # the gap condition let the MMD pass run
    sampler = ClassMatchedSampler(x[val], y[val], 10, torch.Generator().manual_seed(0))
    xm, ym = x[split.members], y[split.members]
    xv = sampler(ym)

    def mmd_of(model):
        with torch.no_grad():
            return float(mmd2(F.softmax(model(xm), 1), F.softmax(model(xv), 1)))

    assert mmd_of(mmd_model) < mmd_of(plain)


def test_mmd_pass_is_skipped_without_a_gap_and_in_the_last_epoch(digits):
    _, obj, _ = _train(digits, "mmd_mixup", 3.0, epochs=3)
    assert 2 not in obj.info["mmd_passes"]  # never in the last epoch


def test_class_matched_sampler_matches_labels(digits):
    _, x, y, val = _setup(digits)
    s = ClassMatchedSampler(x[val], y[val], 10, torch.Generator().manual_seed(0))
    labels = y[:64]
    drawn = s(labels)
    # every drawn input is a validation input of the same class
    vx, vy = x[val].flatten(1), y[val]
    match = (drawn.flatten(1)[:, None, :] == vx[None]).all(-1)
    assert match.any(1).all()
    assert torch.equal(vy[match.float().argmax(1)], labels)


def test_mmd2_is_zero_for_identical_sets_and_positive_otherwise():
    p = torch.softmax(torch.randn(20, 5), 1)
    assert float(mmd2(p, p)) == pytest.approx(0.0, abs=1e-6)
    assert float(mmd2(p, torch.softmax(3 * torch.randn(20, 5), 1))) > 0


def test_early_stopping_restores_best_validation_weights(digits):
    model, obj, (x, y, _, val) = _train(digits, "early_stopping", 2, epochs=60)
    best = obj.info["best"]
    acc = (model(x[val]).argmax(1) == y[val]).float().mean().item()
    assert acc == pytest.approx(best["acc"])
    assert best["epoch"] < 59


def test_dp_sgd_reports_finite_epsilon_and_more_noise_spends_less(digits):
    split, x, y, _ = _setup(digits, members=128)
    xm, ym = x[split.members], y[split.members]
    eps = []
    for noise in (0.8, 2.0):
        torch.manual_seed(0)
        model = build_model("mlp", digits.input_shape, 10, width=32)
        info = train_dp_sgd(model, xm, ym, epochs=2, batch_size=32, lr=0.05, noise_multiplier=noise)
        assert 0 < info["epsilon"] < float("inf")
        eps.append(info["epsilon"])
    assert eps[1] < eps[0]


def test_unknown_defense_and_bad_strength():
    ctx = None
    with pytest.raises(ValueError, match="mmd_mixup"):
        make_objective("magic", 1.0, ctx)
    with pytest.raises(ValueError, match="finite"):
        make_objective("mixup", -1.0, ctx)


@pytest.mark.parametrize("defense", sorted(set(DEFENSES) - {"none"}))
def test_every_defense_runs_end_to_end(tmp_path, defense):
    cfg = ExperimentConfig(width=64, members=120, epochs=4, bootstrap_rounds=0, reference_scored=60,
                           distance_method="deepfool", lira_shadows=2, label_only_queries=200, defense=defense,
                           defense_strength={"dp_sgd": 1.0, "early_stopping": 1.0}.get(defense, 0.5))
    r = run_experiment(cfg, store=tmp_path)
    assert r.record.config.defense == defense
    assert 0 <= r.record.test_accuracy <= 1
    if defense == "dp_sgd":
        assert 0 < r.record.defense.epsilon < float("inf")
    if defense in ("pgd_at", "trades"):
        assert 0 <= r.record.defense.robust_accuracy <= 1
