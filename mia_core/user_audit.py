"""Audit a user's own model on their own data: `audit(model, members=(x, y), nonmembers=(x, y), ...)`.

The model is any `nn.Module` that maps a batch [N, *input_shape] to logits [N, C] (see `user_models.py` for
what it must be), or an ONNX file (`audit_onnx`). The data lives in any box (`bounds`); every distance is
measured in that box. The run goes through the same evaluation pipeline as a trained run, is written to the
store (the user's data and split beside it, so the dashboard opens it like any other run, shown as "your
model"), and comes back as the same typed `RunResult`. Attacks that need reference models of the target's
architecture (LiRA, RMIA, shadow-calibrated thresholds) run when a `model_factory` and a `TrainingRecipe` say
how to train copies (for an ONNX file, a recipe alone: copies of its graph, re-initialized); with fixed weights
alone they are marked unavailable with the reason.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import AUDIT_DATA, AUDIT_MODEL, ExperimentConfig, TrainingRecipe
from .data import Dataset, DatasetError, Split, read_saved_dataset, save_dataset
from .evaluation import EvaluationInputs, evaluate
from .experiment import Progress, RunResult, _assemble
from .jobs import AuditRequest
from .models import pick_device
from .records import AuditInfo, TrainingRecord
from .store import Store, atomic_folder, config_hash, discard_folder, folder_problem, read_json, write_json
from .training import accuracy, save_checkpoint
from .user_data import MIN_GROUP, PreparedData
from .user_models import (
    LogitsField, ModelError, OnnxModel, as_logits, build_from_factory, check_classifier, fresh_onnx_copy,
    load_onnx, output_reading, read_as, reading_of, state_digest, through_logits, with_tensor_output,
)

NO_FACTORY = ("needs reference models of the audited architecture: give a model factory and a training recipe "
              "(model_factory= in the API, --model-factory in the CLI)")
NO_ONNX_COPIES = ("needs reference models of the audited architecture: train copies of the ONNX graph "
                  "(--onnx-references in the CLI, 'train reference models' on the audit page) or give a model "
                  "factory (--model-factory)")


def _arrays(group: str, xy, bounds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    try:
        x, y = xy
    except (TypeError, ValueError):
        raise DatasetError(f"{group} must be a pair (x, y) of inputs and labels.") from None
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise DatasetError(f"{group}: x must be [N, ...] and y [N]; got x {x.shape} and y {y.shape}.")
    if len(x) < MIN_GROUP:
        raise DatasetError(f"{group} has {len(x)} samples; an audit needs at least {MIN_GROUP} in each group.")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x.astype(np.float64)).all():
        raise DatasetError(f"{group}: the inputs contain NaN, infinite or non-numeric values.")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise DatasetError(f"{group}: labels must be whole numbers 0..C-1; got dtype {y.dtype}.")
    if y.min() < 0:
        raise DatasetError(f"{group}: labels must be 0..C-1; the smallest is {y.min()}.")
    lo, hi = bounds
    if x.min() < lo or x.max() > hi:
        raise DatasetError(f"{group}: inputs range over [{x.min():g}, {x.max():g}], outside the bounds "
                           f"[{lo:g}, {hi:g}]; pass the box your model's inputs live in as bounds=(low, high).")
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)


def _row_digests(x: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(x.reshape(len(x), -1))
    return np.array([hashlib.blake2b(r.tobytes(), digest_size=12).digest() for r in rows])


def audit_dataset(members, nonmembers, reference=None, *, bounds=(0.0, 1.0), name: str = "your data",
                  reference_share: float = 0.5, seed: int = 0, feature_names: tuple[str, ...] | None = None
                  ) -> tuple[Dataset, Split, str]:
    """The user's groups as one dataset and a split; without `reference`, a seeded share of the non-members is
    the reference pool. Returns (dataset, split, how the reference pool was chosen)."""
    bounds = (float(bounds[0]), float(bounds[1]))
    if not bounds[0] < bounds[1]:
        raise DatasetError(f"bounds must satisfy low < high, got {bounds}.")
    xm, ym = _arrays("members", members, bounds)
    xn, yn = _arrays("non-members", nonmembers, bounds)
    if xm.shape[1:] != xn.shape[1:]:
        raise DatasetError(f"members have inputs of shape {xm.shape[1:]}, non-members {xn.shape[1:]}.")
    if reference is not None:
        xr, yr = _arrays("reference", reference, bounds)
        if xr.shape[1:] != xm.shape[1:]:
            raise DatasetError(f"reference inputs have shape {xr.shape[1:]}, members {xm.shape[1:]}.")
        how = f"the {len(xr)} reference samples the user gave"
    else:
        if not 0 < reference_share < 1:
            raise DatasetError(f"reference_share must be in (0, 1), got {reference_share}.")
        n_ref = int(len(xn) * reference_share)
        if len(xn) - n_ref < MIN_GROUP:
            raise DatasetError(f"{len(xn)} non-members leave fewer than {MIN_GROUP} after a {reference_share:.0%} "
                               "share for the reference pool; give more non-members or a reference set.")
        perm = np.random.default_rng(seed + 7).permutation(len(xn))
        xr, yr, xn, yn = xn[perm[:n_ref]], yn[perm[:n_ref]], xn[perm[n_ref:]], yn[perm[n_ref:]]
        how = f"a seeded {reference_share:.0%} of the non-members the user gave (seed {seed}): {n_ref} samples"
    shared = np.intersect1d(_row_digests(xm), _row_digests(np.concatenate([xn, xr])))
    if len(shared):
        raise DatasetError(f"{len(shared)} inputs appear both among the members and among the non-members or "
                           "reference samples; membership must be disjoint.")
    x = np.concatenate([xm, xn, xr])
    y = np.concatenate([ym, yn, yr])
    n_m, n_n = len(xm), len(xn)
    split = Split(members=np.arange(n_m), nonmembers=np.arange(n_m, n_m + n_n), reference=np.arange(n_m + n_n, len(x)))
    ds = Dataset(name=name, x=x, y=y, num_classes=int(y.max()) + 1, bounds=bounds, feature_names=feature_names)
    return ds, split, how


def audit(model: nn.Module, members, nonmembers, reference=None, *, bounds=(0.0, 1.0), name: str | None = None,
          data_name: str = "your data", model_factory: Callable[[], nn.Module] | str | None = None,
          recipe: TrainingRecipe | None = None, reference_share: float = 0.5, seed: int = 0,
          config: ExperimentConfig | None = None, store: Store | str | Path | None = None,
          progress: Progress | None = None, device: str = "auto",
          feature_names: tuple[str, ...] | None = None) -> RunResult:
    """Audit a trained `model` (any nn.Module: [N, *shape] -> logits [N, C] or probabilities, or a binary
    classifier's one output, its logit or sigmoid probability; eval mode, no side effects, differentiable for the
    white-box attacks) on its `members` and `nonmembers` ((x, y) pairs, inputs in `bounds`). `reference` (x, y)
    is the attacker's pool (default: a seeded `reference_share` of the non-members).
    `model_factory` (a callable returning a fresh model, or 'package.module:function' called with
    (input_shape, num_classes)) and `recipe` let the reference-model attacks train copies of the architecture.
    `config` supplies the evaluation settings (search, queries, bootstrap, shadow count). The run is stored and
    returned as a RunResult; the same call again reuses it."""
    ds, split, how = audit_dataset(members, nonmembers, reference, bounds=bounds, name=data_name,
                                   reference_share=reference_share, seed=seed, feature_names=feature_names)
    name = name or type(model).__name__
    return audit_prepared(model, ds, split, how, model_label=f"{name} (a Python nn.Module)", model_kind="module",
                          model_digest=state_digest(model), data_label=f"{data_name} (given in Python)",
                          model_factory=model_factory, recipe=recipe, seed=seed, config=config, store=store,
                          progress=progress, device=device, short_name=name)


def onnx_copies(file_name: str, batch_norm: bool = False) -> str:
    """What reference copies of an uploaded ONNX graph are, as the run says it."""
    norms = ("a batch norm restored after each convolution" if batch_norm else "batch norms folded as exported")
    return f"{file_name}'s graph, re-initialized (no dropout; {norms})"


def audit_onnx(source: bytes | str | Path | OnnxModel, ds: Dataset, split: Split, reference_how: str, *,
               data_label: str, file_name: str = "model.onnx", config: ExperimentConfig | None = None,
               store: Store | str | Path | None = None, progress: Progress | None = None, seed: int = 0,
               device: str = "auto", recipe: TrainingRecipe | None = None, batch_norm: bool = False) -> RunResult:
    """Audit an ONNX model: converted and checked against ONNX Runtime on the data (`user_models.load_onnx`),
    then audited like any model (an `OnnxModel` already checked on this data is used as it is); the file is kept
    with the run so the dashboard can reopen it. With a `recipe`, LiRA and RMIA get reference models: copies of
    the graph re-initialized layer by layer (`user_models.fresh_onnx_copy`; with `batch_norm`, a batch norm
    restored after each convolution) and trained with it."""
    onnx_model = (source if isinstance(source, OnnxModel)
                  else load_onnx(source, ds.x[split.members[:8]], num_classes=ds.num_classes))
    factory = None if recipe is None else functools.partial(fresh_onnx_copy, onnx_model.data, onnx_model.channels_last,
                                                            batch_norm)
    layout = ", images given as [N, H, W, C]" if onnx_model.channels_last else ""
    return audit_prepared(onnx_model.module, ds, split, reference_how, model_label=f"{file_name} (ONNX{layout})",
                          model_kind="onnx", model_digest=onnx_model.digest, data_label=data_label,
                          model_factory=factory, recipe=recipe, no_references=NO_ONNX_COPIES,
                          factory_name=None if factory is None else onnx_copies(file_name, batch_norm),
                          onnx_model=onnx_model, seed=seed, config=config, store=store, progress=progress,
                          device=device, short_name=Path(file_name).stem)


def audit_prepared(model: nn.Module, ds: Dataset, split: Split, reference_how: str, *, model_label: str,
                   model_kind: str, model_digest: str, data_label: str, short_name: str,
                   model_factory: Callable[[], nn.Module] | str | None = None, recipe: TrainingRecipe | None = None,
                   onnx_model: OnnxModel | None = None, seed: int = 0, config: ExperimentConfig | None = None,
                   store: Store | str | Path | None = None, progress: Progress | None = None,
                   device: str = "auto", factory_name: str | None = None, no_references: str = NO_FACTORY
                   ) -> RunResult:
    """The audit itself, once the data, the split and the model are known (the API, the CLI and the app).
    `factory_name` says what the factory builds where its own name would not (default: its name)."""
    dev = pick_device(device)
    model = model.to(dev).eval()
    recipe = recipe or (TrainingRecipe() if model_factory is not None else None)
    factory_name = factory_name or (
        model_factory if isinstance(model_factory, str)
        else getattr(model_factory, "__qualname__", repr(model_factory)) if model_factory else None)
    ds, cfg, key, model = _audit_plan(model, ds, split, dev, model_digest=model_digest,
                                      short_name=short_name, factory_name=factory_name, recipe=recipe,
                                      seed=seed, config=config, device=device)
    builder = None
    if model_factory is not None:
        builder = ((lambda: build_from_factory(model_factory, ds.input_shape, ds.num_classes))  # noqa: E731
                   if isinstance(model_factory, str) else model_factory)
        fresh = builder()  # one copy, built once: a bad factory is refused before any work
        if not isinstance(fresh, nn.Module):
            raise ModelError("model_factory() must return a fresh torch.nn.Module.")
        probe = output_probe(ds, split)
        fresh = with_tensor_output(fresh.eval(), probe)
        copies_read = output_reading(fresh, probe)
        if copies_read != "logits" or isinstance(fresh, LogitsField):
            plain_builder = builder  # its copies train on what their outputs are read as (log p; [0, z])
            field = LogitsField if isinstance(fresh, LogitsField) else (lambda m: m)
            builder = lambda: read_as(field(plain_builder().eval()), copies_read, probe).train()  # noqa: E731
    info = AuditInfo(model=model_label, model_kind=model_kind, data=data_label, bounds=tuple(ds.bounds),
                     reference=reference_how,
                     retraining=None if builder is None else f"copies of {factory_name}, {recipe.describe()}",
                     onnx_max_difference=None if onnx_model is None else onnx_model.max_abs_difference,
                     outputs=reading_of(model), logits_before_activation=through_logits(model))
    st = Store.resolve(store)
    run_dir, eval_dir = st.run_dir(key), st.eval_dir(key, cfg.eval_key())
    for folder in (run_dir, eval_dir):
        if folder.is_dir() and folder_problem(folder) is not None:
            discard_folder(folder)
    reused = eval_dir.is_dir()
    if not run_dir.is_dir():
        if progress:
            progress("your model's accuracy; storing your data and model with the audit", 0.0)
        _write_audit_stage(run_dir, cfg, info, ds, split, model, dev, onnx_model)
    training = TrainingRecord.from_json(read_json(run_dir / "training.json"))
    if not reused:
        inputs = EvaluationInputs(cfg, ds, split, model, dev, progress=progress, stage_dir=run_dir,
                                  shadow_builder=builder, shadows_unavailable=None if builder else no_references,
                                  audit=info)
        evaluate(inputs, training, st, key)
    if progress:
        progress("done", 1.0)
    return _assemble(st, cfg, eval_dir, ds, model, split, reused)


def output_probe(ds: Dataset, split: Split) -> torch.Tensor:
    """The inputs on which a model's outputs are read as logits or probabilities: up to 32 members and 32
    non-members, on the CPU."""
    return torch.from_numpy(ds.x[np.concatenate([split.members[:32], split.nonmembers[:32]])])


def _audit_plan(model: nn.Module, ds: Dataset, split: Split, dev: torch.device, *, model_digest: str,
                short_name: str, factory_name: str | None, recipe: TrainingRecipe | None, seed: int,
                config: ExperimentConfig | None, device: str
                ) -> tuple[Dataset, ExperimentConfig, str, nn.Module]:
    """What an audit computes and where the store keeps it: (the data, with as many classes as the model's
    logits, as read, have: its output count, or two for one output; the run's config; its key; the model as the
    audit reads it, as logits: log p where it outputs probabilities, [0, z] or [log(1 - p), log p] where it has
    one output)."""
    n_out = check_classifier(model, torch.from_numpy(ds.x[split.members[:8]]).to(dev), ds.num_classes)
    model = as_logits(model, output_probe(ds, split).to(dev))
    reading = reading_of(model) + (", through the logits before its activation" if through_logits(model) else "")
    classes = max(n_out, 2)  # one output is read as two classes' logits
    if classes > ds.num_classes:
        ds = Dataset(ds.name, ds.x, ds.y, classes, ds.bounds, ds.feature_names, ds.feature_low, ds.feature_high,
                     ds.class_names)
    base = config or ExperimentConfig()
    cfg = base.replace(dataset=AUDIT_DATA + ds.name, model=AUDIT_MODEL + short_name, members=len(split.members),
                       nonmembers=len(split.nonmembers), seed=seed, checkpoint=None, defense="none",
                       defense_strength=0.0, validation_size=0, device=device,
                       **({} if recipe is None else {"epochs": recipe.epochs, "batch_size": recipe.batch_size,
                                                     "lr": recipe.lr, "weight_decay": recipe.weight_decay,
                                                     "optimizer": recipe.optimizer}))
    cfg.validate()
    key = "audit-" + config_hash({
        "data": ds.fingerprint(), "bounds": list(ds.bounds), "classes": ds.num_classes,
        "split": hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in split.to_arrays().values())
                                ).hexdigest(),
        "model": model_digest, "factory": factory_name, "recipe": None if recipe is None else recipe.__dict__,
        "seed": seed, "core": __version__, **({"outputs": reading} if reading != "logits" else {})})
    return ds, cfg, key, model


def train_user_model(factory: str, ds: Dataset, split: Split, recipe: TrainingRecipe, *, seed: int = 0,
                     progress: Progress | None = None, device: str = "auto") -> nn.Module:
    """The user's architecture (a factory string) trained on the split's members with the recipe."""
    from .training import seed_everything, train

    seed_everything(seed)
    dev = pick_device(device)
    model = build_from_factory(factory, ds.input_shape, ds.num_classes)
    model = as_logits(model.eval(), output_probe(ds, split)).to(dev)  # trained on log p if it ends in a softmax
    x = torch.from_numpy(ds.x[split.members]).to(dev)
    y = torch.from_numpy(ds.y[split.members]).to(dev)
    train(model, x, y, recipe.train_config(seed), progress=progress)
    return model.eval()


def _write_audit_stage(run_dir: Path, cfg: ExperimentConfig, info: AuditInfo, ds: Dataset, split: Split,
                       model: nn.Module, dev, onnx_model: OnnxModel | None) -> None:
    """The audit's first stage: its config, the user's data and split, the model (ONNX bytes, or the module's
    weights for the record) and the model's accuracies, written atomically."""
    t0 = time.perf_counter()
    x, y = torch.from_numpy(ds.x).to(dev), torch.from_numpy(ds.y).to(dev)
    record = TrainingRecord(
        train_accuracy=accuracy(model, x[split.members], y[split.members]),
        test_accuracy=accuracy(model, x[split.nonmembers], y[split.nonmembers]),
        reference_accuracy=accuracy(model, x[split.reference], y[split.reference]) if len(split.reference) else
        float("nan"), train_seconds=0.0, device=str(dev))
    with atomic_folder(run_dir) as tmp:
        write_json(tmp / "config.json", cfg.to_dict() | {"train_key": run_dir.name, "audit": info.to_dict()})
        np.savez(tmp / "split.npz", **split.to_arrays())
        save_dataset(ds, tmp / "data.npz")
        if onnx_model is not None:
            (tmp / "model.onnx").write_bytes(onnx_model.data)
        else:
            try:
                save_checkpoint(model, tmp / "model.safetensors", metadata={"model": cfg.model})
            except Exception:  # weights that safetensors cannot hold (shared storage) are not needed to reopen
                pass
        write_json(tmp / "training.json", record.to_json() | {"audit_seconds": time.perf_counter() - t0})


