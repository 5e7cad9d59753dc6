"""Conv1D, by hand, with im2col: a 1-D convolution is a matrix product once the windows are
copied out.

On sequences `x` `(B, T, C)` with a WIO kernel `w` `(k, C, F)`, stride `s` and dilation `d`,
each output step is

    y[b, t, f] = b[f] + sum_{i, c} xp[b, t*s + i*d, c] * w[i, c, f]

(a cross-correlation, as in every DNN library), where `xp` is `x` zero-padded. `im2col` copies
the window of output step `t`, the `k` steps `t*s + i*d`, into one row `cols[b, t]` of
`k * C` numbers (tap by tap, channels fastest); the sum is then `cols @ W` with
`W = w.reshape(k * C, F)`, a Dense layer on the rows, and backward is Dense's backward
followed by `col2im`, which adds each row's gradient back onto the steps it was copied from.

Padding, for a sequence of `L` steps (a window covers `span = (k - 1) * d + 1` steps):

    VALID    no padding                        L' = (L - span) // s + 1   (0 if negative)
    SAME     low = total // 2 before, the rest after, total = max((L' - 1)*s + span - L, 0);
             L' = ceil(L / s)                  (TensorFlow's and XLA's rule)
    CAUSAL   low = span - 1 before, none after; L' = ceil(L / s)

A padded batch (`lengths`) is convolved as if each example were alone: example `b` is placed
in `xp` after its own `low` (which, for SAME with `s > 1`, depends on its length), its steps
past `lengths[b]` are left as zeros, and its output keeps `L'_b` real steps. Without
`lengths` every example is `T` long, so one code path serves both.

The time-axis helpers here are shared with the 1-D pools (`pooling.py`).
"""

from __future__ import annotations

import numpy as np

from jdnn.reference.padded import Padded

# --- windows over sequences, shared with the 1-D pools ------------------------------------------


