"""Every layer's output for an input: a model's forward pass replayed layer by layer from its
spec, so pictures and statistics can look inside a model that only exposes `apply`.

Each leaf is a twin rebuilt from its spec (`jdnn.summarize.rebuild`) and applied to its own
params and state; combinators are replayed with the same key splitting as `serial` and
`residual`, so the last output equals `model.apply(...)` exactly (tests check it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from jdnn.core import Layer, Spec, child_name
from jdnn.layers.combinators import child_keys
from jdnn.summarize import rebuild


def _replay(spec: Spec, path: str, params: Any, state: Any, x: jax.Array,
            key: jax.Array | None, train: bool, outputs: dict[str, jax.Array]) -> jax.Array:
    if path:
        outputs[path] = x  # a placeholder, so paths come out in data-flow (pre-)order
    if spec.kind in ("serial", "residual"):
        y = x
        for i, (child, child_key) in enumerate(zip(spec.children, child_keys(spec, key))):
            name = child_name(i, child)
            y = _replay(child, f"{path}/{name}" if path else name, params[name], state[name], y,
                        child_key, train, outputs)
        if spec.kind == "residual":
            y = x + y
    else:
        y, _ = rebuild(spec).apply(params, state, x, key=key, train=train)
    if path:
        outputs[path] = y
    return y


def empty_state(spec: Spec) -> Any:
    """The state tree of a model without stateful layers: `{}` per leaf, nested by child key."""
    if spec.kind == "BatchNorm":
        raise ValueError("this model has BatchNorm layers, whose running statistics are state: "
                         "pass the model's state (e.g. train_state.state), not None")
    if spec.kind == "Dropout" and "rate_in_state" in spec.names and spec["rate_in_state"]:
        raise ValueError("this model has Dropout layers with rate_in_state=True, whose rate is "
                         "state: pass the model's state (e.g. train_state.state), not None")
    return {child_name(i, child): empty_state(child) for i, child in enumerate(spec.children)}


def full_state(model: Layer | Spec, state: Any) -> Any:
    """`state`, or the empty state tree when it is None or `{}` (for models without state)."""
    spec = model.spec if isinstance(model, Layer) else model
    return empty_state(spec) if not state else state


def layer_outputs(model: Layer | Spec, params: Any, state: Any, x: jax.Array, *,
                  key: jax.Array | None = None, train: bool = False) -> dict[str, jax.Array]:
    """The output of every layer of `model` on `x`, keyed by layer path, in data-flow order.

    Works under `jax.jit` and `jax.grad`. With `train=True` batch norm uses batch statistics
    and dropout needs `key`, exactly as in `model.apply`.

    Args:
        model: a jdnn `Layer` (or its spec).
        params: its parameters; state: its state (`{}` or None when it has none).
        x: a batch of inputs `(B, ...)`.
        key: the key `model.apply` would get.
        train: training or inference mode.

    Returns:
        `{path: output}` for every layer, leaves and combinators (e.g. `"0_dense"`,
        `"2_residual/0_serial/1_gelu"`); the model's own output under the key `""`.

    Example:
        >>> outs = layer_outputs(model, params, state, x)
        >>> outs["1_sigmoid"].shape   # (B, 3): the first hidden layer's activations
    """
    spec = model.spec if isinstance(model, Layer) else model
    outputs: dict[str, jax.Array] = {}
    outputs[""] = _replay(spec, "", params, full_state(spec, state), x, key, train, outputs)
    return outputs


@functools.lru_cache(maxsize=32)
def compiled_outputs(model: Layer) -> Callable[..., dict[str, jax.Array]]:
    """`layer_outputs` for `model` in inference mode, jitted once per model:
    `fn(params, state, x) -> {path: output}` (state must be the full tree, see `full_state`)."""
    return jax.jit(lambda params, state, x: layer_outputs(model, params, state, x))


@functools.lru_cache(maxsize=32)
def compiled_apply(model: Layer) -> Callable[..., jax.Array]:
    """`model.apply` in inference mode, jitted once per model: `fn(params, state, x) -> y`."""
    return jax.jit(lambda params, state, x: model.apply(params, state, x)[0])
