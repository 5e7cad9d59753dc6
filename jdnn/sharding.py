"""Fully sharded data parallel (FSDP): models larger than one device's memory.

Data parallelism (`jdnn.parallel`) keeps a full copy of the train state on every device. FSDP
splits it instead: each parameter and each optimizer-state array is cut into equal slices along
one of its dimensions, one slice per device of the mesh's data axis, so a device holds
`1 / devices` of the state. The batch is split along the same axis, as in data parallelism.
Nothing else changes in the step: the shardings are annotations (`NamedSharding`s on the
compiled epoch's inputs and outputs, and constraints on the state at each step's entry and exit),
and XLA's SPMD partitioner inserts the collectives: an all-gather of each parameter before it
is used, a reduce-scatter of its gradient, the optimizer update on each device's slice only.
The math is the single-device math (tests/test_fsdp.py: 8 devices equal one to float32
tolerance).

    shardings = fsdp_shardings(train_state, mesh)     # a tree of NamedSharding, like the state
    train_state = shard_state(train_state, mesh)      # placed: each device holds its slices
    epoch = make_fsdp_epoch(step, batch_size, mesh, train_state)
    train_state, means = epoch(train_state, x, y, order)     # x, y from jdnn.parallel.put_data
    device_bytes(train_state)                         # {device: bytes of its shards}

Which dimension: the largest one divisible by the axis size (the first of equal ones), for
every array of at least `min_size` elements; smaller arrays (biases, batch-norm statistics,
the step, the key) and arrays with no divisible dimension stay replicated: slicing them saves
little and costs a collective each. The dataset stays replicated, as in `jdnn.parallel`.
Several processes: the same code after `jdnn.distributed.initialize()`; the mesh then spans
them (`jdnn.parallel.data_mesh()`) and the state is placed with `jdnn.distributed.put_global`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jdnn.distributed import put_global
from jdnn.train.fit import DATA_AXIS, auto_mesh, axis_size, epoch_fn, epoch_sharding

__all__ = ["MIN_SIZE", "device_bytes", "fsdp_shardings", "make_fsdp_epoch", "shard_state"]

MIN_SIZE = 1024
"""Arrays with fewer elements stay replicated (the default `min_size`)."""


def _leaf_spec(shape: tuple[int, ...], devices: int, axis: str, min_size: int) -> P:
    """The slices of one array: its largest dimension divisible by `devices`, or none."""
    if int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    divisible = [d for d, size in enumerate(shape) if size % devices == 0 and size >= devices]
    if not divisible:
        return P()
    dim = max(divisible, key=lambda d: (shape[d], -d))
    return P(*(axis if d == dim else None for d in range(len(shape))))


def fsdp_shardings(tree: Any, mesh: Mesh, axis: str = DATA_AXIS, *,
                   min_size: int = MIN_SIZE) -> Any:
    """Where each array of `tree` lives under FSDP: a `NamedSharding` per leaf.

    Args:
        tree: a pytree of arrays or `jax.ShapeDtypeStruct`s, e.g. a `TrainState` (typed random
            keys are replicated).
        mesh: the mesh, e.g. `jdnn.parallel.data_mesh()`.
        axis: the mesh axis the arrays (and later the batch) are split along.
        min_size: arrays with fewer elements stay replicated.

    Returns:
        A tree like `tree` with a `NamedSharding` per leaf: sliced along the leaf's largest
        dimension divisible by the axis size, or replicated.

    Raises:
        ValueError: if `mesh` has no axis `axis`.

    Examples:
        >>> shardings = jdnn.sharding.fsdp_shardings(train_state, mesh)
        >>> shardings.params["0_dense"]["w"].spec          # PartitionSpec('data', None)
    """
    devices = axis_size(mesh, axis)
    mesh = auto_mesh(mesh)

    def leaf_sharding(leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, _leaf_spec(tuple(np.shape(leaf)), devices, axis, min_size))

    return jax.tree.map(leaf_sharding, tree)


def shard_state(train_state: Any, mesh: Mesh, axis: str = DATA_AXIS, *,
                min_size: int = MIN_SIZE) -> Any:
    """`train_state` placed by `fsdp_shardings`: each device holds only its slices.

    Examples:
        >>> train_state = jdnn.sharding.shard_state(train_state, mesh)
    """
    return put_global(train_state, fsdp_shardings(train_state, mesh, axis, min_size=min_size))


def make_fsdp_epoch(step: Callable, batch_size: int, mesh: Mesh, train_state: Any, *,
                    drop_remainder: bool = False, axis: str = DATA_AXIS,
                    min_size: int = MIN_SIZE) -> Callable:
    """One FSDP epoch, compiled: `epoch(train_state, x, y, order) -> (train_state, means)`.

    `jdnn.train.epoch`'s epoch (the same batches, padding and masks as on one device) with the
    batch split along `axis` and the train state sharded by `fsdp_shardings`: its inputs and
    outputs, and the state at the entry and exit of every step, so the scan's carry stays
    sharded. The incoming train state is donated.

    Args:
        step: the pure training step, e.g. `jdnn.train.step.train_step_fn(...)`.
        batch_size: examples per step over all devices; a multiple of the axis size.
        mesh: the mesh, e.g. `jdnn.parallel.data_mesh()`.
        train_state: the state (or its `jax.eval_shape`) the shardings are computed for.
        drop_remainder: drop the last, short batch instead of padding and masking it.
        axis: the mesh axis the batch and the state are split along.
        min_size: arrays with fewer elements stay replicated.

    Returns:
        The compiled epoch. Pass it the state from `shard_state` and the data from
        `jdnn.parallel.put_data`; its means are replicated.

    Raises:
        ValueError: `batch_size` not divisible by the size of `axis`, or no such axis.

    Examples:
        >>> epoch = jdnn.sharding.make_fsdp_epoch(step, 256, mesh, train_state)
        >>> train_state = jdnn.sharding.shard_state(train_state, mesh)
        >>> x, y = jdnn.parallel.put_data((x, y), mesh)
        >>> order = jdnn.train.fit.epoch_orders(train_state, len(x))
        >>> train_state, means = epoch(train_state, x, y, order)
    """
    plan = epoch_sharding(mesh, batch_size, axis)
    state_shardings = fsdp_shardings(train_state, mesh, axis, min_size=min_size)

    def sharded_step(state, x, y, mask):
        state = lax.with_sharding_constraint(state, state_shardings)
        state, metrics = step(state, x, y, mask)
        return lax.with_sharding_constraint(state, state_shardings), metrics

    epoch = epoch_fn(sharded_step, batch_size, drop_remainder=drop_remainder, sharding=plan)
    return jax.jit(epoch, in_shardings=(state_shardings, plan.replicated, plan.replicated,
                                        plan.replicated),
                   out_shardings=(state_shardings, plan.replicated), donate_argnums=0)


def device_bytes(tree: Any) -> dict[jax.Device, int]:
    """Bytes each device (of this process) holds of `tree`'s arrays: the sum of the sizes of
    its shards (`array.addressable_shards`). Under FSDP about `1 / devices` of the whole
    state plus the replicated small arrays; under data parallelism the whole state.

    Examples:
        >>> max(jdnn.sharding.device_bytes(train_state).values())   # the busiest device
    """
    held: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(tree):
        if not isinstance(leaf, jax.Array):
            continue
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held
