"""Bytes to disk: atomic writes, and the sweep of temporary files crashed writes left behind.

`write_atomic` writes to a temporary file beside the target, fsyncs it and renames it over the
target, so a crash leaves the old file or the new one, never half of one. The temporary file is
created like any new file (mode 0o666 less the umask, so a group-writable umask gives
group-writable checkpoints) and named `.{target name}.{8 hex digits}.jdnn.tmp`; while writing,
its writer holds an exclusive `flock` on it (where the platform has one). A write that crashes
leaves that file behind: the next `write_atomic` into the same directory deletes it, and only
it: a file is swept only if its name matches `TEMP_PATTERN`, it has been untouched for
`ORPHAN_AGE` (10 minutes), and no live writer holds its lock, so a concurrent save, even a slow
one, is never disturbed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from pathlib import Path

from jdnn.checkpoint.fileformat import CheckpointError

try:  # POSIX: a writer holds a lock on its temporary file, so a sweep can tell it is alive
    import fcntl
except ImportError:  # Windows: an open file cannot be deleted anyway
    fcntl = None

TEMP_SUFFIX = ".jdnn.tmp"
TEMP_PATTERN = re.compile(r"\..+\.[0-9a-f]{8}\.jdnn\.tmp")
ORPHAN_AGE = 10 * 60


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, locked temporary file beside `path`: `(fd, name)`.

    Created with mode 0o666 so that the umask (and a default ACL) applies as for a plain
    `open`; `O_EXCL` so that it is always a fresh file.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = str(path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            fd = os.open(name, flags, 0o666)
        except FileExistsError:
            continue
        if fcntl is not None:
            with contextlib.suppress(OSError):  # some network filesystems have no locks
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, name
    raise FileExistsError(f"could not create a temporary file beside {path}")


def remove_orphans(directory: Path, min_age: float = ORPHAN_AGE) -> list[Path]:
    """Deletes the temporary files crashed writes left in `directory`; returns their paths.

    Only jdnn's own (`.{name}.{8 hex}.jdnn.tmp`, see `TEMP_PATTERN`), only ones untouched for
    `min_age` seconds, and, where the platform has file locks, only ones no live writer holds
    locked (a writer keeps its lock until the rename): a concurrent save is never disturbed.
    """
    removed = []
    cutoff = time.time() - min_age
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if not TEMP_PATTERN.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):
                if not entry.is_file(follow_symlinks=False) or entry.stat().st_mtime > cutoff:
                    continue
                fd = os.open(entry.path, os.O_RDONLY)
                try:
                    if fcntl is not None:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: a live writer
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
                finally:
                    os.close(fd)
    return removed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:1 << 26]):]  # 64 MiB at a time: the mtime stays fresh


def write_atomic(path: Path, data: bytes) -> None:
    """Writes `data` to `path` so that readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same directory (`.{name}.{8 hex}.jdnn.tmp`, created
    like any new file: mode 0o666 less the umask), which is fsynced and then renamed onto `path`
    (`os.replace` is atomic on POSIX and Windows); the directory is fsynced too, where the
    platform allows. On any error the temporary file is removed and whatever was at `path`
    before is left untouched. Parent directories are created. Temporary files that earlier
    crashed writes left in the directory are deleted first (`remove_orphans`: only jdnn's, only
    ones untouched for 10 minutes and not locked by a live writer).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent)
    fd, tmp = _create_temp(path)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
            os.replace(tmp, path)
        finally:
            os.close(fd)  # releases the lock, after the rename
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # best effort: not every platform can fsync a directory
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_writable(directory: Path, caller: str) -> None:
    """Creates `directory` and proves it writable by creating and deleting a temporary file.

    Raises:
        CheckpointError: naming `caller`, the directory and why it cannot be written.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = _create_temp(directory / "write-test")
        os.close(fd)
        os.unlink(name)
    except OSError as error:
        reason = ("it is a file, not a directory" if directory.exists() and not directory.is_dir()
                  else error.strerror or str(error))
        raise CheckpointError(f"{caller}: cannot write checkpoints into {directory}: {reason}; "
                              f"pass a directory this process can create and write") from None
