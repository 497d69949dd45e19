"""View models: the tables and labels the app's pages (and the CLI) show, built from typed records as pure
functions, so they are tested without Streamlit and no algorithm lives in a page."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from . import metrics as mt
from .attacks import ATTACKS
from .config import AUDIT_MODEL, ExperimentConfig
from .defenses import DEFENSES
from .jobs import Job, Status
from .records import RunRecord, ScoreTable

Metric = Callable[[mt.AttackMetrics], float]
AUC: Metric = lambda m: m.auc  # noqa: E731


def tpr_at(level: float) -> Metric:
    return lambda m: m.tpr_at_fpr[level]


METRIC_HELP = {
    "AUC": "Area under the ROC curve: the chance that a random member scores above a random non-member (0.5 = no leak).",
    "TPR@0.1%": "Share of members caught when at most 0.1% of non-members are wrongly accused.",
    "TPR@1%": "Share of members caught when at most 1% of non-members are wrongly accused.",
    "TPR@10%": "Share of members caught when at most 10% of non-members are wrongly accused.",
    "advantage": "max over thresholds of TPR - FPR (Yeom et al.'s membership advantage).",
    "oracle accuracy": "ORACLE upper bound: accuracy at the best threshold picked with the true membership; "
                       "no real attacker can pick it.",
    "test accuracy": "Accuracy on the held-out non-members.",
    "train accuracy": "Accuracy on the members (training set).",
}


def fpr_label(level: float) -> str:
    """0.001 -> 'TPR@0.1%'."""
    return f"TPR@{level * 100:g}%"


def attack_title(name: str) -> str:
    """The readable name of a registered attack (its id where it is not registered)."""
    return ATTACKS.get(name).title if name in ATTACKS else name


def describe(config: ExperimentConfig) -> str:
    """A run's label: the base setting and whatever makes it differ from a plain trained run."""
    c = config
    if c.model.startswith(AUDIT_MODEL):  # a user's own model: no width, no training here
        parts = [c.dataset, c.model, f"{c.members} members", f"seed {c.seed}", f"search {c.distance_method}"]
        return " · ".join(parts)
    parts = [c.dataset, f"{c.model} (width {c.width})", f"{c.members} members"]
    if c.checkpoint:
        parts.append(f"checkpoint {c.checkpoint.rsplit('/', 1)[-1]}")
    else:
        parts.append(f"{c.epochs} epochs")
        if c.defense != "none":
            spec = DEFENSES.get(c.defense)
            parts.append(f"{c.defense} ({spec.strength_label} {c.defense_strength:g})")
    parts.append(f"seed {c.seed}")
    parts.append(f"search {c.distance_method}")
    if c.output_mask != "none":
        parts.append(f"API returns {c.output_mask}")
    return " · ".join(parts)


def audit_note(record: RunRecord) -> str | None:
    """What an audit of the user's own model was: model, data, input box, reference pool, retraining."""
    a = record.audit
    if a is None:
        return None
    parts = [f"Your model: {a.model}", f"data: {a.data}",
             f"distances are measured in your model's input box [{a.bounds[0]:g}, {a.bounds[1]:g}]",
             f"reference pool: {a.reference}",
             f"reference models: {a.retraining}" if a.retraining else
             "no reference models (no factory given: LiRA and RMIA are unavailable)"]
    if a.outputs == "probabilities":
        parts.append("your model outputs probabilities (a softmax at its end): " + (
            "the logits before that softmax are read (its graph shows them), so losses and confidences are its "
            "own, without the rounding of p" if a.logits_before_activation else
            "their logarithm is read as its logits, so losses and confidences are its own"))
    elif a.outputs == "one logit":
        parts.append("your model has one output, the logit z of class 1: it is read as the two logits [0, z], "
                     "whose softmax is its sigmoid, so losses and confidences are its own")
    elif a.outputs == "one probability":
        parts.append("your model has one output, the probability p of class 1 (a sigmoid at its end): " + (
            "the logit z before that sigmoid is read as the two logits [0, z] (its graph shows it), so losses "
            "and confidences are its own, without the rounding of p to 1" if a.logits_before_activation else
            "[log(1 - p), log p] is read as its logits, so losses and confidences are its own"))
    if a.onnx_max_difference is not None:
        parts.append(f"ONNX converted and checked against ONNX Runtime (largest difference "
                     f"{a.onnx_max_difference:.1e})")
    return "; ".join(parts) + "."


