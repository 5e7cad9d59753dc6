"""Pooling: the maximum or the mean of each window, per channel, over NHWC images
(`MaxPool2D`, `AvgPool2D`) and sequences `(B, T, C)` (`MaxPool1D`, `AvgPool1D`), and over a
whole image or sequence (`GlobalMaxPool`, `GlobalAvgPool`).

The 1-D pools are the 2-D ones on `(B, T, 1, C)`. On a `jdnn.Padded` batch they read the
windows as `jdnn.layers.conv1d` lays them out (each example as if alone): padded steps never
win a maximum and never count in a mean, outputs past an example's new length are 0."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jdnn.core import (
    Layer,
    LayerError,
    check_images,
    check_input_shape,
    make_spec,
    padding_mode,
    positive_int,
    positive_ints,
    register_layer,
    spatial_output_shape,
)
from jdnn.layers.conv1d import check_sequences, output_length, windows_input
from jdnn.padded import Padded, sequence_mask, unpad


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

    Examples:
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

    Examples:
        >>> pool = jdnn.AvgPool2D((2, 2), strides=1, padding="SAME")  # shape-preserving
    """
    return _pool("AvgPool2D", window, strides, padding, _mean)


# ---------------------------------------------------------------------------------------------
# 1-D pools on sequences (B, T, C): the 2-D code paths on (B, T, 1, C); a padded batch is first
# laid out as each example's windows read it (`conv1d.windows_input`), then pooled VALID.


def _max_of_padded(values, lengths, window, stride, pad):
    xp = windows_input(values, lengths, window, stride, pad, fill=-jnp.inf)
    return _max(xp[:, :, None, :], (1, window, 1, 1), (1, stride, 1, 1), "VALID")[:, :, 0]


def _mean_of_padded(values, lengths, window, stride, pad):
    """Sum of the real steps of each window over their count (at least 1: a window of padding
    only, past an example's new length, gives 0)."""
    dims, steps = (1, window, 1), (1, stride, 1)
    xp = windows_input(values, lengths, window, stride, pad)
    real = windows_input(jnp.ones_like(values[..., :1]), lengths, window, stride, pad)
    total = lax.reduce_window(xp, 0.0, lax.add, dims, steps, "VALID")
    count = lax.reduce_window(real, 0.0, lax.add, dims, steps, "VALID")
    return total / jnp.maximum(count, 1.0)


def _pool_1d(kind: str, window, strides, padding, reduce, reduce_padded) -> Layer:
    (size,) = positive_ints(kind, "window", window, 1)
    stride = size if strides is None else positive_int(kind, "strides", strides)
    pad = padding_mode(kind, padding)
    spec = make_spec(kind, window=size, strides=stride, padding=pad)

    def init(key, input_shape):
        del key
        shape = check_input_shape(kind, input_shape)
        check_sequences(kind, shape, size, pad)
        return (shape[0], output_length(shape[1], size, stride, pad), shape[2]), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        values, lengths = unpad(x)
        check_sequences(kind, values.shape, size, pad)
        if lengths is None:
            y = reduce(values[:, :, None, :], (1, size, 1, 1), (1, stride, 1, 1), pad)
            return y[:, :, 0], state
        y = reduce_padded(values, lengths, size, stride, pad)
        new_lengths = output_length(lengths, size, stride, pad)
        real = sequence_mask(new_lengths, y.shape[1])[..., None]
        return Padded(jnp.where(real, y, jnp.zeros((), y.dtype)), new_lengths), state

    return Layer(init, apply, spec)


def _flops_1d(spec, input_shape, output_shape) -> int:
    return spec["window"] * math.prod(output_shape[1:])


def _label_1d(spec) -> str:
    """E.g. `MaxPool1D(2)`, `AvgPool1D(3, /1, SAME)`."""
    parts = [str(spec["window"])]
    parts += [f"/{spec['strides']}"] if spec["strides"] != spec["window"] else []
    parts += [spec["padding"]] if spec["padding"] != "VALID" else []
    return f"{spec.kind}({', '.join(parts)})"


@register_layer(family="pool", flops=_flops_1d, label=_label_1d, padded=True)
def MaxPool1D(window: int, strides: int | None = None, padding: str = "VALID") -> Layer:
    """Max pooling over time: each output step is the largest input in its window, per channel.

    A window's gradient goes to its first maximum (earliest step), as `MaxPool2D`'s does. On a
    `jdnn.Padded` batch, padded steps never win (they read as `-inf`, like SAME padding) and
    the output is `Padded(y, new_lengths)`, each length mapped like `T`.

    Args:
        window: steps per window, a positive int.
        strides: steps between windows, or `None` for non-overlapping windows (= window).
        padding: `"VALID"` (default): `(T - window) // strides + 1` steps; `"SAME"`:
            `ceil(T / strides)` steps, padded like TensorFlow (the extra step at the end).

    Returns:
        A parameter-free `Layer` mapping `(B, T, C)` to `(B, T', C)`.

    Examples:
        >>> pool = jdnn.MaxPool1D(2)   # (B, 100, C) -> (B, 50, C)
    """
    return _pool_1d("MaxPool1D", window, strides, padding, _max, _max_of_padded)


