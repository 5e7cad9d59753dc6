"""Every layer's output for an input: a model's forward pass replayed from its spec, so
pictures and statistics can look inside a model that only exposes `apply`.

The model is rebuilt from its spec (`jdnn.core.rebuild`) with every layer, leaves and
combinators, wrapped to record its output; params, state and keys reach each layer exactly as
in the original, so the last output equals `model.apply(...)` exactly (tests check it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from jdnn.core import Layer, Spec, rebuild, trait, walk


def _recorder(outputs: dict[str, jax.Array]):
    """A `rebuild` wrapper that stores each layer's output in `outputs` under its path."""
    def wrap(path: str, spec: Spec, layer: Layer) -> Layer:
        def apply(params, state, x, *, key=None, train=False):
            y, new_state = layer.apply(params, state, x, key=key, train=train)
            outputs[path] = y
            return y, new_state

        return Layer(layer.init, apply, layer.spec)

    return wrap


def empty_state(spec: Spec) -> Any:
    """The state tree of a model without stateful layers: `{}` per leaf, nested by child key;
    a clear error naming the first layer that keeps something in its state."""
    tree: dict[str, Any] = {}
    for node in walk(spec):
        held = trait(node.spec, "state")
        if held is not None and held(node.spec):
            raise ValueError(f"this model's {node.spec.kind} at {node.path or '<root>'} keeps "
                             f"{held(node.spec)} in its state: pass the model's state (e.g. "
                             f"train_state.state), not None")
        if node.path:
            parent, _, name = node.path.rpartition("/")
            subtree = tree
            for key in parent.split("/") if parent else ():
                subtree = subtree[key]
            subtree[name] = {}
    return tree


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

    Examples:
        >>> outs = layer_outputs(model, params, state, x)
        >>> outs["1_sigmoid"].shape   # (B, 3): the first hidden layer's activations
    """
    spec = model.spec if isinstance(model, Layer) else model
    outputs: dict[str, jax.Array] = {node.path: None for node in walk(spec) if node.path}
    rebuild(spec, _recorder(outputs)).apply(params, full_state(spec, state), x, key=key,
                                             train=train)
    outputs[""] = outputs.pop("")  # the model's own output last
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
