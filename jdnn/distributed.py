"""Many processes: starting them as one JAX program, and moving arrays between host and mesh.

The model, in one paragraph: every process runs the same script. `initialize()` (a thin layer
over `jax.distributed.initialize`) joins the processes, after which `jax.devices()` lists the
devices of ALL of them and a `jax.sharding.Mesh` over those devices spans the cluster; each
process still only *addresses* its own (`jax.local_devices()`). Every compiled call is then a
collective: all processes make the same calls in the same order with the same values, and
XLA's collectives (gloo on CPU, NCCL on GPU) move the data. jdnn's data parallelism already
works this way (`jdnn.parallel`, `fit(..., mesh=)`); this module holds the two things that
differ from one process:

- placing host values on a mesh that spans processes (`put_global`): `jax.device_put` accepts
  NumPy values that are equal on every process (it checks), but refuses an array committed to
  one local device (what `jdnn.checkpoint.restore` or a jitted initialization returns);
- reading a sharded array back whole (`to_host`): a process holds only its own shards, so a
  sharded (not replicated) array is gathered with `multihost_utils.process_allgather`, itself
  a collective.

`initialize()` with no arguments lets JAX find the cluster: SLURM (`srun`), Open MPI
(`mpirun`), Kubernetes (JobSet / indexed Jobs), Cloud TPU and GKE are detected from their
environment variables; anywhere else set `JAX_COORDINATOR_ADDRESS` (host:port of process 0,
read by `jax.distributed.initialize` itself), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (read
here: JAX 0.10 reads only the first), or pass them as arguments. It must run before anything
else touches a JAX device.

This module imports only JAX and NumPy, so `jdnn.train`, `jdnn.checkpoint` and `jdnn.cli` can
all build on it.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding

__all__ = ["initialize", "is_primary", "put_global", "sync", "to_host"]


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, **kwargs: Any) -> tuple[int, int]:
    """Joins this process to the others: `jax.distributed.initialize`, then a summary.

    Call it first, before any JAX computation (JAX raises otherwise). With no arguments JAX
    detects SLURM, Open MPI, Kubernetes and Cloud TPU clusters, or reads the environment
    variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`.

    Args:
        coordinator_address: `"host:port"` of process 0, reachable from every process.
        num_processes: how many processes take part (default: `JAX_NUM_PROCESSES`, if set).
        process_id: this process's index, `0 <= process_id < num_processes` (default:
            `JAX_PROCESS_ID`, if set).
        **kwargs: passed on to `jax.distributed.initialize` (e.g. `local_device_ids`,
            `initialization_timeout`).

    Returns:
        `(process_index, process_count)`.

    Examples:
        >>> jdnn.distributed.initialize()                  # under srun, mpirun, a JobSet, ...
        >>> jdnn.distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=1)
    """
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    return jax.process_index(), jax.process_count()


def is_primary() -> bool:
    """True in process 0, the one that writes files (checkpoints, logs) for all of them."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reaches the call with the same `name`; nothing with one."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _put_leaf(leaf: Any, sharding: Sharding) -> Any:
    if sharding.is_fully_addressable:
        return jax.device_put(leaf, sharding)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return jax.device_put(leaf, sharding)      # already global: a reshard, XLA moves it
    if _is_key(leaf):
        impl = jax.random.key_impl(leaf)
        data = jax.device_put(np.asarray(jax.random.key_data(leaf)), sharding)
        return jax.random.wrap_key_data(data, impl=impl)
    return jax.device_put(np.asarray(leaf), sharding)   # checked equal on every process


def put_global(tree: Any, sharding: Any) -> Any:
    """`jax.device_put(tree, sharding)` that also works when `sharding` spans processes.

    On one process it is exactly `jax.device_put`. When the mesh spans processes, every leaf
    that lives on this process only (NumPy, or a `jax.Array` committed to a local device, typed
    random keys included) goes through the host, and JAX checks that its value is the same on
    every process: every process must pass the same values (same seed, same data).

    Args:
        tree: a pytree of arrays, e.g. a `TrainState` or `(x, y)`.
        sharding: one `jax.sharding.Sharding` for every leaf, or a tree of them matching
            `tree` (e.g. from `jdnn.sharding.fsdp_shardings`).

    Returns:
        The same tree of `jax.Array`s placed by `sharding`.

    Examples:
        >>> ts = jdnn.distributed.put_global(ts, NamedSharding(mesh, P()))
    """
    if isinstance(sharding, Sharding):
        return jax.tree.map(lambda leaf: _put_leaf(leaf, sharding), tree)
    return jax.tree.map(_put_leaf, tree, sharding)


def _host_leaf(leaf: Any) -> Any:
    if not isinstance(leaf, jax.Array):
        return leaf
    if _is_key(leaf):
        return jax.random.wrap_key_data(_host_leaf(jax.random.key_data(leaf)),
                                        impl=jax.random.key_impl(leaf))
    if leaf.is_fully_addressable or leaf.is_fully_replicated:
        return np.asarray(leaf)
    return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))


def to_host(tree: Any) -> Any:
    """Every array of `tree`, whole, on the host of EVERY process: NumPy arrays (typed keys
    stay keys, on the default device).

    Replicated arrays and arrays this process addresses fully are copied out; a sharded array
    that spans processes is gathered (`multihost_utils.process_allgather`), a collective: all
    processes must call `to_host` on the same tree at the same point. Costs the whole tree's
    bytes of host memory in every process.

    Examples:
        >>> params = jdnn.distributed.to_host(train_state.params)   # NumPy, the full arrays
    """
    return jax.tree.map(_host_leaf, tree)
