"""The experiment configuration: one dataclass whose fields carry their stage, help text and range.

The stage decides the store key a field belongs to (data and training fields name the trained model's
folder, evaluation fields its evaluation's folder, runtime fields neither); the CLI flags, the app's form
widgets and `validate()` are all derived from the same field metadata.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .store import config_hash


class Stage(enum.Enum):
    DATA = "data"
    TRAINING = "training"
    EVALUATION = "evaluation"
    RUNTIME = "runtime"


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every problem and what is allowed."""


@dataclass(frozen=True)
class Param:
    """What a config field is: its stage, help, type, allowed range or choices, and CLI aliases."""

    stage: Stage
    help: str
    kind: type
    low: float | None = None
    high: float | None = None
    choices: Callable[[], tuple[str, ...]] | None = None
    optional: bool = False  # None is allowed (and means what the help says)
    aliases: tuple[str, ...] = ()
    label: str = ""

    def problem(self, name: str, value: Any) -> str | None:
        """None if `value` is allowed for field `name`, else what is wrong."""
        if value is None:
            return None if self.optional else f"{name} is required"
        if self.kind is str:
            if not isinstance(value, str):
                return f"{name} must be text, got {value!r}"
            if self.choices is not None and value not in self.choices():
                return f"{name} must be one of {', '.join(self.choices())}, got '{value}'"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number, got {value!r}"
        if self.kind is int and int(value) != value:
            return f"{name} must be a whole number, got {value!r}"
        if not math.isfinite(value):
            return f"{name} must be finite, got {value!r}"
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            return f"{name} must be in [{_fmt(self.low)}, {_fmt(self.high)}], got {value:g}"
        return None


def _fmt(v: float | None) -> str:
    return "-inf" if v is None else f"{v:g}"


def param(default: Any, stage: Stage, help: str, *, kind: type | None = None, **kw: Any) -> Any:
    """A dataclass field with its Param metadata (type inferred from the default unless given)."""
    kind = kind or type(default)
    return field(default=default, metadata={"param": Param(stage, help, kind, **kw)})


def _names(registry_path: str) -> Callable[[], tuple[str, ...]]:
    """Choices read from a registry at validation time (the registries may grow after import)."""
    def names() -> tuple[str, ...]:
        module, attr = registry_path.rsplit(".", 1)
        import importlib

        reg = getattr(importlib.import_module(f"mia_core.{module}"), attr)
        return tuple(reg)
    return names


OPTIMIZERS = ("adam", "sgd")
AUDIT_MODEL = "your model: "
AUDIT_DATA = "your data: "
"""How an audit of a user's own model names its model and data in the config (see `user_audit.py`)."""

NEW_FIELD_DEFAULTS = {"optimizer": "adam", "label_only_start": "noise", "label_only_linf": "hopskipjump",
                      "shadow_training": "stacked", "label_only_probes": "gaussian", "label_only_linf_queries": None,
                      "reference_searched": None}
"""Fields added after core 0.4.0, with the value that behaves as 0.4.0 did: left out of the store keys at that
value, so stored runs stay reusable (and a config that asks for the old behaviour finds them)."""

def _drop_new_defaults(d: dict[str, Any]) -> None:
    for k, old in NEW_FIELD_DEFAULTS.items():
        if k in d and d[k] == old:
            d.pop(k)


LABEL_ONLY_LINF_SEARCHES = ("rays", "hopskipjump")

LABEL_ONLY_QUERIES_GAUSSIAN = 400
LABEL_ONLY_QUERIES_LOW_FREQUENCY = 200
"""The L2 label-only search's budget when `label_only_queries` is none. Low-frequency probes search a 4x smaller
subspace of a 28x28 image, so fewer queries find as close a boundary point: on the mnist5k CNN (300 members, 20
epochs) 200 of them gave a median of 3.06 and an AUC of 0.619, against 3.17 and 0.627 [0.584, 0.672] for core 0.4.0's
1,000-query search and 3.20 for Gaussian probes at 400 (bench/probes.py); on 8x8 digits, where the probes are
Gaussian, 300 queries were 3.1% looser than 0.4.0, so those keep 400."""


