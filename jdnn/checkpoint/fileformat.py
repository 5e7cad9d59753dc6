"""The bytes of a checkpoint: named arrays and a JSON manifest in one safetensors file.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and byte offsets, plus a `__metadata__` dict of strings), then the raw tensor bytes. jdnn
puts its manifest, as JSON, in `__metadata__["jdnn"]`. Nothing here runs code from the file:
there is no pickle anywhere, so loading an untrusted checkpoint can only fail, never execute.

This module knows arrays and names, not models: `encode`/`decode` turn `[(name, array)]` plus a
manifest into bytes and back, checking every byte on the way in; `write_atomic` puts bytes on
disk so a crash leaves the previous file whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

FORMAT_VERSION = 1
MANIFEST_KEY = "jdnn"

# numpy dtype name -> safetensors dtype code. Anything else (complex128, int4, ...) is refused at
# save time: converting silently would not give back what was saved.
DTYPE_CODES = {
    "bool": "BOOL", "int8": "I8", "uint8": "U8", "int16": "I16", "uint16": "U16",
    "int32": "I32", "uint32": "U32", "int64": "I64", "uint64": "U64",
    "float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64",
    "complex64": "C64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, read, or does not match what it is restored into."""


def is_typed_key(leaf: Any) -> bool:
    """True for a new-style typed key array (`jax.random.key`), False for anything else."""
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _to_numpy(name: str, leaf: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """A leaf as a contiguous host array and its manifest entry; typed keys store their data."""
    extra = {}
    if is_typed_key(leaf):
        extra["key_impl"] = str(jax.random.key_impl(leaf))
        leaf = jax.random.key_data(leaf)
    elif not isinstance(leaf, (jax.Array, np.ndarray)):
        try:
            leaf = jnp.asarray(leaf)  # Python scalars get JAX's dtype, as under jit
        except TypeError:
            raise CheckpointError(f"cannot store {name}: a {type(leaf).__name__} is not an "
                                  f"array") from None
    array = np.asarray(leaf, order="C")  # not ascontiguousarray: it makes scalars 1-d
    if array.dtype.name not in DTYPE_CODES:
        raise CheckpointError(f"cannot store {name}: dtype {array.dtype.name} has no safetensors "
                              f"equivalent; supported: {', '.join(DTYPE_CODES)}")
    entry = {"shape": list(array.shape), "dtype": array.dtype.name, **extra,
             "sha256": _digest(array)}
    return array, entry


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.reshape(-1).view(np.uint8)).hexdigest()


def encode(named: list[tuple[str, Any]], manifest: dict[str, Any]) -> bytes:
    """Serializes named leaves; fills `manifest["tensors"]` and stores the manifest in the header.

    Raises:
        CheckpointError: for two leaves with one name or a dtype safetensors cannot hold.
    """
    arrays, entries = {}, {}
    for name, leaf in named:
        if name in arrays:
            raise CheckpointError(f"two leaves would be stored as {name!r}; dict keys must not "
                                  f"contain '/' in a way that makes paths collide")
        arrays[name], entries[name] = _to_numpy(name, leaf)
    manifest["tensors"] = entries
    header = {"format": "jdnn.checkpoint", MANIFEST_KEY: json.dumps(manifest)}
    return safetensors.numpy.save(arrays, metadata=header)