def reopen_audit(run_dir: Path, device) -> tuple[Dataset, Split, nn.Module | None]:
    """The data, the split and (for ONNX) the model of a stored audit; a Python module is not rebuilt (its code
    is the user's), so it comes back as None."""
    ds = read_saved_dataset(run_dir / "data.npz")
    with np.load(run_dir / "split.npz", allow_pickle=False) as z:
        split = Split(members=z["members"], nonmembers=z["nonmembers"], reference=z["reference"])
    model = None
    if (run_dir / "model.onnx").is_file():
        module = load_onnx(run_dir / "model.onnx", ds.x[split.members[:8]]).module.eval()
        model = as_logits(module, output_probe(ds, split)).to(device).eval()  # as the audit read it
    return ds, split, model


@dataclass(frozen=True, eq=False)
class PreparedUpload:
    """Uploaded files read and checked, ready to audit (here or as a background job): the data with its split,
    and the ONNX model converted and agreeing with ONNX Runtime on the data."""

    data: PreparedData
    model: OnnxModel
    request: AuditRequest


def prepare_upload(data: bytes, data_name: str, model: bytes, model_name: str, *, label_column: str | None = None,
                   membership_column: str | None = None, id_column: str | None = None,
                   member_ids: list[str] | None = None, bounds: tuple[float, float] | None = None,
                   reference_share: float = 0.5, seed: int = 0, recipe: TrainingRecipe | None = None,
                   batch_norm: bool = False) -> PreparedUpload:
    """Read uploaded data (table, zip of an image folder, npz) in a private temporary folder that is removed
    afterwards, split it by the membership it names, and check the ONNX model on it (and, with a `recipe` for
    reference copies, that its graph can be re-initialized, with `batch_norm` restored after its convolutions):
    every error a user can fix is raised here, before any audit starts."""
    import tempfile

    from .user_data import prepare_user_data, read_upload

    with tempfile.TemporaryDirectory(prefix="mia-upload-") as work:
        user = read_upload(data, data_name, work, label_column=label_column or None, id_column=id_column or None,
                           membership_column=membership_column or None)
    if bounds is not None and tuple(bounds) != (0.0, 1.0):
        user = user.with_bounds(bounds)
    prepared = prepare_user_data(user, member_ids=member_ids, reference_share=reference_share, seed=seed)
    ds, split = prepared.dataset, prepared.split
    onnx_model = load_onnx(model, ds.x[split.members[:8]], num_classes=ds.num_classes)
    if recipe is not None:
        fresh_onnx_copy(onnx_model.data, batch_norm=batch_norm)
    batch_norm = batch_norm and recipe is not None
    return PreparedUpload(prepared, onnx_model, AuditRequest(model_name, prepared.source, prepared.reference, recipe,
                                                             batch_norm))


