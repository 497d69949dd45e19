"""The label-only searches: HopSkipJump from noise (core 0.4.0) or from the nearest differently-labelled sample,
and RayS for L-inf. Every returned point must flip the model, carry the reported norm and bound the exact
distance from above; the defaults must be no looser than 0.4.0's search at well under half its queries."""

import math

import numpy as np
import pytest
import torch

from mia_core.config import DEFAULT_CONFIG
from mia_core.data import load_dataset
from mia_core.label_only import (
    CONV_QUERY_BYTES, PROBE_ROUND_BYTES, _Oracle, label_only_distance, low_frequency_factor, probe_batch,
    probe_directions,
)
from test_distances import _ToUnit, affine_model, closed_form

SEARCHES = [(2.0, "hopskipjump"), (math.inf, "hopskipjump"), (math.inf, "rays")]


@pytest.mark.parametrize("norm,linf_search", SEARCHES)
@pytest.mark.parametrize("start", ["noise", "nearest"])
def test_every_search_bounds_the_closed_form_of_an_affine_model(norm, linf_search, start):
    lo, hi = -2.0, 3.0
    model = affine_model()
    gen = torch.Generator().manual_seed(1)
    x = 0.5 + 5.0 * (0.4 * torch.rand(200, 20, generator=gen) - 0.2)
    pool = 0.5 + 5.0 * (torch.rand(300, 20, generator=gen) - 0.5) if start == "nearest" else None
    with torch.no_grad():
        y = model(x).argmax(1)
    exact = closed_form(model, x, norm)
    r = label_only_distance(model, x, y, norm=norm, max_queries=400, bounds=(lo, hi), start_pool=pool,
                            linf_search=linf_search)
    assert r.success.all() and r.x_adv.min() >= lo and r.x_adv.max() <= hi
    with torch.no_grad():
        assert (model(r.x_adv).argmax(1) != y).all()
    measured = (r.x_adv - x).double().flatten(1).norm(p=norm, dim=1).numpy()
    np.testing.assert_allclose(r.norms, measured, rtol=1e-12)
    assert (r.norms >= exact * (1 - 1e-6)).all()
    assert np.median(r.norms / exact) < 1.3
    assert r.queries.max() <= 400 + (300 / 200 if pool is not None else 0)


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_a_nearest_start_is_never_farther_than_the_nearest_differently_labelled_sample(trained_mlp, digits, norm):
    model, split = trained_mlp
    x = torch.from_numpy(digits.x[split.nonmembers[:120]])
    y = torch.from_numpy(digits.y[split.nonmembers[:120]])
    pool = torch.from_numpy(digits.x[split.reference[:500]])
    with torch.no_grad():
        pool_labels = model(pool).argmax(1)
    gap = torch.cdist(x.flatten(1).double(), pool.flatten(1).double(), p=norm)
    gap[pool_labels[None, :] == y[:, None]] = torch.inf
    farthest_allowed = gap.min(1).values.numpy()
    r = label_only_distance(model, x, y, norm=norm, max_queries=100, start_pool=pool)
    assert r.success.all()
    assert (r.norms <= farthest_allowed * (1 + 1e-6)).all()


def test_the_default_search_is_no_looser_than_core_0_4_at_under_half_the_queries(trained_mlp, digits):
    """The measured claim of bench/label_only.py, on 150 non-members of a trained digits MLP."""
    model, split = trained_mlp
    x = torch.from_numpy(digits.x[split.nonmembers[:150]])
    y = torch.from_numpy(digits.y[split.nonmembers[:150]])
    pool = torch.from_numpy(digits.x[split.reference[:2000]])
    for norm, name, share in ((2.0, "l2", 0.45), (math.inf, "linf", 0.25)):
        old = label_only_distance(model, x, y, norm=norm, max_queries=1000)
        new = label_only_distance(model, x, y, norm=norm, max_queries=DEFAULT_CONFIG.label_only_budget(name),
                                  start_pool=pool, linf_search=DEFAULT_CONFIG.label_only_linf)
        assert np.median(new.norms) <= 1.02 * np.median(old.norms)
        assert new.queries.mean() <= share * old.queries.mean()
        assert new.queries.max() <= DEFAULT_CONFIG.label_only_budget(name) + 2000 / len(x)  # + the pool's share