def decode(data: bytes, source: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Parses and verifies a checkpoint's bytes: every tensor present, sized and summed as listed.

    Args:
        data: the whole file.
        source: what to call the file in messages (its path).

    Returns:
        `(arrays, manifest)`: host arrays by name (typed keys still as their raw data; see
        `to_jax`) and the parsed manifest.

    Raises:
        CheckpointError: for a short, truncated or corrupted file, a safetensors file that is not
            a jdnn checkpoint, or a manifest that disagrees with the tensors present.
    """
    if len(data) < 8:
        raise CheckpointError(f"{source}: {len(data)} bytes is too short for a checkpoint (a "
                              f"safetensors file starts with an 8-byte header length)")
    size = int.from_bytes(data[:8], "little")
    if 8 + size > len(data):
        raise CheckpointError(f"{source}: truncated or corrupted: the header claims {size} bytes, "
                              f"the file has {len(data) - 8} after the length")
    try:
        views = safetensors.deserialize(data)
        header = json.loads(data[8:8 + size])
    except Exception as error:  # safetensors raises its own SafetensorError, json a ValueError
        raise CheckpointError(f"{source}: not a valid safetensors file, truncated or corrupted "
                              f"({error})") from None
    try:
        manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
        entries = manifest["tensors"]
        if not all(isinstance(entry, dict) for entry in entries.values()):
            raise TypeError("a tensor entry is not a dict")
    except (AttributeError, KeyError, TypeError, ValueError):
        raise CheckpointError(f"{source}: a safetensors file, but not a jdnn checkpoint (no "
                              f"readable '{MANIFEST_KEY}' manifest in its header metadata)"
                              ) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format version "
                              f"{manifest.get('format_version')!r}; this jdnn reads version "
                              f"{FORMAT_VERSION}")
    present = {name for name, _ in views}
    problems = [f"{name} listed in the manifest but absent" for name in entries
                if name not in present]
    problems += [f"{name} present but not in the manifest" for name in sorted(present)
                 if name not in entries]
    arrays = {}
    for name, view in views:
        if name not in entries:
            continue
        array, problem = _check_tensor(name, view, entries[name])
        if problem:
            problems.append(problem)
        arrays[name] = array
    if problems:
        raise CheckpointError(f"{source}: corrupted checkpoint: {'; '.join(problems)}")
    return arrays, manifest


def _check_tensor(name: str, view: Mapping[str, Any],
                  entry: Mapping[str, Any]) -> tuple[np.ndarray | None, str | None]:
    """One tensor's bytes against its manifest entry: dtype, shape, byte size and checksum."""
    code, shape = DTYPE_CODES.get(entry.get("dtype")), tuple(entry.get("shape", ()))
    if code is None or view["dtype"] != code or tuple(view["shape"]) != shape:
        return None, (f"{name} is {view['dtype']}{list(view['shape'])} in the file, "
                      f"{entry.get('dtype')}{list(shape)} in the manifest")
    dtype = jnp.dtype(entry["dtype"])
    if len(view["data"]) != math.prod(shape) * dtype.itemsize:
        return None, (f"{name} has {len(view['data'])} bytes, its shape and dtype need "
                      f"{math.prod(shape) * dtype.itemsize}")
    array = np.frombuffer(view["data"], dtype=dtype).reshape(shape)
    if _digest(array) != entry.get("sha256"):
        return None, f"{name} fails its checksum"
    return array, None


def read(path: str | os.PathLike) -> tuple[Path, dict[str, np.ndarray], dict[str, Any]]:
    """Reads and verifies the file at `path`: `(path, arrays, manifest)`, as `decode`.

    Raises:
        FileNotFoundError: if there is no file at `path`.
        CheckpointError: as `decode`.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    return path, *decode(data, str(path))


def to_jax(array: np.ndarray, entry: Mapping[str, Any]) -> jax.Array:
    """A decoded host array as a JAX array; rewrapped as a typed key if it was saved as one."""
    if "key_impl" in entry:
        return jax.random.wrap_key_data(jnp.asarray(array), impl=entry["key_impl"])
    return jnp.asarray(array)


def write_atomic(path: Path, data: bytes) -> None:
    """Writes `data` to `path` so that readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same directory, which is flushed, fsynced and then
    renamed onto `path` (`os.replace` is atomic on POSIX and Windows); the directory is fsynced
    too, where the platform allows. On any error the temporary file is removed and whatever was
    at `path` before is left untouched. Parent directories are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                      delete=False)
    try:
        with tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, 0o644)  # NamedTemporaryFile makes 0600 files
        os.replace(tmp.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise
    with contextlib.suppress(OSError):  # best effort: not every platform can fsync a directory
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