def audit_prepared_upload(upload: PreparedUpload, config: ExperimentConfig | None = None, *,
                          store: Store | str | Path | None = None, progress: Progress | None = None) -> RunResult:
    """Audit a checked upload with `config`'s evaluation settings (its seed and device too)."""
    cfg = config or ExperimentConfig()
    return audit_onnx(upload.model, upload.data.dataset, upload.data.split, upload.request.reference,
                      data_label=upload.request.data_label, file_name=upload.request.model_name, config=cfg,
                      store=store, progress=progress, seed=cfg.seed, device=cfg.device, recipe=upload.request.recipe,
                      batch_norm=upload.request.batch_norm)


@dataclass(frozen=True)
class UploadAuditPlan:
    """Where a checked upload's audit stands before it runs: the config its run is stored under (the data set and
    model named as the user's: what a time estimate scales from) and its stored run, if the store holds it."""

    run_config: ExperimentConfig
    stored_run_id: str | None


def plan_upload_audit(upload: PreparedUpload, config: ExperimentConfig | None = None,
                      store: Store | str | Path | None = None) -> UploadAuditPlan:
    """The plan of this upload's audit with `config`'s evaluation: the page opens a stored run at once instead of
    starting a job, and estimates a new one's time from stored audits of the same data and model."""
    cfg, recipe = config or ExperimentConfig(), upload.request.recipe
    _, run_cfg, key, _ = _audit_plan(upload.model.module.cpu(), upload.data.dataset, upload.data.split,
                                     torch.device("cpu"), model_digest=upload.model.digest,
                                     short_name=Path(upload.request.model_name).stem,
                                     factory_name=(onnx_copies(upload.request.model_name, upload.request.batch_norm)
                                                   if recipe else None),
                                     recipe=recipe, seed=cfg.seed, config=cfg, device=cfg.device)
    return UploadAuditPlan(run_cfg, Store.intact_run_id(Store.resolve(store).eval_dir(key, run_cfg.eval_key())))


