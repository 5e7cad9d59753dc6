"""Pooling over NHWC images: the maximum or the mean of each window, per channel."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jdnn.core import (
    Layer,
    check_images,
    check_input_shape,
    make_spec,
    register_layer,
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
    window, stride = dims[1:3], steps[1:3]
    tiles_exactly = all(n % k == 0 for n, k in zip(x.shape[1:3], window))
    if stride == window and (pad == "VALID" or tiles_exactly):
        return _tiled_max(x, window)
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, steps, pad)


# Non-overlapping windows (strides = window, the common case) are a reshape and a max. Its
# derivative is stated by hand: the whole tangent of a window goes to its FIRST maximum in
# row-major order, as `reduce_window`'s gradient and the NumPy reference do (jnp.max's own rule
# would split it among tied maxima). Written as a JVP, so forward mode works and XLA's
# transpose is elementwise: on XLA:CPU, `reduce_window`'s gradient (select-and-scatter) took
# ~13 ms per step for a 64x28x28x32 input against ~2 ms for this.


def _tiles(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """`(N, H, W, C)` -> `(N, H // kh, kh, W // kw, kw, C)`; a VALID remainder is cut off."""
    (kh, kw), (n, h, w, c) = window, x.shape
    return x[:, :h // kh * kh, :w // kw * kw].reshape(n, h // kh, kh, w // kw, kw, c)


def _first_max(tiles: jax.Array, y: jax.Array) -> jax.Array:
    """The mask of each window's first maximum (row-major), shaped like `tiles`."""
    hit = tiles == y[:, :, None, :, None, :]
    taken = jnp.zeros(y.shape, bool)
    rows = []
    for i in range(tiles.shape[2]):
        row = []
        for j in range(tiles.shape[4]):
            first = hit[:, :, i, :, j, :] & ~taken
            taken = taken | first
            row.append(first)
        rows.append(jnp.stack(row, axis=3))
    return jnp.stack(rows, axis=2)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _tiled_max(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    return jnp.max(_tiles(x, window), axis=(2, 4))


@_tiled_max.defjvp
def _tiled_max_jvp(window, primals, tangents):
    (x,), (dx,) = primals, tangents
    tiles = _tiles(x, window)
    y = jnp.max(tiles, axis=(2, 4))
    picked = jnp.where(_first_max(tiles, y), _tiles(dx, window), jnp.zeros((), dx.dtype))
    return y, jnp.sum(picked, axis=(2, 4))


def _mean(x, dims, steps, pad):
    total = lax.reduce_window(x, 0.0, lax.add, dims, steps, pad)
    if pad == "VALID":
        return total / (dims[1] * dims[2])
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    return total / lax.reduce_window(ones, 0.0, lax.add, dims, steps, pad)


def _flops(spec, input_shape, output_shape) -> int:
    return math.prod(spec["window"]) * math.prod(output_shape[1:])


def _label(spec) -> str:
    """E.g. `MaxPool2D(2x2)`, `AvgPool2D(3x3, /1, SAME)`."""
    size = spec["window"]
    parts = [f"{size[0]}x{size[1]}"]
    if spec["strides"] != size:
        parts.append(f"/{spec['strides'][0]}" if len(set(spec["strides"])) == 1
                     else f"/{spec['strides']}")
    if spec["padding"] != "VALID":
        parts.append(spec["padding"])
    return f"{spec.kind}({', '.join(parts)})"


@register_layer(family="pool", flops=_flops, label=_label)
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


@register_layer(family="pool", flops=_flops, label=_label)
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
