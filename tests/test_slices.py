"""Slices: an attack's AUC per class, per correct / wrong prediction and per distance decile."""

import numpy as np
import pytest

from mia_core import figures
from mia_core.records import GroupScores, ScoreTable
from mia_core.slices import MIN_PER_SIDE, slice_metrics


def _table(rng, n=200):
    """Class 0: members score far above non-members; class 1: the same distribution (no leak)."""
    def group(n, member):
        label = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
        loss = np.where(label == 0, rng.normal(3.0 if member else 0.0, 0.3, n), rng.normal(0, 1, n))
        pred = label.copy()
        pred[: n // 10] = 1 - pred[: n // 10]  # a few wrong
        return GroupScores(np.arange(n), label, pred, {"loss": loss, "distance_l2": rng.uniform(0.01, 1, n)})
    return ScoreTable({"members": group(n, True), "nonmembers": group(n, False), "reference": group(50, False)})


def test_slices_find_the_class_that_leaks():
    table = _table(np.random.default_rng(0), n=2000)
    rows = {r.slice: r for r in slice_metrics(table, "loss", "class", bootstrap_rounds=50)}
    assert set(rows) == {"0", "1"}
    assert rows["0"].auc > 0.99 and rows["0"].auc_ci[0] > 0.95
    assert abs(rows["1"].auc - 0.5) < 0.05 and rows["1"].auc_ci[1] - rows["1"].auc_ci[0] < 0.1  # no leak, narrow
    assert rows["0"].members + rows["1"].members == 2000


def test_correct_and_decile_slices_cover_every_sample():
    table = _table(np.random.default_rng(1))
    correct = slice_metrics(table, "loss", "correctly classified", bootstrap_rounds=0)
    assert [r.slice for r in correct] == ["wrong", "correct"]
    assert sum(r.members for r in correct) == 200 and correct[0].members == 20
    deciles = slice_metrics(table, "loss", "distance decile", bootstrap_rounds=0)
    assert [r.slice for r in deciles] == [f"D{k}" for k in range(1, 11)]
    assert sum(r.members + r.nonmembers for r in deciles) == 400
    assert all(35 <= r.members + r.nonmembers <= 45 for r in deciles)


def test_small_slices_are_left_undefined_and_unknown_slicings_refused():
    table = _table(np.random.default_rng(2))
    gs = table["members"]
    gs.label[:3] = 7  # a class with three members only
    rows = {r.slice: r for r in slice_metrics(table, "loss", "class", bootstrap_rounds=0)}
    assert rows["7"].members == 3 < MIN_PER_SIDE and np.isnan(rows["7"].auc)
    with pytest.raises(ValueError, match="Choose one of"):
        slice_metrics(table, "loss", "by mood")
    fig = figures.slice_figure(list(rows.values()), title="t")
    assert list(fig.data[0].x) == [f"{r.slice} (n={r.members}+{r.nonmembers})" for r in rows.values()]
