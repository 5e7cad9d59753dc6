"""Atomic file writes: a temporary file in the same folder, flushed and fsynced, then renamed
over the target, so a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


def write_bytes(path, data: bytes) -> pathlib.Path:
    """Writes `data` to `path` atomically, creating parent folders; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path, text: str) -> pathlib.Path:
    """Writes `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))
