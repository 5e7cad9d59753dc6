"""Pooling over NHWC images: the maximum or the mean of each window, per channel."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jdnn.core import (
    Layer,
    check_images,
    check_input_shape,
    make_spec,
    padding_mode,
    positive_ints,
    spatial_output_shape,
)


def _pool(kind: str, window, strides, padding, reduce) -> Layer:
    size = positive_ints(kind, "window", window, 2)
    stride = size if strides is None else positive_ints(kind, "strides", strides, 2)
    pad = padding_mode(kind, padding)
    spec = make_spec(kind, window=size, strides=stride, padding=pad)
    dims, steps = (1, *size, 1), (1, *stride, 1)

    def init(key, input_shape):
        del key
        shape = check_input_shape(kind, input_shape)
        return spatial_output_shape(kind, shape, size, stride, pad, shape[-1]), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        check_images(kind, x)
        return reduce(x, dims, steps, pad), state

    return Layer(init, apply, spec)


def _max(x, dims, steps, pad):
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, steps, pad)


def _mean(x, dims, steps, pad):
    total = lax.reduce_window(x, 0.0, lax.add, dims, steps, pad)
    if pad == "VALID":
        return total / (dims[1] * dims[2])
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    return total / lax.reduce_window(ones, 0.0, lax.add, dims, steps, pad)


def MaxPool2D(window: int | tuple[int, int], strides: int | tuple[int, int] | None = None,
              padding: str = "VALID") -> Layer:
    """Max pooling: each output is the largest input in its window, per channel.

    Args:
        window: `(wh, ww)` or one int for both.
        strides: `(sh, sw)`, one int, or `None` for non-overlapping windows (strides = window).
        padding: `"VALID"` (default) or `"SAME"` (padded positions never win).

    Returns:
        A parameter-free `Layer` mapping `(N, H, W, C)` to `(N, H', W', C)`.

    Example:
        >>> pool = jdnn.MaxPool2D(2)  # (N, 28, 28, C) -> (N, 14, 14, C)
    """
    return _pool("MaxPool2D", window, strides, padding, _max)


def AvgPool2D(window: int | tuple[int, int], strides: int | tuple[int, int] | None = None,
              padding: str = "VALID") -> Layer:
    """Average pooling: each output is the mean of its window, per channel.

    With `padding="SAME"` the mean is over the real (unpadded) inputs only, as in TensorFlow.

    Args:
        window: `(wh, ww)` or one int for both.
        strides: `(sh, sw)`, one int, or `None` for non-overlapping windows (strides = window).
        padding: `"VALID"` (default) or `"SAME"`.

    Returns:
        A parameter-free `Layer` mapping `(N, H, W, C)` to `(N, H', W', C)`.

    Example:
        >>> pool = jdnn.AvgPool2D((2, 2), strides=1, padding="SAME")  # shape-preserving
    """
    return _pool("AvgPool2D", window, strides, padding, _mean)
