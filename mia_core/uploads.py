"""Checkpoints handed over by a user: validated in a temporary file, kept in the store only when readable and
used; and, only where an operator allows it, checkpoints read from one folder on the server."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .store import Store, read_json
from .training import CheckpointError, read_state_dict

MAX_UPLOAD_BYTES = 100 * 2**20
CHECKPOINT_DIR_ENV = "MIA_CHECKPOINT_DIR"


def store_checkpoint_upload(store: Store, filename: str, data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """Validate an uploaded state_dict (safetensors, or a torch file through weights_only: never unpickled) and
    keep it under the store's uploads, named by its content hash. Raises CheckpointError (nothing kept) when the
    file is too large or not a readable state_dict."""
    if len(data) > max_bytes:
        raise CheckpointError(f"{filename} is {len(data) / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB.")
    suffix = ".safetensors" if filename.endswith(".safetensors") else ".pt"
    store.uploads.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=store.uploads, prefix=".tmp-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            read_state_dict(tmp)
        except CheckpointError as err:
            raise CheckpointError(f"{filename}: {err}") from None
        target = store.uploads / f"{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
        os.replace(tmp, target)
        return target
    finally:
        Path(tmp).unlink(missing_ok=True)


def discard_unused_upload(store: Store, path: Path) -> bool:
    """Delete an upload that no stored model uses (e.g. its evaluation failed); True if it was deleted."""
    for cfg_file in store.root.glob("*/config.json"):
        try:
            if Path(read_json(cfg_file).get("checkpoint") or "").name == path.name:
                return False
        except (OSError, ValueError):
            continue
    path.unlink(missing_ok=True)
    return True


def checkpoint_folder() -> Path | None:
    """The one server folder an operator allows checkpoints to be read from ($MIA_CHECKPOINT_DIR), or None (off)."""
    folder = os.environ.get(CHECKPOINT_DIR_ENV)
    return Path(folder).resolve() if folder else None


def server_checkpoint(folder: Path | None, name: str, *, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """A checkpoint file named inside the operator's folder, checked before it is read: inside the folder, a
    file, at most `max_bytes`, a readable state_dict. A missing file and an unreadable one get the same message,
    so a visitor learns nothing about which files exist."""
    refused = CheckpointError(f"'{name}' is not a readable checkpoint in the server's checkpoint folder.")
    if folder is None:
        raise CheckpointError(f"Reading checkpoints from the server is off ({CHECKPOINT_DIR_ENV} is not set).")
    try:
        path = (folder / name).resolve()
        path.relative_to(folder)
    except (ValueError, OSError):
        raise refused from None
    if not path.is_file() or path.stat().st_size > max_bytes:
        raise refused
    try:
        read_state_dict(path)
    except CheckpointError:
        raise refused from None
    return path
