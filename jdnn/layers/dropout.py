"""Dropout: during training, zero each unit with probability `rate` and scale the survivors."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdnn.core import (Layer, LayerError, MissingKeyError, check_hparam, check_input_shape,
                       make_spec, per_output, register_layer)


def keep_mask(key: jax.Array, rate: float | jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The boolean mask of kept units Dropout draws from `key`: each True with prob `1 - rate`.

    `rate` is a Python float or a scalar array (a rate held in the layer state, possibly
    traced). An array rate is first cast to the default float dtype (float64 under
    `jax_enable_x64`), the dtype a Python float draws in, so the mask depends on the rate's
    value, not on the dtype it is stored in.
    """
    if not isinstance(rate, (int, float)):
        rate = jnp.asarray(rate, dtype=float)
    return jax.random.bernoulli(key, 1.0 - rate, shape)


@register_layer(family="dropout", flops=per_output(0), stochastic=keep_mask,
                rate_in_state=lambda spec: bool(spec.get("rate_in_state", False)),
                state=lambda spec: "its drop rate" if spec.get("rate_in_state", False) else None,
                # a rate held in the state may since have been changed: say it is the initial one
                label=lambda spec: f"Dropout({spec['rate']:g}"
                                   f"{', in state' if spec.get('rate_in_state', False) else ''})")
def Dropout(rate: float, *, rate_in_state: bool = False) -> Layer:
    """Inverted dropout: `rate` is the probability of *dropping* a unit.

    With `train=True` each entry is zeroed with probability `rate` and the kept ones are scaled
    by `1 / (1 - rate)`, so the expected output equals the input; with `train=False` the layer
    is the identity. Training needs a `key`: a missing key is a `jdnn.core.MissingKeyError`
    (a `LayerError`), never a fixed mask.

    With `rate_in_state=True` the rate is data rather than configuration: `init` returns the
    state `{"rate": rate}` (a scalar of the default float dtype) and `apply` reads the rate
    from the state it is given. The rate can then be changed after `init`, or differ per member
    of a vmapped ensemble (`jdnn.search` sets it from a space's `dropout`). Given the same key
    and rate it draws the same masks and outputs as `Dropout(rate)` (up to the rounding of the
    rate to its dtype); a rate of 0 is the identity, but a key is still needed to train.

    Args:
        rate: the drop probability, in `[0, 1)`; with `rate_in_state`, the initial one.
        rate_in_state: hold the rate in the layer state (as `state["rate"]`).

    Returns:
        A parameter-free, shape-preserving `Layer`; its state is `{}`, or `{"rate": ...}` with
        `rate_in_state`.

    Examples:
        >>> drop = jdnn.Dropout(0.5)
        >>> y, _ = drop.apply({}, {}, x, key=jax.random.key(1), train=True)
        >>> tunable = jdnn.Dropout(0.5, rate_in_state=True)
        >>> _, params, state = tunable.init(key, x.shape)
        >>> y, _ = tunable.apply(params, {"rate": 0.2}, x, key=jax.random.key(1), train=True)
    """
    ok = isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0.0 <= rate < 1.0
    check_hparam("Dropout", "rate", rate, ok, "a drop probability in [0, 1)")
    check_hparam("Dropout", "rate_in_state", rate_in_state, isinstance(rate_in_state, bool),
                 "True or False")
    rate = float(rate)
    # the flag is recorded only when set, so plain Dropout specs read as they always have
    spec = make_spec("Dropout", rate=rate, **({"rate_in_state": True} if rate_in_state else {}))

    def init(key, input_shape):
        del key
        shape = check_input_shape("Dropout", input_shape)
        return shape, {}, ({"rate": jnp.asarray(rate, dtype=float)} if rate_in_state else {})

    def apply(params, state, x, *, key=None, train=False):
        del params
        if rate_in_state and "rate" not in state:
            raise LayerError("Dropout", f"rate_in_state=True reads the rate from state['rate'], "
                                        f"but the state has the keys {sorted(state)}; pass the "
                                        f"state that init returned")
        if not train or (not rate_in_state and rate == 0.0):
            return x, state
        if key is None:
            raise MissingKeyError("Dropout", "train=True needs a random key: call apply(..., "
                                             "key=key, train=True), or train=False for "
                                             "evaluation")
        if not rate_in_state:
            keep = keep_mask(key, rate, x.shape)
            return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)), state
        # A traced rate: no shortcut for 0 (every unit is kept then, and scaled by 1).
        state_rate = jnp.asarray(state["rate"], dtype=float)
        keep = keep_mask(key, state_rate, x.shape)
        return jnp.where(keep, x / (1.0 - state_rate).astype(x.dtype), jnp.zeros_like(x)), state

    return Layer(init, apply, spec)
