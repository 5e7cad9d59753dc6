"""Checkpoints when several processes train one model: one file, written once; or orbax shards.

Two engines, chosen by the size of what is sharded:

- **Gather, then one file** (`jdnn.checkpoint.save`, the default). Every process calls `save`
  with the same arguments (as it calls every compiled step); the arrays that are sharded across
  processes are gathered (`jdnn.distributed.to_host`, a collective), process 0 alone writes the
  usual safetensors file, atomically, and all processes wait for the write before going on, so
  a process that reads the file next finds it whole. Replicated arrays (data-parallel training,
  `fit(..., mesh=)`) cost no communication: every process already holds them. The file does not
  record how many processes wrote it: `restore` reads it into one process, and `fit` places it
  on whatever mesh the next run has, so it restores on any process count. The price of the
  gather is host memory: every process holds the whole state for a moment. `save` therefore
  refuses to gather more than `GATHER_LIMIT` bytes of sharded arrays and names the other engine.
- **Sharded, with orbax** (`save_sharded`, `restore_sharded`; the optional `orbax-checkpoint`
  package: `pip install jdnn[orbax]`). Each process writes only the shards it holds, in
  parallel, into one checkpoint directory (orbax commits it atomically), and restoring reads
  each shard straight onto the device of a mesh of any shape (another process or device count).
  For models sharded because they do not fit on one device (`jdnn.sharding.fsdp_shardings`).

The file or directory must be on a file system every process sees (a shared or network one):
after `save` returns, every process may read the checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jdnn import distributed
from jdnn.checkpoint.disk import write_atomic
from jdnn.checkpoint.fileformat import CheckpointError
from jdnn.core import Layer
from jdnn.train.state import TrainState

GATHER_LIMIT = 2 << 30   # bytes of cross-process sharded arrays `save` gathers to every host


def _sharded_bytes(tree: Any) -> int:
    """Bytes of the arrays of `tree` that no single process holds whole."""
    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree)
               if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
               and not leaf.is_fully_replicated)


def for_writing(train_state: TrainState, caller: str,
                limit: int = GATHER_LIMIT) -> tuple[TrainState, bool]:
    """The state, whole on the host, and whether this process writes it (process 0 only).

    On one process: the state as it is, and True. On several: the gathered state (a collective:
    every process must call this) and `jax.process_index() == 0`.

    Raises:
        CheckpointError: naming `caller`, if more than `limit` bytes are sharded across
            processes (too large to gather to every host): use `save_sharded`.
    """
    if jax.process_count() == 1:
        return train_state, True
    sharded = _sharded_bytes(train_state)
    if sharded > limit:
        raise CheckpointError(
            f"{caller}: the train state has {sharded / 2**30:.2f} GiB sharded across "
            f"{jax.process_count()} processes, more than the {limit / 2**30:.2f} GiB "
            f"(GATHER_LIMIT) gathered to every host for one file; save it sharded with "
            f"jdnn.checkpoint.multiprocess.save_sharded(directory, train_state, model) "
            f"(pip install jdnn[orbax])")
    return distributed.to_host(train_state), distributed.is_primary()


def written(path: Path) -> None:
    """All processes wait here until process 0 has written `path` (nothing with one)."""
    distributed.sync(f"jdnn.checkpoint:{os.fspath(path)}")


# ---------------------------------------------------------------------------------------------
# The sharded engine: orbax-checkpoint, imported only when used (an optional extra).

MANIFEST = "jdnn.json"


def _orbax(caller: str):
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError(f"{caller} needs the optional package orbax-checkpoint: pip install "
                          f"jdnn[orbax] (or save with jdnn.checkpoint.save, which gathers the "
                          f"state into one file)") from None
    return ocp


def _as_tree(train_state: TrainState) -> dict[str, Any]:
    """The state as orbax saves it: a dict, the typed key as its raw data."""
    return {"params": train_state.params, "state": train_state.state,
            "opt_state": train_state.opt_state, "key": jax.random.key_data(train_state.key),
            "step": train_state.step}


def save_sharded(directory: str | os.PathLike, train_state: TrainState, model: Layer, *,
                 metadata: dict[str, Any] | None = None) -> Path:
    """Saves a (sharded) `TrainState` with orbax: each process writes the shards it holds.

    Every process calls it with the same arguments. `directory` (new; orbax refuses to
    overwrite) receives orbax's files and `jdnn.json`: the model's spec, the key's kind and the
    user's `metadata`, written by process 0.

    Args:
        directory: the checkpoint directory, on a file system every process sees.
        train_state: the state, e.g. placed by `jdnn.sharding.shard_state`.
        model: the model, whose spec is recorded.
        metadata: JSON values to keep with the checkpoint.

    Returns:
        The directory, as an absolute `pathlib.Path`.

    Examples:
        >>> jdnn.checkpoint.multiprocess.save_sharded("ckpt/step_100", ts, model)
    """
    ocp = _orbax("save_sharded")
    directory = Path(directory).absolute()
    with ocp.StandardCheckpointer() as checkpointer:   # closing waits for every write
        checkpointer.save(directory, _as_tree(train_state))
    if distributed.is_primary():
        manifest = {"spec": model.spec.to_dict(), "key_impl": str(jax.random.key_impl(
            train_state.key)), "metadata": metadata or {}}
        write_atomic(directory / MANIFEST, json.dumps(manifest, default=str).encode())
    written(directory)
    return directory


def restore_sharded(directory: str | os.PathLike, like: TrainState,
                    shardings: Any = None) -> TrainState:
    """Reads a `save_sharded` checkpoint, each shard straight to where `shardings` puts it.

    The process and device counts may differ from the saving run's.

    Args:
        directory: the checkpoint directory.
        like: a `TrainState` of the same structure, shapes and dtypes (arrays or
            `jax.ShapeDtypeStruct`s, e.g. `jax.eval_shape` of `TrainState.create`).
        shardings: a tree of `jax.sharding.Sharding`s matching `like` (e.g.
            `jdnn.sharding.fsdp_shardings(like, mesh)`); None: `like`'s own shardings.

    Returns:
        The restored `TrainState`, placed by `shardings`.

    Raises:
        CheckpointError: if the directory holds no `jdnn.json` (not a `save_sharded` checkpoint).

    Examples:
        >>> ts = restore_sharded("ckpt/step_100", like, jdnn.sharding.fsdp_shardings(like, mesh))
    """
    ocp = _orbax("restore_sharded")
    directory = Path(directory).absolute()
    if not (directory / MANIFEST).is_file():
        raise CheckpointError(f"restore_sharded: {directory} holds no {MANIFEST}: not a "
                              f"checkpoint written by save_sharded")
    impl = json.loads((directory / MANIFEST).read_text())["key_impl"]
    if shardings is None:
        shardings = jax.tree.map(lambda leaf: leaf.sharding, like)

    def target(leaf, sharding):
        return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=sharding)

    key_data = jax.eval_shape(jax.random.key_data, like.key)
    template = {"params": jax.tree.map(target, like.params, shardings.params),
                "state": jax.tree.map(target, like.state, shardings.state),
                "opt_state": jax.tree.map(target, like.opt_state, shardings.opt_state),
                "key": target(key_data, shardings.key), "step": target(like.step, shardings.step)}
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(directory, template)
    key = jax.random.wrap_key_data(tree["key"], impl=impl)
    return TrainState(tree["params"], tree["state"], tree["opt_state"], key, tree["step"])
