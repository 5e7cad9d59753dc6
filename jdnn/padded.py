"""Variable-length sequences: a padded batch that carries each example's length.

The layer contract (`jdnn.core`) gains one rule, and nothing else changes:

    x may be a Padded(values, lengths)   values (B, T, ...) padded along the time axis T,
                                         lengths (B,) ints: example b is values[b, :lengths[b]]

A layer kind that understands padding declares the trait `padded=True` and receives the `Padded`
itself: recurrences stop at each example's length, attention masks the padding, global pools
and strided or pooled time axes count only real steps. It returns a `Padded` while its output
keeps a time axis (with new lengths if it resamples time) and a plain array once the time axis
is gone (an RNN's last state, a global pool).

Every other kind never sees a `Padded`: the combinator around it (`apply_child`) hands it the
values and wraps its output again with the same lengths when the output keeps the batch and time
axes (a `Dense` or `LayerNorm` on each step), drops them when the time axis is gone (`Flatten`),
and refuses an output whose time axis changed length, since it cannot know the new lengths. So
every existing layer, built-in or a user's, works inside a sequence model unchanged, and a model
fed plain arrays behaves exactly as before.

Padding never changes a result at real steps: the layers that mix steps are exactly the ones
that declare `padded=True`, and `tests/test_padded.py` checks each against the unpadded batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jdnn.core import Layer, LayerError, State, trait


@functools.partial(jax.tree_util.register_dataclass, data_fields=["values", "lengths"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Padded:
    """A batch of sequences padded to one length `T`, with each example's true length.

    A pytree of its two arrays, so it passes through `jit`, `vmap` and `grad`, and it indexes
    like a batch: `padded[i]` takes the same examples of both, and `shape`, `dtype` and `ndim`
    are those of the values, so data pipelines slice it as they slice arrays.

    Attributes:
        values: `(B, T, ...)`, the steps of each example; those at `t >= lengths[b]` are padding
            (any values; they never reach a result).
        lengths: `(B,)` integers in `[0, T]`.

    Examples:
        >>> ids = jnp.array([[5, 2, 7], [3, 1, 0]])                  # the second is 2 long
        >>> logits, _ = model.apply(params, state, jdnn.Padded(ids, jnp.array([3, 2])))
    """

    values: Any
    lengths: Any

    @property
    def mask(self) -> jax.Array:
        """`(B, T)` bool: True at real steps."""
        return sequence_mask(self.lengths, self.values.shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        """The values' shape, `(B, T, ...)`."""
        return tuple(self.values.shape)

    @property
    def dtype(self) -> Any:
        """The values' dtype."""
        return self.values.dtype

    @property
    def ndim(self) -> int:
        """The values' rank."""
        return self.values.ndim

    def __getitem__(self, index: Any) -> Padded:
        """The examples `index` picks (an int array, a slice, a mask on the batch axis)."""
        return Padded(self.values[index], self.lengths[index])


def sequence_mask(lengths: Any, length: int) -> jax.Array:
    """`(B, length)` bool, True where `t < lengths[b]`.

    Examples:
        >>> sequence_mask(jnp.array([2, 0]), 3)   # [[True, True, False], [False] * 3]
    """
    return jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]


def unpad(x: Any) -> tuple[Any, Any]:
    """`(values, lengths)` of a `Padded`, or `(x, None)` for a plain array."""
    return (x.values, x.lengths) if isinstance(x, Padded) else (x, None)


def repad(y: Any, lengths: Any) -> Any:
    """`Padded(y, lengths)`, or `y` itself when `lengths` is None (the input was not padded)."""
    return y if lengths is None else Padded(y, lengths)


def apply_child(layer: Layer, params: Any, state: State, x: Any, *, key: Any = None,
                train: bool = False) -> tuple[Any, State]:
    """`layer.apply` for a combinator's child, with the padding rule of the module docstring.

    Args:
        layer: the child.
        params: the child's params.
        state: the child's state.
        x: a plain array, or a `Padded`.
        key: as in `apply`.
        train: as in `apply`.

    Returns:
        `(y, new_state)`, `y` a `Padded` where the padding rule keeps it.

    Raises:
        LayerError: a kind that does not declare `padded=True` changed the length of the time
            axis of a padded batch.
    """
    if not isinstance(x, Padded) or trait(layer.spec, "padded", False):
        return layer.apply(params, state, x, key=key, train=train)
    y, new_state = layer.apply(params, state, x.values, key=key, train=train)
    values = x.values
    if y.ndim >= values.ndim and y.shape[:2] == values.shape[:2]:
        return Padded(y, x.lengths), new_state
    if y.ndim < values.ndim or y.ndim < 3:
        return y, new_state
    raise LayerError(layer.spec.kind, f"maps a padded batch of shape {tuple(values.shape)} to "
                                      f"{tuple(y.shape)}, changing the time axis (axis 1) from "
                                      f"{values.shape[1]} to {y.shape[1]} steps, so the "
                                      f"examples' lengths are unknown after it; a layer that "
                                      f"resamples time must declare padded=True in "
                                      f"register_layer and return Padded(y, new_lengths)")
