"""BatchNorm, by hand: normalize each feature, then scale and shift it.

For inputs `x` of shape `(..., F)` every axis but the last is "the batch": each of the `F`
features is normalized over its `m = x.size / F` entries.

    train:  mu = mean(x),  var = mean((x - mu)^2)          (biased: divide by m, not m - 1)
            running <- momentum * running + (1 - momentum) * batch   (for mean and var alike)
    eval:   mu, var = the running statistics (which stay unchanged)
    both:   x_hat = (x - mu) / sqrt(var + eps),   y = scale * x_hat + bias

In training `mu` and `var` are functions of `x`, and the backward goes through them (the
classic three-term formula); in evaluation they are constants and the layer is affine.
The running statistics get no gradient: they are state, not parameters.

LayerNorm's twin, `layer_norm.forward` / `layer_norm.backward`, follows BatchNorm's below.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def forward(params, x, *, state, train, momentum, eps):
    """Batch normalization on the last axis.

    Args:
        params: `{"scale": (F,), "bias": (F,)}`.
        x: inputs `(..., F)`, rank >= 2.
        state: the running statistics `{"mean": (F,), "var": (F,)}`.
        train: normalize with batch statistics and update `state` (True), or with `state`.
        momentum: how much of the running statistics survives a training step, in `[0, 1)`.
        eps: added to the variance before the square root, `> 0`.

    Returns:
        `(y, cache, new_state)`: `y` of `x`'s shape; the cache for `backward`; the new running
        statistics (`state` itself when `train` is False). The only forward in the reference
        that returns three values.
    """
    axes = tuple(range(x.ndim - 1))
    if train:
        mean = x.mean(axis=axes)
        var = np.square(x - mean).mean(axis=axes)
        new_state = {
            "mean": momentum * state["mean"] + (1.0 - momentum) * mean,
            "var": momentum * state["var"] + (1.0 - momentum) * var,
        }
    else:
        mean, var, new_state = state["mean"], state["var"], state
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    y = x_hat * params["scale"] + params["bias"]
    return y, (x_hat, inv_std, train), new_state


def backward(params, cache, dy):
    """Gradients of batch normalization.

    The affine part gives, summing over the `m` entries of each feature,

        dbias  = sum(dy),   dscale = sum(dy * x_hat),   dx_hat = dy * scale.

    Evaluation: `x_hat = (x - mu) * inv_std` with constant `mu` and `inv_std`, so
    `dx = dx_hat * inv_std`.

    Training: `mu` and `var` depend on `x`. With `dmu_j/dx_i = 1/m` and
    `dvar/dx_i = 2 (x_i - mu) / m`, the chain rule through `x_hat_j = (x_j - mu) * inv_std`
    over all `j` in the feature gives

        dx_i = inv_std / m * (m * dx_hat_i - sum_j dx_hat_j - x_hat_i * sum_j dx_hat_j x_hat_j)

    i.e. `dx = scale * inv_std / m * (m * dy - sum(dy) - x_hat * sum(dy * x_hat))`: the
    component of `dy` along "shift every entry" and along `x_hat` is removed, since the
    normalization is blind to both.

    Args:
        params: as in `forward`.
        cache: from `forward`.
        dy: the gradient with respect to `y`, `x`'s shape.

    Returns:
        `(dx, {"scale": (F,), "bias": (F,)})`.
    """
    x_hat, inv_std, train = cache
    axes = tuple(range(dy.ndim - 1))
    dbias = dy.sum(axis=axes)
    dscale = (dy * x_hat).sum(axis=axes)
    if train:
        m = dy.size // dy.shape[-1]
        dx = params["scale"] * inv_std / m * (m * dy - dbias - x_hat * dscale)
    else:
        dx = dy * params["scale"] * inv_std
    return dx, {"scale": dscale, "bias": dbias}


# --- LayerNorm ----------------------------------------------------------------------------------
#
# LayerNorm normalizes each position over its own F features instead of each feature over the
# batch: for x of shape (..., F), every row x[r, :] gets
#
#     mu_r = mean_j x[r, j],   var_r = mean_j (x[r, j] - mu_r)^2,   inv_std_r = (var_r + eps)^-1/2
#     x_hat[r, j] = (x[r, j] - mu_r) * inv_std_r,   y[r, j] = scale[j] * x_hat[r, j] + bias[j]
#
# Same in training and evaluation: no state, no statistic shared between rows.


def layer_norm_forward(params, x, *, eps):
    """Layer normalization on the last axis.

    Args:
        params: `{"scale": (F,), "bias": (F,)}`; either may be absent (`use_scale=False`,
            `use_bias=False`).
        x: inputs `(..., F)`.
        eps: added to the variance before the square root, `> 0`.

    Returns:
        `(y, cache)`: `y` of `x`'s shape; the cache holds `x_hat` and `inv_std` (`(..., 1)`).
    """
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    y = x_hat * params["scale"] if "scale" in params else x_hat
    if "bias" in params:
        y = y + params["bias"]
    return y, (x_hat, inv_std)


def layer_norm_backward(params, cache, dy):
    """Gradients of layer normalization.

    The affine part, summed over every row `r` (all axes but the last):

        dbias = sum_r dy[r],   dscale = sum_r dy[r] * x_hat[r],   dx_hat = dy * scale.

    Within a row, `mu` and `var` depend on all `F` entries. With `dmu/dx_i = 1/F` and
    `dvar/dx_i = 2 (x_i - mu) / F`,

        dx_hat_j/dx_i = inv_std * ([i = j] - 1/F) - x_hat_j * x_hat_i * inv_std / F,

    and summing `dx_hat_j` times that over `j` gives, per row,

        dx_i = inv_std / F * (F * dx_hat_i - sum_j dx_hat_j - x_hat_i * sum_j dx_hat_j x_hat_j)

    BatchNorm's formula with the roles of the axes exchanged: the sums run over the features
    of one row, not over the batch.

    Args:
        params: as in `layer_norm_forward`.
        cache: from `layer_norm_forward`.
        dy: the gradient with respect to `y`, `x`'s shape.

    Returns:
        `(dx, dparams)`: `dparams` with the keys of `params`, each `(F,)`.
    """
    x_hat, inv_std = cache
    rows = tuple(range(dy.ndim - 1))
    dparams = {}
    if "scale" in params:
        dparams["scale"] = (dy * x_hat).sum(axis=rows)
    if "bias" in params:
        dparams["bias"] = dy.sum(axis=rows)
    dx_hat = dy * params["scale"] if "scale" in params else dy
    f = dy.shape[-1]
    dx = inv_std / f * (f * dx_hat - dx_hat.sum(axis=-1, keepdims=True)
                        - x_hat * (dx_hat * x_hat).sum(axis=-1, keepdims=True))
    return dx, dparams


layer_norm = SimpleNamespace(forward=layer_norm_forward, backward=layer_norm_backward)