def audit_job_inputs(folder: Path, request: AuditRequest, config: ExperimentConfig, *,
                     store: Store | str | Path | None = None, progress: Progress | None = None) -> RunResult:
    """An audit job's work: its inputs (written by `JobFiles.create` from a checked upload) audited."""
    if progress:
        progress("loading your model (converted, checked against ONNX Runtime)", 0.0)
    ds = read_saved_dataset(folder / "data.npz")
    with np.load(folder / "split.npz", allow_pickle=False) as z:
        split = Split(members=z["members"], nonmembers=z["nonmembers"], reference=z["reference"])
    onnx_model = load_onnx(folder / "model.onnx", ds.x[split.members[:8]], num_classes=ds.num_classes)
    upload = PreparedUpload(PreparedData(ds, split, request.data_label, request.reference), onnx_model, request)
    return audit_prepared_upload(upload, config, store=store, progress=progress)


def audit_upload(data: bytes, data_name: str, model: bytes, model_name: str, *, label_column: str | None = None,
                 membership_column: str | None = None, id_column: str | None = None,
                 member_ids: list[str] | None = None, bounds: tuple[float, float] | None = None,
                 reference_share: float = 0.5, config: ExperimentConfig | None = None,
                 store: Store | str | Path | None = None, progress: Progress | None = None,
                 recipe: TrainingRecipe | None = None) -> RunResult:
    """Audit uploaded data and an uploaded ONNX model in this process (`prepare_upload`, then the audit);
    nothing is stored unless the files are read and checked."""
    cfg = config or ExperimentConfig()
    upload = prepare_upload(data, data_name, model, model_name, label_column=label_column,
                            membership_column=membership_column, id_column=id_column, member_ids=member_ids,
                            bounds=bounds, reference_share=reference_share, seed=cfg.seed, recipe=recipe)
    return audit_prepared_upload(upload, cfg, store=store, progress=progress)
