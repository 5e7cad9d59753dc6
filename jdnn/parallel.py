"""Data-parallel training on a `jax.sharding.Mesh`: the batch split across devices.

The plan, in one paragraph: a `Mesh` names the devices along a data axis. The train state
(params, layer state, optimizer state, key, step) is *replicated*: every device holds a copy.
The dataset is replicated too (`put_data`). Inside the compiled epoch each batch `x[i]` is
constrained to be *sharded* along the data axis, so every device computes the forward and
backward pass of its slice of the batch only. Everything else is ordinary jdnn code: the step
still takes means over the batch, and XLA's SPMD partitioner turns each mean over a sharded
axis into a local sum plus an all-reduce. That gives, with no collective written by hand:

- the gradient all-reduce (the loss is a mean over the global batch, the params replicated);
- batch-norm statistics of the GLOBAL batch (`BatchNorm` takes `jnp.mean` over the batch axis,
  which XLA computes with an all-reduce), so the result does not depend on the device count;
- the loss and metrics of the global batch.

The epoch is `jdnn.fit`'s own `epoch_fn` (`jdnn.train.epoch`), handed a sharding hook
(`EpochSharding`: where the state, the batches and the plan live), the epoch `fit(..., mesh=)`
runs too; this module builds the mesh and places the arrays. The math is the single-device math;
only the order of floating-point additions changes, so a run on 8 devices matches a run on one
to float tolerance (tests/test_parallel.py checks it).

Design decisions:

- **Replicated data.** Each epoch gathers batches by a random permutation of the whole dataset,
  so any device may need any example. Keeping the full `x`, `y` on every device makes that
  gather local (each device gathers only its own rows: the batch indices are sharded first) and
  costs no communication per step; the price is memory: every device holds the whole dataset.
  That suits datasets that fit on one device (digits, MNIST, CIFAR); larger ones belong to a
  host-fed loop. `put_data` is the one place that decides the layout.
- **Batch size.** `batch_size` must be a multiple of the number of devices on the data axis,
  else a `ValueError` says so and names a fix. The last, short batch of an epoch is padded and
  masked as on one device, so a divisible batch size is all that is needed. As on one device,
  padded rows enter the batch-norm statistics (they are masked out of the loss and metrics).
- **Randomness.** Dropout draws its mask for the whole batch from one key inside the step.
  Under `jax.jit` a sharding never changes values, so the masks equal the single-device ones
  (tested under both settings of `jax_threefry_partitionable`). With the flag True (the default
  in the JAX this was written for, 0.10) each device generates only its slice of the random
  bits; with it False XLA may generate them in full and slice. The flag changes the bit stream
  itself, so compare runs made under the same setting.
- **Meshes.** `data_mesh` builds a mesh of `Auto` axes (shardings are constraints XLA
  propagates). A mesh from `jax.make_mesh` (`Explicit` axes by default) is used as its `Auto`
  twin: place the state and data with `replicate` and `put_data`, which do that too.

Several hosts (no test can cover this on one machine; the single-host path is the same code):
every host runs the same script, which calls `jax.distributed.initialize` before any other JAX
call; `jax.devices()` then lists the devices of ALL hosts, and so does `data_mesh()`. Every host
passes the same data (replication means every host loads the full dataset; `jax.device_put`
checks that the values agree) and the same `key`, so all hosts trace the same computation and
draw the same epoch orders (NumPy, seeded from the key and step).
(Feeding each host only its shard, via `jax.make_array_from_process_local_data`, would need a
per-shard epoch plan; this module does not do that.) Two hosts with 8 GPUs each::

    # train.py
    jax.distributed.initialize(coordinator_address=os.environ["COORDINATOR"],
                               num_processes=int(os.environ["NUM_PROCESSES"]),
                               process_id=int(os.environ["PROCESS_ID"]))
    mesh = jdnn.parallel.data_mesh()                 # 16 devices across both hosts
    train_state, history = jdnn.fit(model, (x, y), ..., batch_size=512, mesh=mesh)

    # host 0 (10.0.0.1), then host 1:
    COORDINATOR=10.0.0.1:1234 NUM_PROCESSES=2 PROCESS_ID=0 python train.py
    COORDINATOR=10.0.0.1:1234 NUM_PROCESSES=2 PROCESS_ID=1 python train.py

(On SLURM, Open MPI or Cloud TPU `jax.distributed.initialize()` needs no arguments.) The
results are replicated, so every host can read them (`float(means["loss"])`, `np.asarray`).
Callbacks that write files run on every host: write only where `jax.process_index() == 0`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# The epoch and its sharding hook live in jdnn.train.epoch (re-exported by jdnn.train.fit, whose
# fit(..., mesh=) runs them too); this module builds on them, so imports run one way.
# check_batch_size and DATA_AXIS are re-exported.
from jdnn.train.fit import (DATA_AXIS, auto_mesh, axis_size, check_batch_size, epoch_fn,
                            epoch_sharding, make_epoch)

__all__ = ["batch_sharding", "check_batch_size", "DATA_AXIS", "data_mesh", "make_parallel_epoch",
           "parallel_epoch_fn", "put_data", "replicate", "replicated"]


def data_mesh(devices: Sequence[jax.Device] | None = None, axis: str = DATA_AXIS) -> Mesh:
    """A one-dimensional mesh over `devices` (all of `jax.devices()` by default).

    The axis is of `Auto` type: shardings are constraints that XLA's partitioner propagates,
    the mode `make_parallel_epoch` is written for.

    Args:
        devices: the devices to train on, e.g. `jax.devices()[:4]`; all, by default (on several
            hosts after `jax.distributed.initialize`, the devices of every host).
        axis: the name of the data axis.

    Returns:
        A `jax.sharding.Mesh` of shape `{axis: len(devices)}`.

    Examples:
        >>> mesh = jdnn.parallel.data_mesh()            # e.g. Mesh('data': 8)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device, got an empty list")
    return Mesh(np.asarray(devices), (axis,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that puts a full copy of an array on every device of `mesh`."""
    return NamedSharding(auto_mesh(mesh), P())


def batch_sharding(mesh: Mesh, axis: str = DATA_AXIS) -> NamedSharding:
    """The sharding that splits an array's leading (batch) axis along `axis` of `mesh`."""
    axis_size(mesh, axis)
    return NamedSharding(auto_mesh(mesh), P(axis))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copies every array of `tree` to every device of `mesh` (e.g. a `TrainState`).

    Args:
        tree: a pytree of arrays (jax or NumPy), e.g. a `jdnn.TrainState`.
        mesh: the mesh, e.g. `jdnn.parallel.data_mesh()`.

    Returns:
        The same tree, each leaf a `jax.Array` with a replicated `NamedSharding`. A leaf that
        already lives on a device of the mesh may share its buffer with the result; since the
        epoch donates its train state, keep using only the returned tree.

    Examples:
        >>> train_state = jdnn.parallel.replicate(train_state, mesh)
    """
    return jax.device_put(tree, replicated(mesh))


def put_data(tree: Any, mesh: Mesh) -> Any:
    """Places a dataset (e.g. `(x, y)`) as `make_parallel_epoch` expects it: on every device.

    Replicated, because the epoch gathers batches by a random permutation of all examples (see
    the module docstring for the memory trade-off).

    Args:
        tree: arrays holding all `n` examples on their leading axis, e.g. `(x, y)`.
        mesh: the mesh the epoch runs on.

    Returns:
        The same tree of replicated `jax.Array`s.

    Examples:
        >>> x, y = jdnn.parallel.put_data((x, y), mesh)
    """
    return replicate(tree, mesh)


def parallel_epoch_fn(step: Callable, batch_size: int, mesh: Mesh, *,
                      drop_remainder: bool = False, axis: str = DATA_AXIS) -> Callable:
    """`jdnn.train.epoch.epoch_fn` with every batch sharded along `axis`; uncompiled.

    The same epoch (the epoch's `order`, the padded and masked last batch, the scan over
    `step`), given the sharding hook `jdnn.train.epoch.epoch_sharding(mesh, batch_size, axis)`:
    only the batch indices, the gathered batches and the masks carry a sharding constraint.
    `make_parallel_epoch` compiles it.

    Raises:
        ValueError: `batch_size` not divisible by the size of `axis`, or no such axis.
    """
    return epoch_fn(step, batch_size, drop_remainder=drop_remainder,
                    sharding=epoch_sharding(mesh, batch_size, axis))


def make_parallel_epoch(step: Callable, batch_size: int, mesh: Mesh, *,
                        drop_remainder: bool = False, axis: str = DATA_AXIS) -> Callable:
    """One data-parallel epoch, compiled: `epoch(train_state, x, y, order) -> (train_state,
    means)`, `order` the epoch's permutation (`jdnn.train.epoch.epoch_orders`).

    Each batch is split along `axis` of `mesh` (every device computes `batch_size / devices`
    examples); the train state and the data are replicated (`replicate`, `put_data`); gradients,
    batch-norm statistics, the loss and metrics are those of the global batch. The incoming
    train state is donated, as in `jdnn.train.epoch.make_epoch`, whose drop-in replacement this is.

    Args:
        step: the pure training step, `jdnn.train.step.train_step_fn(...)`.
        batch_size: examples per step over all devices; a multiple of the device count.
        mesh: the mesh, e.g. `jdnn.parallel.data_mesh()`.
        drop_remainder: drop the last, short batch instead of padding and masking it.
        axis: the mesh axis the batch is split along.

    Returns:
        The compiled epoch; its outputs are replicated over the mesh. Pass it the data from
        `put_data` once, not per call: other placements are copied to every device each epoch.

    Raises:
        ValueError: `batch_size` not divisible by the size of `axis`, or no such axis.

    Examples:
        >>> mesh = jdnn.parallel.data_mesh()
        >>> step = jdnn.train.step.train_step_fn(model, loss, optimizer, metrics=("accuracy",))
        >>> epoch = jdnn.parallel.make_parallel_epoch(step, 256, mesh)
        >>> train_state = jdnn.parallel.replicate(train_state, mesh)
        >>> x, y = jdnn.parallel.put_data((x, y), mesh)
        >>> order = jdnn.train.epoch.epoch_orders(train_state, len(x))   # this epoch's shuffle
        >>> train_state, means = epoch(train_state, x, y, order)   # means["loss"], ...
    """
    return make_epoch(step, batch_size, drop_remainder=drop_remainder,
                      sharding=epoch_sharding(mesh, batch_size, axis))
