"""Dense, by hand: an affine map on the last axis.

    y = x @ w + b          x: (..., n_in), w: (n_in, n_out), b: (n_out,), y: (..., n_out)

Every leading axis (the batch, and any others) is just "more rows": the same `w` and `b` are
used for each of them, so their gradients add up the contributions of every row.
"""

from __future__ import annotations


def forward(params, x):
    """y = x @ w + b on the last axis.

    Args:
        params: `{"w": (n_in, n_out), "b": (n_out,)}`; `"b"` is absent without a bias.
        x: inputs of shape `(..., n_in)`, rank >= 1.

    Returns:
        `(y, cache)`: `y` of shape `(..., n_out)`; the cache is `x`.
    """
    y = x @ params["w"]
    if "b" in params:
        y = y + params["b"]
    return y, x


def backward(params, cache, dy):
    """Gradients of y = x @ w + b.

    Entry by entry, y[r, j] = sum_i x[r, i] w[i, j] + b[j] for every row r (a row is one
    position of the leading axes). Hence

        dx[r, i] = sum_j dy[r, j] w[i, j]     ->  dx = dy @ w.T
        dw[i, j] = sum_r x[r, i] dy[r, j]     ->  dw = X.T @ DY
        db[j]    = sum_r dy[r, j]             ->  db = DY summed over rows

    where X and DY are x and dy with all leading axes folded into one row axis.

    Args:
        params: as in `forward`.
        cache: the `x` `forward` saw, `(..., n_in)`.
        dy: the gradient of the loss with respect to `y`, `(..., n_out)`.

    Returns:
        `(dx, dparams)`: `dx` like `x`; `dparams` with the keys and shapes of `params`.
    """
    x, w = cache, params["w"]
    dx = dy @ w.T
    rows_x = x.reshape(-1, w.shape[0])
    rows_dy = dy.reshape(-1, w.shape[1])
    dparams = {"w": rows_x.T @ rows_dy}
    if "b" in params:
        dparams["b"] = rows_dy.sum(axis=0)
    return dx, dparams

