"""Normalization: BatchNorm (each feature over the batch, running statistics after training)
and LayerNorm (each position over its features).

Both compute their statistics and the normalization in at least float32, whatever the input's
dtype, and return a half-precision input's dtype (as Flax's do): under mixed precision
(`jdnn.train.precision`) the activations are bfloat16, whose 8-bit mantissa would lose a mean
over thousands of values, and BatchNorm's running statistics stay float32.
"""

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


def _widened(x):
    """`x` in at least float32, where statistics are taken (a float64 input stays float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _narrowed(y, x):
    """`y` back in `x`'s dtype when that is a half-precision float (bfloat16, float16), so the
    next layer computes in it too; otherwise as computed."""
    half = jnp.issubdtype(x.dtype, jnp.floating) and jnp.dtype(x.dtype).itemsize < 4
    return y.astype(x.dtype) if half else y


@register_layer(family="norm", flops=per_output(4), state=lambda spec: "running statistics")
def BatchNorm(momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch normalization over every axis but the last (the features or channels).

    `train=True`: normalize with the batch mean and (biased) variance, and move the running
    statistics toward them: `running = momentum * running + (1 - momentum) * batch`.
    `train=False`: normalize with the running statistics. Then `y = scale * x_hat + bias`.
    Training needs at least 2 values per feature (e.g. a batch of 2 vectors, or 1 image of
    more than one pixel): with one, `x_hat` would be 0 everywhere, so `apply` raises a
    `LayerError` at trace time instead. A bfloat16 `x` is normalized in float32 and the running
    statistics stay float32; `y` is bfloat16 (see the module docstring).

    Params: `scale` (ones) and `bias` (zeros), shape `(features,)`.
    State: `mean` (zeros) and `var` (ones), shape `(features,)`.

    Args:
        momentum: how much of the running statistics survives each step, in `[0, 1)`.
        eps: added to the variance before the square root, `> 0`.

    Returns:
        A shape-preserving `Layer` with parameters and state.

    Examples:
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
        wide = _widened(x)
        if train:
            _check_batch_statistics(x)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(wide, axis=axes)
            var = jnp.mean(jnp.square(wide - mean), axis=axes)
            new_state = {
                "mean": momentum * state["mean"] + (1.0 - momentum) * lax.stop_gradient(mean),
                "var": momentum * state["var"] + (1.0 - momentum) * lax.stop_gradient(var),
            }
        else:
            mean, var, new_state = state["mean"], state["var"], state
        x_hat = (wide - mean) * lax.rsqrt(var + eps)
        return _narrowed(x_hat * params["scale"] + params["bias"], x), new_state

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


def _layer_norm_flops(spec: Spec, input_shape, output_shape) -> int:
    """Per entry: 1 add for the mean, 1 subtract, 2 (square, add) for the variance, 1 multiply
    by `1 / sqrt(var + eps)`, then 1 multiply by `scale` and 1 add of `bias` when present; the
    per-position square roots are not counted."""
    del input_shape
    per_entry = 5 + bool(spec["use_scale"]) + bool(spec["use_bias"])
    return per_entry * math.prod(output_shape[1:])


@register_layer(family="norm", flops=_layer_norm_flops)
def LayerNorm(eps: float = 1e-5, *, use_scale: bool = True, use_bias: bool = True) -> Layer:
    """Layer normalization (Ba et al. 2016): normalize each position over its features.

    For every position (every index of the axes but the last) the `F` features are centered
    and scaled by their own mean and (biased) variance, then `y = scale * x_hat + bias`:

        x_hat = (x - mean(x)) / sqrt(var(x) + eps),    over the last axis only.

    No statistic crosses examples or time steps, so training and evaluation compute the same
    thing, any batch size works (one example too), and padded sequences need no mask. Like
    `torch.nn.LayerNorm(F)` and `flax.linen.LayerNorm()`.

    Params: `scale` (ones) with `use_scale`, `bias` (zeros) with `use_bias`, shape `(F,)`.
    `F` must be at least 2: with one feature `x_hat` is 0 everywhere, every output would be
    `bias` and nothing before the layer would learn, so `init` refuses it.

    Args:
        eps: added to the variance before the square root, `> 0`.
        use_scale: whether to learn a per-feature `scale`.
        use_bias: whether to learn a per-feature `bias`.

    Returns:
        A shape-preserving `Layer` on `(..., F)`.

    Examples:
        >>> ln = jdnn.LayerNorm()
        >>> _, params, state = ln.init(jax.random.key(0), (32, 20, 64))
        >>> y, _ = ln.apply(params, state, x)   # each y[b, t] has mean 0, variance ~1
    """
    check_hparam("LayerNorm", "eps", eps,
                 isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0,
                 "a float > 0")
    eps = float(eps)
    spec = make_spec("LayerNorm", eps=eps, use_scale=bool(use_scale), use_bias=bool(use_bias))

    def init(key, input_shape):
        del key
        shape = check_input_shape("LayerNorm", input_shape)
        features = shape[-1]
        if features < 2:
            raise LayerError("LayerNorm", f"normalizes over the last axis (the features), but "
                                          f"input_shape {shape} has {features} there: every "
                                          f"output would be the bias and nothing before the "
                                          f"layer would learn; normalize an axis of at least 2 "
                                          f"features (input_shape includes the batch axis "
                                          f"first)")
        params = {}
        if use_scale:
            params["scale"] = jnp.ones((features,))
        if use_bias:
            params["bias"] = jnp.zeros((features,))
        return shape, params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        if params:
            check_features("LayerNorm", x, next(iter(params.values())).shape[0])
        wide = _widened(x)
        mean = jnp.mean(wide, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(wide - mean), axis=-1, keepdims=True)
        y = (wide - mean) * lax.rsqrt(var + eps)
        if use_scale:
            y = y * params["scale"]
        if use_bias:
            y = y + params["bias"]
        return _narrowed(y, x), state

    return Layer(init, apply, spec)
