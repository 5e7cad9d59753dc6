"""Batching: one permutation per epoch, cut into equal batches.

Every batch has the same shape, so the compiled step is traced once: the last, short batch is
padded (with the epoch's first examples, seen again) and masked, or dropped when asked.

The permutation is drawn on the host, by NumPy, from the run's key and the step count at the
start of the epoch (`epoch_order`): an XLA:CPU sort of a few thousand indices costs more than
a small model's whole epoch of steps, NumPy's shuffle tens of microseconds. Only the order,
`(n,)` int32, travels to the device; the data stay there, and the batches are cut inside the
compiled epoch (`batches_from_order`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

SHUFFLE_STREAM = 0x5348  # tags the shuffle's seed apart from anything else seeded by the key


def num_batches(n: int, batch_size: int, *, drop_remainder: bool = False) -> int:
    """How many batches an epoch of `n` examples has."""
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)


def _check(n: int, batch_size: int, drop_remainder: bool) -> int:
    if batch_size < 1 or n < 1:
        raise ValueError(f"need n >= 1 examples and batch_size >= 1, got n={n}, "
                         f"batch_size={batch_size}")
    steps = num_batches(n, batch_size, drop_remainder=drop_remainder)
    if steps == 0:
        raise ValueError(f"drop_remainder=True with batch_size {batch_size} > {n} examples "
                         f"leaves no batch; lower batch_size or keep the remainder")
    return steps


def epoch_order(key_data: np.ndarray, step: int, n: int) -> np.ndarray:
    """The epoch's permutation of `n` examples, drawn on the host, reproducibly.

    Args:
        key_data: the run's key as raw words, `jax.random.key_data(train_state.key)` (`(2,)`
            uint32 for the default threefry key).
        step: the train state's step count at the start of the epoch: a new epoch, a new order.
        n: the number of examples.

    Returns:
        `(n,)` int32: a permutation from NumPy's PCG64 seeded with the key's words and `step`.

    Examples:
        >>> order = epoch_order(jax.random.key_data(train_state.key), int(train_state.step), n)
    """
    words = [int(w) for w in np.asarray(key_data, np.uint32).ravel()]
    seed = np.random.SeedSequence([*words, int(step), SHUFFLE_STREAM])
    return np.random.default_rng(seed).permutation(n).astype(np.int32)


def batches_from_order(order, batch_size: int, *, drop_remainder: bool = False):
    """An epoch's order cut into batches: the example indices and validity mask of each.

    Works on NumPy and JAX arrays alike (inside a compiled epoch, too).

    Args:
        order: `(n,)` int example indices, e.g. `epoch_order(...)` or `arange(n)`.
        batch_size: examples per batch.
        drop_remainder: drop the last, short batch instead of padding it.

    Returns:
        `(indices, mask)`, both `(num_batches, batch_size)`: example indices (the padding of the
        last batch repeats the epoch's first examples) and a bool mask, False on padding.
    """
    n = order.shape[0]
    steps = _check(n, batch_size, drop_remainder)
    xp = jnp if isinstance(order, jax.Array) else np
    total = steps * batch_size
    if total > n:
        # Pad with the epoch's first examples again (real, distinct data), never with copies
        # of one example: the loss masks the padding out, but batch-norm statistics see it.
        order = xp.tile(order, math.ceil(total / n))
    mask = xp.arange(total) < n
    return order[:total].reshape(steps, batch_size), mask[:total].reshape(steps, batch_size)


def epoch_batches(key: jax.Array | None, n: int, batch_size: int, *,
                  drop_remainder: bool = False) -> tuple[jax.Array, jax.Array]:
    """The example indices and the validity mask of every batch of one epoch, on the device.

    Args:
        key: drives a device-side permutation (`jax.random.permutation`); `None` keeps the
            data's order (for evaluation). `jdnn.fit` draws its orders on the host instead
            (`epoch_order`), which is much faster on a CPU.
        n: the number of examples.
        batch_size: examples per batch.
        drop_remainder: drop the last, short batch instead of padding it.

    Returns:
        `(indices, mask)`, both `(num_batches, batch_size)`: int32 example indices and a bool
        mask that is False on padding.

    Examples:
        >>> idx, mask = epoch_batches(jax.random.key(0), 10, 4)  # 3 batches, last has 2 real
        >>> x_batches = x[idx]                                    # (3, 4, ...)
    """
    _check(n, batch_size, drop_remainder)
    order = jnp.arange(n, dtype=jnp.int32) if key is None else (
        jax.random.permutation(key, n).astype(jnp.int32))
    return batches_from_order(order, batch_size, drop_remainder=drop_remainder)
