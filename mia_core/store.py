"""The on-disk store: one folder per configuration, named by a hash of it, written atomically.

A folder is built under a temporary name and renamed into place in one step, so a run interrupted
half-way leaves only a `.tmp-*` folder that is never read, and a finished folder is always complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterator

DEFAULT_ROOT = Path(os.environ.get("MIA_STORE", "mia_runs"))


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
            json.dump(data, fh, indent=2, sort_keys=True, default=_json_default)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if is_dataclass(o):
        return asdict(o)
    return str(o)


def read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success rename it to `final` in one step.

    On any error (or interrupt) the temporary folder is removed and `final` is untouched. If another
    process finished `final` first, its folder is kept and ours discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        yield tmp
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
    for path in root.rglob(".tmp-*"):
        if time.time() - path.stat().st_mtime > older_than_s:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed += 1
    return removed
