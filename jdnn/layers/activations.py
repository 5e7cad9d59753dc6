"""Activation layers: elementwise nonlinearities (and softmax over the last axis).

Each is `jax.nn`'s function wrapped in the layer contract; only PRelu has a parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jdnn.core import (Layer, check_features, check_hparam, check_input_shape, make_spec,
                       per_output, register_layer)


def float_dtype():
    """The default float dtype (float32, or float64 with x64 enabled), strongly typed: a Python
    float would make a weakly-typed parameter, and the optimizer state would change type once."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _elementwise(kind: str, fn: Callable[[jax.Array], jax.Array], **hparams) -> Layer:
    def init(key, input_shape):
        del key
        return check_input_shape(kind, input_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        return fn(x), state

    return Layer(init, apply, make_spec(kind, **hparams))


def _dead(y: jax.Array) -> dict[str, jax.Array]:
    """The fraction of units that output 0 for every example of the batch."""
    return {"dead_relu": jnp.mean(jnp.all(y <= 0, axis=0))}


def _saturated(low: float, high: float) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """The fraction of outputs in a flat tail of the curve, below `low` or above `high`."""
    return lambda y: {"saturated": jnp.mean((y < low) | (y > high))}


SIGMOID_BAND, TANH_BAND = 0.05, 0.95
ACTIVATION = {"family": "activation", "flops": per_output(1)}


@register_layer(**ACTIVATION, activation_stats=_dead)
def Relu() -> Layer:
    """`max(x, 0)`, elementwise."""
    return _elementwise("Relu", jax.nn.relu)


@register_layer(**ACTIVATION, outputs_probabilities=True,
                activation_stats=_saturated(SIGMOID_BAND, 1 - SIGMOID_BAND))
def Sigmoid() -> Layer:
    """`1 / (1 + exp(-x))`, elementwise.

    Its outputs are probabilities: as a model's last layer it does not go with
    `jdnn.losses.binary_cross_entropy`, which takes logits (`check_data` warns).
    """
    return _elementwise("Sigmoid", jax.nn.sigmoid)


@register_layer(**ACTIVATION, activation_stats=_saturated(-TANH_BAND, TANH_BAND))
def Tanh() -> Layer:
    """`tanh(x)`, elementwise."""
    return _elementwise("Tanh", jnp.tanh)


@register_layer(**ACTIVATION)
def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """`x` for `x >= 0`, `negative_slope * x` below, elementwise.

    Args:
        negative_slope: the slope for negative inputs, a finite float `>= 0`.
    """
    ok = isinstance(negative_slope, (int, float)) and math.isfinite(negative_slope)
    check_hparam("LeakyRelu", "negative_slope", negative_slope, ok and negative_slope >= 0,
                 "a finite float >= 0")
    slope = float(negative_slope)
    return _elementwise("LeakyRelu", lambda x: jax.nn.leaky_relu(x, slope), negative_slope=slope)


@register_layer(**ACTIVATION)
def Gelu(approximate: bool = True) -> Layer:
    """`x * Phi(x)` (Phi the standard normal CDF), elementwise.

    Args:
        approximate: use the tanh approximation (JAX's default) instead of the exact erf form.
    """
    approx = bool(approximate)
    return _elementwise("Gelu", lambda x: jax.nn.gelu(x, approximate=approx), approximate=approx)


@register_layer(**ACTIVATION)
def Elu(alpha: float = 1.0) -> Layer:
    """`x` for `x > 0`, `alpha * (exp(x) - 1)` below, elementwise.

    Args:
        alpha: the negative saturation value, a finite float `> 0`.
    """
    ok = isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0
    check_hparam("Elu", "alpha", alpha, ok, "a finite float > 0")
    a = float(alpha)
    return _elementwise("Elu", lambda x: jax.nn.elu(x, a), alpha=a)


@register_layer(family="activation", flops=per_output(3), outputs_probabilities=True)
def Softmax() -> Layer:
    """`exp(x) / sum(exp(x))` over the last axis (computed stably).

    For training a classifier, prefer leaving logits and using
    `jdnn.losses.softmax_cross_entropy`, which fuses the two stably; as a model's last layer
    before a from-logits loss, `check_data` (hence `fit`) warns.
    """
    return _elementwise("Softmax", lambda x: jax.nn.softmax(x, axis=-1))


@register_layer(**ACTIVATION)
def PRelu(alpha_init: float = 0.25) -> Layer:
    """Parametric ReLU: `x` for `x >= 0`, `alpha * x` below, with `alpha` learned per feature.

    Params: `alpha` of shape `(features,)` (the last axis), initialized to `alpha_init`.

    Args:
        alpha_init: the initial slope for negative inputs, a finite float.

    Examples:
        >>> _, params, _ = jdnn.PRelu().init(jax.random.key(0), (8, 16))  # params["alpha"]: (16,)
    """
    ok = isinstance(alpha_init, (int, float)) and math.isfinite(alpha_init)
    check_hparam("PRelu", "alpha_init", alpha_init, ok, "a finite float")
    start = float(alpha_init)

    def init(key, input_shape):
        del key
        shape = check_input_shape("PRelu", input_shape, min_rank=2)
        return shape, {"alpha": jnp.full((shape[-1],), start, dtype=float_dtype())}, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        check_features("PRelu", x, params["alpha"].shape[0])
        return jnp.where(x >= 0, x, params["alpha"] * x), state

    return Layer(init, apply, make_spec("PRelu", alpha_init=start))
