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

MaxPool1D and AvgPool1D are the same two reductions over the windows of sequences `(B, T, C)`,
laid out by Conv1D's helpers (`conv1d.pad_each`, `conv1d.im2col`): each example padded as if
it were alone. With `lengths`, an example's padded steps are padding too (never the max, never
counted), and outputs past its new length are 0 with no gradient. GlobalMaxPool and
GlobalAvgPool reduce over every axis between the batch and the channels at once.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from jdnn.reference.layers import conv1d
from jdnn.reference.layers.conv import col2im, im2col, pad, pad_amounts, unpad
from jdnn.reference.padded import Padded, sequence_mask


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




# --- MaxPool1D and AvgPool1D: windows over sequences ------------------------------------------


def _sequence_windows(x, lengths, window, strides, padding, fill):
    """The windows of sequences `x` `(B, T, C)` as `(B, T', window, C)`, padded with `fill`;
    which outputs are real, `(B, T', 1)`; the new lengths; and what `_back_to_steps` needs."""
    real = conv1d.all_lengths(x, lengths)
    xp, lows = conv1d.pad_each(x, real, window, strides, padding, fill)
    slots = conv1d.im2col(xp, window, strides, 1)
    new_lengths = np.array([conv1d.output_length(int(n), window, strides, padding)
                            for n in real])
    kept = sequence_mask(new_lengths, slots.shape[1])[..., None]
    return slots, kept, new_lengths, (xp.shape[1], lows, real, x.shape[1], strides)


def _back_to_steps(dslots, geometry):
    """Window-slot gradients `(B, T', window, C)` summed back onto the input steps."""
    n, lows, real, steps, strides = geometry
    return conv1d.unpad_each(conv1d.col2im(dslots, n, strides, 1), lows, real, steps)


def _as_output(y, new_lengths, lengths):
    return y if lengths is None else Padded(y, new_lengths)


def max_1d_forward(params, x, *, window, strides, padding, lengths=None):
    """Max pooling over time: the largest value of each window, per channel.

    Args:
        params: `{}`.
        x: sequences `(B, T, C)`.
        window, strides: positive ints.
        padding: `"SAME"` (padded with `-inf`) or `"VALID"`.
        lengths: `(B,)` ints, or None; padded steps are `-inf` too.

    Returns:
        `(y, cache)`: `y` `(B, T', C)` (`Padded` with `lengths`), 0 past each new length.
    """
    del params
    slots, kept, new_lengths, geometry = _sequence_windows(x, lengths, window, strides, padding,
                                                           -np.inf)
    winner = np.argmax(slots, axis=2)[:, :, None, :]               # first maximum: (B, T', 1, C)
    y = np.take_along_axis(slots, winner, axis=2)[:, :, 0, :]
    y = np.where(kept, y, np.zeros((), y.dtype))
    return _as_output(y, new_lengths, lengths), (winner, kept, slots.shape, geometry)


def max_1d_backward(params, cache, dy):
    """Gradient of max pooling over time: `y[t] = slots[t, k*]` at a real output, so
    `dslots[t, k*] = dy[t]` and every other slot gets 0; an output past the new length is the
    constant 0 and sends nothing. `col2im` sums overlapping windows onto the steps.

    Args:
        params: `{}`.
        cache: from `max_1d_forward`.
        dy: `(B, T', C)`.

    Returns:
        `(dx, {})` with `dx` `(B, T, C)`.
    """
    del params
    winner, kept, slots_shape, geometry = cache
    dslots = np.zeros(slots_shape, dtype=dy.dtype)
    np.put_along_axis(dslots, winner, np.where(kept, dy, 0)[:, :, None, :], axis=2)
    return _back_to_steps(dslots, geometry), {}


def avg_1d_forward(params, x, *, window, strides, padding, lengths=None):
    """Average pooling over time: the mean of the real steps of each window, per channel.

    Args:
        params: `{}`.
        x: sequences `(B, T, C)`.
        window, strides: positive ints.
        padding: `"SAME"` or `"VALID"`; SAME padding is not counted.
        lengths: `(B,)` ints, or None; padded steps are not counted either.

    Returns:
        `(y, cache)`: `y` `(B, T', C)` (`Padded` with `lengths`), 0 past each new length.
    """
    del params
    slots, kept, new_lengths, geometry = _sequence_windows(x, lengths, window, strides, padding,
                                                           0.0)
    ones = np.ones((*x.shape[:2], 1), dtype=x.dtype)
    real_slots = _sequence_windows(ones, lengths, window, strides, padding, 0.0)[0]
    count = np.maximum(real_slots.sum(axis=2), 1)                  # (B, T', 1), real steps
    y = np.where(kept, slots.sum(axis=2) / count, np.zeros((), x.dtype))
    return _as_output(y, new_lengths, lengths), (count, kept, slots.shape, geometry)