@register_layer(family="pool", flops=_flops_1d, label=_label_1d, padded=True)
def AvgPool1D(window: int, strides: int | None = None, padding: str = "VALID") -> Layer:
    """Average pooling over time: each output step is the mean of its window, per channel.

    The mean is over real steps only: SAME padding never counts (as in `AvgPool2D`), nor do
    the padded steps of a `jdnn.Padded` batch, whose output is `Padded(y, new_lengths)`.

    Args:
        window: steps per window, a positive int.
        strides: steps between windows, or `None` for non-overlapping windows (= window).
        padding: `"VALID"` (default) or `"SAME"`, with `MaxPool1D`'s output lengths.

    Returns:
        A parameter-free `Layer` mapping `(B, T, C)` to `(B, T', C)`.

    Examples:
        >>> pool = jdnn.AvgPool1D(3, strides=1, padding="SAME")   # length-preserving smoothing
    """
    return _pool_1d("AvgPool1D", window, strides, padding, _mean, _mean_of_padded)


# ---------------------------------------------------------------------------------------------
# Global pools: (B, ..., C) -> (B, C) over every axis between the batch and the channels.


def _real_steps(values: jax.Array, lengths: jax.Array | None) -> jax.Array | None:
    """`(B, T, 1, ..., 1)` bool, True at real steps, broadcasting against `values`."""
    if lengths is None:
        return None
    mask = sequence_mask(lengths, values.shape[1])
    return mask.reshape(mask.shape + (1,) * (values.ndim - 2))


def _global_mean(values, lengths):
    axes = tuple(range(1, values.ndim - 1))
    if lengths is None:
        return jnp.mean(values, axis=axes)
    total = jnp.sum(jnp.where(_real_steps(values, lengths), values, 0.0), axis=axes)
    per_step = math.prod(values.shape[2:-1])   # the other axes (none for sequences)
    count = jnp.maximum(lengths, 1) * per_step
    return total / count[:, None].astype(values.dtype)


def _global_max(values, lengths):
    """The first maximum (in row-major order over the pooled axes) of each example and channel,
    picked by a one-hot select so its gradient goes there alone (jnp.max would split a tie)."""
    batch, channels = values.shape[0], values.shape[-1]
    flat = values.reshape(batch, -1, channels)
    scores = flat
    if lengths is not None:
        real = jnp.broadcast_to(_real_steps(values, lengths), values.shape)
        scores = jnp.where(real.reshape(flat.shape), flat, -jnp.inf)
    first = jnp.argmax(scores, axis=1)                                  # (B, C)
    pick = jnp.arange(flat.shape[1])[None, :, None] == first[:, None, :]
    y = jnp.sum(jnp.where(pick, flat, jnp.zeros((), flat.dtype)), axis=1)
    if lengths is None:
        return y
    return jnp.where((lengths > 0)[:, None], y, jnp.zeros((), y.dtype))


def _check_pooled(kind: str, shape: tuple[int, ...]) -> None:
    if len(shape) < 3:
        raise LayerError(kind, f"expected (batch, ..., channels) with at least one axis to pool "
                               f"(images (B, H, W, C), sequences (B, T, C)), got shape "
                               f"{tuple(shape)}: features (B, C) have nothing to pool")


def _global(kind: str, reduce) -> Layer:
    def init(key, input_shape):
        del key
        shape = check_input_shape(kind, input_shape)
        _check_pooled(kind, shape)
        return (shape[0], shape[-1]), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        values, lengths = unpad(x)
        _check_pooled(kind, values.shape)
        return reduce(values, lengths), state

    return Layer(init, apply, make_spec(kind))


def _flops_global(spec, input_shape, output_shape) -> int:
    return math.prod(input_shape[1:])


@register_layer(family="pool", flops=_flops_global, padded=True)
def GlobalAvgPool() -> Layer:
    """The mean over every spatial or time axis, per channel: `(B, ..., C)` -> `(B, C)`.

    On a `jdnn.Padded` batch of sequences, the mean over each example's real steps (0 for an
    example of length 0); the time axis is gone, so the output is a plain array.

    Returns:
        A parameter-free `Layer`.

    Examples:
        >>> jdnn.GlobalAvgPool().init(jax.random.key(0), (8, 7, 7, 32))[0]   # (8, 32)
    """
    return _global("GlobalAvgPool", _global_mean)


@register_layer(family="pool", flops=_flops_global, padded=True)
def GlobalMaxPool() -> Layer:
    """The maximum over every spatial or time axis, per channel: `(B, ..., C)` -> `(B, C)`.

    Ties: the first maximum (row-major over the pooled axes, the earliest step of a sequence)
    gets the gradient. On a `jdnn.Padded` batch, the maximum over each example's real steps;
    an example of length 0 has none and gives 0 (not `-inf`, which would poison what follows).

    Returns:
        A parameter-free `Layer`.

    Examples:
        >>> jdnn.GlobalMaxPool().init(jax.random.key(0), (8, 100, 64))[0]   # (8, 64)
    """
    return _global("GlobalMaxPool", _global_max)