def best_attack(record: RunRecord, metric: Metric = AUC) -> str:
    """The attack with the highest `metric` on this evaluation (an ORACLE choice: it uses the evaluation's
    membership); attacks undefined here are skipped."""
    defined = [a for a, m in record.attacks.items() if not math.isnan(metric(m))]
    return max(defined, key=lambda a: metric(record.attacks[a]))


@dataclass(frozen=True)
class Headline:
    test_accuracy: float
    train_accuracy: float
    best_attack: str
    auc: float
    tpr_at_1pct_fpr: float


def headline(record: RunRecord) -> Headline:
    """Test accuracy, and the attack with the highest AUC with its TPR at 1% FPR."""
    best = best_attack(record)
    m = record.attacks[best]
    return Headline(record.test_accuracy, record.train_accuracy, best, m.auc, m.tpr_at_fpr[0.01])


def scored_attacks(record: RunRecord) -> list[str]:
    """The attacks a page can show scores of: every one, less those still being computed (first results)."""
    return [a for a in record.attacks if a not in record.pending]


def first_results_note(record: RunRecord) -> str:
    """What a page showing a run's first results says: what is shown and what is still being computed."""
    pending = ", ".join(dict.fromkeys(attack_title(a).split(" (")[0].split(",")[0] for a in record.pending))
    shown = "softmax signals" if "distance_l2" in record.pending else "boundary distances and softmax signals"
    return (f"First results: the {shown} of members and non-members. Still being computed: {pending}, and the "
            "reference pool's scores (calibrated thresholds). This page fills in as they are done (progress in "
            "the sidebar).")


def metrics_table(record: RunRecord) -> pd.DataFrame:
    """One row per attack: AUC with its interval, TPR at each FPR level, advantage and oracle accuracy."""
    rows = []
    for a, m in record.attacks.items():
        row = {"attack": attack_title(a), "id": a, "AUC": m.auc,
               "AUC 95% CI": f"[{m.auc_ci[0]:.3f}, {m.auc_ci[1]:.3f}]" if not math.isnan(m.auc_ci[0]) else "-"}
        row.update({fpr_label(f): m.tpr_at_fpr[f] for f in mt.FPR_LEVELS})
        row.update({"advantage": m.max_advantage, "oracle accuracy": m.oracle_accuracy,
                    "ε lower bound": record.epsilon_bounds.get(a, float("nan"))})
        rows.append(row)
    return pd.DataFrame(rows)


def table_height(rows: int, *, row_px: int = 35) -> int:
    """Pixel height at which Streamlit shows a table of `rows` rows whole, header included (no inner scroll)."""
    return row_px * (rows + 1) + 3


