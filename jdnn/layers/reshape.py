"""Flatten: every axis after the batch axis folded into one feature axis."""

from __future__ import annotations

import math

from jdnn.core import Layer, LayerError, check_input_shape, make_spec, per_output, register_layer


@register_layer(family="reshape", flops=per_output(0))
def Flatten() -> Layer:
    """Flattens `(N, d1, d2, ...)` to `(N, d1 * d2 * ...)`, keeping the batch axis.

    Under `jax.vmap`, give each example a batch axis of one (`x[None]`), as
    `jdnn.per_example_grads` does.

    Returns:
        A parameter-free `Layer`.

    Examples:
        >>> jdnn.Flatten().init(jax.random.key(0), (64, 7, 7, 32))[0]
        (64, 1568)
    """

    def init(key, input_shape):
        del key
        shape = check_input_shape("Flatten", input_shape)
        return (shape[0], math.prod(shape[1:])), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        if x.ndim < 1:
            raise LayerError("Flatten", f"expected an input with a batch axis, got shape {x.shape}")
        return x.reshape(x.shape[0], math.prod(x.shape[1:])), state

    return Layer(init, apply, make_spec("Flatten"))