def test_the_searches_of_core_0_4_keep_their_store_keys():
    """0.4.0's default evaluation, asked for with its label-only settings, finds the folder 0.4.0 stored."""
    old = DEFAULT_CONFIG.replace(label_only_queries=1000, label_only_start="noise", label_only_linf="hopskipjump",
                                 shadow_training="stacked", label_only_probes="gaussian", label_only_linf_queries=None,
                                 reference_searched=None)
    assert old.eval_key() == "b11fa5e4e0c5299a"
    assert DEFAULT_CONFIG.eval_key() != old.eval_key()


def test_the_l_inf_search_has_its_own_budget_and_rays_runs_are_told_apart():
    """label_only_linf_queries is the L-inf search's budget (none: label_only_queries, as before it existed);
    RayS's shorter radius search (8 binary-search steps, 12 before) gives its runs new evaluation keys, while
    HopSkipJump's keep theirs; a stored config without the new fields reads back as the version that wrote it."""
    from mia_core.config import ExperimentConfig, NEW_FIELD_DEFAULTS
    from mia_core.label_only import RAYS_SEARCH_STEPS

    assert (DEFAULT_CONFIG.label_only_budget("l2"), DEFAULT_CONFIG.label_only_budget("linf")) == (400, 200)
    same = DEFAULT_CONFIG.replace(label_only_linf_queries=None)
    assert same.label_only_budget("linf") == same.label_only_budget("l2") == 400
    assert same.label_only_budget("linf", (1, 28, 28)) == same.label_only_budget("l2", (1, 28, 28)) == 200
    assert RAYS_SEARCH_STEPS == 8
    rays_400 = "26a8a47665b209e3"  # the default evaluation with RayS's 12 steps (before)
    assert same.eval_key() != rays_400 and DEFAULT_CONFIG.eval_key() not in (rays_400, same.eval_key())
    stored = {k: v for k, v in DEFAULT_CONFIG.to_dict().items() if k not in NEW_FIELD_DEFAULTS}
    old = ExperimentConfig.from_dict(stored)
    assert old == DEFAULT_CONFIG.replace(**NEW_FIELD_DEFAULTS) and old.label_only_budget("linf") == 400
    assert old.replace(label_only_queries=1000).eval_key() == "b11fa5e4e0c5299a"  # 0.4.0's default, as stored


def test_low_frequency_probes_span_only_the_coarse_grid():
    gen = torch.Generator().manual_seed(0)
    probes = probe_directions(3, 150, (1, 28, 28), gen, "low-frequency")
    assert probes.shape == (3, 150, 1, 28, 28)
    assert torch.linalg.matrix_rank(probes.flatten(0, 1).flatten(1), rtol=1e-4) == 14 * 14
    colour = probe_directions(2, 400, (3, 32, 32), torch.Generator().manual_seed(0), "low-frequency")
    assert torch.linalg.matrix_rank(colour.flatten(0, 1).flatten(1), rtol=1e-4) == 3 * 16 * 16
    # too small to be coarsened (digits' 8x8) or not an image: the Gaussian probes, draw for draw
    for shape in ((1, 8, 8), (20,)):
        assert low_frequency_factor(shape) == 1
        a = probe_directions(2, 5, shape, torch.Generator().manual_seed(3), "low-frequency")
        b = probe_directions(2, 5, shape, torch.Generator().manual_seed(3), "gaussian")
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="probe distribution"):
        probe_directions(1, 1, (20,), gen, "pink")


def test_low_frequency_probes_keep_the_bound_on_an_affine_image_model():
    model = affine_model(d=784, k=5)
    gen = torch.Generator().manual_seed(2)
    x = 0.5 + 0.2 * (torch.rand(60, 1, 28, 28, generator=gen) - 0.5)
    with torch.no_grad():
        y = model(x).argmax(1)
    r = label_only_distance(model, x, y, norm=2.0, max_queries=300, probe_distribution="low-frequency")
    assert r.success.all()
    with torch.no_grad():
        assert (model(r.x_adv).argmax(1) != y).all()
    measured = (r.x_adv - x).double().flatten(1).norm(dim=1).numpy()
    np.testing.assert_allclose(r.norms, measured, rtol=1e-12)
    assert (r.norms >= closed_form(model, x, 2.0) * (1 - 1e-6)).all()
    assert r.queries.max() <= 300


