"""State-of-the-art attacks: LiRA, label-only distances, inference on adversarial inputs, masking, thresholds."""

import functools
import math
import shutil

import numpy as np
import pytest
import torch

from mia_core.config import DEFAULT_CONFIG, SHADOW_TRAINING
from mia_core.distances import minimal_perturbation
from mia_core.experiment import ExperimentConfig, run_experiment
from mia_core.label_only import label_only_distance
from mia_core.lira import lira_scores, phi_from_log_probs, shadow_key, shadow_set
from mia_core.models import Classifier, build_model, in_features_major, stacked_forward, stacked_gradients
from mia_core.thresholds import balanced_threshold, class_thresholds

OVERFIT = ExperimentConfig(members=200, epochs=60, bootstrap_rounds=0, reference_scored=200)


@pytest.fixture(scope="module")
def overfit_runs(tmp_path_factory):
    store = tmp_path_factory.mktemp("sota")
    return {mask: run_experiment(OVERFIT.replace(output_mask=mask), store=store)
            for mask in ("none", "label")}


def test_lira_beats_the_global_loss_threshold_at_low_fpr(overfit_runs):
    a = overfit_runs["none"].record.attacks
    assert a["lira_online"].tpr_at_fpr[0.01] > a["loss"].tpr_at_fpr[0.01] + 0.05
    assert a["lira_online"].auc > a["loss"].auc + 0.05
    assert a["lira_offline"].auc > 0.55


@pytest.mark.parametrize("net", ["trained_mlp", "trained_cnn"])
def test_label_only_distance_bounds_the_white_box_distance(request, digits, net):
    model, split = request.getfixturevalue(net)
    idx = split.nonmembers[:150 if net == "trained_mlp" else 60]
    x, y = torch.from_numpy(digits.x[idx]), torch.from_numpy(digits.y[idx])
    for norm in (2.0, math.inf):
        wb = minimal_perturbation(model, x, norm=norm, labels=y, method="fmn")
        lo = label_only_distance(model, x, y, norm=norm, max_queries=1000)
        assert lo.success.all() and lo.queries.max() <= 1000
        with torch.no_grad():
            flipped = model(lo.x_adv).argmax(1) != y
        assert flipped.numpy()[lo.norms > 0].all()  # every label-only point is really misclassified
        ok = wb.norms > 0
        assert np.mean(lo.norms[ok] >= wb.norms[ok] * (1 - 1e-6)) >= 0.95
        assert np.median(lo.norms[ok] / wb.norms[ok]) < 1.5  # and it is not a loose bound


def test_inference_on_adversarial_inputs_beats_clean_on_adversarially_trained_model(tmp_path):
    """Song, Shokri & Mittal 2019: on a PGD-trained model I_A (adv_confidence) leaks more than I_B."""
    orc_a, orc_b = [], []
    for seed in (0, 1):
        cfg = ExperimentConfig(**{**OVERFIT.__dict__, "defense": "pgd_at", "defense_strength": 0.1, "seed": seed,
                                  "lira_shadows": 2, "label_only_queries": 200})
        a = run_experiment(cfg, store=tmp_path).record.attacks
        orc_a.append(a["adv_confidence"].auc)
        orc_b.append(a["confidence"].auc)
    assert np.mean(orc_a) > np.mean(orc_b)


def test_label_only_attacks_see_through_confidence_masking(overfit_runs):
    full, masked = overfit_runs["none"].record.attacks, overfit_runs["label"].record.attacks
    for a in ("label_only_l2", "label_only_linf", "gap"):
        assert masked[a].auc == pytest.approx(full[a].auc)
    assert full["confidence"].auc > full["gap"].auc + 0.03
    # with the top-1 label only, confidence carries nothing beyond correctness: down to the gap attack's level
    for a in ("confidence", "loss", "entropy", "lira_online"):
        assert masked[a].auc <= masked["gap"].auc + 0.01
    assert masked["entropy"].auc == pytest.approx(0.5)


def test_attacker_thresholds_are_reported_beside_the_oracle(overfit_runs):
    t = overfit_runs["none"].record.thresholds
    names = " ".join(t)
    assert "shadow threshold" in names and "class thresholds" in names and "noise percentile" in names
    assert "ORACLE" in names
    oracle = t["confidence: ORACLE (uses true membership)"].accuracy
    shadow = t["confidence: shadow threshold (Choquette-Choo)"].accuracy
    assert 0.5 <= shadow <= oracle + 1e-9  # an attacker's threshold never beats the oracle on the same data


def test_balanced_and_class_thresholds():
    r = np.random.default_rng(0)
    inside, outside = r.normal(1, 1, 4000), r.normal(0, 1, 4000)
    assert balanced_threshold(inside, outside) == pytest.approx(0.5, abs=0.35)
    y_in, y_out = np.r_[np.zeros(2000, int), np.ones(2000, int)], np.r_[np.zeros(2000, int), np.ones(2000, int)]
    inside[y_in == 1] += 3
    outside[y_out == 1] += 3
    thr = class_thresholds(inside, outside, y_in, y_out, 2)
    assert thr[0] == pytest.approx(0.5, abs=0.35) and thr[1] == pytest.approx(3.5, abs=0.35)


