"""Dropout, by hand (inverted dropout), with the mask given rather than drawn.

In training each unit is kept with probability `1 - rate` and the kept ones are scaled up:

    y = where(keep, x / (1 - rate), 0)

so `E[y] = x`. At evaluation (and for `rate = 0`) the layer is the identity. The reference
draws no random numbers: the caller hands in the boolean `keep_mask` (e.g. the one jdnn's
`Dropout` drew from its key), which makes the two sides comparable number by number.
`rate` is the spec's, or for a `Dropout(rate, rate_in_state=True)` the one in the layer's state
(`state["rate"]`): the network twin (`jdnn.reference.network`) reads it from there.
"""

from __future__ import annotations

import numpy as np


def forward(params, x, *, keep_mask, rate):
    """Zeroes the dropped units and scales the kept ones by `1 / (1 - rate)`.

    Args:
        params: `{}`.
        x: inputs of any shape.
        keep_mask: a boolean array of `x`'s shape, True where the unit is kept; or `None` for
            the identity (evaluation, or `rate = 0`).
        rate: the drop probability in `[0, 1)`.

    Returns:
        `(y, cache)`: `y` of `x`'s shape; the cache is `(keep_mask, rate)`.
    """
    del params
    rate = float(rate)  # a Python float keeps x's dtype; a np.float64 would make it float64
    if keep_mask is None:
        return x, (None, rate)
    keep_mask = np.asarray(keep_mask, dtype=bool)
    if keep_mask.shape != x.shape:
        raise ValueError(f"Dropout: keep_mask has shape {keep_mask.shape} but x has shape "
                         f"{x.shape}; they must be equal")
    y = np.where(keep_mask, x / (1.0 - rate), 0)
    return y, (keep_mask, rate)


def backward(params, cache, dy):
    """Gradient of dropout: the same mask and scale applied to `dy`.

    `y = x / (1 - rate)` where kept and `0` where dropped, a linear map that is diagonal:
    `dx = where(keep, dy / (1 - rate), 0)`; with no mask, `dx = dy`.

    Args:
        params: `{}`.
        cache: `(keep_mask, rate)` from `forward`.
        dy: the gradient with respect to `y`, `x`'s shape.

    Returns:
        `(dx, {})`.
    """
    del params
    keep_mask, rate = cache
    if keep_mask is None:
        return dy, {}
    return np.where(keep_mask, dy / (1.0 - rate), 0), {}
