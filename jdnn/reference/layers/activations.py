"""Activations, by hand: elementwise nonlinearities (and softmax over the last axis).

For an elementwise `y = f(x)` the chain rule is one line, `dx = dy * f'(x)`, so each backward
below is the derivative `f'` written out. Softmax mixes the entries of the last axis and needs
its Jacobian-vector product instead. PRelu is the only one with a parameter.

At a kink the derivative is a choice; the reference makes the one JAX makes (jax 0.10.2):

    relu'(0) = 0               (jax.nn.relu has a custom rule: the gradient at 0 is 0)
    leaky_relu'(0) = 1         (x >= 0 takes the identity branch)
    prelu: dx(0) = 1, dalpha(0) = 0   (likewise, where(x >= 0, x, alpha * x))
    elu'(0) = alpha            (x > 0 takes the identity branch, so 0 is on the exp side)

Each kind is exposed as a namespace with `forward(params, x, **hparams) -> (y, cache)` and
`backward(params, cache, dy) -> (dx, dparams)`, e.g. `relu.forward`, `gelu.backward`.
Shapes: `x`, `y`, `dy` and `dx` all share one shape, any rank (PRelu and Softmax act on the
last axis, which must exist); `params` is `{}` except PRelu's `{"alpha": (F,)}`.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

# --- Relu ---------------------------------------------------------------------------------------


def relu_forward(params, x):
    """`y = max(x, 0)`.

    Args:
        params: `{}`.
        x: inputs of any shape.

    Returns:
        `(y, cache)`: `y` of `x`'s shape; the cache is `x`.
    """
    del params
    return np.maximum(x, 0), x


def relu_backward(params, cache, dy):
    """`relu'(x) = 1` for `x > 0`, else 0 (0 at the kink, as in JAX), so `dx = dy * (x > 0)`.

    Returns `(dx, {})` with `dx` of `dy`'s shape.
    """
    del params
    return np.where(cache > 0, dy, 0).astype(dy.dtype, copy=False), {}


# --- Sigmoid ------------------------------------------------------------------------------------


def sigmoid_forward(params, x):
    """`y = 1 / (1 + exp(-x))`.

    Computed with `e = exp(-|x|)`, which never overflows: `1 / (1 + e)` for `x >= 0` and the
    equal `e / (1 + e)` for `x < 0` (accurate even where `y` is tiny).

    Args:
        params: `{}`.
        x: inputs of any shape.

    Returns:
        `(y, cache)`: `y` of `x`'s shape; the cache is `y`, all the backward needs.
    """
    del params
    e = np.exp(-np.abs(x))
    y = np.where(x >= 0, 1.0, e) / (1.0 + e)
    return y, y


def sigmoid_backward(params, cache, dy):
    """`sigmoid'(x) = e^-x / (1 + e^-x)^2 = y * (1 - y)`, so `dx = dy * y * (1 - y)`.

    Returns `(dx, {})`.
    """
    del params
    y = cache
    return dy * y * (1.0 - y), {}


# --- Tanh ---------------------------------------------------------------------------------------


def tanh_forward(params, x):
    """`y = tanh(x)`.

    Args:
        params: `{}`.
        x: inputs of any shape.

    Returns:
        `(y, cache)`: `y` of `x`'s shape; the cache is `y`.
    """
    del params
    y = np.tanh(x)
    return y, y


def tanh_backward(params, cache, dy):
    """`tanh'(x) = 1 - tanh(x)^2 = 1 - y^2`, so `dx = dy * (1 - y^2)`. Returns `(dx, {})`."""
    del params
    y = cache
    return dy * (1.0 - y * y), {}


# --- LeakyRelu ----------------------------------------------------------------------------------


def leaky_relu_forward(params, x, *, negative_slope):
    """`y = x` for `x >= 0`, `negative_slope * x` below.

    Args:
        params: `{}`.
        x: inputs of any shape.
        negative_slope: the slope for negative inputs.

    Returns:
        `(y, cache)`: `y` of `x`'s shape; the cache is `(x, negative_slope)`.
    """
    del params
    return np.where(x >= 0, x, negative_slope * x), (x, negative_slope)


def leaky_relu_backward(params, cache, dy):
    """`f'(x) = 1` for `x >= 0` (1 at the kink, as in JAX), `negative_slope` below.

    `dx = where(x >= 0, dy, negative_slope * dy)`. Returns `(dx, {})`.
    """
    del params
    x, negative_slope = cache
    return np.where(x >= 0, dy, negative_slope * dy), {}


# --- PRelu --------------------------------------------------------------------------------------


def prelu_forward(params, x):
    """`y = x` for `x >= 0`, `alpha * x` below, with one learned `alpha` per feature.

    Args:
        params: `{"alpha": (F,)}`, broadcast along the last axis of `x`.
        x: inputs `(..., F)`.

    Returns:
        `(y, cache)`: `y` of `x`'s shape; the cache is `x`.
    """
    return np.where(x >= 0, x, params["alpha"] * x), x


def prelu_backward(params, cache, dy):
    """Gradients of PRelu, `y = where(x >= 0, x, alpha * x)`.

    `dy/dx = 1` where `x >= 0` and `alpha` below; `dy/dalpha = 0` where `x >= 0` and `x`
    below. `alpha[f]` is shared by every entry of feature `f`, so its gradient sums them:

        dx     = where(x >= 0, dy, alpha * dy)
        dalpha = sum over every axis but the last of where(x >= 0, 0, x * dy)

    Returns:
        `(dx, {"alpha": (F,)})`.
    """
    x = cache
    negative = x < 0
    dx = np.where(negative, params["alpha"] * dy, dy)
    dalpha = np.where(negative, x * dy, 0).sum(axis=tuple(range(x.ndim - 1)))
    return dx, {"alpha": dalpha}


# --- Elu ----------------------------------------------------------------------------------------


def elu_forward(params, x, *, alpha):
    """`y = x` for `x > 0`, `alpha * (exp(x) - 1)` for `x <= 0`.

    Args:
        params: `{}`.
        x: inputs of any shape.
        alpha: the negative saturation value.

    Returns:
        `(y, cache)`: `y` of `x`'s shape; the cache is `(x, y, alpha)`.
    """
    del params
    y = np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
    return y, (x, y, alpha)


def elu_backward(params, cache, dy):
    """`f'(x) = 1` for `x > 0`, `alpha * exp(x) = y + alpha` for `x <= 0` (`alpha` at 0).

    `dx = where(x > 0, dy, dy * (y + alpha))`. Returns `(dx, {})`.
    """
    del params
    x, y, alpha = cache
    return np.where(x > 0, dy, dy * (y + alpha)), {}


# --- Gelu ---------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715


def _erfc(z: np.ndarray) -> np.ndarray:
    """`math.erfc` entry by entry (NumPy has no erf), stored in `z`'s dtype."""
    return np.vectorize(math.erfc, otypes=[z.dtype])(z)


