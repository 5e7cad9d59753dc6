"""The bytes of a checkpoint: named arrays and a JSON manifest in one safetensors file.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and byte offsets, plus a `__metadata__` dict of strings), then the raw tensor bytes. jdnn
puts its manifest, as JSON, in `__metadata__["jdnn"]`. Nothing here runs code from the file:
there is no pickle anywhere, so loading an untrusted checkpoint can only fail, never execute.

This module knows arrays and names, not models: `encode`/`decode` turn `[(name, array)]` plus a
manifest into bytes and back, checking every byte on the way in (`jdnn.checkpoint.disk` puts the
bytes on disk).

A manifest is JSON from a file that may be hostile: the params and state trees and the user's
metadata may nest at most `MAX_DEPTH` (64) levels, the manifest as a whole (whose spec nests two
levels per combinator) at most `4 * MAX_DEPTH`; deeper ones are refused at save and at read, so
nothing recurses without bound.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

FORMAT_VERSION = 1
"""The checkpoint format this jdnn writes and reads: the manifest's `format_version`."""
MANIFEST_KEY = "jdnn"
MAX_DEPTH = 64

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


def too_deep(value: Any, limit: int) -> bool:
    """Whether dicts, lists and tuples in `value` nest more than `limit` levels (`{"w": x}` is
    one level); a loop, not a recursion, so a hostile value cannot exhaust the stack."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children = list(item.values())
        elif isinstance(item, (list, tuple)):
            children = list(item)
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def check_depth(manifest: Mapping[str, Any], source: str) -> None:
    """Refuses a manifest nested deeper than jdnn reads back (see the module docstring).

    Raises:
        CheckpointError: naming the part that nests too deeply.
    """
    def tree(section: Any) -> Any:
        return section.get("tree") if isinstance(section, Mapping) else None

    parts = {"params tree": tree(manifest.get("params")), "state tree": tree(manifest.get("state")),
             "metadata": manifest.get("metadata")}
    for what, value in parts.items():
        if too_deep(value, MAX_DEPTH):
            raise CheckpointError(f"{source}: the {what} nests more than {MAX_DEPTH} levels deep; "
                                  f"jdnn checkpoints hold at most {MAX_DEPTH}")
    if too_deep(manifest, 4 * MAX_DEPTH):
        raise CheckpointError(f"{source}: the manifest nests more than {4 * MAX_DEPTH} levels "
                              f"deep (a spec of over {2 * MAX_DEPTH - 2} nested layers?); jdnn "
                              f"reads at most {4 * MAX_DEPTH}")


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
             "sha256": digest(array)}
    return array, entry


def digest(array: np.ndarray) -> str:
    """The SHA-256 of an array's bytes, as the manifest records it."""
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


def _parse_manifest(header: Any, source: str) -> dict[str, Any]:
    """The jdnn manifest from a parsed safetensors header, its depth checked."""
    try:
        manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
        entries = manifest["tensors"]
        if not all(isinstance(entry, dict) for entry in entries.values()):
            raise TypeError("a tensor entry is not a dict")
    except RecursionError:
        raise CheckpointError(f"{source}: the manifest nests too deeply to parse; jdnn "
                              f"checkpoints nest at most {4 * MAX_DEPTH} levels") from None
    except (AttributeError, KeyError, TypeError, ValueError):
        raise CheckpointError(f"{source}: a safetensors file, but not a jdnn checkpoint (no "
                              f"readable '{MANIFEST_KEY}' manifest in its header metadata)"
                              ) from None
    check_depth(manifest, source)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format version "
                              f"{manifest.get('format_version')!r}; this jdnn reads version "
                              f"{FORMAT_VERSION}")
    return manifest


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
            a jdnn checkpoint, a manifest nested too deeply, or a manifest that disagrees with
            the tensors present.
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
    manifest = _parse_manifest(header, source)
    entries = manifest["tensors"]
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
    if digest(array) != entry.get("sha256"):
        return None, f"{name} fails its checksum"
    if "key_impl" in entry:  # a typed key: its implementation must be one jax knows for the data
        try:
            to_jax(array, entry)
        except (TypeError, ValueError) as error:
            return None, f"{name} is not a key of implementation {entry['key_impl']!r} ({error})"
    return array, None


def _checked_file(path: str | os.PathLike, caller: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{caller}: {path} is a directory, not a checkpoint file; pass a "
                              f"file in it (jdnn.ModelCheckpoint.latest(directory) finds the "
                              f"newest)")
    if not path.exists():
        raise FileNotFoundError(f"{caller}: no checkpoint at {path}")
    return path


def read(path: str | os.PathLike, caller: str = "restore"
         ) -> tuple[Path, dict[str, np.ndarray], dict[str, Any]]:
    """Reads and verifies the file at `path`: `(path, arrays, manifest)`, as `decode`.

    Args:
        path: the checkpoint file.
        caller: the entry point the user called, to name in messages.

    Raises:
        FileNotFoundError: if there is no file at `path`.
        CheckpointError: if `path` is a directory; otherwise as `decode`.
    """
    path = _checked_file(path, caller)
    return path, *decode(path.read_bytes(), str(path))


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the checkpoint at `path`, reading only the file's header.

    Cheap enough to call on every file of a directory (to find the newest checkpoint, or to
    prove which run wrote a file); the tensors are not read, hence not verified: `read` does that.

    Raises:
        OSError: if the file cannot be read.
        CheckpointError: if its header is not a jdnn checkpoint's.
    """
    source = str(path)
    with open(path, "rb") as file:
        start = file.read(8)
        size = int.from_bytes(start, "little")
        if len(start) < 8 or size > 100_000_000:  # safetensors caps headers at 100 MB too
            raise CheckpointError(f"{source}: not a safetensors file (header length {size})")
        text = file.read(size)
    try:
        header = json.loads(text)
    except (RecursionError, ValueError):
        raise CheckpointError(f"{source}: not a valid safetensors header") from None
    return _parse_manifest(header, source)


def to_jax(array: np.ndarray, entry: Mapping[str, Any]) -> jax.Array:
    """A decoded host array as a JAX array; rewrapped as a typed key if it was saved as one."""
    if "key_impl" in entry:
        return jax.random.wrap_key_data(jnp.asarray(array), impl=entry["key_impl"])
    return jnp.asarray(array)
