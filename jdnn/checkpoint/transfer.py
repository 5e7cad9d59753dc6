"""restore_matching: partial restore for transfer learning, layer by layer.

A layer is a dict that holds leaves, e.g. `params/3_dense` with `w` and `b` (and, for batch norm,
`state/1_batchnorm` with `mean` and `var`). A layer is restored whole or not at all: every leaf
it has in the trees given must be saved at the same path with the same shape and dtype, and
the saved layer must have no leaf the given one lacks. So a new head is never half loaded, and
`only=`/`exclude=` say which layers may be loaded at all (an old head of the same shape matches
by shape alone: exclude it by name).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jax import tree_util

from jdnn.checkpoint.diff import few
from jdnn.checkpoint.fileformat import read, to_jax
from jdnn.core import Params, State
from jdnn.core import is_under, path_of

Select = str | Sequence[str] | Callable[[str], bool] | None
LOADED, EXCLUDED, ABSENT, DIFFERS = "loaded", "excluded", "absent", "differs"


@dataclasses.dataclass(frozen=True)
class LayerMatch:
    """What `restore_matching` did with one layer.

    Attributes:
        status: `"loaded"`; `"excluded"` (by `only=`/`exclude=`); `"absent"` (the checkpoint has
            no leaf of this layer); `"differs"` (a leaf's shape or dtype, or the set of leaves,
            differs from the saved layer's).
        reason: for people, e.g. `"params/3_dense/w: shape (8, 10) saved, (8, 3) given"`.
        leaves: the layer's given leaves, e.g. `("params/3_dense/b", "params/3_dense/w")`.
    """

    status: str
    reason: str
    leaves: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class MatchReport:
    """What `restore_matching` did, per layer and per leaf; leaf names start `params/`/`state/`.

    Attributes:
        loaded: leaves taken from the checkpoint (their whole layer matched).
        kept: leaves left as given because the checkpoint has nothing of their layer.
        skipped_shape_mismatch: leaves left as given because their layer differs from the saved
            one (a shape, a dtype, or which leaves it has), e.g. a head with a new number of
            classes; every leaf of such a layer is listed, not only the one that differs.
        unused: saved leaves of the trees given (`state/` only if `state` was) that no given
            leaf asked for.
        excluded: leaves of the layers that `only=`/`exclude=` left out.
        layers: `{layer path: LayerMatch}` for every layer given, e.g. `layers["3_dense"]`.
    """

    loaded: list[str]
    kept: list[str]
    skipped_shape_mismatch: list[str]
    unused: list[str]
    excluded: list[str] = dataclasses.field(default_factory=list)
    layers: dict[str, LayerMatch] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        loaded = [p for p, m in self.layers.items() if m.status == LOADED]
        lines = [f"loaded {len(loaded)} layers ({len(self.loaded)} leaves): {few(loaded, 8)}"]
        rest = [(p, m) for p, m in self.layers.items() if m.status != LOADED]
        lines.append(f"not loaded {len(rest)} layers" + (":" if rest else ""))
        lines += [f"  {p or '<root>'}: {m.reason}" for p, m in rest[:20]]
        if len(rest) > 20:
            lines.append(f"  (+{len(rest) - 20} more)")
        lines.append(f"unused from the checkpoint {len(self.unused)}: {few(self.unused, 8)}")
        return "\n".join(lines)


def _split(name: str) -> tuple[str, str]:
    """`"params/0_serial/1_dense/w"` -> `("0_serial/1_dense", "params/.../w")`: its layer."""
    path = name.split("/", 1)[1] if "/" in name else ""
    return (path.rsplit("/", 1)[0] if "/" in path else ""), name


def _selector(name: str, value: Select, layers: list[str]) -> Callable[[str], bool] | None:
    """`only`/`exclude` as a predicate on layer paths; every prefix must name a layer."""
    if value is None:
        return None
    if callable(value):
        return value
    prefixes = [value] if isinstance(value, str) else value
    if not isinstance(prefixes, Sequence) or not all(isinstance(p, str) for p in prefixes):
        raise TypeError(f"restore_matching: {name}= takes a layer path prefix (e.g. "
                        f"'3_dense'), a list of them, or a function of the layer path; got "
                        f"{value!r}")
    for prefix in prefixes:
        if not any(is_under(layer, [prefix]) for layer in layers):
            raise ValueError(f"restore_matching: {name}={prefix!r} names no layer of the trees "
                             f"given; their layers are {few(layers, 12)}")
    return lambda layer: is_under(layer, prefixes)


def _dtype(leaf: Any) -> str:
    dtype = getattr(leaf, "dtype", None)
    return np.dtype(np.asarray(leaf).dtype if dtype is None else dtype).name


def _differences(given: dict[str, Any], saved: list[str], entries: dict[str, Any]) -> list[str]:
    """Why a layer's saved leaves cannot replace the given ones; `[]` if they can."""
    problems = [f"{n} not saved" for n in given if n not in saved]
    problems += [f"{n} saved but not given" for n in saved if n not in given]
    for name in (n for n in given if n in saved):
        shape, dtype = tuple(np.shape(given[name])), _dtype(given[name])
        saved_shape, saved_dtype = tuple(entries[name]["shape"]), entries[name]["dtype"]
        if saved_shape != shape:
            problems.append(f"{name}: shape {saved_shape} saved, {shape} given")
        elif saved_dtype != dtype:
            problems.append(f"{name}: dtype {saved_dtype} saved, {dtype} given")
    return problems


def restore_matching(path: str | os.PathLike, params: Params, *, state: State | None = None,
                     only: Select = None, exclude: Select = None
                     ) -> tuple[Params, State | None, MatchReport]:
    """Partial restore for transfer learning: loads each saved layer that fits, keeps the rest.

    A layer (a dict holding leaves, e.g. `3_dense` with `w` and `b`) is loaded whole or not at
    all: all of its leaves in `params` (and in `state`, if given) are replaced by the saved ones
    only if each is saved at the same path with the same shape and the same dtype (float64
    saved is not float32 given), and the saved layer has no other leaf. The file is verified as
    by `restore`.

    Matching by shape cannot tell an old classification head from a new one of the same size:
    name the layers to load with `only=` or the ones not to load with `exclude=`.

    Args:
        path: the checkpoint file.
        params: a fresh params tree, e.g. from `new_model.init`, whose structure is kept.
        state: optionally, a fresh state tree; its leaves belong to the same layers as the
            params of the same path (batch norm: `scale`, `bias` and `mean`, `var`).
        only: load only these layers: a path prefix (`"0_serial"` takes every layer under it,
            whole path components only), a list of prefixes, or a function `(layer path) ->
            bool`. Every prefix must name a layer of the trees given.
        exclude: never load these layers; as `only`, and applied after it.

    Returns:
        `(params, state, report)`: the merged trees (`state` is None if none was given) and a
        `MatchReport` that says, layer by layer, what was loaded and why the rest was not.

    Raises:
        FileNotFoundError: if there is no file at `path`.
        CheckpointError: for a directory, or a damaged file (as `restore`).
        TypeError, ValueError: for an `only`/`exclude` that is not a prefix, a list of them or a
            function, or a prefix that names no layer.

    Warns:
        UserWarning: when no layer at all was loaded.

    Examples:
        >>> _, fresh, fresh_state = new_model.init(jax.random.key(1), (32, 784))
        >>> params, state, report = jdnn.checkpoint.restore_matching(
        ...     path, fresh, state=fresh_state, exclude="3_dense")   # a new head
        >>> print(report)
    """
    path, arrays, manifest = read(path, "restore_matching")
    entries = manifest["tensors"]
    trees = {"params": params} if state is None else {"params": params, "state": state}
    given: dict[str, Any] = {}
    for tree, value in trees.items():
        for keypath, leaf in tree_util.tree_flatten_with_path(value)[0]:
            given[f"{tree}/{path_of(keypath)}".rstrip("/")] = leaf
    by_layer: dict[str, dict[str, Any]] = {}
    for name, leaf in given.items():
        by_layer.setdefault(_split(name)[0], {})[name] = leaf
    saved_by_layer: dict[str, list[str]] = {}
    for name in arrays:
        if name.split("/", 1)[0] in trees:
            saved_by_layer.setdefault(_split(name)[0], []).append(name)
    keep = _selector("only", only, list(by_layer))
    drop = _selector("exclude", exclude, list(by_layer))

    layers: dict[str, LayerMatch] = {}
    for layer, leaves in by_layer.items():
        saved = saved_by_layer.get(layer, [])
        if (keep is not None and not keep(layer)) or (drop is not None and drop(layer)):
            status, reason = EXCLUDED, "excluded by only=/exclude="
        elif not saved:
            status, reason = ABSENT, "not in the checkpoint"
        else:
            problems = _differences(leaves, saved, entries)
            status, reason = (DIFFERS, "; ".join(problems)) if problems else (LOADED, LOADED)
        layers[layer] = LayerMatch(status, reason, tuple(leaves))

    status_of = {name: layers[_split(name)[0]].status for name in given}
    listed = {s: [n for n in given if status_of[n] == s] for s in (LOADED, EXCLUDED, ABSENT,
                                                                    DIFFERS)}
    unused = sorted(n for names in saved_by_layer.values() for n in names if n not in given)
    report = MatchReport(listed[LOADED], listed[ABSENT], listed[DIFFERS], unused,
                         listed[EXCLUDED], layers)
    if not listed[LOADED]:
        warnings.warn(f"restore_matching: no layer was loaded from {path}:\n{report}",
                      UserWarning, stacklevel=2)

    def pick(tree: str):
        def take(keypath, leaf):
            name = f"{tree}/{path_of(keypath)}".rstrip("/")
            return to_jax(arrays[name], entries[name]) if status_of[name] == LOADED else leaf
        return take

    merged = {tree: tree_util.tree_map_with_path(pick(tree), value)
              for tree, value in trees.items()}
    return merged["params"], merged.get("state"), report