def test_lira_scores_by_hand():
    phi = np.array([[2.0, 0.0], [4.0, 1.0], [0.0, 2.0], [1.0, 3.0]])
    inside = np.array([[True, False], [True, False], [False, True], [False, True]])
    s = lira_scores(np.array([3.0, 3.0]), phi, inside)
    from scipy.stats import norm

    # point 0: IN {2, 4} (mean 3, sd sqrt 2), OUT {0, 1}; point 1: IN {2, 3}, OUT {0, 1} (sd sqrt 0.5)
    r2, h = np.sqrt(2), np.sqrt(0.5)
    assert s["lira_online"][0] == pytest.approx(norm.logpdf(3, 3, r2) - norm.logpdf(3, 0.5, h))
    assert s["lira_online"][1] == pytest.approx(norm.logpdf(3, 2.5, h) - norm.logpdf(3, 0.5, h))
    assert s["lira_offline"][0] == pytest.approx(norm.logcdf(3, 0.5, h))
    g_in = np.median([r2, h])
    assert s["lira_online_fixed"][0] == pytest.approx(norm.logpdf(3, 3, g_in) - norm.logpdf(3, 0.5, h))
    logp = np.log(np.array([[0.9, 0.1], [0.2, 0.8]]))
    np.testing.assert_allclose(phi_from_log_probs(logp, np.array([0, 0])), [np.log(9), np.log(0.25)])


def test_shadow_set_is_cached_and_resumes(tmp_path, digits):
    x, y = torch.from_numpy(digits.x[:200]), torch.from_numpy(digits.y[:200])

    def build():
        return build_model("mlp", digits.input_shape, 10, width=32)

    kw = dict(n_models=4, epochs=3, batch_size=32, lr=1e-3, weight_decay=0.0, seed=0, chunk=2,
              cache_dir=tmp_path / "shadows")
    a = shadow_set(build, x, y, **kw)
    assert a.inside.sum(0).tolist() == [2] * 200  # every point IN for exactly half of the models
    chunks = sorted((tmp_path / "shadows").glob("chunk-*"))
    assert len(chunks) == 2 and all((c / "MANIFEST.json").is_file() for c in chunks)
    shutil.rmtree(chunks[1])  # as if interrupted after the first chunk
    b = shadow_set(build, x, y, **kw)
    np.testing.assert_allclose(a.logp, b.logp, rtol=1e-6)


