"""Dense: an affine map on the last axis, `y = x @ w + b`."""

from __future__ import annotations

import math

import jax

from jdnn.core import (Layer, LayerError, check_features, check_input_shape, make_spec,
                       positive_int, register_layer)
from jdnn.layers import initializers



def _quantizable(spec):
    """The `quantize` trait: the kernel `w` (output features on its last axis), and Dense's
    apply with `x @ w` computed by `ops.dot_general`."""
    def apply_with(ops):
        def apply(params, state, x, *, key=None, train=False):
            del key, train
            check_features("Dense", x, params["w"].shape[0], "in_features")
            y = ops.dot_general(x, params["w"], (((x.ndim - 1,), (0,)), ((), ())))
            return (y + params["b"] if spec["use_bias"] else y), state

        return apply

    return {"w": -1}, apply_with


@register_layer(family="dense", flops=lambda spec, i, o: 2 * i[-1] * math.prod(o[1:]),
                ghost_inputs=lambda spec, x: x, label=lambda spec: f"Dense({spec['features']})",
                quantize=_quantizable)
def Dense(features: int, *, use_bias: bool = True, w_init: str | initializers.Initializer =
          "lecun_normal", b_init: str | initializers.Initializer = "zeros") -> Layer:
    """A fully connected layer on the last axis.

    Params: `w` of shape `(in_features, features)` and, with `use_bias`, `b` of shape
    `(features,)`. The default `w_init` is LeCun normal (variance 1/fan_in), right for
    sigmoid/tanh/SELU nets; pass `w_init="he_normal"` for ReLU-family nets.

    Args:
        features: the number of outputs, a positive int.
        use_bias: whether to add the bias `b`.
        w_init: a `jax.nn.initializers` name or initializer for `w`.
        b_init: a `jax.nn.initializers` name or initializer for `b`.

    Returns:
        A `Layer` mapping `(..., in_features)` to `(..., features)`.

    Examples:
        >>> layer = jdnn.Dense(10, w_init="he_normal")
        >>> out_shape, params, state = layer.init(jax.random.key(0), (32, 64))  # (32, 10)
    """
    features = positive_int("Dense", "features", features)
    w_fn, w_name = initializers.resolve("Dense", "w_init", w_init)
    b_fn, b_name = initializers.resolve("Dense", "b_init", b_init)
    spec = make_spec("Dense", features=features, use_bias=bool(use_bias), w_init=w_name,
                     b_init=b_name)

    def init(key, input_shape):
        shape = check_input_shape("Dense", input_shape)
        if len(shape) < 2:
            raise LayerError("Dense", f"input_shape {shape} has no feature axis: input_shape "
                                      f"includes the batch axis first, e.g. (1, {shape[0]}) or "
                                      f"(batch_size, {shape[0]}) if the batch axis is missing")
        w_key, b_key = jax.random.split(key)
        params = {"w": w_fn(w_key, (shape[-1], features))}
        if use_bias:
            params["b"] = b_fn(b_key, (features,))
        return (*shape[:-1], features), params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        check_features("Dense", x, params["w"].shape[0], "in_features")
        y = x @ params["w"]
        return (y + params["b"] if use_bias else y), state

    return Layer(init, apply, spec)
