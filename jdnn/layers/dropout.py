"""Dropout: during training, zero each unit with probability `rate` and scale the survivors."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdnn.core import Layer, LayerError, check_hparam, check_input_shape, make_spec


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """The boolean mask of kept units Dropout draws from `key`: each True with prob `1 - rate`."""
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def Dropout(rate: float) -> Layer:
    """Inverted dropout: `rate` is the probability of *dropping* a unit.

    With `train=True` each entry is zeroed with probability `rate` and the kept ones are scaled
    by `1 / (1 - rate)`, so the expected output equals the input; with `train=False` the layer
    is the identity. Training needs a `key` (a missing key is an error, never a fixed mask).

    Args:
        rate: the drop probability, in `[0, 1)`.

    Returns:
        A parameter-free, shape-preserving `Layer`.

    Example:
        >>> drop = jdnn.Dropout(0.5)
        >>> y, _ = drop.apply({}, {}, x, key=jax.random.key(1), train=True)
    """
    ok = isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0.0 <= rate < 1.0
    check_hparam("Dropout", "rate", rate, ok, "a drop probability in [0, 1)")
    rate = float(rate)

    def init(key, input_shape):
        del key
        return check_input_shape("Dropout", input_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise LayerError("Dropout", "train=True needs a random key: call apply(..., key=key, "
                                        "train=True), or train=False for evaluation")
        keep = keep_mask(key, rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)), state

    return Layer(init, apply, make_spec("Dropout", rate=rate))
