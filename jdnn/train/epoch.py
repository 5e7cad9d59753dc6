"""The compiled epoch `fit` runs, and the pieces it is built from.

By default the data go to the device once and each epoch is ONE compiled `lax.scan` over its
batches (`epoch_fn`, `make_epoch`): the padding mask, the gathers, every step; only the epoch's
order, drawn on the host from the state's key and step (`epoch_orders`), goes in with it. Step
mode keeps the data on the host and dispatches one compiled step per batch over the same
permutations. A data-parallel epoch is the same epoch given a sharding hook (`EpochSharding`),
so `jdnn.parallel` and `fit(..., mesh=)` run one and the same epoch. The compiled epochs and
steps are kept across fits (`epoch_runner`, `step_runner`).

The step scanned is fit's own (`jdnn.train.step.train_step_fn`) or any pure step with the same
contract, `step(train_state, x, y, mask) -> (train_state, metrics)` (`fit(..., step=)`, e.g.
DP-SGD's). The host loop around these epochs is `jdnn.train.fit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jdnn.data.batching import batches_from_order, epoch_order
from jdnn.train.arguments import checked_step
from jdnn.train.program_cache import ProgramCache
from jdnn.train.state import TrainState
from jdnn.train.step import train_step_fn


def weighted_means(reports: dict, masks: jax.Array) -> dict:
    """Per-batch means `(steps,)` (each over its real examples) -> means over all real examples."""
    counts = jnp.sum(masks, axis=1)
    return {k: jnp.sum(v * counts) / jnp.sum(counts) for k, v in reports.items()}


def host_key_and_step(train_state: TrainState) -> tuple[np.ndarray, Any]:
    """The state's key as raw words and its step count, read back to the host (one sync)."""
    return jax.device_get((jax.random.key_data(train_state.key), train_state.step))


def epoch_orders(train_state: TrainState, n: int) -> np.ndarray:
    """The next epoch's order of the `n` examples, drawn on the host from the state's key and
    step (`jdnn.data.batching.epoch_order`): `(n,)`, or `(K, n)` for a stacked state of K
    members, each from its own key. Reads the key and step back from the device (one sync;
    `fit` reads them once and counts the steps itself)."""
    key_data, step = host_key_and_step(train_state)
    if np.ndim(step) == 0:
        return epoch_order(key_data, step, n)
    return np.stack([epoch_order(k, s, n) for k, s in zip(key_data, step)])


# ---------------------------------------------------------------------------------------------
# The sharding hook. A data-parallel epoch is the same epoch with its batches split across the
# devices of a mesh; `epoch_fn` takes where the arrays live as data, an `EpochSharding`, so
# `jdnn.parallel` (which builds on this module) and `fit(..., mesh=)` run one and the same epoch.

DATA_AXIS = "data"
"""The name of the mesh axis a batch is split along (`jdnn.parallel.data_mesh`)."""


class EpochSharding(NamedTuple):
    """Where the arrays of a data-parallel epoch live; the hook of `epoch_fn` and `make_epoch`.

    Built by `epoch_sharding(mesh, batch_size)`. See `jdnn.parallel` for the plan and its
    trade-offs.

    Attributes:
        replicated: the train state, the dataset and the epoch's means: a full copy on every
            device.
        batch: each gathered batch `(x, y, mask)`, split along its leading (batch) axis.
        plan: the epoch's batch indices and masks `(steps, batch)`, split along the batch axis.
    """

    replicated: NamedSharding
    batch: NamedSharding
    plan: NamedSharding


