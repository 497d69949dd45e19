"""Checkpoints handed over by a user: validated in a temporary file, kept in the store only when readable."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .store import Store
from .training import CheckpointError, read_state_dict

MAX_UPLOAD_BYTES = 100 * 2**20


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