def vulnerability_table(table: ScoreTable) -> pd.DataFrame:
    """Members and non-members ranked by merged exposure (mia_core.metrics.vulnerability), from the attacks
    that have reference scores (LiRA's points must be in its shadows' pool; I_V may be undefined)."""
    usable = [a for a in table.attacks() if table.reference_scores(a) is not None]
    ref = {a: table.reference_scores(a) for a in usable}
    frames = []
    for g in ("members", "nonmembers"):
        gs = table[g]
        exposure = mt.vulnerability({a: gs.scores[a] for a in usable}, ref)
        frames.append(pd.DataFrame({"dataset index": gs.index, "group": g, "label": gs.label,
                                    "exposure (FPR)": exposure, "distance_l2": gs.scores["distance_l2"],
                                    "loss": -gs.scores["loss"]}))
    return pd.concat(frames).sort_values("exposure (FPR)", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class ThresholdRow:
    rule: str
    threshold: float
    tpr: float
    fpr: float
    precision: float


def threshold_rows(table: ScoreTable, attack: str, threshold: float, target_fpr: float,
                   prevalence: float) -> list[ThresholdRow]:
    """The user's threshold, the one calibrated on reference non-members at `target_fpr` (only for attacks
    that have reference scores), and the ORACLE one, each with its real TPR / FPR and the precision at a
    member prevalence."""
    m, n = table.member_nonmember(attack)
    rows = []

    def row(rule: str, thr: float) -> ThresholdRow:
        tpr, fpr = mt.rates_at_threshold(m, n, thr)
        return ThresholdRow(rule, thr, tpr, fpr, mt.precision_at_prevalence(tpr, fpr, prevalence))

    rows.append(row("yours", threshold))
    ref = table.reference_scores(attack)
    if ref is not None:
        rows.append(row(f"calibrated on {len(ref)} reference samples ({target_fpr:g})",
                        mt.threshold_at_fpr(ref, target_fpr)))
    rows.append(row("ORACLE (not achievable)", mt.oracle_threshold(m, n)))
    return rows


def distance_stats(members: np.ndarray, nonmembers: np.ndarray) -> pd.DataFrame:
    """Summary statistics of two groups' distances (misclassified samples count as 0, failures as none)."""
    def stats(v: np.ndarray) -> dict:
        fin = v[np.isfinite(v)]
        return {"n": len(v), "mean": float(np.mean(fin)) if len(fin) else float("nan"), "median": np.median(v),
                "10th pct": np.quantile(v, 0.1), "90th pct": np.quantile(v, 0.9),
                "zero (misclassified)": int(np.sum(v == 0)), "none found": int(np.sum(~np.isfinite(v)))}
    return pd.DataFrame({"members": stats(members), "non-members": stats(nonmembers)}).T


def runs_frame(runs: Sequence, leak: Metric = AUC, attack: str | None = None) -> pd.DataFrame:
    """One row per stored run (objects with `.record` and `.run_id`): its settings, accuracy and leakage by
    `attack` (the best one by `leak` when None)."""
    rows = []
    for r in runs:
        rec: RunRecord = r.record
        c = rec.config
        a = attack or best_attack(rec, leak)
        rows.append({
            "run": r.run_id, "finished": rec.environment.finished_at, "dataset": c.dataset, "model": c.model,
            "width": c.width, "members": rec.n_members, "epochs": c.epochs, "seed": c.seed,
            "defense": c.defense, "strength": c.defense_strength, "search": c.distance_method,
            "checkpoint": bool(c.checkpoint), "test accuracy": rec.test_accuracy,
            "leakage": leak(rec.attacks[a]) if a in rec.attacks else float("nan"),
            "robust accuracy": np.nan if rec.defense.robust_accuracy is None else rec.defense.robust_accuracy,
            "label": run_label(rec),
        })
    return pd.DataFrame(rows)


def defense_families(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs grouped by what defenses are compared over (dataset, model, members), largest first; checkpoint
    runs are not trained configurations and never join a family."""
    trained = frame[~frame["checkpoint"]] if len(frame) else frame
    return (trained.groupby(["dataset", "model", "members"]).size().rename("runs")
            .sort_values(ascending=False).reset_index())


def aggregate_over_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds per (defense, strength); one evaluation per (defense, strength, seed) counts."""
    one = frame.drop_duplicates(["defense", "strength", "seed"])
    return (one.groupby(["defense", "strength"])
            .agg(leakage=("leakage", "mean"), leakage_sd=("leakage", "std"), accuracy=("test accuracy", "mean"),
                 accuracy_sd=("test accuracy", "std"), robust=("robust accuracy", "mean"), seeds=("seed", "nunique"))
            .reset_index().fillna({"leakage_sd": 0.0, "accuracy_sd": 0.0}))


EXPLORER_GROUPS = {
    "members farthest from the boundary (most exposed)": ("members", "farthest"),
    "members nearest the boundary (least exposed)": ("members", "nearest"),
    "non-members farthest (most likely to be wrongly accused)": ("nonmembers", "farthest"),
    "non-members nearest": ("nonmembers", "nearest"),
}


def extreme_samples(distances: np.ndarray, which: str, count: int) -> np.ndarray:
    """Positions of the `count` samples farthest from (or nearest to) the boundary, among those with a found,
    non-zero distance (misclassified samples and failures are left out)."""
    ok = np.flatnonzero(np.isfinite(distances) & (distances > 0))
    sign = -1 if which == "farthest" else 1
    return ok[np.argsort(sign * distances[ok], kind="stable")[:count]]


def label_only_agreement(white_box: np.ndarray, label_only: np.ndarray) -> float:
    """Share of samples (white-box distance > 0) whose label-only distance is at least the white-box one."""
    pos = white_box > 0
    return float(np.mean(label_only[pos] >= white_box[pos] * (1 - 1e-6)))


def run_label(record: RunRecord, name: str | None = None) -> str:
    """A stored run's label: its name if it has one, its settings, and DP-SGD's epsilon where it applies."""
    label = describe(record.config)
    if record.defense.epsilon is not None:
        label += f" · ε = {record.defense.epsilon:.2f} (δ = {record.defense.delta:g})"
    return f"{name} — {label}" if name else label


def unresolvable_levels(n_nonmembers: int) -> list[float]:
    """FPR levels that `n_nonmembers` cannot resolve: below one non-member (TPR at 0.1% FPR needs >= 1,000)."""
    return [f for f in mt.FPR_LEVELS if n_nonmembers * f < 1]


def resolution_note(n_nonmembers: int) -> str | None:
    """What to tell a user whose evaluation is too small for some FPR levels."""
    levels = unresolvable_levels(n_nonmembers)
    if not levels:
        return None
    need = ", ".join(f"{fpr_label(f)} needs at least {math.ceil(1 / f):,}" for f in levels)
    return (f"With {n_nonmembers:,} non-members, an FPR below {1 / n_nonmembers:.2%} means zero false accusations, "
            f"so {need} non-members: those columns read as TPR at 0 FPR here.")


SETTINGS = ("dataset", "model", "width", "members", "epochs", "defense", "defense_strength", "seed",
            "distance_method", "output_mask", "checkpoint", "label_only_queries", "lira_shadows", "weight_decay")


def _setting(config: ExperimentConfig, name: str):
    value = getattr(config, name)
    return "automatic" if value is None and name == "label_only_queries" else value


def compare_runs(records: Sequence[RunRecord], names: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Several runs side by side: one column per run, rows for the settings and the headline numbers, and the
    names of the setting rows whose values differ between the runs (for highlighting)."""
    rows: dict[str, list] = {s: [_setting(r.config, s) for r in records] for s in SETTINGS}
    rows["DP epsilon"] = [r.defense.epsilon for r in records]
    differing = [k for k, v in rows.items() if len({str(x) for x in v}) > 1]
    rows["test accuracy"] = [r.test_accuracy for r in records]
    rows["train accuracy"] = [r.train_accuracy for r in records]
    for a in ("distance_l2", "loss", "lira_online_fixed"):
        rows[f"{attack_title(a)} AUC"] = [r.attacks[a].auc if a in r.attacks else float("nan") for r in records]
    rows["best AUC (on the evaluation)"] = [r.attacks[best_attack(r)].auc for r in records]
    frame = pd.DataFrame(rows, index=list(names)).T.astype(object)
    return frame, differing


@dataclass(frozen=True)
class Estimate:
    seconds: float | None
    basis: str  # what it was measured from


def estimate_seconds(config: ExperimentConfig, past: Sequence[RunRecord]) -> Estimate:
    """How long `config` will take, scaled from the most similar stored run (same dataset and model; same
    search preferred): training by members x epochs, the searches by samples searched, the label-only search by
    samples x queries, shadow models by their count x epochs. Stages already in the store cost nothing then."""
    same = [r for r in past if r.config.dataset == config.dataset and r.config.model == config.model
            and not r.config.checkpoint and math.isfinite(r.timings.evaluation_seconds)]
    if not same:
        return Estimate(None, f"no stored {config.dataset} / {config.model} run to measure from yet")
    stages = lambda r: r.timings.shadow_seconds + r.timings.label_only_seconds  # noqa: E731
    longest: dict[str, float] = {}  # per defense: DP-SGD's reference models cost more than a plain run's
    for r in same:
        longest[r.config.defense] = max(longest.get(r.config.defense, 0.0), stages(r))
    ref = min(same, key=lambda r: (  # prefer a run that computed its stages over one that reused them
        stages(r) < 0.5 * longest[r.config.defense],
        r.config.defense != config.defense,  # DP-SGD or adversarial training cost far more per epoch
        r.config.distance_method != config.distance_method,
                                   abs(math.log(r.config.members / config.members)),
                                   abs(math.log(r.config.width / config.width))))
    c, t = ref.config, ref.timings
    searched = lambda cfg, n: 2 * n + min(cfg.reference_searched or cfg.reference_scored,  # noqa: E731
                                          cfg.reference_scored)  # samples the per-sample searches score
    n_ref = searched(c, ref.n_members)
    n_new = searched(config, config.members)
    train = t.train_seconds * (config.members * config.epochs) / (c.members * c.epochs)
    search = t.distance_seconds * n_new / n_ref
    shape = dataset_input_shape(config.dataset, config.data_dir)  # both runs' data: an automatic budget needs it
    budget = lambda cfg: cfg.label_only_budget("l2", shape) + cfg.label_only_budget("linf", shape)  # noqa: E731
    label_only = t.label_only_seconds * (n_new * budget(config)) / (n_ref * budget(c))
    shadows = t.shadow_seconds * (config.lira_shadows * config.members * config.epochs) / (
        c.lira_shadows * c.members * c.epochs)
    rest = max(t.evaluation_seconds - t.distance_seconds - t.label_only_seconds - t.shadow_seconds, 0.0)
    total = train + search + label_only + shadows + rest * n_new / n_ref
    return Estimate(total, f"scaled from a stored run ({describe(c)})")


@functools.lru_cache(maxsize=32)
def dataset_input_shape(dataset: str, data_dir: str | None = None) -> tuple[int, ...] | None:
    """The input shape of a named dataset (what an automatic label-only budget depends on), read once per
    process; None where the data cannot be read now (a missing folder or file)."""
    from .data import load_dataset

    try:
        return tuple(load_dataset(dataset, data_dir=data_dir).input_shape)
    except (ValueError, OSError, LookupError):
        return None


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {seconds / 60:.0f} min"


@dataclass(frozen=True)
class Spread:
    mean: float
    sd: float
    low: float
    high: float
    n: int


def spread(values: Sequence[float]) -> Spread:
    """Mean, sample sd and range of a metric over seeds."""
    v = np.asarray(values, float)
    return Spread(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, float(v.min()), float(v.max()), len(v))


LESSON = (
    ("Memorisation leaks", dict(pg_width=256, pg_epochs=800, pg_members=30, pg_weight_decay=0.0),
     "A wide network trained long on 30 points memorises them: train accuracy 1.0, members sit far from the "
     "boundary (big markers), non-members near it, and the distance attack's AUC rises above 0.5."),
    ("More data leaks less", dict(pg_width=256, pg_epochs=800, pg_members=200, pg_weight_decay=0.0),
     "The same network on 200 points cannot single each one out: the two histograms overlap and the AUC drops "
     "towards 0.5. Press 'spread over seeds' to see how much of a small set's AUC is chance."),
    ("A regulariser as a defense", dict(pg_width=256, pg_epochs=800, pg_members=30, pg_weight_decay=0.03),
     "Back to 30 points, with weight decay: the boundary smooths out, test accuracy holds, and the members' "
     "advantage in distance shrinks. Compare the AUC with step 1."),
)
"""The Playground's guided lesson: (title, widget values, what to point out)."""


def privacy_summary(record: RunRecord) -> str | None:
    """The measured leakage as a lower bound on DP epsilon, beside what DP-SGD's accountant claims if it ran."""
    b = record.epsilon_bound
    if b is None:
        return None
    if b.attack is None:
        text = (f"No attack's reference-calibrated threshold rules out any epsilon > 0 at δ = {b.delta:g} "
                f"({b.confidence:.0%} confidence).")
    else:
        text = (f"Measured leakage: ε ≥ {b.epsilon:.2f} at δ = {b.delta:g} with {b.confidence:.0%} confidence (from "
                f"{attack_title(b.attack)} at a threshold calibrated on reference data at {b.fpr_level:g} FPR; "
                "Clopper-Pearson intervals, Bonferroni over every attack and level).")
    if record.defense.epsilon is not None:
        text += (f" DP-SGD's accountant guarantees ε ≤ {record.defense.epsilon:.2f} at δ = {record.defense.delta:g}: "
                 f"the measured bound is {'below' if b.epsilon <= record.defense.epsilon else 'ABOVE'} it.")
    return text


def feature_changes(dataset, x: np.ndarray, x_adv: np.ndarray, *, top: int | None = None) -> pd.DataFrame:
    """A table row and its minimal perturbation feature by feature, in the table's own units: the value, the
    value at the boundary point, the change, and the change as a share of the feature's range; largest first.
    Features the search left unchanged are dropped (one-hot columns rarely move far)."""
    names = dataset.feature_names or tuple(f"feature {j}" for j in range(x.shape[-1]))
    before, after = dataset.in_original_units(x[None])[0], dataset.in_original_units(x_adv[None])[0]
    share = (np.asarray(x_adv, float) - np.asarray(x, float)) / (dataset.bounds[1] - dataset.bounds[0])
    frame = pd.DataFrame({"feature": names, "value": before, "at the boundary": after, "change": after - before,
                          "change (share of range)": share})
    frame = frame[np.abs(frame["change (share of range)"]) > 1e-6]
    frame = frame.reindex(frame["change (share of range)"].abs().sort_values(ascending=False).index)
    return (frame.head(top) if top else frame).reset_index(drop=True)


def jobs_frame(jobs) -> pd.DataFrame:
    """The Jobs page's table: one row per job, newest first."""
    rows = []
    for j in jobs:
        rows.append({"job": j.label or j.id, "status": j.status.value, "stage": j.stage,
                     "progress": f"{j.fraction:.0%}" if j.status.active else "",
                     "elapsed": format_seconds(j.elapsed) if j.started else "",
                     "left": time_left(j),
                     "joined by": j.attached, "error": j.error or "", "run": j.run_id or "", "id": j.id})
    return pd.DataFrame(rows)


def time_left(job: Job) -> str:
    """A job's time left as a page says it: by its estimate where it has one and is within it, else 'unknown'
    with the current stage's time left, extrapolated from its fraction done, where that is known yet."""
    if not job.status.active:
        return ""
    if (left := job.remaining) is not None:
        return format_seconds(left)
    overrun = job.estimate is not None and job.status is Status.RUNNING
    text = "more than estimated" if overrun else "unknown"
    if (stage := job.stage_remaining) is not None:
        text += f" (this stage: {format_seconds(stage)})"
    return text


def job_line(job: Job, others: int = 0) -> str:
    """What a page with no run open says of a background job of the server: what it computes, where it stands,
    whether its first results can be opened, and how many other jobs are active."""
    what = job.label or "a job"
    where = (f"{job.stage or 'starting'}, {job.fraction:.0%}, {format_seconds(job.elapsed)} so far"
             if job.status is Status.RUNNING else "queued, waiting for a free worker")
    text = f"Being computed on this server: {what} ({where})."
    text += (" Its first results are ready to open." if job.first_run_id
             else " Follow it to open its run when it is done." if job.audit is not None  # no first results
             else " Follow it to see its first results here as soon as they are stored.")
    if others:
        text += f" {others} more job{'s are' if others > 1 else ' is'} active (Jobs page)."
    return text


def class_name(dataset) -> Callable[[int], str]:
    """A class index as the dataset names it ('malignant'), or as 'class 3' where it has no names."""
    names = dataset.class_names
    return lambda k: names[int(k)] if names is not None and 0 <= int(k) < len(names) else f"class {int(k)}"
