"""The evaluation of a trained model, as a pipeline of small typed steps:

    scored_groups -> score_groups (every registered attack, shadow models on demand) -> compute_metrics
    -> calibrate_thresholds -> summarise -> store_evaluation

Each step takes and returns typed values (ScoreTable, AttackMetrics, ThresholdReport, RunRecord). Attacks read
what they need from a `GroupScoring` context, whose shared work (minimal perturbations, label-only searches,
shadow models) is computed once, the first time an attack asks for it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import __version__
from .attacks import ATTACKS, AttackSpec, Cost
from .adversarial import robust_accuracy
from .config import ExperimentConfig
from .data import Dataset, Split
from .defenses import DEFENSES
from .box import Box, unit_view
from .distances import Perturbation, minimal_perturbation
from .label_only import RAYS_SEARCH_STEPS, LabelOnlyResult, label_only_distance
from .lira import ShadowSet, lira_scores, phi_from_log_probs, shadow_key, shadow_set
from .metrics import AttackMetrics, attack_metrics
from .models import build_model
from .probabilities import log_probabilities, mask_log_probs
from .privacy import run_epsilon_bound
from .rmia import choose_offline_a, rmia_scores, true_label_probability
from .records import AuditInfo, Environment, GroupScores, RunRecord, ScoreTable, ThresholdReport, Timings, TrainingRecord
from .store import (Store, atomic_folder, config_hash, discard_damaged, discard_folder, folder_problem, read_json,
                    write_json)
from .thresholds import attacker_thresholds

Progress = Callable[[str, float], None]


def validation_indices(split: Split, n: int, seed: int) -> np.ndarray:
    """The defender's validation set: a seeded part of the reference pool (at most half of it)."""
    n = min(n, len(split.reference) // 2)
    return np.sort(np.random.default_rng(seed + 2).choice(split.reference, size=n, replace=False))


def reference_subset(split: Split, n: int, seed: int, exclude: np.ndarray) -> np.ndarray:
    """The attacker's scored reference samples: from the pool, never the defender's validation set."""
    ref = np.setdiff1d(split.reference, exclude)
    if len(ref) <= n:
        return ref
    return np.sort(np.random.default_rng(seed + 1).choice(ref, size=n, replace=False))


def searched_positions(n: int, cfg: ExperimentConfig) -> np.ndarray | None:
    """The positions in a scored reference group of `n` samples that the per-sample searches score too
    (config.reference_searched of them, a seeded subset in index order); None when they score every one. A
    threshold calibrated at FPR f sits above the f * k highest of k reference scores: the searches' 1% and 10%
    thresholds need a few hundred, not the softmax attacks' 500, and the searches are most of an audit's time."""
    k = cfg.reference_searched
    if k is None or k >= n:
        return None
    return np.sort(np.random.default_rng(cfg.seed + 3).choice(n, size=k, replace=False))


LABEL_ONLY_POOL = 2000
"""Reference samples the label-only search looks among for its starting points (their labels cost one query each)."""

ROBUST_STEPS = 20
"""PGD steps of the robust accuracy (SharedWork.robustness), as the training stage took before."""


def scored_groups(split: Split, cfg: ExperimentConfig) -> dict[str, np.ndarray]:
    """Step 1: the dataset indices of every scored group (members, non-members, scored reference samples)."""
    return {"members": split.members, "nonmembers": split.nonmembers,
            "reference": reference_subset(split, cfg.reference_scored, cfg.seed,
                                          validation_indices(split, cfg.validation_size, cfg.seed))}


@dataclass
class EvaluationInputs:
    """What an evaluation works on: a trained model, its data and split, and where shadows are cached."""

    config: ExperimentConfig
    dataset: Dataset
    split: Split
    model: nn.Module
    device: torch.device
    shadow_dir: Path | None = None
    progress: Progress | None = None
    stage_dir: Path | None = None  # the trained model's folder: stages that outlive one evaluation are kept there
    shadow_builder: Callable[[], nn.Module] | None = None  # a fresh model of the target's architecture
    shadows_unavailable: str | None = None  # why no shadow / reference models can be trained (a user's fixed model)
    audit: AuditInfo | None = None  # set when a user's own model is audited

    def shadow_factory(self) -> Callable[[], nn.Module]:
        """What builds a fresh, untrained model of the target's architecture for the shadow / reference models
        (picklable, so that Ray workers can call it)."""
        if self.shadow_builder is not None:
            return self.shadow_builder
        cfg, ds = self.config, self.dataset
        return functools.partial(build_model, cfg.model, ds.input_shape, ds.num_classes, width=cfg.width,
                                 dropout=cfg.effective_training()[1])

    def mask(self, logp: np.ndarray) -> np.ndarray:
        """The target API's output masking (config.output_mask)."""
        return mask_log_probs(logp, self.config.output_mask)

    def label_only_starts(self) -> torch.Tensor | None:
        """The attacker's own samples the label-only search may start from (config.label_only_start 'nearest'):
        the reference pool, up to LABEL_ONLY_POOL of its samples in index order; None for noise starts."""
        if self.config.label_only_start != "nearest" or not len(self.split.reference):
            return None
        return torch.from_numpy(self.dataset.x[self.split.reference[:LABEL_ONLY_POOL]])


class SharedWork:
    """Work several groups' attacks share: shadow models and LiRA over the pool (members + non-members)."""

    def __init__(self, inputs: EvaluationInputs):
        self.inputs = inputs
        self.groups: dict[str, GroupScoring] = {}
        self._shadows: ShadowSet | None = None
        self._lira: dict[str, np.ndarray] | None = None
        self._rmia: dict[str, np.ndarray] | None = None
        self.shadow_seconds = 0.0
        self.parameters: dict[str, float] = {}  # attack parameters chosen during the evaluation
        self._robust: tuple[float, float] | None = None

    @property
    def pool(self) -> np.ndarray:
        return np.concatenate([self.inputs.split.members, self.inputs.split.nonmembers])

    @property
    def unavailable(self) -> str | None:
        """Why the shadow-model attacks have no scores here (None when they have)."""
        return self.inputs.shadows_unavailable

    def shadows(self) -> ShadowSet:
        """Shadow models of the target's architecture and recipe, each on a random half of the pool (cached
        on disk beside the trained model, chunk by chunk)."""
        if self.unavailable:
            raise RuntimeError(f"no shadow models: {self.unavailable}")
        if self._shadows is None:
            t0 = time.perf_counter()
            i, cfg = self.inputs, self.inputs.config
            ds, pool = i.dataset, self.pool
            wd, _ = cfg.effective_training()
            population = self.groups["reference"].x  # RMIA's z: points neither the target nor a shadow trained on
            cache = i.shadow_dir
            if cache is None and i.stage_dir is not None:
                digest = hashlib.sha256(np.ascontiguousarray(self.groups["reference"].index).tobytes()).hexdigest()
                cache = i.stage_dir / f"shadows-{shadow_key(cfg.lira_shadows, cfg.seed, digest, cfg.shadow_training)}"
            self._shadows = shadow_set(
                i.shadow_factory(),
                torch.from_numpy(ds.x[pool]).to(i.device), torch.from_numpy(ds.y[pool]).to(i.device),
                n_models=cfg.lira_shadows, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=wd,
                seed=cfg.seed, cache_dir=cache, progress=i.progress, population=population, optimizer=cfg.optimizer,
                executor=cfg.shadow_executor, address=cfg.ray_address, training=cfg.shadow_training)
            self.shadow_seconds = time.perf_counter() - t0
        return self._shadows

    def lira(self) -> dict[str, np.ndarray]:
        """Every LiRA variant's scores over the pool, members first (Carlini et al., S&P 2022)."""
        if self._lira is None:
            shadows = self.shadows()
            shadow_phi = shadows.phi(self.inputs.dataset.y[self.pool], self.inputs.mask)
            target_phi = np.r_[self.groups["members"].artifacts["lira_phi"],
                               self.groups["nonmembers"].artifacts["lira_phi"]]
            self._lira = lira_scores(target_phi, shadow_phi, shadows.inside)
        return self._lira

    def rmia(self) -> dict[str, np.ndarray]:
        """RMIA online and offline over the pool, members first (Zarifzadeh, Liu & Shokri, ICML 2024), with the
        scored reference samples as the population z."""
        if self._rmia is None:
            cfg, shadows, y = self.inputs.config, self.shadows(), self.inputs.dataset.y
            pool_y, ref = y[self.pool], self.groups["reference"]
            target_x = np.r_[true_label_probability(self.groups["members"].logp, self.groups["members"].y),
                             true_label_probability(self.groups["nonmembers"].logp, self.groups["nonmembers"].y)]
            target_z = true_label_probability(ref.logp, ref.y)
            ref_x = true_label_probability(self.inputs.mask(shadows.logp), pool_y)
            ref_z = true_label_probability(self.inputs.mask(shadows.population_logp), ref.y)
            a = cfg.rmia_offline_a
            if a is None:
                a = choose_offline_a(ref_x, ref_z, shadows.inside, gamma=cfg.rmia_gamma)
            self.parameters["rmia_offline_a"] = a
            self._rmia = {
                "rmia_online": rmia_scores(target_x, target_z, ref_x, ref_z, gamma=cfg.rmia_gamma),
                "rmia_offline": rmia_scores(target_x, target_z, ref_x, ref_z, shadows.inside, gamma=cfg.rmia_gamma,
                                            a=a),
            }
        return self._rmia

    def robustness(self, training: TrainingRecord) -> TrainingRecord:
        """`training` with the model's robust accuracy: PGD of ROBUST_STEPS steps in the configured ball (Madry et
        al., ICLR 2018) on the non-members and on the members, for an undefended or adversarially trained model.
        A record that has it already (measured while training, by earlier versions), a user's audit and the other
        defenses are returned as they are. Computed once per trained model and kept beside it (a cost of the
        white-box stage: it waits for no first result)."""
        i, cfg = self.inputs, self.inputs.config
        spec = DEFENSES.get(cfg.defense)
        if training.defense.robust_accuracy is not None or i.audit is not None or not (
                spec.adversarial or cfg.defense == "none"):
            return training
        if self._robust is None:
            folder = self._robust_folder()
            if folder is not None and folder.is_dir() and folder_problem(folder) is None:
                stored = read_json(folder / "robust.json")
                self._robust = (float(stored["robust_accuracy"]), float(stored["robust_train_accuracy"]))
            else:
                if i.progress:
                    i.progress("robust accuracy (PGD)", 0.0)
                ds, split = i.dataset, i.split
                x = lambda idx: torch.from_numpy(ds.x[idx]).to(i.device)  # noqa: E731
                y = lambda idx: torch.from_numpy(ds.y[idx]).to(i.device)  # noqa: E731
                kw = dict(eps=cfg.adv_epsilon, norm=cfg.adv_norm, steps=ROBUST_STEPS, seed=cfg.seed)
                self._robust = (robust_accuracy(i.model, x(split.nonmembers), y(split.nonmembers), **kw),
                                robust_accuracy(i.model, x(split.members), y(split.members), **kw))
                if folder is not None:
                    discard_damaged(folder)
                    with atomic_folder(folder) as tmp:
                        write_json(tmp / "robust.json", {"robust_accuracy": self._robust[0],
                                                         "robust_train_accuracy": self._robust[1]})
        defense = dataclasses.replace(training.defense, robust_accuracy=self._robust[0],
                                      robust_train_accuracy=self._robust[1])
        return dataclasses.replace(training, defense=defense)

    def _robust_folder(self) -> Path | None:
        i, cfg = self.inputs, self.inputs.config
        if i.stage_dir is None:
            return None
        digest = lambda idx: hashlib.sha256(np.ascontiguousarray(idx).tobytes()).hexdigest()  # noqa: E731
        key = config_hash({"eps": cfg.adv_epsilon, "norm": cfg.adv_norm, "steps": ROBUST_STEPS, "seed": cfg.seed,
                           "members": digest(i.split.members), "nonmembers": digest(i.split.nonmembers)})
        return i.stage_dir / f"robust-{key}"


def _read_label_only(folder: Path) -> LabelOnlyResult | None:
    """A stored label-only stage (its adversarial points are not kept), or None if missing or damaged."""
    if not folder.is_dir() or folder_problem(folder) is not None:
        return None
    try:
        with np.load(folder / "label_only.npz", allow_pickle=False) as z:
            return LabelOnlyResult(norms=z["norms"], success=z["success"], x_adv=torch.empty(0),
                                   queries=z["queries"])
    except (OSError, ValueError, KeyError):
        return None


def _read_perturbation(folder: Path, norm: float, method: str, x: torch.Tensor) -> Perturbation | None:
    """A stored white-box distance stage for the samples `x`, or None if missing, damaged or not theirs; its
    adversarial examples are mapped from the stage's file, not read into memory."""
    if not folder.is_dir() or folder_problem(folder) is not None:
        return None
    try:
        with np.load(folder / "distances.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("norms", "success", "labels", "adv_labels")}
        x_adv = _stored_x_adv(folder)
    except (OSError, ValueError, KeyError):
        return None
    if x_adv.shape != tuple(x.shape) or arrays["norms"].shape != (len(x),):
        return None
    return Perturbation(x_adv=x_adv, norm=norm, method=method, **arrays)


def _stored_x_adv(folder: Path) -> torch.Tensor:
    """A distance stage's adversarial examples as a tensor over a private (copy-on-write) map of its file: pages
    are read as they are used and never written back."""
    return torch.from_numpy(np.load(folder / "x_adv.npy", mmap_mode="c", allow_pickle=False))


def _mapped(folder: Path | None, p: Perturbation) -> np.ndarray:
    """The stage's adversarial examples memory-mapped from its file (the evaluation's folder links it instead of
    writing it again), or the search's own array where there is no such file."""
    try:
        if folder is not None:
            return np.load(folder / "x_adv.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        pass
    return p.x_adv.cpu().numpy()


class GroupScoring:
    """The scoring context an attack's `score(ctx)` reads: one group's inputs on the device, labels, the
    target's (masked and clean) log-probabilities, and lazily computed, cached perturbations and searches."""

    def __init__(self, group: str, index: np.ndarray, inputs: EvaluationInputs, shared: SharedWork,
                 pool_offset: int | None):
        self.group, self.index, self.inputs, self.shared = group, index, inputs, shared
        self.pool_offset = pool_offset  # where the group's points sit in the shadows' pool (None: not in it)
        self.x = torch.from_numpy(inputs.dataset.x[index]).to(inputs.device)
        self.y = inputs.dataset.y[index]
        self.box = Box.of(inputs.dataset.bounds)
        # attacks defined by a radius in the unit box (I_A, I_V) see the model through its unit-box view
        self.unit_model, self.unit_x = unit_view(inputs.model, self.x, self.box)
        self.clean_logp = log_probabilities(inputs.model, self.x)
        self.logp = inputs.mask(self.clean_logp)
        self.artifacts: dict[str, np.ndarray] = {"lira_phi": phi_from_log_probs(self.logp, self.y)}
        self.distance_seconds = 0.0
        self.searched = 0  # samples searched here, once per norm (not read from a stored stage)
        self.label_only_seconds = 0.0
        self._perturbations: dict[float, Perturbation] = {}
        self._label_only: dict[float, LabelOnlyResult] = {}
        # the reference group's searched subset: its positions in this group and its own context (`searches`)
        self.searched_part: tuple[np.ndarray, GroupScoring] | None = None

    @property
    def model(self) -> nn.Module:
        return self.inputs.model

    @property
    def config(self) -> ExperimentConfig:
        return self.inputs.config

    def _progress(self, stage: str, frac: float) -> None:
        if self.inputs.progress:
            self.inputs.progress(f"{stage} on {self.group}", frac)

    def perturbation(self, norm: float) -> Perturbation:
        """The minimal perturbation of every sample from its true label (config.distance_method). It depends on
        the model, the samples and the search, not on the attacks that read it, so it is kept beside the trained
        model as a stage of its own: an evaluation that differs only elsewhere (more reference models, another
        label-only budget) and a job resubmitted after it was stopped read it instead of searching again."""
        if norm not in self._perturbations:
            t0 = time.perf_counter()
            folder = self._distances_folder(norm)
            method = self.config.distance_method
            p = _read_perturbation(folder, norm, method, self.x) if folder is not None else None
            if p is None:
                search = functools.partial(minimal_perturbation, self.model, self.x, norm=norm,
                                           labels=torch.as_tensor(self.y), method=method,
                                           steps=self.config.distance_steps, bounds=self.box,
                                           progress=self._progress if self.inputs.progress else None)
                if folder is None:
                    p = search()
                else:  # each batch's adversarial examples go straight into the stage's file, not into memory
                    discard_damaged(folder)
                    with atomic_folder(folder) as tmp:
                        out = np.lib.format.open_memmap(tmp / "x_adv.npy", mode="w+", dtype=np.float32,
                                                        shape=tuple(self.x.shape))
                        p = search(out=out)
                        out.flush()
                        np.savez(tmp / "distances.npz", norms=p.norms, success=p.success, labels=p.labels,
                                 adv_labels=p.adv_labels)
                    del out
                    p = dataclasses.replace(p, x_adv=_stored_x_adv(folder))
                self.searched += len(self.index)
            self.distance_seconds += time.perf_counter() - t0
            self._perturbations[norm] = p
            if self.group != "reference":  # kept for the per-sample explorer
                name = "distance_linf" if math.isinf(norm) else "distance_l2"
                self.artifacts[f"x_adv_{name}"] = _mapped(folder, p)
                self.artifacts[f"adv_label_{name}"] = p.adv_labels
        return self._perturbations[norm]

    def _distances_folder(self, norm: float) -> Path | None:
        if self.inputs.stage_dir is None:
            return None
        search = {"method": self.config.distance_method, "steps": self.config.distance_steps,
                  "norm": "linf" if math.isinf(norm) else "l2", "core": __version__,
                  "samples": hashlib.sha256(np.ascontiguousarray(self.index).tobytes()).hexdigest()}
        return self.inputs.stage_dir / f"distances-{config_hash(search)}"

    def label_only(self, norm: float) -> LabelOnlyResult:
        """The label-only (HopSkipJump-style) distance of every sample, within `_label_only_budget`.
        It depends on the model, the samples, the query budget and the seed, not on the white-box search, so
        it is kept beside the trained model as a stage of its own and reused by every evaluation that agrees."""
        if norm not in self._label_only:
            t0 = time.perf_counter()
            name = "linf" if math.isinf(norm) else "l2"
            folder = self._label_only_folder(name)
            r = _read_label_only(folder) if folder is not None else None
            if r is None:
                stage = f"label-only search ({name}, by queries spent)"
                self._progress(stage, 0.0)
                r = label_only_distance(self.model, self.x, self.y, norm=norm,
                                        max_queries=self._label_only_budget(name), seed=self.config.seed,
                                        bounds=self.box, progress=lambda f: self._progress(stage, f),
                                        start_pool=self.inputs.label_only_starts(),
                                        linf_search=self.config.label_only_linf,
                                        probe_distribution=self.config.label_only_probes, keep_points=False)
                if folder is not None:
                    discard_damaged(folder)
                    with atomic_folder(folder) as tmp:
                        np.savez(tmp / "label_only.npz", norms=r.norms, success=r.success, queries=r.queries)
            self._label_only[norm] = r
            self.artifacts[f"label_only_{name}_queries"] = r.queries
            self.label_only_seconds += time.perf_counter() - t0
        return self._label_only[norm]

    def _label_only_budget(self, name: str) -> int:
        """config.label_only_budget for these samples' shape (an automatic budget depends on the probes)."""
        return self.config.label_only_budget(name, tuple(self.x.shape[1:]))

    def _label_only_folder(self, name: str) -> Path | None:
        if self.inputs.stage_dir is None:
            return None
        search = {"queries": self._label_only_budget(name), "seed": self.config.seed, "norm": name,
                  "samples": hashlib.sha256(np.ascontiguousarray(self.index).tobytes()).hexdigest(),
                  "core": __version__, "start": self.config.label_only_start}
        if name == "linf" and self.config.label_only_linf != "hopskipjump":
            search["linf_search"] = self.config.label_only_linf
            search["radius_steps"] = RAYS_SEARCH_STEPS  # 12 before RayS took 8 binary-search steps a radius
        hopskipjump = name == "l2" or self.config.label_only_linf == "hopskipjump"  # RayS draws no probes
        if hopskipjump and self.config.label_only_probes != "gaussian":
            search["probes"] = self.config.label_only_probes
        if search["start"] == "nearest":  # the pool the search starts from decides its result too
            search["pool"] = hashlib.sha256(self.inputs.label_only_starts().numpy().tobytes()).hexdigest()
        if search["start"] == "noise":  # 0.4.0's searches keep their folders
            del search["start"]
        key = config_hash(search)
        return self.inputs.stage_dir / f"label-only-{key}"

    def lira(self, variant: str) -> np.ndarray:
        """A LiRA variant's scores for this group; NaN for points outside the shadows' pool."""
        return self._pool_slice(self.shared.lira, variant)

    def rmia(self, variant: str) -> np.ndarray:
        """An RMIA variant's scores for this group; NaN for points outside the shadows' pool."""
        return self._pool_slice(self.shared.rmia, variant)

    def _pool_slice(self, scores, variant: str) -> np.ndarray:
        if self.pool_offset is None or self.shared.unavailable:
            return np.full(len(self.y), np.nan)
        return scores()[variant][self.pool_offset : self.pool_offset + len(self.y)]


@dataclass
class ScoringResult:
    table: ScoreTable
    shared: SharedWork
    distance_seconds: float
    label_only_seconds: float
    searched: int = 0  # white-box searches run (a sample once per norm), not read from stored stages


def score_groups(inputs: EvaluationInputs, groups: dict[str, np.ndarray], *, shared: SharedWork | None = None,
                 up_to: Cost = Cost.EXPENSIVE, known: ScoreTable | None = None,
                 known_up_to: Cost | None = None) -> ScoringResult:
    """Step 2: every registered attack's score for every sample of every group, as a ScoreTable.
    Attacks that cost more than `up_to` are left NaN (the first results); `shared` and `known` (a table of
    the attacks up to `known_up_to`) carry over what was computed already, so nothing is computed twice."""
    shared = shared or SharedWork(inputs)
    offsets = {"members": 0, "nonmembers": len(inputs.split.members)}
    for g, idx in groups.items():
        if g not in shared.groups:
            shared.groups[g] = GroupScoring(g, idx, inputs, shared, offsets.get(g))
            pos = searched_positions(len(idx), inputs.config) if g == "reference" else None
            if pos is not None:
                shared.groups[g].searched_part = (pos, GroupScoring(g, idx[pos], inputs, shared, None))
    out: dict[str, GroupScores] = {}
    for g in groups:
        ctx = shared.groups[g]
        scores = {}
        for spec in ATTACKS.specs():
            if spec.cost > up_to:
                scores[spec.name] = np.full(len(ctx.index), np.nan)
                continue
            if known is not None and known_up_to is not None and spec.cost <= known_up_to and len(
                    known.groups.get(g, ())):
                scores[spec.name] = known.scores(spec.name, g)
                continue
            scores[spec.name] = _scores(spec, ctx)
        out[g] = GroupScores(index=ctx.index, label=ctx.y, prediction=ctx.logp.argmax(1), scores=scores,
                             artifacts=_artifacts(ctx))
    if "reference" not in out:  # the first results: no reference sample is scored yet
        none = np.zeros(0, dtype=np.int64)
        out["reference"] = GroupScores(index=none, label=none, prediction=none,
                                       scores={a: np.zeros(0) for a in ATTACKS})
    scored = [shared.groups[g] for g in groups]
    scored += [c.searched_part[1] for c in scored if c.searched_part is not None]
    return ScoringResult(ScoreTable(out), shared, sum(c.distance_seconds for c in scored),
                         sum(c.label_only_seconds for c in scored), sum(c.searched for c in scored))


def _scores(spec: AttackSpec, ctx: GroupScoring) -> np.ndarray:
    """One attack's scores for one group; a searching attack scores the reference group's searched subset only
    (NaN elsewhere: not scored)."""
    part = ctx.searched_part if spec.searches else None
    sub = ctx if part is None else part[1]
    s = np.asarray(spec.score(sub))
    if s.shape != (len(sub.index),):
        raise ValueError(f"attack '{spec.name}' returned scores of shape {s.shape} for {len(sub.index)} samples.")
    if part is None:
        return s
    out = np.full(len(ctx.index), np.nan)
    out[part[0]] = s
    return out


def _artifacts(ctx: GroupScoring) -> dict[str, np.ndarray]:
    """A group's per-sample artifacts; its searched subset's (label-only queries) at their positions, NaN
    elsewhere."""
    out = dict(ctx.artifacts)
    if ctx.searched_part is not None:
        pos, sub = ctx.searched_part
        for k, v in sub.artifacts.items():
            if k not in out and np.ndim(v) == 1:
                out[k] = np.full(len(ctx.index), np.nan)
                out[k][pos] = v
    return out


def compute_metrics(table: ScoreTable, *, bootstrap_rounds: int, seed: int) -> dict[str, AttackMetrics]:
    """Step 3: every attack's ROC metrics, with thresholds calibrated on its reference scores where it has any."""
    out = {}
    for a in ATTACKS:
        m, n = table.member_nonmember(a)
        if np.isnan(m).all():  # not defined for this model (I_V on resnet18)
            out[a] = AttackMetrics.undefined()
            continue
        out[a] = attack_metrics(m, n, reference=table.reference_scores(a), bootstrap_rounds=bootstrap_rounds,
                                seed=seed)
    return out


def calibrate_thresholds(inputs: EvaluationInputs, scoring: ScoringResult) -> dict[str, ThresholdReport]:
    """Step 4: thresholds an attacker can choose without the evaluation's membership (and the oracle's)."""
    if scoring.shared.unavailable:
        shadows = None
    else:
        shadows = scoring.shared.shadows()
    if shadows is not None and inputs.config.output_mask != "none":
        shadows = ShadowSet(logp=inputs.mask(shadows.logp), inside=shadows.inside)
    ds = inputs.dataset
    return attacker_thresholds(scoring.table, shadows, ds.y[scoring.shared.pool], ds.num_classes, inputs.model,
                               ds.input_shape, inputs.config.seed, bounds=tuple(ds.bounds))


def summarise(inputs: EvaluationInputs, scoring: ScoringResult, metrics: dict[str, AttackMetrics],
              thresholds: dict[str, ThresholdReport], training: TrainingRecord, train_key: str,
              evaluation_seconds: float = float("nan"), *, pending: tuple[str, ...] = ()) -> RunRecord:
    """Step 5: the run record (of the first results when `pending` names attacks still being computed)."""
    table, cfg = scoring.table, inputs.config
    bound, per_attack = run_epsilon_bound(metrics, len(inputs.split.members), len(inputs.split.nonmembers))
    queries = table["members"].artifacts.get("label_only_l2_queries")
    return RunRecord(
        config=cfg, train_key=train_key, eval_key=cfg.eval_key(),
        train_accuracy=training.train_accuracy, test_accuracy=training.test_accuracy,
        n_members=len(inputs.split.members), n_nonmembers=len(inputs.split.nonmembers),
        n_reference_scored=len(table["reference"]),
        attacks=metrics, thresholds=thresholds, defense=training.defense,
        timings=Timings(train_seconds=training.train_seconds, distance_seconds=scoring.distance_seconds,
                        distance_samples_per_second=scoring.searched / max(scoring.distance_seconds, 1e-9)
                        if scoring.searched else float("nan"),
                        label_only_seconds=scoring.label_only_seconds,
                        shadow_seconds=scoring.shared.shadow_seconds, evaluation_seconds=evaluation_seconds),
        environment=Environment(core=__version__, torch=torch.__version__, device=str(inputs.device),
                                platform=platform.platform(), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S")),
        label_only_queries_used=float(np.mean(queries)) if queries is not None and len(queries) else float("nan"),
        unavailable=unavailable_reasons(inputs, metrics, pending),
        pending=pending,
        attack_parameters=dict(scoring.shared.parameters),
        epsilon_bound=bound, epsilon_bounds={a: b.epsilon for a, b in per_attack.items()},
        audit=inputs.audit,
    )


def unavailable_reasons(inputs: EvaluationInputs, metrics: dict[str, AttackMetrics],
                        pending: tuple[str, ...] = ()) -> dict[str, str]:
    """Why each attack without metrics has none: no reference models for a fixed user model, or not defined for
    the architecture (attacks still being computed are `pending`, not unavailable)."""
    out = {}
    for a, m in metrics.items():
        if m.defined or a in pending:
            continue
        if ATTACKS.get(a).needs_shadows and inputs.shadows_unavailable:
            out[a] = inputs.shadows_unavailable
        else:
            out[a] = f"not defined for the '{inputs.config.model}' model"
    return out


def store_evaluation(eval_dir: Path, table: ScoreTable, record: RunRecord) -> None:
    """Step 6: write the score table (`ScoreTable.save`) and summary.json into the evaluation's folder,
    atomically."""
    with atomic_folder(eval_dir) as tmp:
        table.save(tmp)
        write_json(tmp / "summary.json", record.to_json())


def evaluate(inputs: EvaluationInputs, training: TrainingRecord, store: Store, train_key: str, *,
             first_results: Callable[[str], None] | None = None) -> RunRecord:
    """The whole pipeline for one trained model; writes the evaluation into the store and returns its record.
    With `first_results`, the members' and non-members' scores are stored first, the softmax attacks
    (Cost.LOGITS) and then with the white-box searches (Cost.GRADIENTS) as well, each in a `first<level>-`
    folder whose record's `pending` names what is still computed, and each one's run id is passed to
    `first_results`; the full evaluation reuses that work and replaces the folder when it is done."""
    cfg = inputs.config
    t0 = time.perf_counter()
    if inputs.stage_dir is None:
        inputs.stage_dir = store.run_dir(train_key)
    groups = scored_groups(inputs.split, cfg)
    shared, known, first_dir = SharedWork(inputs), None, None
    if first_results is not None:  # members and non-members: the softmax signals, then the white-box searches
        for level in (Cost.LOGITS, Cost.GRADIENTS):
            part = score_groups(inputs, {g: groups[g] for g in ("members", "nonmembers")}, shared=shared,
                                up_to=level, known=known, known_up_to=Cost(level - 1) if level else None)
            metrics = compute_metrics(part.table, bootstrap_rounds=cfg.bootstrap_rounds, seed=cfg.seed)
            pending = tuple(a for a in ATTACKS if ATTACKS.get(a).cost > level)
            measured = shared.robustness(training) if level >= Cost.GRADIENTS else training
            record = summarise(inputs, part, metrics, {}, measured, train_key, time.perf_counter() - t0,
                               pending=pending)
            folder = store.first_dir(train_key, record.eval_key, level)
            discard_folder(folder)
            store_evaluation(folder, part.table, record)
            if first_dir is not None:
                discard_folder(first_dir)
            first_dir, known = folder, part.table
            first_results(Store.run_id(folder))
    scoring = score_groups(inputs, groups, shared=shared, known=known,
                           known_up_to=Cost.GRADIENTS if known is not None else None)
    metrics = compute_metrics(scoring.table, bootstrap_rounds=cfg.bootstrap_rounds, seed=cfg.seed)
    thresholds = calibrate_thresholds(inputs, scoring)
    training = shared.robustness(training)
    record = summarise(inputs, scoring, metrics, thresholds, training, train_key, time.perf_counter() - t0)
    store_evaluation(store.eval_dir(train_key, record.eval_key), scoring.table, record)
    if first_dir is not None:
        discard_folder(first_dir)
    return record
