"""MaxPool2D and AvgPool2D, by hand: a reduction over each window, per channel.

Both copy the windows out with `im2col` (see `conv.py`), reduce over the window axes, and in
backward send each output's gradient back into its window slots and add the slots onto the
pixels with `col2im`. Overlapping windows (stride < window) therefore accumulate correctly:
a pixel in several windows receives the sum of what each of them sends it.

- Max: `y = max over the window`. Padding ("SAME") is `-inf`, so a padded slot never wins.
  The gradient goes entirely to the winning slot (the argmax), nothing to the others.
  Ties: the *first* maximum in row-major window order (slot `i * kw + j`, smallest first) wins,
  which is `np.argmax`'s rule; `jax.grad` of `lax.reduce_window(max)` routes ties the same way
  on XLA's CPU backend (checked against jax 0.10.2). Other backends may differ, so gradient
  checks should use inputs without ties.
- Average: `y = sum over the window / count`. With "VALID" the count is the window area
  `kh * kw`; with "SAME" it is the number of real (unpadded) pixels in that window, as in
  TensorFlow and jdnn's `AvgPool2D`. Padding is 0. Each slot receives `dy / count`.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from jdnn.reference.layers.conv import col2im, im2col, pad, pad_amounts, unpad


def _windows(x, window, strides, padding, fill):
    """The windows of `x` as `(N, out_h, out_w, kh*kw, C)`, padded with `fill`, and the shapes
    `col2im`/`unpad` need to undo it."""
    pads = pad_amounts(x.shape[1], x.shape[2], window, strides, padding)
    xp = pad(x, pads, fill)
    cols = im2col(xp, window, strides)
    n, out_h, out_w, kh, kw, c = cols.shape
    return cols.reshape(n, out_h, out_w, kh * kw, c), (xp.shape, pads, tuple(window),
                                                        tuple(strides))


def _back_to_pixels(dslots, geometry):
    """Window-slot gradients `(N, out_h, out_w, kh*kw, C)` summed back onto the input pixels."""
    padded_shape, pads, (kh, kw), strides = geometry
    n, out_h, out_w, _, c = dslots.shape
    dcols = dslots.reshape(n, out_h, out_w, kh, kw, c)
    return unpad(col2im(dcols, padded_shape, strides), pads)


# --- MaxPool2D ----------------------------------------------------------------------------------


def max_forward(params, x, *, window, strides, padding):
    """Max pooling: the largest value of each window, per channel.

    Args:
        params: `{}`.
        x: images `(N, H, W, C)`.
        window: `(kh, kw)`.
        strides: `(sh, sw)`.
        padding: `"SAME"` (padded with `-inf`) or `"VALID"`.

    Returns:
        `(y, cache)`: `y` of shape `(N, out_h, out_w, C)`; the cache holds the index of each
        window's winner (first maximum in row-major window order) and the geometry.
    """
    del params
    slots, geometry = _windows(x, window, strides, padding, -np.inf)
    winner = np.argmax(slots, axis=3)[:, :, :, None, :]  # (N, out_h, out_w, 1, C)
    y = np.take_along_axis(slots, winner, axis=3)[:, :, :, 0, :]
    return y, (winner, slots.shape, geometry)


def max_backward(params, cache, dy):
    """Gradient of max pooling: each output's gradient goes to its window's winner.

    Within a window, `y = x[k*]` with `k*` the argmax, so `dy/dx[k] = 1` if `k = k*`, else 0
    (a subgradient choice at ties: the first maximum). Per window: `dslots[k*] = dy`, all
    other slots 0; then `col2im` adds the slots onto the pixels, so a pixel that wins in
    several overlapping windows collects the sum of their `dy`.

    Args:
        params: `{}`.
        cache: from `max_forward`.
        dy: `(N, out_h, out_w, C)`.

    Returns:
        `(dx, {})` with `dx` of shape `(N, H, W, C)`.
    """
    del params
    winner, slots_shape, geometry = cache
    dslots = np.zeros(slots_shape, dtype=dy.dtype)
    np.put_along_axis(dslots, winner, dy[:, :, :, None, :], axis=3)
    return _back_to_pixels(dslots, geometry), {}


# --- AvgPool2D ----------------------------------------------------------------------------------


def _counts(height, width, dtype, window, strides, padding):
    """How many real (unpadded) pixels each window covers, `(1, out_h, out_w, 1)`."""
    ones = np.ones((1, height, width, 1), dtype=dtype)
    slots, _ = _windows(ones, window, strides, padding, 0.0)
    return slots.sum(axis=3)


def avg_forward(params, x, *, window, strides, padding):
    """Average pooling: the mean of the real pixels of each window, per channel.

    Args:
        params: `{}`.
        x: images `(N, H, W, C)`.
        window: `(kh, kw)`.
        strides: `(sh, sw)`.
        padding: `"SAME"` (mean over the unpadded pixels only) or `"VALID"`.

    Returns:
        `(y, cache)`: `y` of shape `(N, out_h, out_w, C)`; the cache holds the per-window
        counts and the geometry.
    """
    del params
    slots, geometry = _windows(x, window, strides, padding, 0.0)
    if padding == "VALID":
        count = window[0] * window[1]
    else:
        count = _counts(x.shape[1], x.shape[2], x.dtype, window, strides, padding)
    y = slots.sum(axis=3) / count
    return y, (count, slots.shape, geometry)


def avg_backward(params, cache, dy):
    """Gradient of average pooling: each window slot receives `dy / count`.

    `y = (1 / count) * sum_k x[k]`, so `dy/dx[k] = 1 / count` for every slot `k` of the
    window, padded slots included (their gradient is then cropped away by `unpad`). `col2im`
    adds the slots onto the pixels, summing overlapping windows.

    Args:
        params: `{}`.
        cache: from `avg_forward`.
        dy: `(N, out_h, out_w, C)`.

    Returns:
        `(dx, {})` with `dx` of shape `(N, H, W, C)`.
    """
    del params
    count, slots_shape, geometry = cache
    dslots = np.broadcast_to((dy / count)[:, :, :, None, :], slots_shape)
    return _back_to_pixels(np.ascontiguousarray(dslots), geometry), {}


# --- the two kinds, each as a forward/backward pair ------------------------------------------

max_pool = SimpleNamespace(forward=max_forward, backward=max_backward)
avg_pool = SimpleNamespace(forward=avg_forward, backward=avg_backward)