SHADOW_TRAINING = ("mixed", "fast", "stacked")
"""How shadow models train (`lira.train_shadow_chunk`): fast (fused optimiser; convolutional models one at a time,
channels-last, on the CPU), mixed (fast, with bfloat16 passes where the device computes them natively) or stacked
(every model of a chunk under vmap with a per-parameter optimiser, core 0.4.0)."""

D, T, E, R = Stage.DATA, Stage.TRAINING, Stage.EVALUATION, Stage.RUNTIME


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that decides a run's results. Its hash names the run's folder in the store."""

    dataset: str = param("digits", D, "a named dataset (see `mia_core.data.DATASETS`) or npz:PATH for your own "
                         "arrays x in [0, 1] and y", label="dataset")
    model: str = param("mlp", T, "architecture (see `mia_core.models.MODELS`), or factory:package.module:function for "
                       "your own, called as f(input_shape, num_classes)", choices=_names("models.MODELS"),
                       label="model")
    width: int = param(256, T, "hidden width (mlp, cnn)", low=1, high=8192, label="hidden width")
    dropout: float = param(0.0, T, "dropout rate", low=0.0, high=0.95, label="dropout")
    members: int = param(200, D, "training-set size", low=10, high=10_000_000, label="members (training-set size)")
    nonmembers: int | None = param(None, D, "held-out evaluation size (default: as many as members)", kind=int,
                                   low=10, high=10_000_000, optional=True, label="non-members")
    epochs: int = param(60, T, "training epochs", low=1, high=100_000, label="epochs")
    batch_size: int = param(64, T, "training batch size", low=1, high=1_000_000, label="batch size")
    lr: float = param(1e-3, T, "learning rate", low=1e-8, high=10.0, label="learning rate")
    optimizer: str = param("adam", T, "optimiser of the target and of the shadow / reference models: adam, or sgd "
                           "with momentum 0.9", choices=lambda: OPTIMIZERS, label="optimiser")
    weight_decay: float = param(0.0, T, "L2 weight decay in Adam", low=0.0, high=1.0, label="weight decay")
    seed: int = param(0, D, "seeds the split, the initialisation and the batches", low=0, high=2**31 - 1,
                      label="seed")
    checkpoint: str | None = param(None, T, "evaluate this state_dict (.safetensors, or .pt via weights_only) "
                                   "instead of training", kind=str, optional=True, label="checkpoint")
    defense: str = param("none", T, "train-time defense (see `mia_core.defenses.DEFENSES`)",
                         choices=_names("defenses.DEFENSES"), label="defense")
    defense_strength: float = param(0.0, T, "the defense's strength (its range depends on the defense)",
                                    low=0.0, aliases=("--strength",), label="defense strength")
    adv_epsilon: float = param(0.1, T, "radius for PGD-AT / TRADES training, robust accuracy and the "
                               "adv_confidence / verified_confidence attacks", low=0.0, high=1.0,
                               label="adversarial radius")
    adv_norm: str = param("linf", T, "norm of the PGD / TRADES ball", choices=lambda: ("linf", "l2"),
                          label="adversarial norm")
    validation_size: int = param(200, D, "defender's validation set, drawn from the reference pool; used by "
                                 "defenses, never scored", low=0, high=10_000_000, label="validation size")
    distance_method: str = param("fmn", E, "minimal-perturbation search: deepfool (fastest), superdeepfool "
                                 "(tighter), fmn (tightest, started from superdeepfool)",
                                 choices=_names("distances.SEARCHES"), aliases=("--method",),
                                 label="distance search")
    distance_steps: int | None = param(None, E, "iterations of the search (default: the search's own)", kind=int,
                                       low=1, high=100_000, optional=True, aliases=("--steps",),
                                       label="search steps")
    reference_scored: int = param(500, E, "reference-pool samples scored to calibrate thresholds", low=10,
                                  high=10_000_000, label="reference samples scored")
    reference_searched: int | None = param(200, E, "of the scored reference samples, how many the per-sample "
                                           "searches also score (boundary and label-only distances, I_A, local "
                                           "variation; a seeded subset): their thresholds at an FPR of 0.01 and 0.1 "
                                           "sit above the 2 and 20 highest of 200 (none: all, as before)", kind=int,
                                           low=10, high=10_000_000, optional=True, label="reference samples searched")
    bootstrap_rounds: int = param(200, E, "bootstrap rounds for confidence intervals (0: none)", low=0,
                                  high=100_000, aliases=("--bootstrap",), label="bootstrap rounds")
    label_only_queries: int | None = param(None, E, "label queries per sample for the label-only distances (L2; "
                                           "and L-inf when label_only_linf_queries is none); none: 200 where "
                                           "HopSkipJump's probes are low-frequency (images with a side of 28 "
                                           "pixels or more), 400 where they are Gaussian (smaller images, tables)",
                                           kind=int, low=1, high=10_000_000, optional=True,
                                           label="label-only queries")
    label_only_linf_queries: int | None = param(200, E, "label queries per sample for the L-inf label-only search "
                                                "(RayS with 200 finds shorter distances than core 0.4.0's search "
                                                "with 1,000; none: as label_only_queries)", kind=int, low=1,
                                                high=10_000_000, optional=True, label="label-only L-inf queries")
    label_only_start: str = param("nearest", E, "where the label-only search starts: nearest (the boundary towards "
                                  "the closest reference samples the model labels otherwise) or noise (uniform noise, "
                                  "as HopSkipJump; core 0.4.0)", choices=lambda: ("nearest", "noise"),
                                  label="label-only start")
    label_only_linf: str = param("rays", E, "the L-inf label-only search: rays (RayS, Chen & Gu 2020) or "
                                 "hopskipjump (core 0.4.0)", choices=lambda: LABEL_ONLY_LINF_SEARCHES,
                                 label="label-only L-inf search")
    label_only_probes: str = param("low-frequency", E, "HopSkipJump's random probes: low-frequency (drawn on a "
                                   "grid up to 4x coarser and upsampled, QEBA, Li et al. 2020; images of 28 pixels a "
                                   "side or more) or gaussian (core 0.4.0)",
                                   choices=_names("label_only.PROBE_DISTRIBUTIONS"), label="label-only probes")
    lira_shadows: int = param(16, E, "shadow models for LiRA and shadow-calibrated thresholds (even, >= 2)",
                              low=2, high=4096, label="shadow models")
    shadow_training: str = param("mixed", E, "how the shadow / reference models train: fast (a fused optimiser; on "
                                 "the CPU, convolutional models one at a time in channels-last memory), mixed (fast, "
                                 "with bfloat16 forward and backward passes where the device computes them natively) "
                                 "or stacked (every model of a chunk at once under vmap; core 0.4.0)",
                                 choices=lambda: SHADOW_TRAINING, label="shadow-model training")
    rmia_gamma: float = param(1.0, E, "RMIA's likelihood-ratio threshold gamma (Zarifzadeh et al. 2024; 1 as in "
                              "ML Privacy Meter)", low=0.0, high=1e6, label="RMIA gamma")
    rmia_offline_a: float | None = param(None, E, "offline RMIA's correction a (default: chosen by attacking reference "
                                         "models with the others)", kind=float, low=0.0, high=1.0, optional=True,
                                         label="RMIA offline a")
    output_mask: str = param("none", E, "what the attacker's API returns: none (full probabilities), label "
                             "(top-1 only), round2 (rounded to 2 decimals)", choices=_names("probabilities.OUTPUT_MASKS"),
                             label="what the attacker's API returns")
    data_dir: str | None = param(None, R, "folder holding torchvision datasets (mnist, fashion_mnist, cifar10)",
                                 kind=str, optional=True, label="data folder")
    device: str = param("auto", R, "auto (cuda if available), cpu, cuda or cuda:N", label="device")
    shadow_executor: str = param("auto", R, "where shadow / reference models train: local (in this thread), "
                                 "threads (a plain MLP's chunks side by side on the CPU, one thread each), auto "
                                 "(threads in the CLI and the app's job workers, local elsewhere) or ray (chunks as "
                                 "Ray tasks, on the cluster at --ray-address or a local Ray instance); the same "
                                 "files in the store", choices=lambda: ("auto", "local", "threads", "ray"),
                                 label="shadow-model executor")
    ray_address: str | None = param(None, R, "the Ray cluster for --shadow-executor ray (ray://head:10001 or auto; "
                                    "default: a local Ray instance)", kind=str, optional=True, label="Ray address")

    # ------------------------------------------------------------------ derived views of the fields

    @staticmethod
    def params() -> dict[str, Param]:
        """Every field's Param, in declaration order."""
        return {f.name: f.metadata["param"] for f in fields(ExperimentConfig)}

    @staticmethod
    def stage_fields(*stages: Stage) -> tuple[str, ...]:
        return tuple(n for n, p in ExperimentConfig.params().items() if p.stage in stages)

    def replace(self, **changes: Any) -> "ExperimentConfig":
        """A copy with some fields changed (unknown names are an error)."""
        return dataclasses.replace(self, **changes)

    def problems(self) -> list[str]:
        """Everything wrong with this configuration (empty if it can run)."""
        from .data import DATASETS, is_user_file
        from .defenses import DEFENSES

        own_model = isinstance(self.model, str) and self.model.startswith(("factory:", AUDIT_MODEL))
        out = [msg for name, p in self.params().items()
               if (msg := p.problem(name, getattr(self, name))) and not (name == "model" and own_model)]
        if isinstance(self.model, str) and self.model.startswith("factory:"):
            from .user_models import ModelError, import_factory

            try:
                import_factory(self.model.removeprefix("factory:"))
            except ModelError as err:
                out.append(str(err).rstrip("."))
        if isinstance(self.dataset, str) and self.dataset.startswith(AUDIT_DATA):
            pass  # a user's own data, kept with its audit
        elif isinstance(self.dataset, str) and not is_user_file(self.dataset) and self.dataset not in DATASETS:
            out.append(f"unknown dataset '{self.dataset}': choose one of {', '.join(DATASETS)}, or npz:PATH for "
                       "your own arrays")
        if isinstance(self.lira_shadows, int) and self.lira_shadows % 2:
            out.append(f"lira_shadows must be even (each point is IN for half of the shadows), got {self.lira_shadows}")
        if self.defense in DEFENSES and isinstance(self.defense_strength, (int, float)) and not self.checkpoint:
            msg = DEFENSES.get(self.defense).check_strength(float(self.defense_strength))
            if msg and self.defense != "none":
                out.append(msg)
        if isinstance(self.checkpoint, str) and self.checkpoint and not Path(self.checkpoint).is_file():
            out.append(f"checkpoint {self.checkpoint} is not a file")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda") or
                                          self.device == "mps"):
            out.append(f"device must be auto, cpu, cuda or cuda:N, got '{self.device}'")
        return out

    def validate(self) -> "ExperimentConfig":
        """Raise ConfigError naming every problem before any work starts; return self when it can run."""
        problems = self.problems()
        if problems:
            raise ConfigError("Invalid configuration: " + "; ".join(problems) + ".")
        return self

    def train_key(self, dataset_fingerprint: str, checkpoint_digest: str | None = None) -> str:
        """Hash of every data and training field, with the data's fingerprint and the checkpoint's digest."""
        d = {n: getattr(self, n) for n in self.stage_fields(Stage.DATA, Stage.TRAINING)}
        d["data"] = dataset_fingerprint
        d["core"] = __version__  # a new release of the algorithms never reuses an old result
        d["checkpoint"] = checkpoint_digest
        _drop_new_defaults(d)
        if self.checkpoint:
            for k in ("epochs", "batch_size", "lr", "weight_decay", "dropout", "defense", "defense_strength"):
                d.pop(k)
        return config_hash(d)

    def eval_key(self) -> str:
        """Hash of every evaluation field and of the registered attacks (a new attack is a new evaluation)."""
        from .attacks import ATTACKS
        from .label_only import RAYS_SEARCH_STEPS

        d = {k: getattr(self, k) for k in self.stage_fields(Stage.EVALUATION)}
        _drop_new_defaults(d)
        if self.label_only_linf == "rays":  # RayS's radius search took 12 steps before: those runs are not these
            d["rays_radius_steps"] = RAYS_SEARCH_STEPS
        return config_hash({**d, "attacks": list(ATTACKS), "core": __version__})

    def label_only_budget(self, norm: str, input_shape: tuple[int, ...] | None = None) -> int:
        """The label queries a sample of the `norm` ("l2" or "linf") label-only search may spend on inputs of
        `input_shape` (None: unknown, taken as one where the probes are Gaussian); see `label_only_queries`."""
        if norm == "linf" and self.label_only_linf_queries is not None:
            return self.label_only_linf_queries
        if self.label_only_queries is not None:
            return self.label_only_queries
        from .label_only import low_frequency_factor

        low = (self.label_only_probes == "low-frequency" and input_shape is not None
               and low_frequency_factor(tuple(input_shape)) > 1)
        return LABEL_ONLY_QUERIES_LOW_FREQUENCY if low else LABEL_ONLY_QUERIES_GAUSSIAN

    def effective_training(self) -> tuple[float, float]:
        """(weight decay, dropout) after a defense that acts through one of them (its strength replaces it)."""
        from .defenses import DEFENSES

        field_ = DEFENSES.get(self.defense).config_field
        wd = self.defense_strength if field_ == "weight_decay" else self.weight_decay
        dropout = self.defense_strength if field_ == "dropout" else self.dropout
        return wd, dropout

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        """From a stored mapping; fields this version does not know are ignored, and a field added since the
        mapping was written takes the value that behaves as the version that wrote it (NEW_FIELD_DEFAULTS)."""
        names = {f.name for f in fields(cls)}
        return cls(**{**NEW_FIELD_DEFAULTS, **{k: v for k, v in d.items() if k in names}})