def test_low_frequency_probes_find_shorter_distances_on_28x28_images(trained_mnist_cnn):
    """The measured claim of the default (bench/label_only.py), on 60 non-members of a small MNIST CNN."""
    model, split = trained_mnist_cnn
    ds = load_dataset("mnist5k")
    x = torch.from_numpy(ds.x[split.nonmembers[:60]])
    y = torch.from_numpy(ds.y[split.nonmembers[:60]])
    pool = torch.from_numpy(ds.x[split.reference[:500]])
    runs = {d: label_only_distance(model, x, y, norm=2.0, max_queries=200, start_pool=pool, probe_distribution=d)
            for d in ("gaussian", "low-frequency")}
    for r in runs.values():
        assert r.success.all()
        with torch.no_grad():
            flipped = model(r.x_adv).argmax(1) != y
        assert flipped[r.norms > 0].all()
        assert r.queries.max() <= 200 + 500 / 60
    ok = runs["gaussian"].norms > 0
    assert np.median(runs["low-frequency"].norms[ok]) <= 0.9 * np.median(runs["gaussian"].norms[ok])
    again = label_only_distance(model, x, y, norm=2.0, max_queries=200, start_pool=pool,
                                probe_distribution="low-frequency")
    np.testing.assert_array_equal(again.norms, runs["low-frequency"].norms)


def test_the_automatic_l2_budget_follows_the_probes_and_is_no_looser_than_gaussian_probes_at_400(
        trained_mnist_cnn):
    """label_only_queries none: 200 queries where the probes are low-frequency (28x28 images and larger), 400 where
    they are Gaussian (8x8 digits, tables, or Gaussian probes asked for); an explicit budget wins. On 80
    non-members of a small MNIST CNN the automatic search is no looser than Gaussian probes at 400 queries (the
    default before low-frequency probes), at half their budget."""
    from mia_core.config import ExperimentConfig

    auto = ExperimentConfig()
    assert auto.label_only_queries is None
    assert [auto.label_only_budget("l2", s) for s in ((1, 28, 28), (3, 32, 32), (1, 8, 8), (30,), None)] == [
        200, 200, 400, 400, 400]
    assert auto.replace(label_only_probes="gaussian").label_only_budget("l2", (1, 28, 28)) == 400
    assert auto.replace(label_only_queries=321).label_only_budget("l2", (1, 28, 28)) == 321
    assert auto.label_only_budget("linf", (1, 28, 28)) == auto.label_only_linf_queries
    assert auto.eval_key() != auto.replace(label_only_queries=200).eval_key()  # automatic is its own setting

    model, split = trained_mnist_cnn
    ds = load_dataset("mnist5k")
    x = torch.from_numpy(ds.x[split.nonmembers[:80]])
    y = torch.from_numpy(ds.y[split.nonmembers[:80]])
    pool = torch.from_numpy(ds.x[split.reference[:500]])
    budget = auto.label_only_budget("l2", tuple(x.shape[1:]))
    now = label_only_distance(model, x, y, norm=2.0, max_queries=budget, start_pool=pool,
                              probe_distribution=auto.label_only_probes)
    before = label_only_distance(model, x, y, norm=2.0, max_queries=400, start_pool=pool, probe_distribution="gaussian")
    ok = before.norms > 0
    assert np.median(now.norms[ok]) <= 1.02 * np.median(before.norms[ok])
    assert now.queries.mean() <= 0.6 * before.queries.mean()


