"""Figure builders on their data: traces, axes, values."""

import numpy as np
import pandas as pd

from mia_core import figures
from mia_core.metrics import pareto_front, roc_points


def test_distance_histogram_counts_and_colours():
    m = np.array([0.1, 0.2, 0.2, 0.9, np.inf])
    n = np.array([0.05, 0.1, 0.3])
    fig = figures.distance_histogram(m, n, bins=4)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [b.marker.color for b in bars] == [figures.MEMBER_COLOR, figures.NONMEMBER_COLOR]
    assert sum(bars[0].y) == 4 and sum(bars[1].y) == 3  # the infinite distance is not drawn...
    assert "1 not drawn" in fig.layout.title.text  # ...and is said so
    assert "L2 norm" in fig.layout.xaxis.title.text and fig.layout.yaxis.title.text == "samples"
    dens = figures.distance_histogram(m, n, bins=4, density=True, log_x=True)
    b = dens.data[1]
    assert np.isclose(np.sum(np.array(b.y) * np.array(b.width)), 1.0)  # a density integrates to one
    assert dens.layout.xaxis.type == "log"


def test_roc_figure_traces_and_log_axes():
    r = np.random.default_rng(0)
    roc = roc_points(r.normal(1, 1, 100), r.normal(0, 1, 100))
    fig = figures.roc_figure({"loss": roc}, aucs={"loss": 0.75}, log=True)
    names = [t.name for t in fig.data]
    assert names == ["chance", "loss (AUC 0.750)"]
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert min(fig.data[1].x) >= 1e-3  # zero FPR is drawn at the axis floor, not dropped
    lin = figures.roc_figure({"loss": roc}, bands={"loss": (np.linspace(0, 1, 5), np.zeros(5), np.ones(5))})
    assert len(lin.data) == 3 and lin.layout.xaxis.range == (0, 1)


def test_tradeoff_figure_draws_the_pareto_front():
    acc = np.array([0.9, 0.8, 0.95, 0.7])
    leak = np.array([0.6, 0.55, 0.7, 0.65])
    front = pareto_front(acc, leak)
    assert sorted(front.tolist()) == [0, 1, 2]  # run 3 is beaten by run 1 on both counts
    fig = figures.tradeoff_figure(acc, leak, ["a", "b", "c", "d"], front, groups=["x", "x", "y", "y"])
    line = [t for t in fig.data if t.name == "Pareto front"][0]
    assert list(line.x) == sorted(leak[front].tolist())
    assert {t.name for t in fig.data} == {"x", "y", "Pareto front"}


def test_boundary_and_scatter_and_strength_figures():
    xs = np.linspace(0, 1, 5)
    prob = np.zeros((5, 5, 2))
    prob[..., 0] = 1
    prob[:, 3:, 0], prob[:, 3:, 1] = 0, 1
    pts = np.array([[0.1, 0.1], [0.9, 0.9]])
    fig = figures.boundary_figure(xs, xs, prob, pts, np.array([True, False]), np.array([0.2, np.inf]),
                                  labels=np.array([0, 1]))
    assert [t.type for t in fig.data[:2]] == ["heatmap", "contour"]
    drawn = [t for t in fig.data[2:] if t.x[0] is not None]  # the points; the rest are legend entries
    assert [t.name for t in drawn] == ["members", "non-members"]
    assert drawn[0].marker.color == figures.MEMBER_COLOR and list(drawn[0].x) == [0.1]
    assert list(drawn[0].marker.symbol) == ["circle"] and list(drawn[1].marker.symbol) == ["square"]
    legend = [t.name for t in fig.data if t.showlegend is not False and t.type == "scatter"]
    assert legend == ["members", "non-members", "class 0", "class 1"]
    sc = figures.scatter_figure(np.array([1.0, 2.0]), np.array([1.5, np.inf]), np.array([True, False]),
                                x_title="white-box", y_title="label-only", title="t")
    assert len(sc.data[0].x) == 1 and len(sc.data[1].x) == 0  # the infinite point is left out
    table = pd.DataFrame({"defense": ["a", "a", "b"], "strength": [1, 0, 1], "leak": [0.6, 0.7, 0.5],
                          "sd": [0.01, 0.02, 0.0]})
    st = figures.strength_figure(table, x="strength", y="leak", group="defense", error="sd")
    assert list(st.data[0].x) == [0, 1] and list(st.data[0].y) == [0.7, 0.6]  # sorted by strength