DEFAULT_CONFIG = ExperimentConfig()

TABLE_DEMO = ExperimentConfig(dataset="breast_cancer", members=100, epochs=300)
"""The table demo: "was this patient in the training set?" on scikit-learn's breast-cancer table; a 2x256 MLP on
100 patients for 300 epochs (see the README for what it leaks)."""
"""The embedded default: digits, a 2x256 MLP on 200 members for 60 epochs. Trains in seconds on 2 cores
and visibly leaks (see the README for its measured AUCs)."""


@dataclass(frozen=True)
class TrainingRecipe:
    """How to train copies of the user's architecture for the reference-model attacks (LiRA, RMIA)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"

    @classmethod
    def of(cls, config: ExperimentConfig) -> "TrainingRecipe":
        """The recipe a configuration's training fields give."""
        return cls(config.epochs, config.batch_size, config.lr, config.weight_decay, config.optimizer)

    def train_config(self, seed: int):
        """The recipe as `training.TrainConfig` (what `train` and the shadow models run)."""
        from .training import TrainConfig

        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           weight_decay=self.weight_decay, seed=seed, optimizer=self.optimizer)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingRecipe":
        return cls(int(values["epochs"]), int(values["batch_size"]), float(values["lr"]),
                   float(values["weight_decay"]), str(values["optimizer"]))

    def describe(self) -> str:
        return (f"{self.epochs} epochs of {self.optimizer} (lr {self.lr:g}, batch {self.batch_size}, weight decay "
                f"{self.weight_decay:g})")
