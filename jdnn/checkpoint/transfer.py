"""restore_matching: partial restore for transfer learning, leaf by leaf, by path and shape."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from jax import tree_util

from jdnn.checkpoint.diff import few
from jdnn.checkpoint.fileformat import read, to_jax
from jdnn.core import Params, State
from jdnn.regularizers import path_of


@dataclasses.dataclass(frozen=True)
class MatchReport:
    """What `restore_matching` did with each leaf; paths are prefixed `params/` or `state/`.

    Attributes:
        loaded: leaves taken from the checkpoint (same path, shape and dtype).
        kept: leaves left as given because the checkpoint has no leaf at their path.
        skipped_shape_mismatch: leaves left as given because the saved leaf's shape or dtype
            differs (e.g. a classification head with a new number of classes).
        unused: saved leaves of the trees given (`state/` only if `state` was) that no given
            leaf asked for.
    """

    loaded: list[str]
    kept: list[str]
    skipped_shape_mismatch: list[str]
    unused: list[str]

    def __str__(self) -> str:
        return "\n".join([
            f"loaded {len(self.loaded)}: {few(self.loaded, 8)}",
            f"kept (not in the checkpoint) {len(self.kept)}: {few(self.kept, 8)}",
            f"kept (shape or dtype differs) {len(self.skipped_shape_mismatch)}: "
            f"{few(self.skipped_shape_mismatch, 8)}",
            f"unused from the checkpoint {len(self.unused)}: {few(self.unused, 8)}"])


def restore_matching(path: str | os.PathLike, params: Params, *,
                     state: State | None = None) -> tuple[Params, State | None, MatchReport]:
    """Partial restore for transfer learning: takes each saved leaf that fits, keeps the rest.

    A leaf of `params` (or `state`) is replaced by the saved leaf at the same path if its shape
    and dtype agree; otherwise the given value is kept. The file is verified as by `restore`.

    Args:
        path: the checkpoint file.
        params: a fresh params tree, e.g. from `new_model.init`, whose structure is kept.
        state: optionally, a fresh state tree, treated the same way.

    Returns:
        `(params, state, report)`: the merged trees (`state` is None if none was given) and a
        `MatchReport` that prints which leaves were loaded, kept, or skipped.

    Example:
        >>> _, fresh, fresh_state = new_model.init(jax.random.key(1), (32, 784))
        >>> params, state, report = jdnn.checkpoint.restore_matching(path, fresh, state=fresh_state)
    """
    path, arrays, manifest = read(path)
    entries = manifest["tensors"]
    loaded, kept, skipped, used = [], [], [], set()

    def take(prefix: str):
        def pick(keypath, leaf):
            name = f"{prefix}/{path_of(keypath)}"
            if name not in arrays:
                kept.append(name)
                return leaf
            used.add(name)
            value = to_jax(arrays[name], entries[name])
            if value.shape != np.shape(leaf) or str(value.dtype) != str(leaf.dtype):
                skipped.append(name)
                return leaf
            loaded.append(name)
            return value
        return pick

    params = tree_util.tree_map_with_path(take("params"), params)
    if state is not None:
        state = tree_util.tree_map_with_path(take("state"), state)
    asked = ("params/",) if state is None else ("params/", "state/")
    unused = [name for name in sorted(arrays) if name.startswith(asked) and name not in used]
    return params, state, MatchReport(loaded, kept, skipped, unused)
