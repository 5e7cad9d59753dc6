"""Flatten, by hand: `(N, d1, d2, ...)` -> `(N, d1 * d2 * ...)`, keeping the batch axis.

A reshape moves no numbers, it only relabels them (row-major order, as NumPy and JAX both use),
so its backward is the reverse relabelling.
"""

from __future__ import annotations

import math


def forward(params, x):
    """Folds every axis after the first into one.

    Args:
        params: `{}`.
        x: inputs `(N, d1, d2, ...)`, rank >= 1.

    Returns:
        `(y, cache)`: `y` of shape `(N, d1 * d2 * ...)`; the cache is `x`'s shape.
    """
    del params
    return x.reshape(x.shape[0], math.prod(x.shape[1:])), x.shape


def backward(params, cache, dy):
    """Gradient of a reshape: the same numbers, reshaped back.

    `y[n, k]` is `x[n, i1, i2, ...]` for the row-major flat index `k` of `(i1, i2, ...)`, so
    `dx[n, i1, i2, ...] = dy[n, k]`: `dx = dy.reshape(x.shape)`.

    Args:
        params: `{}`.
        cache: `x`'s shape.
        dy: `(N, d1 * d2 * ...)`.

    Returns:
        `(dx, {})` with `dx` of shape `(N, d1, d2, ...)`.
    """
    del params
    return dy.reshape(cache), {}
