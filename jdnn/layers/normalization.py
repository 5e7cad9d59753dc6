"""BatchNorm: normalize each feature with batch statistics in training, running ones after."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from jdnn.core import (Layer, LayerError, Spec, check_features, check_hparam, check_input_shape,
                       declare, make_spec, per_output, register_layer)


def _check_batch_statistics(x) -> None:
    """Training normalizes each feature over all axes but the last: with one value per feature
    every output is `bias` and no gradient reaches the layers before, silently. Refused."""
    count = math.prod(x.shape[:-1])
    if count == 1:
        raise LayerError("BatchNorm", f"in training mode each feature is normalized over the "
                                      f"batch (every axis but the last), but this input of "
                                      f"shape {tuple(x.shape)} holds 1 value per feature: "
                                      f"every output would be the bias and nothing before the "
                                      f"layer would learn. Use a batch of at least 2 examples "
                                      f"(e.g. fit(batch_size=...) >= 2), or train=False to "
                                      f"normalize with the running statistics")


@register_layer(family="norm", flops=per_output(4), state=lambda spec: "running statistics")
def BatchNorm(momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch normalization over every axis but the last (the features or channels).

    `train=True`: normalize with the batch mean and (biased) variance, and move the running
    statistics toward them: `running = momentum * running + (1 - momentum) * batch`.
    `train=False`: normalize with the running statistics. Then `y = scale * x_hat + bias`.
    Training needs at least 2 values per feature (e.g. a batch of 2 vectors, or 1 image of
    more than one pixel): with one, `x_hat` would be 0 everywhere, so `apply` raises a
    `LayerError` at trace time instead.

    Params: `scale` (ones) and `bias` (zeros), shape `(features,)`.
    State: `mean` (zeros) and `var` (ones), shape `(features,)`.

    Args:
        momentum: how much of the running statistics survives each step, in `[0, 1)`.
        eps: added to the variance before the square root, `> 0`.

    Returns:
        A shape-preserving `Layer` with parameters and state.

    Example:
        >>> bn = jdnn.BatchNorm(momentum=0.99)
        >>> _, params, state = bn.init(jax.random.key(0), (32, 128))
        >>> y, state = bn.apply(params, state, x, train=True)
    """
    ok = isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0
    check_hparam("BatchNorm", "momentum", momentum, ok, "a float in [0, 1)")
    check_hparam("BatchNorm", "eps", eps, isinstance(eps, (int, float)) and eps > 0, "a float > 0")
    momentum, eps = float(momentum), float(eps)

    def init(key, input_shape):
        del key
        shape = check_input_shape("BatchNorm", input_shape, min_rank=2)
        features = shape[-1]
        params = {"scale": jnp.ones((features,)), "bias": jnp.zeros((features,))}
        state = {"mean": jnp.zeros((features,)), "var": jnp.ones((features,))}
        return shape, params, state

    def apply(params, state, x, *, key=None, train=False):
        del key
        check_features("BatchNorm", x, params["scale"].shape[0])
        if train:
            _check_batch_statistics(x)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            new_state = {
                "mean": momentum * state["mean"] + (1.0 - momentum) * lax.stop_gradient(mean),
                "var": momentum * state["var"] + (1.0 - momentum) * lax.stop_gradient(var),
            }
        else:
            mean, var, new_state = state["mean"], state["var"], state
        x_hat = (x - mean) * lax.rsqrt(var + eps)
        return x_hat * params["scale"] + params["bias"], new_state

    return Layer(init, apply, make_spec("BatchNorm", momentum=momentum, eps=eps))


def per_example_twin(spec: Spec, rule: str, axis_name: str | None = None) -> Layer:
    """A BatchNorm that normalizes with statistics held fixed (no gradient through them).

    `rule="batch_stats"`: the batch's mean and (biased) variance, over every axis but the last
    and, when `axis_name` is given, also over that vmap axis (each example then holds a batch of
    one); the running statistics are updated from them as BatchNorm's training mode does.
    `rule="running"`: the running statistics, left unchanged. Either way dropout elsewhere in the
    model still sees `train=True`.
    """
    stock = BatchNorm(spec["momentum"], spec["eps"])
    momentum = spec["momentum"]

    def pmean(value):
        return value if axis_name is None else lax.pmean(value, axis_name)

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        if rule == "running":
            return stock.apply(params, state, x, train=False)
        axes = tuple(range(x.ndim - 1))
        mean = pmean(jnp.mean(x, axis=axes))
        var = pmean(jnp.mean(jnp.square(x - mean), axis=axes))
        stats = {"mean": lax.stop_gradient(mean), "var": lax.stop_gradient(var)}
        y, _ = stock.apply(params, stats, x, train=False)
        return y, {k: momentum * state[k] + (1.0 - momentum) * stats[k] for k in stats}

    return Layer(stock.init, apply, spec)


# per-example gradients (jdnn.privacy) swap BatchNorm for this twin under a rule
declare("BatchNorm", per_example_twin=per_example_twin)
