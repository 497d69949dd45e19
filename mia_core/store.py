"""The on-disk store: one folder per configuration, named by a hash of it, written atomically.

A folder is built under a temporary name and renamed into place in one step, so a run interrupted
half-way leaves only a `.tmp-*` folder that is never read, and a finished folder is always complete.

Layout, owned by `Store`:
    <root>/<train_key>/                   a trained model: config.json, split.npz, model.safetensors, training.json
    <root>/<train_key>/eval-<eval_key>/   one evaluation of it: summary.json (a RunRecord), scores.npz and
                                          <group>.x_adv_*.npy (a ScoreTable, `ScoreTable.save`)
    <root>/<train_key>/shadows-<key>/     shadow-model outputs for LiRA, one file per chunk, resumable
    <root>/uploads/                       checkpoints uploaded through the app
A run's id is "<train_key>/eval-<eval_key>".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterator

STORE_ENV = "MIA_STORE"
DEFAULT_FOLDER = "mia_runs"


class StoreError(ValueError):
    """A run id or path that is not a finished run inside this store."""


class Store:
    """The store at one root, resolved once (`Store.resolve`), and the folder layout inside it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def resolve(cls, explicit: "str | Path | Store | None" = None) -> "Store":
        """`explicit` (e.g. --store), else $MIA_STORE, else ./mia_runs; read when called, not at import."""
        if isinstance(explicit, Store):
            return explicit
        root = Path(explicit) if explicit is not None and str(explicit) else Path(
            os.environ.get(STORE_ENV) or DEFAULT_FOLDER)
        if root.exists() and not root.is_dir():
            raise StoreError(f"The store {root} is a file, not a folder: name a folder (new or existing).")
        return cls(root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and self.root.resolve() == other.root.resolve()

    def __hash__(self) -> int:
        return hash(str(self.root.resolve()))

    # ------------------------------------------------------------------ layout
    def run_dir(self, train_key: str) -> Path:
        return self.root / train_key

    def eval_dir(self, train_key: str, eval_key: str) -> Path:
        return self.root / train_key / f"eval-{eval_key}"

    def first_dir(self, train_key: str, eval_key: str, level: int) -> Path:
        """The first results (up to an attack cost `level`) of an evaluation still being computed; removed when
        the next ones, or the finished evaluation, are stored."""
        return self.root / train_key / f"first{level}-{eval_key}"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    # ------------------------------------------------------------------ runs
    @staticmethod
    def run_id(eval_dir: str | Path) -> str:
        """The id of an evaluation folder: "<train_key>/eval-<eval_key>"."""
        p = Path(eval_dir)
        return f"{p.parent.name}/{p.name}"

    @staticmethod
    def intact_run_id(eval_dir: Path) -> str | None:
        """The id of a finished evaluation whose folder and trained model's folder are intact, else None (to
        be computed again)."""
        if eval_dir.is_dir() and folder_problem(eval_dir) is None and folder_problem(eval_dir.parent) is None:
            return Store.run_id(eval_dir)
        return None

    def eval_path(self, run_id: str) -> Path:
        """The folder of a finished run (or of an evaluation's first results, `first<level>-`) named by its id;
        refuses anything that is not a run id inside the store (absolute paths, `..`, other folders)."""
        parts = str(run_id).split("/")
        if (len(parts) != 2 or not re.match(r"(eval|first\d)-", parts[1])
                or any(not p or p in (".", "..") or p.startswith(".") or "\\" in p for p in parts)):
            raise StoreError(f"'{run_id}' is not a run id (<train key>/eval-<eval key>).")
        path = self.root / parts[0] / parts[1]
        if not (path / "summary.json").is_file():
            raise StoreError(f"No finished run '{run_id}' in the store {self.root}.")
        return path

    # ------------------------------------------------------------------ names and deletion
    @property
    def _names_file(self) -> Path:
        return self.root / "names.json"

    def names(self) -> dict[str, str]:
        """run id -> the name a user gave it."""
        try:
            return dict(read_json(self._names_file))
        except (OSError, ValueError, TypeError):
            return {}

    @contextlib.contextmanager
    def _names_locked(self) -> Iterator[dict[str, str]]:
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".names.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            names = self.names()
            yield names
            write_json(self._names_file, names)

    def set_name(self, run_id: str, name: str) -> None:
        """Name a run (an empty name removes it); names are labels only and never change a result."""
        self.eval_path(run_id)
        name = " ".join(str(name).split())[:80]
        with self._names_locked() as names:
            if name:
                names[run_id] = name
            else:
                names.pop(run_id, None)

    def delete_run(self, run_id: str) -> None:
        """Delete an evaluation; its trained model (with its cached stages) goes too when no other evaluation of
        it is left. Folders are renamed away before removal, so no reader sees half a run."""
        eval_dir = self.eval_path(run_id)
        run_dir = eval_dir.parent
        discard_folder(eval_dir)
        if not any(p.is_dir() for p in run_dir.glob("eval-*")):
            discard_folder(run_dir)
        with self._names_locked() as names:
            names.pop(run_id, None)

    def evaluation_dirs(self) -> list[Path]:
        """Every finished evaluation folder (interrupted ones never appear)."""
        return [p.parent for p in self.root.glob("*/eval-*/summary.json")
                if not any(part.startswith(".tmp-") for part in p.parts)]

    def version(self) -> float:
        """Changes whenever an evaluation is added or removed (a cache key for listings)."""
        paths = list(self.root.glob("*/eval-*"))
        return max((p.stat().st_mtime for p in paths), default=0.0) + len(paths)


def default_store() -> Store:
    """The store a caller without an explicit root uses: $MIA_STORE, else ./mia_runs."""
    return Store.resolve()


def config_hash(config: Any, length: int = 16) -> str:
    """A stable hash of a dataclass or JSON-able mapping (keys sorted)."""
    data = asdict(config) if is_dataclass(config) else config
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(json_safe(data), fh, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def json_safe(data: Any) -> Any:
    """`data` with every NaN and infinity replaced by null, so the file is valid JSON for any reader."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    if is_dataclass(data) and not isinstance(data, type):
        return json_safe(asdict(data))
    if hasattr(data, "tolist"):
        return json_safe(data.tolist())
    return data


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if is_dataclass(o):
        return asdict(o)
    return str(o)


def read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


MANIFEST = "MANIFEST.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record the size and sha256 of every file directly in `folder` (sub-folders have their own)."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    write_json(folder / MANIFEST, {"files": files})


def folder_problem(folder: Path, *, checksums: bool = True) -> str | None:
    """None if `folder` holds every file of its manifest intact, else what is wrong. Without `checksums` only
    sizes are compared (fast, for listings)."""
    try:
        files = read_json(folder / MANIFEST)["files"]
    except FileNotFoundError:
        return "no manifest (written by an older version, or never finished)"
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable manifest"
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {want['bytes']} were written"
        if checksums and _sha256(path) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def discard_folder(folder: Path) -> None:
    """Remove a (damaged) folder: renamed away first, so no reader ever sees it half-deleted."""
    if not folder.exists():
        return
    gone = folder.with_name(f".tmp-discard-{folder.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(folder, gone)
    except OSError:
        gone = folder
    shutil.rmtree(gone, ignore_errors=True)


def discard_damaged(folder: Path) -> None:
    """Remove `folder` only if it is damaged (folder_problem): a stage another process finished while this one
    computed the same stage is kept (atomic_folder then discards ours), never pulled from under its readers."""
    if folder.is_dir() and folder_problem(folder) is not None:
        discard_folder(folder)


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success write its manifest and rename it to `final` in one
    step.

    On any error (or interrupt) the temporary folder is removed and `final` is untouched. If another
    process finished `final` first, its folder is kept and ours discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        yield tmp
        write_manifest(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(root: Path, older_than_s: float = 3600) -> int:
    """Delete `.tmp-*` leftovers of interrupted runs older than `older_than_s`; returns how many."""
    removed = 0
    if not root.is_dir():
        return 0
    now = time.time()
    for path in sorted(root.rglob(".tmp-*"), key=lambda p: len(p.parts)):
        try:
            if now - path.stat().st_mtime <= older_than_s:
                continue
        except FileNotFoundError:  # inside a leftover removed just before
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed += 1
    return removed
