"""Conv2D, by hand, with im2col: a convolution is a matrix product once the windows are copied out.

On NHWC images with an HWIO kernel `w` of shape `(kh, kw, c_in, c_out)`, each output pixel is

    y[n, p, q, o] = b[o] + sum_{i, j, c} xp[n, p*sh + i, q*sw + j, c] * w[i, j, c, o]

(a cross-correlation, as in every DNN library), where `xp` is `x` zero-padded. `im2col` copies
each window `xp[n, p*sh : p*sh+kh, q*sw : q*sw+kw, :]` into a row of a matrix `cols` with
`kh*kw*c_in` columns, one row per output pixel; the sum above is then `cols @ w.reshape(-1,
c_out)`, a Dense layer on the rows. Backward is Dense's backward followed by `col2im`, the
transpose of `im2col`: it adds each row's gradient back onto the pixels that row was copied
from, so a pixel shared by several windows collects all their contributions.

Padding follows XLA (`jax.lax.conv_general_dilated`):
- "VALID": no padding, `out = (size - k) // stride + 1`; trailing pixels no window reaches get
  zero gradient.
- "SAME": `out = ceil(size / stride)`; the total padding `max((out - 1) * stride + k - size, 0)`
  is split `low = total // 2` before, `high = total - low` after (the extra one at the
  bottom/right).

The window helpers here (`pad_amounts`, `pad`, `im2col`, `col2im`, `unpad`) are shared with the
pooling layers.
"""

from __future__ import annotations

import numpy as np

# --- windows over NHWC images, shared with pooling --------------------------------------------


def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """(low, high) padding of one axis for "SAME": `out = ceil(size / stride)`, low <= high."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def pad_amounts(height: int, width: int, window: tuple[int, int], strides: tuple[int, int],
                padding: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """`((top, bottom), (left, right))` padding of an image for `padding` "SAME" or "VALID"."""
    if padding == "VALID":
        return (0, 0), (0, 0)
    if padding != "SAME":
        raise ValueError(f'padding must be "SAME" or "VALID", got {padding!r}')
    return (same_padding(height, window[0], strides[0]),
            same_padding(width, window[1], strides[1]))


def pad(x: np.ndarray, pads, value: float) -> np.ndarray:
    """`x` of shape (N, H, W, C) padded on H and W by `pads` with the constant `value`."""
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def unpad(xp: np.ndarray, pads) -> np.ndarray:
    """The inverse crop of `pad`: the (N, H, W, C) interior of a padded image."""
    (top, bottom), (left, right) = pads
    return xp[:, top:xp.shape[1] - bottom, left:xp.shape[2] - right, :]


def im2col(xp: np.ndarray, window: tuple[int, int], strides: tuple[int, int]) -> np.ndarray:
    """Every window of an (already padded) image, copied out.

    Args:
        xp: a padded image batch `(N, Hp, Wp, C)`.
        window: `(kh, kw)`.
        strides: `(sh, sw)`.

    Returns:
        `cols` of shape `(N, out_h, out_w, kh, kw, C)` with
        `cols[n, p, q, i, j, c] = xp[n, p*sh + i, q*sw + j, c]`, where
        `out_h = (Hp - kh) // sh + 1` and likewise `out_w`. One loop step per kernel offset
        `(i, j)`: all output positions are copied at once by a strided slice.
    """
    (kh, kw), (sh, sw) = window, strides
    n, hp, wp, c = xp.shape
    out_h, out_w = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    cols = np.empty((n, out_h, out_w, kh, kw, c), dtype=xp.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i:i + sh * (out_h - 1) + 1:sh,
                                        j:j + sw * (out_w - 1) + 1:sw, :]
    return cols


def col2im(dcols: np.ndarray, padded_shape: tuple[int, ...],
           strides: tuple[int, int]) -> np.ndarray:
    """The transpose of `im2col`: adds every window slot back onto the pixel it came from.

    If `cols = im2col(xp)` and `L` depends on `xp` only through `cols`, then
    `dL/dxp[n, h, w, c] = sum of dL/dcols[n, p, q, i, j, c] over all (p, q, i, j) with
    p*sh + i = h and q*sw + j = w`: a pixel inside several (overlapping) windows sums them all.

    Args:
        dcols: gradients shaped like `cols`, `(N, out_h, out_w, kh, kw, C)`.
        padded_shape: the shape `(N, Hp, Wp, C)` of the padded image `im2col` read.
        strides: `(sh, sw)`.

    Returns:
        `dxp` of shape `padded_shape`.
    """
    _, out_h, out_w, kh, kw, _ = dcols.shape
    sh, sw = strides
    dxp = np.zeros(padded_shape, dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, i:i + sh * (out_h - 1) + 1:sh,
                j:j + sw * (out_w - 1) + 1:sw, :] += dcols[:, :, :, i, j, :]
    return dxp


# --- the layer ----------------------------------------------------------------------------------


def forward(params, x, *, strides, padding):
    """A 2-D convolution: im2col, then one matrix product.

    Args:
        params: `{"w": (kh, kw, c_in, c_out), "b": (c_out,)}`; `"b"` is absent without a bias.
        x: images `(N, H, W, c_in)`.
        strides: `(sh, sw)`.
        padding: `"SAME"` or `"VALID"`.

    Returns:
        `(y, cache)`: `y` of shape `(N, out_h, out_w, c_out)`; the cache holds the copied-out
        windows, the padded shape, the padding and the strides.
    """
    w = params["w"]
    kh, kw, c_in, c_out = w.shape
    pads = pad_amounts(x.shape[1], x.shape[2], (kh, kw), strides, padding)
    xp = pad(x, pads, 0.0)
    cols = im2col(xp, (kh, kw), strides)
    y = cols.reshape(-1, kh * kw * c_in) @ w.reshape(kh * kw * c_in, c_out)
    y = y.reshape(*cols.shape[:3], c_out)
    if "b" in params:
        y = y + params["b"]
    return y, (cols, xp.shape, pads, tuple(strides))


def backward(params, cache, dy):
    """Gradients of the convolution, through im2col.

    With `C = cols` as a matrix `(N*out_h*out_w, kh*kw*c_in)`, `W = w` as a matrix
    `(kh*kw*c_in, c_out)` and `DY = dy` as a matrix `(N*out_h*out_w, c_out)`, the forward is
    the Dense map `Y = C @ W + b`, so (see `dense.backward`)

        dW   = C.T @ DY                  reshaped back to (kh, kw, c_in, c_out)
        db   = DY summed over rows       (over batch and every output pixel)
        dC   = DY @ W.T                  the gradient of every copied-out window
        dx   = unpad(col2im(dC))         each pixel sums the windows it appeared in; the
                                         gradient that lands on padding is dropped

    Args:
        params: as in `forward`.
        cache: from `forward`.
        dy: the gradient with respect to `y`, `(N, out_h, out_w, c_out)`.

    Returns:
        `(dx, dparams)`: `dx` of shape `(N, H, W, c_in)`; `dparams` with `params`' keys and
        shapes.
    """
    cols, padded_shape, pads, strides = cache
    w = params["w"]
    kh, kw, c_in, c_out = w.shape
    rows = cols.reshape(-1, kh * kw * c_in)
    rows_dy = dy.reshape(-1, c_out)
    dparams = {"w": (rows.T @ rows_dy).reshape(w.shape)}
    if "b" in params:
        dparams["b"] = rows_dy.sum(axis=0)
    dcols = (rows_dy @ w.reshape(-1, c_out).T).reshape(cols.shape)
    dx = unpad(col2im(dcols, padded_shape, strides), pads)
    return dx, dparams
