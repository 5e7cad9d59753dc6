"""save, restore and restore_matching: a TrainState to one safetensors file and back."""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax import tree_util

from jdnn.checkpoint import diff, multiprocess
from jdnn.checkpoint.disk import write_atomic
from jdnn.checkpoint.fileformat import (
    FORMAT_VERSION,
    CheckpointError,
    check_depth,
    encode,
    is_typed_key,
    read,
    to_jax,
)
from jdnn.core import Layer, Params, State
from jdnn.core import path_of
from jdnn.train.state import TrainState

PathLike = str | os.PathLike
_LEAF = tree_util.tree_structure(0)


def _join(prefix: str, path: str) -> str:
    return f"{prefix}/{path}" if path else prefix


def _flatten_dicts(tree: Any, prefix: str) -> tuple[Any, list[tuple[str, Any]]]:
    """Nested dicts -> (the same dicts with `None` for each leaf, `[(path, leaf)]`).

    The skeleton keeps what flattening loses: empty dicts (`"1_relu": {}`) and key order.
    """
    if not isinstance(tree, Mapping):
        if tree_util.tree_structure(tree) != _LEAF:  # a tuple would be stacked into one array
            raise CheckpointError(f"{prefix}: params and state must be nested dicts of arrays "
                                  f"(jdnn's layer contract), found a {type(tree).__name__}")
        return None, [(prefix, tree)]
    skeleton, leaves = {}, []
    for key, sub in tree.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{prefix}: dict keys must be strings, got {key!r}")
        skeleton[key], sub_leaves = _flatten_dicts(sub, f"{prefix}/{key}")
        leaves += sub_leaves
    return skeleton, leaves


def _leaf_names(skeleton: Any, prefix: str) -> list[str]:
    if not isinstance(skeleton, dict):
        return [prefix]
    return [name for key, sub in skeleton.items() for name in _leaf_names(sub, f"{prefix}/{key}")]


def _unflatten_dicts(skeleton: Any, prefix: str, arrays: Mapping[str, jax.Array]) -> Any:
    if not isinstance(skeleton, dict):
        return arrays[prefix]
    return {key: _unflatten_dicts(sub, f"{prefix}/{key}", arrays) for key, sub in skeleton.items()}