def avg_1d_backward(params, cache, dy):
    """Gradient of average pooling over time: `y[t] = (1 / count[t]) * sum_i slots[t, i]`, so
    every slot of a real output's window receives `dy[t] / count[t]` (padding and padded steps
    too, and `unpad_each` drops those); outputs past the new length send nothing.

    Args:
        params: `{}`.
        cache: from `avg_1d_forward`.
        dy: `(B, T', C)`.

    Returns:
        `(dx, {})` with `dx` `(B, T, C)`.
    """
    del params
    count, kept, slots_shape, geometry = cache
    per_slot = np.where(kept, dy / count, 0)[:, :, None, :]
    return _back_to_steps(np.ascontiguousarray(np.broadcast_to(per_slot, slots_shape)),
                          geometry), {}


# --- GlobalAvgPool and GlobalMaxPool: one window, the whole image or sequence ---------------


def _real_positions(x, lengths):
    """`(B, T, 1, ..., 1)` bool: True at real steps (all of them without `lengths`)."""
    if lengths is None:
        return np.ones((x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2), dtype=bool)
    mask = sequence_mask(lengths, x.shape[1])
    return mask.reshape(mask.shape + (1,) * (x.ndim - 2))


def global_avg_forward(params, x, *, lengths=None):
    """The mean over every axis between the batch and the channels (real steps only).

    Args:
        params: `{}`.
        x: `(B, ..., C)`, e.g. images `(B, H, W, C)` or sequences `(B, T, C)`.
        lengths: `(B,)` ints for a padded batch of sequences, or None.

    Returns:
        `(y, cache)`: `y` `(B, C)`; 0 for an example of length 0.
    """
    del params
    axes = tuple(range(1, x.ndim - 1))
    real = _real_positions(x, lengths)
    # count_b = the real positions of example b: its real steps times the other axes' sizes
    count = real.sum(axis=axes, dtype=x.dtype) * np.prod(x.shape[2:-1], dtype=x.dtype)
    count = np.maximum(count, 1)                                   # (B, 1)
    y = np.where(real, x, 0).sum(axis=axes) / count
    return y, (real, count, x.shape)


def global_avg_backward(params, cache, dy):
    """Gradient of the global mean: `y[b, c] = sum_p x[b, p, c] / count_b` over the real
    positions `p`, so `dx[b, p, c] = dy[b, c] / count_b` there and 0 at padded steps.

    Args:
        params: `{}`.
        cache: from `global_avg_forward`.
        dy: `(B, C)`.

    Returns:
        `(dx, {})` with `dx` of `x`'s shape.
    """
    del params
    real, count, shape = cache
    per_position = (dy / count).reshape(shape[0], *(1,) * (len(shape) - 2), shape[-1])
    return np.ascontiguousarray(np.broadcast_to(np.where(real, per_position, 0), shape)), {}


def global_max_forward(params, x, *, lengths=None):
    """The maximum over every axis between the batch and the channels (real steps only).

    Args:
        params: `{}`.
        x: `(B, ..., C)`.
        lengths: `(B,)` ints for a padded batch of sequences, or None.

    Returns:
        `(y, cache)`: `y` `(B, C)`; 0 for an example of length 0 (it has no maximum).
    """
    del params
    batch, channels = x.shape[0], x.shape[-1]
    flat = x.reshape(batch, -1, channels)                          # positions in row-major order
    real = np.broadcast_to(_real_positions(x, lengths), x.shape).reshape(flat.shape)
    winner = np.argmax(np.where(real, flat, -np.inf), axis=1)[:, None, :]  # first max: (B, 1, C)
    some = real.any(axis=1)                                        # (B, C): any real position
    y = np.where(some, np.take_along_axis(flat, winner, axis=1)[:, 0, :], np.zeros((), x.dtype))
    return y, (winner, some, flat.shape, x.shape)


def global_max_backward(params, cache, dy):
    """Gradient of the global maximum: `y[b, c] = x[b, p*, c]` for the first maximum `p*`, so
    `dx[b, p*, c] = dy[b, c]` and 0 elsewhere (nothing at all for an example of length 0).

    Args:
        params: `{}`.
        cache: from `global_max_forward`.
        dy: `(B, C)`.

    Returns:
        `(dx, {})` with `dx` of `x`'s shape.
    """
    del params
    winner, some, flat_shape, shape = cache
    dflat = np.zeros(flat_shape, dtype=dy.dtype)
    np.put_along_axis(dflat, winner, np.where(some, dy, 0)[:, None, :], axis=1)
    return dflat.reshape(shape), {}


# --- the kinds, each as a forward/backward pair -----------------------------------------------

max_pool = SimpleNamespace(forward=max_forward, backward=max_backward)
avg_pool = SimpleNamespace(forward=avg_forward, backward=avg_backward)
max_pool_1d = SimpleNamespace(forward=max_1d_forward, backward=max_1d_backward)
avg_pool_1d = SimpleNamespace(forward=avg_1d_forward, backward=avg_1d_backward)
global_avg_pool = SimpleNamespace(forward=global_avg_forward, backward=global_avg_backward)
global_max_pool = SimpleNamespace(forward=global_max_forward, backward=global_max_backward)