@pytest.mark.parametrize("training", ["fast", "mixed"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_fast_shadow_training_trains_as_well_as_stacked_and_is_deterministic(arch, training, digits):
    """`training="fast"` (fused Adam; a CNN on the CPU one model at a time in channels-last memory) and "mixed"
    (bfloat16 passes where the CPU has them) are faster ways to the same recipe: the same subsets, models as
    accurate on the points they did not see, and the same outputs again for the same seed."""
    x, y = torch.from_numpy(digits.x[:300]), torch.from_numpy(digits.y[:300])
    build = functools.partial(build_model, arch, digits.input_shape, 10, width=32)
    kw = dict(n_models=4, epochs=20, batch_size=32, lr=2e-3, weight_decay=0.0, seed=0, chunk=2,
              population=torch.from_numpy(digits.x[300:400]))
    stacked = shadow_set(build, x, y, training="stacked", **kw)
    fast = shadow_set(build, x, y, training=training, **kw)
    np.testing.assert_array_equal(fast.inside, stacked.inside)
    np.testing.assert_allclose(np.exp(fast.logp).sum(-1), 1, atol=1e-9)
    acc_fast, acc_stacked = fast.held_out_accuracy(digits.y[:300]), stacked.held_out_accuracy(digits.y[:300])
    assert acc_stacked > 0.8 and acc_fast >= acc_stacked - 0.03
    again = shadow_set(build, x, y, training=training, **kw)
    np.testing.assert_array_equal(again.logp, fast.logp)
    np.testing.assert_array_equal(again.population_logp, fast.population_logp)
    with pytest.raises(ValueError, match="shadow training must be one of"):
        shadow_set(build, x, y, training="quick", **kw)


class _SameMLP(Classifier):
    """The same network as a `Classifier`; as a subclass, `stacked_forward` declines it and it trains under vmap."""


@pytest.mark.parametrize("training", SHADOW_TRAINING)
@pytest.mark.parametrize("arch", ["mlp", "linear"])
def test_stacked_mlp_training_is_vmaps_to_the_bit(arch, training, digits):
    """`models.stacked_forward` (batched matrix products instead of vmap over functional_call) trains the shadows
    of a plain MLP: the same log-probabilities bit for bit as vmap's, in every training mode, with a last batch
    smaller than the others (150 points a model, batches of 64); models it cannot run stay on vmap."""
    x, y = torch.from_numpy(digits.x[:300]), torch.from_numpy(digits.y[:300])
    kw = dict(n_models=4, epochs=8, batch_size=64, lr=1e-2, weight_decay=0.0, seed=3, chunk=2,
              population=torch.from_numpy(digits.x[300:400]), training=training)
    plain = functools.partial(build_model, arch, digits.input_shape, 10, width=48)
    assert stacked_forward(plain()) is not None
    assert stacked_forward(build_model("mlp", digits.input_shape, 10, dropout=0.2)) is None  # random masks: vmap
    assert stacked_forward(build_model("cnn", digits.input_shape, 10)) is None

    def under_vmap():
        m = plain()
        return _SameMLP(m.normalize, m.body)

    assert stacked_forward(under_vmap()) is None
    fast, reference = shadow_set(plain, x, y, **kw), shadow_set(under_vmap, x, y, **kw)
    np.testing.assert_array_equal(fast.logp, reference.logp)
    np.testing.assert_array_equal(fast.population_logp, reference.population_logp)
    assert fast.held_out_accuracy(digits.y[:300]) > 0.7


@pytest.mark.parametrize("mixed", [False, True])
def test_stacked_gradients_are_autograds_to_the_bit_in_the_weights_layout(mixed, digits):
    """`models.stacked_gradients` (autograd's backward kernels, run without its engine) gives each parameter of
    stacked MLPs autograd's gradient of the stacked loss, bit for bit, in float32 and under bfloat16 autocast,
    with a last layer that has no bias (bfloat16 logits), and laid out as the parameter itself: CPU fused Adam
    reads a gradient in memory order (a transposed one moves the wrong weights; found on the way)."""
    def model(lo: int) -> Classifier:
        nn = torch.nn
        m = Classifier(build_model("mlp", digits.input_shape, 10).normalize, nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.0), nn.Linear(32, 24), nn.ReLU(),
            nn.Linear(24, 10, bias=False)))
        m.normalize.fit(torch.from_numpy(digits.x[lo : lo + 100]))
        return m

    torch.manual_seed(0)
    models = [model(lo) for lo in (0, 100, 200)]
    params, buffers = torch.func.stack_module_state(models)
    idx = torch.randint(0, len(digits.x), (3, 40), generator=torch.Generator().manual_seed(1))
    x, y = torch.from_numpy(digits.x)[idx], torch.from_numpy(digits.y)[idx]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
        logits = stacked_forward(models[0])(params, buffers, x)
    assert logits.dtype == (torch.bfloat16 if mixed else torch.float32)
    (torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten()) * 3).backward()
    grads = stacked_gradients(models[0])(params, buffers, x, y, 3, mixed)
    assert grads.keys() == params.keys()
    for name, p in params.items():
        assert grads[name].stride() == p.stride() and grads[name].dtype == torch.float32
        assert torch.equal(grads[name], p.grad), name
        assert p.grad.abs().sum() > 0
    assert stacked_gradients(build_model("cnn", digits.input_shape, 10)) is None
    # the layout the shadows train in: under mixed, contiguous [M, in, out] weights read through their transposes;
    # the gradients come out in that layout (contiguous once transposed back) with the same bits
    leaves, transposed = in_features_major(params, mixed)
    assert transposed == ({n for n in params if n.endswith(".weight")} if mixed else set())
    views = {n: leaf.transpose(1, 2) if n in transposed else leaf for n, leaf in leaves.items()}
    again = stacked_gradients(models[0])(views, buffers, x, y, 3, mixed)
    for name, p in params.items():
        assert torch.equal(views[name], p.detach()) and leaves[name].is_contiguous()
        g = again[name].transpose(1, 2) if name in transposed else again[name]
        assert g.is_contiguous() and torch.equal(again[name], p.grad), name


def test_the_shadow_training_is_part_of_the_shadows_key_except_for_core_0_4s():
    assert shadow_key(16, 0, "abc") == shadow_key(16, 0, "abc", "stacked")
    assert shadow_key(16, 0, "abc", "fast") != shadow_key(16, 0, "abc")
    assert DEFAULT_CONFIG.shadow_training == "mixed"
    assert DEFAULT_CONFIG.eval_key() != DEFAULT_CONFIG.replace(shadow_training="stacked").eval_key()


def test_interval_bounds_contain_every_point_of_the_ball(trained_cnn, digits):
    from mia_core.verified import interval_logits, verified_confidence_score

    model, split = trained_cnn
    x = torch.from_numpy(digits.x[split.nonmembers[:32]])
    lo, hi = interval_logits(model, x, 0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        xr = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * 0.05).clamp(0, 1)
        with torch.no_grad():
            z = model(xr)
        assert (z >= lo - 1e-4).all() and (z <= hi + 1e-4).all()
    y = digits.y[split.nonmembers[:32]]
    iv = verified_confidence_score(model, x, y, eps=0.05)
    with torch.no_grad():
        clean = torch.softmax(model(x).double(), 1).numpy()[np.arange(32), y]
    assert np.all(iv <= clean + 1e-9)  # the worst case is never more confident than the clean input
    resnet = build_model("resnet18", digits.input_shape, 10).eval()
    assert verified_confidence_score(resnet, x, y, eps=0.05) is None


def test_verified_confidence_is_reported(overfit_runs):
    m = overfit_runs["none"].record.attacks["verified_confidence"]
    assert 0.4 < m.auc < 1.0
