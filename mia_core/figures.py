"""Plotly figure builders: pure functions of arrays, shared by the app, the CLI and the tests.

Members and non-members keep the same two colours everywhere (Okabe-Ito, colour-blind safe).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .metrics import RocCurve

MEMBER_COLOR = "#0072B2"  # blue
NONMEMBER_COLOR = "#E69F00"  # orange
REFERENCE_COLOR = "#999999"
ATTACK_COLORS = ["#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#0072B2", "#E69F00"]
LINE_DASHES = ["solid", "dash", "dot", "dashdot"]  # after the 8 colours, curves differ by dash too
DEFENSE_PALETTE = ["#000000", "#D55E00", "#CC79A7", "#009E73", "#56B4E9", "#E69F00", "#0072B2", "#F0E442",
                   "#882255", "#999933", "#44AA99", "#AA4499"]
NORM_UNITS = {"distance_l2": "L2 norm", "distance_linf": "L-inf norm"}
CLASS_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon", "pentagon", "bowtie"]


def defense_color(name: str) -> str:
    """One colour per defense on every chart (by its place in the defense registry; "none" is black)."""
    from .defenses import DEFENSES

    names = list(DEFENSES)
    i = names.index(name) if name in names else len(names) + abs(hash(name)) % 7
    return DEFENSE_PALETTE[i % len(DEFENSE_PALETTE)]

_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=55), legend=dict(orientation="h", y=-0.2))


def distance_histogram(
    members: np.ndarray,
    nonmembers: np.ndarray,
    *,
    norm_label: str = "L2 norm",
    log_x: bool = False,
    density: bool = False,
    bins: int = 40,
    title: str | None = None,
    box: tuple[float, float] | None = (0.0, 1.0),
) -> go.Figure:
    """Overlaid histograms of member and non-member distances on shared bins (`box`: the input box the distances
    are measured in, named on the axis; None for scores that are no distance). Infinite or zero values
    (no adversarial example found / already misclassified) are counted in the title, not drawn."""
    m = np.asarray(members, dtype=float)
    n = np.asarray(nonmembers, dtype=float)
    both = np.r_[m, n]
    ok = np.isfinite(both) & ((both > 0) if log_x else np.ones_like(both, bool))
    vals = both[ok]
    lo, hi = (vals.min(), vals.max()) if vals.size else (0.0, 1.0)
    if log_x:
        edges = np.logspace(np.log10(lo), np.log10(hi * 1.0001), bins + 1)
    else:
        edges = np.linspace(lo, hi * 1.0001 if hi > 0 else 1.0, bins + 1)
    fig = go.Figure()
    for name, arr, color in (("members", m, MEMBER_COLOR), ("non-members", n, NONMEMBER_COLOR)):
        counts, _ = np.histogram(arr[np.isfinite(arr)], bins=edges)
        y = counts / max(len(arr), 1) / np.diff(edges) if density else counts
        fig.add_bar(x=(edges[:-1] + edges[1:]) / 2 if not log_x else np.sqrt(edges[:-1] * edges[1:]),
                    y=y, width=np.diff(edges), name=f"{name} (n={len(arr)})", marker_color=color, opacity=0.6)
    dropped = int(np.sum(~np.isfinite(both))) + (int(np.sum(both == 0)) if log_x else 0)
    note = f" — {dropped} not drawn (0 or no adversarial found)" if dropped else ""
    fig.update_layout(
        barmode="overlay", title=(title or "Distance to the decision boundary") + note,
        xaxis_title=(f"minimal perturbation ({norm_label}, inputs in [{box[0]:g}, {box[1]:g}])" if box is not None
                     else norm_label),
        yaxis_title="density (per unit distance)" if density else "samples", **_LAYOUT,
    )
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def roc_figure(curves: dict[str, RocCurve], *, aucs: dict[str, float] | None = None, log: bool = False,
               bands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
               title: str | None = None) -> go.Figure:
    """ROC curves of several attacks, with the chance diagonal; log=True gives log-log axes from 1e-3.
    `bands` maps an attack to (fpr grid, lower tpr, upper tpr) drawn as a shaded interval. Past eight curves
    the colours repeat with another dash, so every curve stays distinguishable."""
    fig = go.Figure()
    floor = 1e-3 if log else 0.0
    grid = np.logspace(-3, 0, 50) if log else np.linspace(0, 1, 50)
    fig.add_scatter(x=grid, y=grid, mode="lines", name="chance", line=dict(color="#bbbbbb", dash="dash"))
    for i, (name, roc) in enumerate(curves.items()):
        color = ATTACK_COLORS[i % len(ATTACK_COLORS)]
        if bands and name in bands:
            fx, lo, hi = bands[name]
            fig.add_scatter(x=np.r_[fx, fx[::-1]], y=np.r_[hi, lo[::-1]], fill="toself", mode="lines",
                            line=dict(width=0), fillcolor=color, opacity=0.15, showlegend=False, hoverinfo="skip")
        label = f"{name} (AUC {aucs[name]:.3f})" if aucs and name in aucs else name
        fig.add_scatter(x=np.maximum(roc.fpr, floor), y=np.maximum(roc.tpr, floor), mode="lines", name=label,
                        line=dict(color=color, width=2, dash=LINE_DASHES[(i // len(ATTACK_COLORS)) % len(LINE_DASHES)]))
    fig.update_layout(title=title or "ROC: members caught (TPR) against non-members accused (FPR)",
                      xaxis_title="false positive rate", yaxis_title="true positive rate", **_LAYOUT)
    if log:
        fig.update_xaxes(type="log", range=[-3, 0])
        fig.update_yaxes(type="log", range=[-3, 0])
    else:
        fig.update_xaxes(range=[0, 1])
        fig.update_yaxes(range=[0, 1])
    return fig


def tradeoff_figure(acc: np.ndarray, leak: np.ndarray, labels: list[str], front: np.ndarray, *,
                    leak_name: str = "best attack AUC", groups: list[str] | None = None) -> go.Figure:
    """Test accuracy against leakage, one point per run (coloured by defense, see defense_color), with the
    Pareto front (high accuracy, low leakage) drawn as a line where it has two points or more."""
    fig = go.Figure()
    groups = groups or ["runs"] * len(acc)
    for g in dict.fromkeys(groups):
        sel = np.array([x == g for x in groups])
        fig.add_scatter(x=leak[sel], y=acc[sel], mode="markers", name=g, text=np.array(labels)[sel],
                        marker=dict(size=10, color=defense_color(g)),
                        hovertemplate="%{text}<br>leakage %{x:.3f}<br>test acc %{y:.3f}<extra></extra>")
    order = front[np.argsort(leak[front])]
    if len(order) >= 2:
        fig.add_scatter(x=leak[order], y=acc[order], mode="lines", name="Pareto front",
                        line=dict(color="#777777", dash="dot"))
    fig.update_layout(title="Accuracy against leakage (up and to the left is better)", xaxis_title=leak_name,
                      yaxis_title="test accuracy", **_LAYOUT)
    return fig


def boundary_figure(xx: np.ndarray, yy: np.ndarray, prob: np.ndarray, points: np.ndarray, member: np.ndarray,
                    distance: np.ndarray, labels: np.ndarray | None = None) -> go.Figure:
    """A 2-D classifier: the predicted class as a pale map, the decision boundary, and the members and
    non-members (outlined so they stand out on every class region; one marker shape per true class) sized by
    their distance to the boundary."""
    fig = go.Figure()
    k = prob.shape[-1]
    pastel = ["#CFE3F2", "#FBE3B5", "#CDEBDF", "#F6D2C0", "#EBD3E2", "#D6ECF8", "#FAF6C8", "#DDDDDD"]
    scale = [[i / max(k - 1, 1), pastel[i % len(pastel)]] for i in range(k)]
    fig.add_heatmap(x=xx, y=yy, z=prob.argmax(-1), colorscale=scale, zmin=0, zmax=k - 1, showscale=False,
                    hoverinfo="skip", name="predicted class")
    fig.add_contour(x=xx, y=yy, z=prob.argmax(-1), showscale=False, contours=dict(coloring="none"),
                    line=dict(color="black", width=2), hoverinfo="skip", name="decision boundary")
    d = np.where(np.isfinite(distance), distance, 0.0)
    size = 5 + 25 * d / max(float(d.max()), 1e-9)
    labels = np.zeros(len(points), int) if labels is None else np.asarray(labels)
    for is_m, name, color in ((True, "members", MEMBER_COLOR), (False, "non-members", NONMEMBER_COLOR)):
        sel = member == is_m
        fig.add_scatter(x=points[sel, 0], y=points[sel, 1], mode="markers", name=name, showlegend=False,
                        marker=dict(color=color, size=size[sel], opacity=0.95, line=dict(width=1.5, color="#222222"),
                                    symbol=[CLASS_SYMBOLS[c % len(CLASS_SYMBOLS)] for c in labels[sel]]),
                        text=[f"{name[:-1]}, class {c}, distance {v:.3f}" for c, v in zip(labels[sel], distance[sel])],
                        hoverinfo="text")
        fig.add_scatter(x=[None], y=[None], mode="markers", name=name,  # the legend: colour only
                        marker=dict(color=color, size=10, line=dict(width=1.5, color="#222222")))
    for c in np.unique(labels):  # and one entry per class shape
        fig.add_scatter(x=[None], y=[None], mode="markers", name=f"class {c}",
                        marker=dict(color="#ffffff", size=10, symbol=CLASS_SYMBOLS[c % len(CLASS_SYMBOLS)],
                                    line=dict(width=1.5, color="#222222")))
    fig.update_layout(title="Decision boundary; marker size = distance, shape = true class", xaxis_title="feature 1",
                      yaxis_title="feature 2", **_LAYOUT)
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


def strength_figure(table, *, x: str, y: str, group: str, error: str | None = None, y_title: str = "",
                    strength_labels: dict[str, str] | None = None) -> go.Figure:
    """One panel per defense, each over its own strength axis (named by `strength_labels`), with error bars
    (e.g. the spread over seeds); the undefended runs ("none") are a dashed reference line in every panel."""
    from plotly.subplots import make_subplots

    labels = strength_labels or {}
    base = table[table[group] == "none"]
    defended = [g for g in dict.fromkeys(table[group]) if g != "none"] or ["none"]
    fig = make_subplots(rows=1, cols=len(defended), shared_yaxes=True, horizontal_spacing=0.04)
    for col, g in enumerate(defended, 1):
        sub = table[table[group] == g].sort_values(x)
        fig.add_scatter(x=sub[x], y=sub[y], mode="lines+markers", name=str(g), row=1, col=col,
                        error_y=dict(type="data", array=sub[error]) if error else None,
                        line=dict(color=defense_color(g)), marker=dict(color=defense_color(g)))
        if len(base) and g != "none":
            fig.add_hline(y=float(base[y].mean()), line=dict(color=defense_color("none"), dash="dash", width=1),
                          row=1, col=col)
        fig.update_xaxes(title_text=f"{g}: {labels.get(g, 'strength')}", row=1, col=col)
    if len(base):  # one legend entry for the reference line
        fig.add_scatter(x=[None], y=[None], mode="lines", name="none (no defense)",
                        line=dict(color=defense_color("none"), dash="dash", width=1))
    fig.update_yaxes(title_text=y_title or y, row=1, col=1)
    fig.update_layout(**_LAYOUT)
    return fig


def schematic_figure(seed: int = 0) -> go.Figure:
    """The idea in one picture: a curved decision boundary, members far from it, non-members close,
    each with a dotted segment to its nearest boundary point (illustrative points, no model)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 200)
    boundary = 0.5 + 0.12 * np.sin(2 * np.pi * t)
    fig = go.Figure()
    fig.add_scatter(x=t, y=boundary, mode="lines", name="decision boundary", line=dict(color="black", width=3))
    for name, color, gap in (("members", MEMBER_COLOR, (0.12, 0.3)), ("non-members", NONMEMBER_COLOR, (0.01, 0.12))):
        xs = rng.uniform(0.05, 0.95, 12)
        side = rng.choice([-1, 1], 12)
        ys = 0.5 + 0.12 * np.sin(2 * np.pi * xs) + side * rng.uniform(*gap, 12)
        for x0, y0 in zip(xs, ys):
            by = 0.5 + 0.12 * np.sin(2 * np.pi * x0)
            fig.add_scatter(x=[x0, x0], y=[y0, by], mode="lines", line=dict(color=color, dash="dot", width=1),
                            showlegend=False, hoverinfo="skip")
        fig.add_scatter(x=xs, y=ys, mode="markers", name=name, marker=dict(color=color, size=11))
    fig.update_layout(title=dict(text="Members sit farther from the boundary", y=0.97, yanchor="top"),
                      xaxis_visible=False, yaxis_visible=False, height=340,
                      **{**_LAYOUT, "margin": dict(l=10, r=10, t=60, b=40)})
    return fig