def output_length(length: int, span: int, stride: int, padding: str) -> int:
    """`L'`, the number of windows over a sequence of `length` steps (table above)."""
    if padding == "VALID":
        return max((length - span) // stride + 1, 0)
    return -(-length // stride)


def left_pad(length: int, span: int, stride: int, padding: str) -> int:
    """`low`, the padding before the first step of a sequence of `length` steps."""
    if padding == "VALID":
        return 0
    if padding == "CAUSAL":
        return span - 1
    total = max((output_length(length, span, stride, padding) - 1) * stride + span - length, 0)
    return total // 2


def all_lengths(x: np.ndarray, lengths) -> np.ndarray:
    """Each example's length: `lengths`, or `T` for all when None."""
    if lengths is None:
        return np.full(x.shape[0], x.shape[1], dtype=int)
    return np.asarray(lengths)


def pad_each(x: np.ndarray, lengths: np.ndarray, span: int, stride: int, padding: str,
             fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Every example padded as if it were alone.

    Args:
        x: `(B, T, C)`.
        lengths: `(B,)` ints in `[0, T]`.
        span, stride, padding: the windows' (module docstring).
        fill: what padding reads as (0, or `-inf` for a maximum).

    Returns:
        `(xp, lows)`: `xp` `(B, N, C)`, with `N = (T' - 1) * stride + span` for `T'` the number
        of windows over `T` steps (as many as the batch's output has), and
        `xp[b, lows[b] + j] = x[b, j]` for the real steps `j < lengths[b]` (those that fit),
        `fill` everywhere else.
    """
    batch, steps, channels = x.shape
    n = max((output_length(steps, span, stride, padding) - 1) * stride + span, 0)
    xp = np.full((batch, n, channels), fill, dtype=x.dtype)
    lows = np.array([left_pad(int(length), span, stride, padding) for length in lengths], int)
    for b in range(batch):
        kept = min(int(lengths[b]), n - lows[b])
        xp[b, lows[b]:lows[b] + kept] = x[b, :kept]
    return xp, lows


def unpad_each(dxp: np.ndarray, lows: np.ndarray, lengths: np.ndarray, steps: int) -> np.ndarray:
    """The transpose of `pad_each`: `dx[b, j] = dxp[b, lows[b] + j]` at real steps `j`, 0 at
    padded steps and at steps no window reads (neither reaches the output)."""
    batch, n, channels = dxp.shape
    dx = np.zeros((batch, steps, channels), dtype=dxp.dtype)
    for b in range(batch):
        kept = min(int(lengths[b]), n - lows[b])
        dx[b, :kept] = dxp[b, lows[b]:lows[b] + kept]
    return dx


def im2col(xp: np.ndarray, kernel_size: int, stride: int, dilation: int) -> np.ndarray:
    """Every window of a padded sequence batch, copied out.

    Args:
        xp: `(B, N, C)`.
        kernel_size, stride, dilation: `k`, `s`, `d`.

    Returns:
        `cols` `(B, T', k, C)` with `cols[b, t, i, c] = xp[b, t*s + i*d, c]`, where
        `T' = (N - span) // s + 1`: one strided slice per tap `i`.
    """
    batch, n, channels = xp.shape
    out = (n - (kernel_size - 1) * dilation - 1) // stride + 1
    cols = np.empty((batch, out, kernel_size, channels), dtype=xp.dtype)
    for i in range(kernel_size):
        cols[:, :, i, :] = xp[:, i * dilation:i * dilation + (out - 1) * stride + 1:stride, :]
    return cols


def col2im(dcols: np.ndarray, n: int, stride: int, dilation: int) -> np.ndarray:
    """The transpose of `im2col`: adds every window slot back onto the step it came from.

    If `cols = im2col(xp)`, then `dL/dxp[b, u, c] = sum of dL/dcols[b, t, i, c] over all
    `(t, i)` with `t*s + i*d = u`: a step inside several windows sums them all.

    Args:
        dcols: `(B, T', k, C)`.
        n: the length `N` of the padded sequences `im2col` read.
        stride, dilation: `s`, `d`.

    Returns:
        `dxp` `(B, N, C)`.
    """
    batch, out, kernel_size, channels = dcols.shape
    dxp = np.zeros((batch, n, channels), dtype=dcols.dtype)
    for i in range(kernel_size):
        dxp[:, i * dilation:i * dilation + (out - 1) * stride + 1:stride, :] += dcols[:, :, i, :]
    return dxp


# --- the layer ----------------------------------------------------------------------------------


def forward(params, x, *, strides, padding, dilation, lengths=None):
    """A 1-D convolution: pad each example, im2col, then one matrix product.

    Args:
        params: `{"w": (k, C, F), "b": (F,)}`; `"b"` is absent without a bias.
        x: sequences `(B, T, C)`.
        strides, dilation: positive ints.
        padding: `"SAME"`, `"VALID"` or `"CAUSAL"`.
        lengths: `(B,)` ints, or None.

    Returns:
        `(y, cache)`: `y` `(B, T', F)`, as `Padded(y, new_lengths)` when `lengths` is given;
        the cache holds the windows and the geometry.
    """
    w = params["w"]
    k, channels, features = w.shape
    span = (k - 1) * dilation + 1
    real = all_lengths(x, lengths)
    xp, lows = pad_each(x, real, span, strides, padding, 0.0)
    cols = im2col(xp, k, strides, dilation)                       # (B, T', k, C)
    y = cols.reshape(-1, k * channels) @ w.reshape(k * channels, features)
    y = y.reshape(*cols.shape[:2], features)
    if "b" in params:
        y = y + params["b"]
    cache = (cols, xp.shape[1], lows, real, x.shape[1], strides, dilation)
    if lengths is None:
        return y, cache
    new_lengths = np.array([output_length(int(n), span, strides, padding) for n in real])
    return Padded(y, new_lengths), cache


def backward(params, cache, dy):
    """Gradients of the convolution, through im2col.

    With `X_col = cols` as a matrix `(B*T', k*C)`, `W` `(k*C, F)` and `DY` `(B*T', F)`, the
    forward is the Dense map `Y = X_col @ W + b`, so (see `dense.backward`)

        dW     = X_col^T @ DY               reshaped back to (k, C, F)
        db     = DY summed over rows        (over the batch and every output step)
        dX_col = DY @ W^T                   the gradient of every copied-out window
        dx     = unpad_each(col2im(dX_col)) each step sums the windows it appeared in; what
                                            lands on padding (or a padded step) is dropped

    Args:
        params: as in `forward`.
        cache: from `forward`.
        dy: the gradient with respect to `y`'s values, `(B, T', F)`.

    Returns:
        `(dx, dparams)`: `dx` `(B, T, C)`; `dparams` with `params`' keys and shapes.
    """
    cols, n, lows, real, steps, strides, dilation = cache
    w = params["w"]
    k, channels, features = w.shape
    x_col = cols.reshape(-1, k * channels)
    rows_dy = dy.reshape(-1, features)
    dparams = {"w": (x_col.T @ rows_dy).reshape(w.shape)}
    if "b" in params:
        dparams["b"] = rows_dy.sum(axis=0)
    dcols = (rows_dy @ w.reshape(k * channels, features).T).reshape(cols.shape)
    dx = unpad_each(col2im(dcols, n, strides, dilation), lows, real, steps)
    return dx, dparams