def _check_json(value: Any, where: str) -> None:
    """Raises naming the first part of `value` that JSON cannot hold as it is."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{where}: key {key!r} is not a string (JSON keys are)")
            _check_json(item, f"{where}[{key!r}]")
    else:
        raise CheckpointError(f"{where} is a {type(value).__name__}, not JSON-serializable; use "
                              f"None, bool, int, float, str, and lists and dicts of those (e.g. "
                              f"float(loss) for an array)")


def _key_info(key: jax.Array) -> dict[str, Any]:
    try:
        impl = str(jax.random.key_impl(key))
    except (TypeError, ValueError):
        impl = None
    return {"typed": is_typed_key(key), "impl": impl, "shape": list(np.shape(key))}


def save(path: PathLike, train_state: TrainState, model: Layer, *,
         metadata: Mapping[str, Any] | None = None) -> Path:
    """Saves a `TrainState` to one safetensors file, atomically.

    Every array leaf is a named tensor: `params/0_dense/w`, `state/1_batchnorm/mean`,
    `opt_state/0/mu/0_dense/w` (the optax state's key path), `key` (a typed key's raw data) and
    `step`. A JSON manifest in the header records the model's spec, every tensor's shape, dtype
    and SHA-256, the tree structures, the step, the key's kind and the user's `metadata`. The file
    is written to a temporary file beside `path`, fsynced and renamed onto `path`, so a crash
    leaves any previous checkpoint there whole. Parent directories are created.

    With several processes (`jax.distributed`), every process calls `save` alike: arrays sharded
    across processes are gathered, process 0 alone writes the file and every process returns
    once it is written (`jdnn.checkpoint.multiprocess`; above `GATHER_LIMIT` sharded bytes it
    raises and names `save_sharded`). The file restores on any process count.

    Args:
        path: where to write, e.g. `"runs/mnist/step_1000.safetensors"`.
        train_state: the state to save (params, state, opt_state, key, step).
        model: the `Layer` the params belong to; its spec is recorded for `restore` to check.
        metadata: JSON-serializable values to keep with the checkpoint (e.g. the epoch, a
            validation score). They come back through JSON: tuples as lists.

    Returns:
        The path written, as a `pathlib.Path`.

    Raises:
        CheckpointError: if `metadata` holds a value JSON cannot (the message names it), a
            leaf's dtype has no safetensors equivalent (complex128, int4: cast first), or the
            params, state or metadata nest more than 64 levels deep (`restore` would refuse
            the file).

    Examples:
        >>> jdnn.checkpoint.save("ckpt/last.safetensors", ts, model, metadata={"epoch": 3})
    """
    # The one import not at the top: `__version__` is defined in `jdnn/__init__.py`, which
    # imports this package before it gets there (a module of its own for the version, imported
    # by both, would let this move up).
    from jdnn import __version__

    # Several processes: all gather the state, process 0 alone writes (see multiprocess.py)
    train_state, writes = multiprocess.for_writing(train_state, "save")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, Mapping):
        raise CheckpointError(f"metadata must be a dict, got a {type(metadata).__name__}")
    check_depth({"params": {"tree": train_state.params}, "state": {"tree": train_state.state},
                 "metadata": metadata}, "save")  # before anything below recurses into them
    _check_json(metadata, "metadata")
    params_tree, params_leaves = _flatten_dicts(train_state.params, "params")
    state_tree, state_leaves = _flatten_dicts(train_state.state, "state")
    opt_flat, opt_def = tree_util.tree_flatten_with_path(train_state.opt_state)
    opt_paths = [path_of(keypath) for keypath, _ in opt_flat]
    named = [*params_leaves, *state_leaves,
             *((_join("opt_state", p), leaf) for p, (_, leaf) in zip(opt_paths, opt_flat)),
             ("key", train_state.key), ("step", train_state.step)]
    manifest = {
        "format_version": FORMAT_VERSION,
        "jdnn_version": __version__,
        "jax_version": jax.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "spec": diff.jsonable(model.spec.to_dict()),
        "params": {"tree": params_tree, "paths": [n[len("params/"):] for n, _ in params_leaves]},
        "state": {"tree": state_tree, "paths": [n[len("state/"):] for n, _ in state_leaves]},
        "opt_state": {"paths": opt_paths, "num_leaves": len(opt_paths), "treedef": str(opt_def)},
        "step": np.asarray(train_state.step).tolist(),  # an int (a list for an ensemble)
        "key": _key_info(train_state.key),
        "metadata": diff.jsonable(metadata),
    }
    path = Path(path)
    if writes:
        write_atomic(path, encode(named, manifest))
    multiprocess.written(path)
    return path


@dataclasses.dataclass(frozen=True, eq=False)
class Checkpoint:
    """What `restore` read: the model's arrays, the manifest, and the optimizer state by path.

    Attributes:
        params: the parameters, nested dicts exactly as `model.init` returns them.
        state: the model's state (batch-norm statistics), likewise.
        key: the random key, typed (`jax.random.key`) or raw uint32, as it was saved.
        step: the step count, an int32 scalar array.
        manifest: the parsed JSON manifest (spec, tensors, versions, time, ...).
        metadata: the user's `metadata` given to `save`.
        opt_state_leaves: the optimizer state's leaves by name (`"opt_state/0/mu/0_dense/w"`);
            `train_state(optimizer)` puts them back into the optimizer's structure.
    """

    params: Params
    state: State
    key: jax.Array
    step: jax.Array
    manifest: dict[str, Any]
    metadata: dict[str, Any]
    opt_state_leaves: dict[str, jax.Array]

    def train_state(self, optimizer: optax.GradientTransformation) -> TrainState:
        """Rebuilds the full `TrainState`, for the optimizer the checkpoint was saved with.

        `optimizer.init` is traced (`jax.eval_shape`, nothing computed) for the state's
        structure, and each of its leaves is filled with the saved leaf of the same path.

        Args:
            optimizer: an optax optimizer of the same structure as the one saved (its
                hyper-parameters may differ, e.g. a new learning rate, unless injected).

        Returns:
            A `TrainState` ready for the next training step.

        Raises:
            CheckpointError: if the optimizer's state differs from the saved one, listing a few
                paths that are saved but not produced, produced but not saved, or reshaped.

        Examples:
            >>> ts = jdnn.checkpoint.restore("ckpt/last.safetensors").train_state(optax.adam(1e-3))
        """
        template = jax.eval_shape(optimizer.init, self.params)
        flat, treedef = tree_util.tree_flatten_with_path(template)
        names = [_join("opt_state", path_of(keypath)) for keypath, _ in flat]
        expected = {name: (leaf.shape, str(leaf.dtype)) for name, (_, leaf) in zip(names, flat)}
        saved = {name: (leaf.shape, str(leaf.dtype)) for name, leaf in
                 self.opt_state_leaves.items()}
        problems = diff.optimizer_problems(saved, expected)
        if problems:
            raise CheckpointError(
                f"optimizer state mismatch ({len(saved)} leaves saved, {len(expected)} from this "
                f"optimizer): {'; '.join(problems)}. Saved structure: "
                f"{str(self.manifest['opt_state'].get('treedef', '?'))[:400]}")
        opt_state = tree_util.tree_unflatten(treedef, [self.opt_state_leaves[n] for n in names])
        return TrainState(self.params, self.state, opt_state, self.key, self.step)


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """`{path: (shape, dtype name)}` for every leaf (arrays or `jax.ShapeDtypeStruct`s)."""
    flat = tree_util.tree_flatten_with_path(tree)[0]
    return {path_of(k): (tuple(np.shape(leaf)), str(leaf.dtype)) for k, leaf in flat}


def restore(path: PathLike, model: Layer | None = None, *,
            like: Params | None = None) -> Checkpoint:
    """Reads a checkpoint written by `save`, verifying every tensor before returning anything.

    The file must be whole: each tensor listed in the manifest present with its shape, dtype,
    byte size and SHA-256, and nothing else present; otherwise it raises, never loads in part.

    Args:
        path: the checkpoint file.
        model: if given, its spec must equal the saved one; differences name the layers.
        like: if given, a params tree (e.g. from `model.init`, or `jax.eval_shape` of it) whose
            paths, shapes and dtypes the saved params must match leaf for leaf.

    Returns:
        A `Checkpoint`; call `.train_state(optimizer)` on it for a full `TrainState`.

    Raises:
        FileNotFoundError: if there is no file at `path`.
        CheckpointError: for a directory, a truncated or corrupted file, a manifest nested more
            than 64 levels deep (see `jdnn.checkpoint.fileformat.MAX_DEPTH`), or a file that
            does not match `model` or `like` (every difference listed in one message).

    Examples:
        >>> ckpt = jdnn.checkpoint.restore("ckpt/last.safetensors", model)
        >>> ts = ckpt.train_state(optax.adam(1e-3))
    """
    path, arrays, manifest = read(path, "restore")
    try:
        params_names = _leaf_names(manifest["params"]["tree"], "params")
        state_names = _leaf_names(manifest["state"]["tree"], "state")
        opt_names = [_join("opt_state", p) for p in manifest["opt_state"]["paths"]]
        announced = manifest["opt_state"]["num_leaves"]
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: incomplete manifest (no {error})") from None
    names = [*params_names, *state_names, *opt_names, "key", "step"]
    problems = [f"{n} in the trees but not stored" for n in names if n not in arrays]
    problems += [f"{n} stored but in no tree" for n in arrays.keys() - set(names)]
    if announced != len(opt_names):
        problems.append(f"{announced} optimizer leaves announced, {len(opt_names)} listed")
    if problems:
        raise CheckpointError(f"{path}: inconsistent manifest: {'; '.join(problems)}")
    if model is not None:
        problems = diff.spec_differences(manifest.get("spec") or {},
                                         diff.jsonable(model.spec.to_dict()))
        if problems:
            raise CheckpointError(f"{path} was saved from a different model: "
                                  f"{'; '.join(problems)}")
    if like is not None:
        entries = manifest["tensors"]
        saved = {n[len("params/"):]: (entries[n]["shape"], entries[n]["dtype"])
                 for n in params_names}
        problems = diff.tree_problems(saved, _shapes(like))
        if problems:
            raise CheckpointError(f"{path} does not match `like`: {'; '.join(problems)}")
    values = {name: to_jax(arrays[name], manifest["tensors"][name]) for name in names}
    return Checkpoint(
        params=_unflatten_dicts(manifest["params"]["tree"], "params", values),
        state=_unflatten_dicts(manifest["state"]["tree"], "state", values),
        key=values["key"], step=values["step"], manifest=manifest,
        metadata=manifest.get("metadata", {}),
        opt_state_leaves={name: values[name] for name in opt_names})