def test_large_images_are_searched_in_batches_their_probes_fit(monkeypatch):
    """A probe round holds [samples, probes, *shape]: 256 samples x 128 probes of a 224x224 RGB image would be
    19.7 GB (and a convolutional network's 2,048 queries a pass 1.2 GB of input). The batch and the queries a pass
    shrink with the input until they fit; inputs up to 32x32 RGB keep 256 and 2,048, so no stored number moves.
    The bounded search is the search run in those batches, and its points still flip the model at their norms."""
    assert probe_batch((3, 32, 32), 32, 256) == 256 and probe_batch((1, 28, 28), 32, 256) == 256
    assert probe_batch((3, 224, 224), 32, 256) == PROBE_ROUND_BYTES // (4 * 32 * 3 * 224 * 224 * 4) == 6
    assert probe_batch((3, 4096, 4096), 32, 256) == 1
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    assert _Oracle(conv, 1, "cpu", (3, 32, 32)).rows == 2048
    assert _Oracle(conv, 1, "cpu", (3, 224, 224)).rows == CONV_QUERY_BYTES // (3 * 224 * 224 * 4) == 111
    assert _Oracle(affine_model(), 1, "cpu", (3, 224, 224)).rows is None  # a dense model: a round a pass

    shape = (3, 96, 96)
    model = affine_model(d=math.prod(shape), k=4)
    gen = torch.Generator().manual_seed(3)
    x = 0.5 + 0.2 * (torch.rand(40, *shape, generator=gen) - 0.5)
    with torch.no_grad():
        y = model(x).argmax(1)
    # the same rule at a scale a test affords: room for 30 samples' probe rounds
    monkeypatch.setattr("mia_core.label_only.PROBE_ROUND_BYTES", 30 * 4 * 8 * math.prod(shape) * 4)
    bounded = probe_batch(shape, 8, 256)
    assert bounded == 30  # 40 samples: a batch of 30 and one of 10
    r = label_only_distance(model, x, y, norm=2.0, max_queries=80, probes=8)
    assert r.success.all()
    with torch.no_grad():
        assert (model(r.x_adv).argmax(1) != y).all()
    np.testing.assert_allclose(r.norms, (r.x_adv - x).double().flatten(1).norm(dim=1).numpy(), rtol=1e-12)
    assert (r.norms >= closed_form(model, x, 2.0) * (1 - 1e-6)).all()
    same = label_only_distance(model, x, y, norm=2.0, max_queries=80, probes=8, batch_size=bounded)
    np.testing.assert_array_equal(r.norms, same.norms)
    monkeypatch.setattr("mia_core.label_only.PROBE_ROUND_BYTES", 2**40)  # unbounded: one batch of 40, as before
    whole = label_only_distance(model, x, y, norm=2.0, max_queries=80, probes=8)
    assert not np.array_equal(r.norms, whole.norms)


@pytest.mark.parametrize("norm,linf_search", SEARCHES)
def test_a_search_in_another_box_keeps_no_points_when_asked_and_verifies_them_in_one_calls_groups(
        trained_mnist_cnn, monkeypatch, norm, linf_search):
    """In a user's box ([-1, 2] here) each search batch is mapped back and verified as it finishes, in the groups
    one verification of all samples would use (the verdict on a point at the boundary can depend on its pass),
    even where the search's batches are smaller (probe rounds bounded to 48 samples, groups of 64): the same bits
    as searching everything in the unit box and verifying it there at once. `keep_points=False` gives the same
    distances with no points (an evaluation reads only the distances); an eval-mode model stays in eval mode."""
    from mia_core.box import Box, UnitBoxView, back_in_box

    model, split = trained_mnist_cnn
    ds = load_dataset("mnist5k")
    box = Box.of((-1.0, 2.0))
    user_model = torch.nn.Sequential(_ToUnit(box), model).eval()
    x = box.from_unit(torch.from_numpy(ds.x[split.nonmembers[:150]]))
    y = torch.from_numpy(ds.y[split.nonmembers[:150]])
    pool = box.from_unit(torch.from_numpy(ds.x[split.nonmembers[200:260]]))
    monkeypatch.setattr("mia_core.label_only.PROBE_ROUND_BYTES", 48 * 4 * 32 * 4 * math.prod(ds.input_shape))
    kw = dict(norm=norm, max_queries=60, linf_search=linf_search, batch_size=64, seed=3)
    kept = label_only_distance(user_model, x, y, bounds=box, start_pool=pool, **kw)
    light = label_only_distance(user_model, x, y, bounds=box, start_pool=pool, keep_points=False, **kw)
    assert not user_model.training and kept.success.mean() > 0.9
    assert light.x_adv.shape == (0, *ds.input_shape)
    for name in ("norms", "success", "queries"):
        np.testing.assert_array_equal(getattr(light, name), getattr(kept, name))
    view = UnitBoxView(user_model, box).eval()  # the search in the unit box, then one verification of everything
    unit = label_only_distance(view, box.to_unit(x), y, start_pool=box.to_unit(pool), **kw)
    dist, success, x_adv, _ = back_in_box(user_model, x, unit.x_adv, y, torch.as_tensor(unit.norms == 0), box, norm, 64)
    np.testing.assert_array_equal(kept.norms, dist.numpy())
    np.testing.assert_array_equal(kept.success, success.numpy())
    np.testing.assert_array_equal(kept.x_adv.numpy(), x_adv.numpy())
    np.testing.assert_array_equal(kept.queries, unit.queries)