def auto_mesh(mesh: Mesh) -> Mesh:
    """`mesh` with every axis of `Auto` type (a `jax.make_mesh` mesh defaults to `Explicit`):
    shardings are then constraints that XLA's partitioner propagates.

    Raises:
        TypeError: for anything that is not a `jax.sharding.Mesh`.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, e.g. jdnn.parallel.data_mesh(), got "
                        f"{type(mesh).__name__}")
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)


def axis_size(mesh: Mesh, axis: str) -> int:
    """The number of devices along `axis` of `mesh`; a `ValueError` if it has no such axis."""
    if axis not in auto_mesh(mesh).axis_names:
        raise ValueError(f"the mesh has no axis {axis!r}; its axes are {mesh.axis_names}: pass "
                         f"axis= one of them, or build the mesh with jdnn.parallel.data_mesh()")
    return mesh.shape[axis]


def check_batch_size(batch_size: int, mesh: Mesh, axis: str = DATA_AXIS) -> int:
    """Raises a `ValueError` unless `batch_size` splits evenly over the mesh's `axis`.

    Args:
        batch_size: examples per step over all devices.
        mesh: the mesh.
        axis: the mesh axis the batch is split along.

    Returns:
        The number of examples each device computes per step.
    """
    devices = axis_size(mesh, axis)
    if batch_size % devices:
        below = batch_size // devices * devices
        options = " or ".join(str(b) for b in (below, below + devices) if b > 0)
        raise ValueError(f"batch_size (={batch_size}) must be divisible by the number of devices "
                         f"on mesh axis {axis!r} (={devices}), so that each device gets an equal "
                         f"slice of every batch: pick a multiple of {devices}, e.g. {options}")
    return batch_size // devices


def epoch_sharding(mesh: Mesh, batch_size: int, axis: str = DATA_AXIS) -> EpochSharding:
    """The `EpochSharding` of data-parallel training on `mesh`: batches split along `axis`,
    everything else replicated.

    Raises:
        TypeError: if `mesh` is not a `jax.sharding.Mesh`.
        ValueError: if `mesh` has no `axis`, or `batch_size` is not a multiple of its size.

    Examples:
        >>> epoch = make_epoch(step, 256, sharding=epoch_sharding(jdnn.parallel.data_mesh(), 256))
    """
    check_batch_size(batch_size, mesh, axis)
    mesh = auto_mesh(mesh)
    return EpochSharding(NamedSharding(mesh, P()), NamedSharding(mesh, P(axis)),
                         NamedSharding(mesh, P(None, axis)))


def epoch_fn(step: Callable, batch_size: int, *, drop_remainder: bool = False,
             sharding: EpochSharding | None = None) -> Callable:
    """One epoch as a pure function `epoch(train_state, x, y, order) -> (train_state, means)`.

    `x` and `y` hold all `n` examples (device arrays) and `order` `(n,)` is the epoch's
    permutation (`epoch_orders`); the batches are cut from it (the last padded and masked, or
    dropped), gathered, and scanned with `step`; `means` holds each metric averaged over the
    epoch's real (unpadded) examples. Uncompiled: `make_epoch` jits it, `jax.vmap` can batch it
    (ensembles, hyper-parameter search).

    Args:
        step: a pure training step `step(train_state, x, y, mask) -> (train_state, metrics)`
            (see `fit`'s `step=`), e.g. `jdnn.train.step.train_step_fn(...)`.
        batch_size: examples per step.
        drop_remainder: drop the last, short batch instead of padding and masking it.
        sharding: where the arrays live, for data-parallel training (`epoch_sharding`): each
            batch and the epoch's plan carry its sharding constraints; None on one device.
    """

    def placed(tree, field):
        """`tree` constrained to the sharding's `field`; as it is on one device."""
        if sharding is None:
            return tree
        return lax.with_sharding_constraint(tree, getattr(sharding, field))

    def epoch(train_state, x, y, order):
        indices, masks = batches_from_order(order, batch_size, drop_remainder=drop_remainder)
        indices, masks = placed((indices, masks), "plan")

        def body(state, batch):
            i, mask = batch
            return step(state, *placed((x[i], y[i], mask), "batch"))

        train_state, reports = lax.scan(body, train_state, (indices, masks))
        return train_state, weighted_means(reports, masks)

    return epoch


def make_epoch(step: Callable, batch_size: int, *, drop_remainder: bool = False,
               sharding: EpochSharding | None = None) -> Callable:
    """`epoch_fn` compiled, with the incoming train state donated. With a `sharding`, the
    epoch's inputs and outputs are replicated over its mesh (place the train state and the
    data there once, e.g. `jax.device_put(tree, sharding.replicated)`)."""
    epoch = epoch_fn(step, batch_size, drop_remainder=drop_remainder, sharding=sharding)
    if sharding is None:
        return jax.jit(epoch, donate_argnums=0)
    return jax.jit(epoch, in_shardings=sharding.replicated, out_shardings=sharding.replicated,
                   donate_argnums=0)


def _host_epoch(step: Callable, batch_size: int, drop_remainder: bool) -> Callable:
    """The per-step mode: the same batches, each gathered on the host and sent alone. The
    epoch's means are taken on the host, in NumPy (the reports come back in one transfer): jnp
    on the host would compile a program per reduction."""

    def epoch(train_state, x, y, order):
        indices, masks = batches_from_order(order, batch_size, drop_remainder=drop_remainder)
        reports = []
        for i, mask in zip(indices, masks):
            train_state, report = step(train_state, x[i], y[i], mask)
            reports.append(report)
        reports = jax.device_get(reports)
        counts = np.sum(masks, axis=1)
        return train_state, {k: np.sum(np.stack([r[k] for r in reports]) * counts) / np.sum(counts)
                             for k in reports[0]}

    return epoch


# ---------------------------------------------------------------------------------------------
# Compiled epochs kept across fits. A second `fit` of the same model with the same loss,
# optimizer, metrics and options (a search, cross-validation, a notebook cell run again) reuses
# the first one's compiled epoch instead of tracing and compiling it anew. The key holds the
# user's functions (model, loss, optimizer, penalty, augmentation, metrics, or a step of one's
# own), compared by what they are made of (`jdnn.train.program_cache.fingerprint`: the same
# code and equal captured values, so `optax.adam(1e-3)` called again is the same optimizer,
# `optax.adam(1e-2)` is not). As with `jax.jit`, a function that reads a global which is
# rebound between fits sees the value of its first trace.


_EPOCHS = ProgramCache(16)


def _pure_step(step_parts: tuple) -> Callable:
    """The pure training step `step(train_state, x, y, mask)` that `step_parts` describe."""
    kind, *parts = step_parts
    if kind == "own":
        model, loss, optimizer, penalty, metrics, augment, frozen, policy = parts
        train_step = train_step_fn(model, loss, optimizer, penalty=penalty, metrics=dict(metrics),
                                   augment=augment, frozen_state=frozen, precision=policy)
    else:
        train_step = checked_step("fit", parts[0])
    return train_step


def _build_epoch(step_parts: tuple, batch_size: int, drop_remainder: bool, mode: str,
                 sharding: EpochSharding | None) -> Callable:
    train_step = _pure_step(step_parts)
    if sharding is not None or mode == "scan":
        return make_epoch(train_step, batch_size, drop_remainder=drop_remainder,
                          sharding=sharding)
    return _host_epoch(jax.jit(train_step, donate_argnums=0), batch_size, drop_remainder)


def epoch_runner(step_parts: tuple, batch_size: int, drop_remainder: bool, mode: str,
                  sharding: EpochSharding | None) -> Callable:
    """`run_epoch(train_state, x, y, order) -> (train_state, means)` for `fit`: compiled (scan
    mode) or a host loop of a compiled step (step mode), from the cache when it can be."""
    arguments = (step_parts, batch_size, drop_remainder, mode, sharding)
    return _EPOCHS.get(arguments, lambda: _build_epoch(*arguments))


_STEPS = ProgramCache(16)


def step_runner(step_parts: tuple) -> Callable:
    """The step alone, compiled with the state donated: a stream's epoch calls it per batch
    (`jdnn.train.stream`); from the cache when it can be."""
    return _STEPS.get(step_parts, lambda: jax.jit(_pure_step(step_parts), donate_argnums=0))
