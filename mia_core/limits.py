"""What a browser user may start on this server: limits an operator sets with environment variables.

    MIA_MAX_MEMBERS   largest training set (members)          MIA_MAX_EPOCHS   most training epochs
    MIA_MODELS        allowed architectures, comma-separated   MIA_MAX_SHADOWS  most shadow / reference models
    MIA_MAX_JOBS      jobs running at once (default: 1 per 2 CPU cores, at least 1)
    MIA_MAX_UPLOAD_MB largest upload (default 200)             MIA_CHECKPOINT_DIR  the only folder the
                                                               checkpoint "path on the server" field may read

Unset means unlimited (except MIA_MAX_JOBS and MIA_MAX_UPLOAD_MB). The command line is the operator's own and
is not limited. A configuration over a limit is refused before any work, naming the limit and its variable.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .config import ExperimentConfig


class LimitError(ValueError):
    """A request over one of the server's limits; the message names each limit."""


def _number(name: str, default: float | None = None) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise LimitError(f"{name}={raw!r} is not a number; fix the server's environment.") from None
    if value <= 0:
        raise LimitError(f"{name} must be positive, got {raw}.")
    return value


@dataclass(frozen=True)
class Limits:
    max_members: int | None = None
    max_epochs: int | None = None
    models: tuple[str, ...] | None = None
    max_shadows: int | None = None
    max_jobs: int = 1
    max_upload_mb: float = 200.0

    @classmethod
    def from_env(cls) -> "Limits":
        as_int = lambda v: None if v is None else int(v)  # noqa: E731
        models = os.environ.get("MIA_MODELS", "").strip()
        return cls(max_members=as_int(_number("MIA_MAX_MEMBERS")), max_epochs=as_int(_number("MIA_MAX_EPOCHS")),
                   models=tuple(m.strip() for m in models.split(",") if m.strip()) or None,
                   max_shadows=as_int(_number("MIA_MAX_SHADOWS")),
                   max_jobs=int(_number("MIA_MAX_JOBS", max(1, (os.cpu_count() or 2) // 2))),
                   max_upload_mb=float(_number("MIA_MAX_UPLOAD_MB", 200.0)))

    def problems(self, config: ExperimentConfig) -> list[str]:
        """Every limit `config` is over (empty when it may run)."""
        out = []
        if self.max_members is not None and config.members > self.max_members:
            out.append(f"members {config.members:,} is over this server's limit of {self.max_members:,} "
                       "(MIA_MAX_MEMBERS)")
        if self.max_epochs is not None and not config.checkpoint and config.epochs > self.max_epochs:
            out.append(f"epochs {config.epochs:,} is over this server's limit of {self.max_epochs:,} (MIA_MAX_EPOCHS)")
        if self.models is not None and config.model not in self.models:
            out.append(f"the model '{config.model}' is not allowed on this server (MIA_MODELS: "
                       f"{', '.join(self.models)})")
        if self.max_shadows is not None and config.lira_shadows > self.max_shadows:
            out.append(f"{config.lira_shadows} shadow models is over this server's limit of {self.max_shadows} "
                       "(MIA_MAX_SHADOWS)")
        return out

    def check_audit(self, config: ExperimentConfig, *, trains_references: bool) -> ExperimentConfig:
        """`check` for the audit of a user's model (`config`: the config its run is stored under): its members,
        and, where reference copies of it are trained, their epochs and count. The model allowlist names the
        server's own architectures, so it does not apply."""
        skip = {} if trains_references else {"max_epochs": None, "max_shadows": None}
        return dataclasses.replace(self, models=None, **skip).check(config)

    def check(self, config: ExperimentConfig) -> ExperimentConfig:
        """Raise LimitError naming every limit `config` is over; return it when it may run."""
        if problems := self.problems(config):
            raise LimitError("Refused by this server's limits: " + "; ".join(problems) + ".")
        return config