def gelu_forward(params, x, *, approximate):
    """`y = x * Phi(x)`, Phi the standard normal CDF.

    `approximate=True`: `Phi(x) ~ (1 + tanh(u)) / 2` with `u = sqrt(2/pi) (x + 0.044715 x^3)`
    (JAX's default). `approximate=False`: `Phi(x) = erfc(-x / sqrt(2)) / 2` exactly.

    Args:
        params: `{}`.
        x: inputs of any shape.
        approximate: the tanh approximation (True) or the exact erf form (False).

    Returns:
        `(y, cache)`: `y` of `x`'s shape; the cache holds `x` and `tanh(u)` or `Phi(x)`.
    """
    del params
    if approximate:
        t = np.tanh(_SQRT_2_OVER_PI * (x + _CUBIC * x**3))
        return 0.5 * x * (1.0 + t), (x, t, True)
    cdf = 0.5 * _erfc(-x * math.sqrt(0.5))
    return x * cdf, (x, cdf, False)


def gelu_backward(params, cache, dy):
    """Gradient of GELU by the product rule.

    Exact: `d/dx [x Phi(x)] = Phi(x) + x phi(x)` with the normal density
    `phi(x) = exp(-x^2 / 2) / sqrt(2 pi)`.

    Tanh approximation: `y = x (1 + t) / 2` with `t = tanh(u)`, `u = c (x + 0.044715 x^3)`,
    `c = sqrt(2/pi)`; with `tanh' = 1 - t^2` and `du/dx = c (1 + 3 * 0.044715 x^2)`:
    `dy/dx = (1 + t) / 2 + x (1 - t^2) c (1 + 3 * 0.044715 x^2) / 2`.

    Returns `(dx, {})`.
    """
    del params
    x, t_or_cdf, approximate = cache
    if approximate:
        t = t_or_cdf
        slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (
            1.0 + 3.0 * _CUBIC * x * x)
    else:
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        slope = t_or_cdf + x * pdf
    return dy * slope, {}


# --- Softmax ------------------------------------------------------------------------------------


def softmax_forward(params, x):
    """`y = exp(x) / sum(exp(x))` over the last axis.

    Computed as `exp(x - max(x)) / sum(exp(x - max(x)))`: the shift cancels, and no `exp`
    overflows however large the inputs.

    Args:
        params: `{}`.
        x: inputs `(..., K)`, normalized over the last axis.

    Returns:
        `(y, cache)`: `y` of `x`'s shape, each last-axis row summing to 1; the cache is `y`.
    """
    del params
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    y = e / e.sum(axis=-1, keepdims=True)
    return y, y


def softmax_backward(params, cache, dy):
    """Gradient of softmax, a vector-Jacobian product along the last axis.

    `dy_i/dx_j = y_i (delta_ij - y_j)`, so
    `dx_j = sum_i dy_i y_i (delta_ij - y_j) = y_j (dy_j - sum_i dy_i y_i)`:
    `dx = y * (dy - sum(dy * y, -1, keepdims=True))`, never forming the Jacobian.

    Returns `(dx, {})`.
    """
    del params
    y = cache
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True)), {}


# --- the kinds, each as a forward/backward pair ------------------------------------------------

relu = SimpleNamespace(forward=relu_forward, backward=relu_backward)
sigmoid = SimpleNamespace(forward=sigmoid_forward, backward=sigmoid_backward)
tanh = SimpleNamespace(forward=tanh_forward, backward=tanh_backward)
leaky_relu = SimpleNamespace(forward=leaky_relu_forward, backward=leaky_relu_backward)
prelu = SimpleNamespace(forward=prelu_forward, backward=prelu_backward)
elu = SimpleNamespace(forward=elu_forward, backward=elu_backward)
gelu = SimpleNamespace(forward=gelu_forward, backward=gelu_backward)
softmax = SimpleNamespace(forward=softmax_forward, backward=softmax_backward)
