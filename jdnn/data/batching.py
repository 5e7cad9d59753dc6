"""Batching on the device: one key-driven permutation per epoch, cut into equal batches.

Every batch has the same shape, so the compiled step is traced once: the last, short batch is
padded (with the epoch's first examples, seen again) and masked, or dropped when asked. The
indices are computed inside the compiled epoch from a key, so the data never leave the device
and no host copy happens per step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def num_batches(n: int, batch_size: int, *, drop_remainder: bool = False) -> int:
    """How many batches an epoch of `n` examples has."""
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)


def epoch_batches(key: jax.Array | None, n: int, batch_size: int, *,
                  drop_remainder: bool = False) -> tuple[jax.Array, jax.Array]:
    """The example indices and the validity mask of every batch of one epoch.

    Args:
        key: drives the permutation; `None` keeps the data's order (for evaluation).
        n: the number of examples.
        batch_size: examples per batch.
        drop_remainder: drop the last, short batch instead of padding it.

    Returns:
        `(indices, mask)`, both `(num_batches, batch_size)`: int32 example indices (padding
        points at example 0) and a bool mask that is False on padding.

    Example:
        >>> idx, mask = epoch_batches(jax.random.key(0), 10, 4)  # 3 batches, last has 2 real
        >>> x_batches = x[idx]                                    # (3, 4, ...)
    """
    if batch_size < 1 or n < 1:
        raise ValueError(f"need n >= 1 examples and batch_size >= 1, got n={n}, "
                         f"batch_size={batch_size}")
    steps = num_batches(n, batch_size, drop_remainder=drop_remainder)
    if steps == 0:
        raise ValueError(f"drop_remainder=True with batch_size {batch_size} > {n} examples "
                         f"leaves no batch; lower batch_size or keep the remainder")
    order = jnp.arange(n, dtype=jnp.int32) if key is None else (
        jax.random.permutation(key, n).astype(jnp.int32))
    total = steps * batch_size
    if total > n:
        # Pad with the epoch's first examples again (real, distinct data), never with copies
        # of one example: the loss masks the padding out, but batch-norm statistics see it.
        order = jnp.tile(order, math.ceil(total / n))
    mask = jnp.arange(total) < n
    return order[:total].reshape(steps, batch_size), mask[:total].reshape(steps, batch_size)