def scatter_figure(x: np.ndarray, y: np.ndarray, member: np.ndarray, *, x_title: str, y_title: str,
                   title: str, diagonal: bool = True) -> go.Figure:
    """Two per-sample quantities against each other, members and non-members coloured, with y = x."""
    fig = go.Figure()
    ok = np.isfinite(x) & np.isfinite(y)
    for is_m, name, color in ((True, "members", MEMBER_COLOR), (False, "non-members", NONMEMBER_COLOR)):
        sel = ok & (member == is_m)
        fig.add_scatter(x=x[sel], y=y[sel], mode="markers", name=name, marker=dict(color=color, size=6, opacity=0.7))
    if diagonal and ok.any():
        hi = float(max(x[ok].max(), y[ok].max()))
        fig.add_scatter(x=[0, hi], y=[0, hi], mode="lines", name="y = x", line=dict(color="#777", dash="dash"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, **_LAYOUT)
    return fig


def slice_figure(rows, *, title: str) -> go.Figure:
    """An attack's AUC per slice with its bootstrap interval; 0.5 (no leak) dashed. `rows`: SliceMetrics."""
    names = [f"{r.slice} (n={r.members}+{r.nonmembers})" for r in rows]
    aucs = np.array([r.auc for r in rows], float)
    lo = np.array([r.auc_ci[0] for r in rows], float)
    hi = np.array([r.auc_ci[1] for r in rows], float)
    fig = go.Figure()
    fig.add_bar(x=names, y=aucs, marker_color=MEMBER_COLOR, name="AUC",
                error_y=dict(type="data", symmetric=False, array=hi - aucs, arrayminus=aucs - lo),
                hovertemplate="%{x}<br>AUC %{y:.3f}<extra></extra>")
    fig.add_hline(y=0.5, line=dict(color="#777777", dash="dash"), annotation_text="no leak")
    fig.update_layout(title=title, yaxis_title="AUC (95% bootstrap interval)", yaxis_range=[0, 1], **_LAYOUT)
    return fig


def feature_change_figure(changes, *, title: str) -> go.Figure:
    """Horizontal bars: how far each feature had to move (share of its range) to reach the boundary."""
    frame = changes.iloc[::-1]
    share = frame["change (share of range)"].to_numpy()
    fig = go.Figure(go.Bar(x=share, y=frame["feature"], orientation="h",
                           marker_color=np.where(share > 0, MEMBER_COLOR, NONMEMBER_COLOR),
                           hovertemplate="%{y}: %{x:+.3f} of its range<extra></extra>"))
    fig.update_layout(title=title, height=max(220, 26 * len(frame) + 90), margin=dict(l=10, r=10, t=50, b=40),
                      xaxis_title="change, as a share of the feature's range (blue up, orange down)")
    return fig
