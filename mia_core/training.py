"""Seeded training on the GPU when there is one, and safe checkpoint save / load."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .models import inference_rows
from .tensors import model_device

Progress = Callable[[str, float], None]
"""progress(stage, fraction_done) — the CLI prints it, the app draws a bar."""


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the architecture; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    optimizer: str = "adam"
    fused: bool = False  # one fused optimiser kernel per step (faster; other float rounding than the loop)
    mixed_precision: bool = False  # forward and backward in bfloat16 (autocast); weights and optimiser in float32
    track_accuracy: bool = True  # the training accuracy every 5 epochs (TrainHistory); reference models need none


def make_optimizer(name: str, params, *, lr: float, weight_decay: float, fused: bool = False) -> torch.optim.Optimizer:
    """Adam (the default recipe) or SGD with momentum 0.9 (a user's recipe for reference models); `fused`
    updates every parameter in one kernel (same rule, other float rounding)."""
    kw = {"fused": True} if fused else {}
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kw)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, **kw)
    raise ValueError(f"optimizer must be adam or sgd, got '{name}'.")


@dataclass
class TrainHistory:
    loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    stopped_at: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


StepLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""A training objective: loss(model, x_batch, y_batch, epoch) -> scalar. Defenses supply their own."""


def cross_entropy_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
    """Logits for x in eval mode, in batches (default: `models.inference_rows`, 1,024 but for convolutional
    networks on the CPU), on the model's device; returned on that device."""
    device = model_device(model)
    batch_size = batch_size or inference_rows(model, 1024)
    was_training = model.training
    model.eval()
    out = [model(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, device=device)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if len(x) == 0:
        return float("nan")
    pred = predict_logits(model, x).argmax(1).cpu()
    return float((pred == y.cpu()).float().mean())


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    step_loss: StepLoss = cross_entropy_step,
    epoch_end: Callable[[nn.Module, torch.optim.Optimizer, int], bool] | None = None,
    progress: Progress | None = None,
) -> TrainHistory:
    """Train `model` in place with Adam on (x, y), shuffled by a generator seeded from config.seed.

    `step_loss` gives each batch's loss; `epoch_end(model, optimizer, epoch)` runs after each epoch and
    stops training by returning True (defenses use both). x and y should already be on the model's device.
    """
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    opt = make_optimizer(config.optimizer, model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                         fused=config.fused)
    history = TrainHistory()
    n = len(x)
    for epoch in range(config.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen).to(x.device)
        total, seen = 0.0, 0
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=config.mixed_precision):
                loss = step_loss(model, x[idx], y[idx], epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        history.loss.append(total / max(seen, 1))
        if config.track_accuracy and (epoch == config.epochs - 1 or epoch % 5 == 0):
            history.train_accuracy.append(accuracy(model, x, y))
        if progress:
            progress("training", (epoch + 1) / config.epochs)
        if epoch_end is not None and epoch_end(model, opt, epoch):
            history.stopped_at = epoch
            break
    model.eval()
    return history


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: nn.Module, path: str | Path, *, metadata: dict | None = None) -> None:
    """Write the state_dict as safetensors (no pickle), with `metadata` as JSON in the header."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"mia_core": json.dumps(metadata or {})})


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from .safetensors or a torch file, never unpickling arbitrary objects.

    Torch files go through `torch.load(weights_only=True)`; anything that is not a flat mapping of
    names to tensors (or {'state_dict': ...}) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No such checkpoint: {path}")
    with open(path, "rb") as fh:  # two magic bytes, not the whole file
        is_torch_file = fh.read(2) in (b"PK", b"\x80\x02") and path.suffix != ".safetensors"
    try:
        if is_torch_file:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
    except Exception as err:  # truncated zip, refused pickle global, bad safetensors header, ...
        raise CheckpointError(
            f"{path.name} is not a readable checkpoint ({type(err).__name__}: {str(err)[:200]}). "
            "Expected a state_dict saved with torch.save(model.state_dict(), ...) or with safetensors."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path.name} does not hold a state_dict (a mapping of parameter names to tensors).")
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into `model` strictly, or raise CheckpointError listing what does not match.

    A state_dict of the bare body (without our Normalize wrapper) is accepted too; the normalisation
    then stays the identity (mean 0, std 1), matching a model trained on [0, 1] inputs.
    """
    expected = model.state_dict()
    if not any(k.startswith("normalize.") for k in state) and all(f"body.{k}" in expected for k in state):
        state = {f"body.{k}": v for k, v in state.items()}
        state = {**{k: v for k, v in expected.items() if k.startswith("normalize.")}, **state}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs expected {tuple(expected[k].shape)}" for k in wrong[:5]))
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError("The checkpoint does not fit this architecture: " + "; ".join(parts) + ".")
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(f"The checkpoint has NaN or infinite values in {len(bad)} tensor(s) (e.g. {bad[0]}): "
                              "a diverged or corrupted model cannot be audited.")
    model.load_state_dict(state, strict=True)
