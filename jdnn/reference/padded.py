"""Variable-length sequences in the reference: a padded batch with each example's length.

The same rule as jdnn's (`jdnn.padded`), written again in NumPy so the reference shares no code
with what it checks:

    Padded(values, lengths)   values (B, T, ...), lengths (B,) ints: example b is
                              values[b, :lengths[b]]

A twin whose `forward` takes the keyword `lengths` mixes time steps (a recurrence, attention, a
1-D convolution or pool): it gets the plain values and `lengths=`, and returns its `y` as a
`Padded` while a time axis remains (new lengths if it resamples time) or as a plain array once
the time axis is gone. Every other twin gets the plain values, and the network wraps its output
again with the same lengths when the batch and time axes are kept, or drops them when the time
axis is gone. Backward passes see plain arrays only: `dy` is the gradient of the values.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class Padded(NamedTuple):
    """A padded batch: `values (B, T, ...)` and `lengths (B,)`."""

    values: Any
    lengths: Any

    @property
    def mask(self) -> np.ndarray:
        """`(B, T)` bool: True at real steps."""
        return sequence_mask(self.lengths, self.values.shape[1])


def sequence_mask(lengths: Any, length: int) -> np.ndarray:
    """`(B, length)` bool, True where `t < lengths[b]`."""
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


def unpad(x: Any) -> tuple[Any, Any]:
    """`(values, lengths)` of a padded batch (anything with `values` and `lengths`, jdnn's own
    `Padded` too), or `(x, None)` for a plain array."""
    if hasattr(x, "values") and hasattr(x, "lengths") and not isinstance(x, np.ndarray):
        return x.values, x.lengths
    return x, None


def rewrap(x_values: np.ndarray, lengths: Any, y: Any, path: str) -> Any:
    """A twin's output `y` for an input padded with `lengths`, by the rule of the docstring."""
    if lengths is None or isinstance(y, Padded):
        return y
    if y.ndim >= x_values.ndim and y.shape[:2] == x_values.shape[:2]:
        return Padded(y, lengths)
    if y.ndim < x_values.ndim or y.ndim < 3:
        return y
    raise ValueError(f"the twin at {path or '<root>'} changed the time axis of a padded batch "
                     f"from {x_values.shape[1]} to {y.shape[1]} steps without taking lengths=; "
                     f"a twin that resamples time must take lengths= and return Padded")
