"""Combinators: layers built from layers. They own the bookkeeping single layers never do:
threading shapes through `init`, filing each child's params and state under a readable key
(`"2_dense"`), handing random keys to children, and naming the child's path in errors.

Each registers how it hands its key to its children (`child_keys`), so `jdnn.core.walk` hands
out the same keys without knowing the combinator."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdnn.core import (Layer, LayerError, Spec, check_hparam, child_keys, child_name, make_spec,
                       per_output, register_layer)
from jdnn.padded import Padded, apply_child, repad, unpad


def _check_layers(kind: str, layers: tuple) -> None:
    for i, layer in enumerate(layers):
        check_hparam(kind, f"layer {i}", layer, isinstance(layer, Layer),
                     "a jdnn Layer (did you forget to call the constructor, e.g. Relu()?)")


def _split(spec: Spec, key: jax.Array) -> list[jax.Array]:
    """One key per child, split from the combinator's."""
    return list(jax.random.split(key, len(spec.children)))


def _same(spec: Spec, key: jax.Array) -> list[jax.Array]:
    """The combinator's own key, for its only child."""
    del spec
    return [key]


# serial's output is its last child's (none for an empty serial, the identity)
@register_layer(family="combinator", child_keys=_split, padded=True,
                output_child=lambda spec: spec.children[-1] if spec.children else None,
                input_children=lambda spec: spec.children[:1])
def serial(*layers: Layer) -> Layer:
    """Layers applied one after another: `serial(f, g, h)(x) = h(g(f(x)))`.

    Params and state are dicts with one entry per layer, keyed `"{index}_{kind}"` in lower case,
    e.g. `{"0_dense": {"w", "b"}, "1_relu": {}, "2_dense": {"w", "b"}}`.

    Args:
        *layers: the layers, first to last.

    Returns:
        A `Layer` whose spec has the layers' specs as children.

    Examples:
        >>> model = jdnn.serial(jdnn.Dense(128), jdnn.Relu(), jdnn.Dense(10))
        >>> out_shape, params, state = model.init(jax.random.key(0), (32, 784))
        >>> logits, state = model.apply(params, state, x)
    """
    _check_layers("serial", layers)
    spec = make_spec("serial", *(layer.spec for layer in layers))
    names = [child_name(i, layer.spec) for i, layer in enumerate(layers)]

    def init(key, input_shape):
        params, state, shape = {}, {}, input_shape
        for name, layer, layer_key in zip(names, layers, child_keys(spec, key)):
            try:
                shape, params[name], state[name] = layer.init(layer_key, shape)
            except LayerError as error:
                raise error.within(name) from None
        return shape, params, state

    def apply(params, state, x, *, key=None, train=False):
        new_state = {}
        for name, layer, layer_key in zip(names, layers, child_keys(spec, key)):
            if name not in params or name not in state:
                missing = "params" if name not in params else "state"
                raise LayerError("serial", f"the {missing} have no entry {name!r} (they have "
                                           f"{sorted(params if missing == 'params' else state)}); "
                                           f"pass the params and state that init returned")
            try:
                x, new_state[name] = apply_child(layer, params[name], state[name], x,
                                                 key=layer_key, train=train)
            except LayerError as error:
                raise error.within(name) from None
        return x, new_state

    return Layer(init, apply, spec)


@register_layer(family="combinator", child_keys=_same, flops=per_output(1), padded=True)
def residual(layer: Layer) -> Layer:
    """A skip connection around `layer`: `y = x + layer(x)`.

    The inner layer must keep the shape. Its params and state are filed under `"0_{kind}"`.

    Args:
        layer: the inner layer (often a `serial`).

    Returns:
        A `Layer` with the inner layer's spec as its only child.

    Examples:
        >>> block = jdnn.residual(jdnn.serial(jdnn.Dense(64), jdnn.Relu(), jdnn.Dense(64)))
    """
    _check_layers("residual", (layer,))
    name = child_name(0, layer.spec)

    def init(key, input_shape):
        try:
            out_shape, params, state = layer.init(key, input_shape)
        except LayerError as error:
            raise error.within(name) from None
        if tuple(out_shape) != tuple(input_shape):
            raise LayerError("residual", f"the inner layer maps {tuple(input_shape)} to "
                                         f"{tuple(out_shape)}, but y = x + layer(x) needs the "
                                         f"shape kept; make the inner layer's output match")
        return tuple(input_shape), {name: params}, {name: state}

    def apply(params, state, x, *, key=None, train=False):
        try:
            y, inner_state = apply_child(layer, params[name], state[name], x, key=key,
                                         train=train)
        except LayerError as error:
            raise error.within(name) from None
        (xv, lengths), (yv, _) = unpad(x), unpad(y)
        if yv.shape != xv.shape:
            raise LayerError("residual", f"the inner layer maps {tuple(xv.shape)} to "
                                         f"{tuple(yv.shape)}, but y = x + layer(x) needs the "
                                         f"shape kept")
        return repad(xv + yv, lengths), {name: inner_state}

    return Layer(init, apply, make_spec("residual", layer.spec))


MERGES = ("concat", "sum")


@register_layer(family="combinator", child_keys=_split, padded=True)
def branches(*layers: Layer, merge: str = "concat") -> Layer:
    """Several layers on the same input, their outputs merged: stax's FanOut + FanIn, the
    inception block's shape. `merge="concat"` joins the outputs on the last axis (they must
    agree on every other axis), `merge="sum"` adds them (they must have one shape).

    Params and state are dicts with one entry per branch, keyed like `serial`'s
    (`"0_dense"`, `"1_serial"`); the key is split into one per branch.

    Args:
        *layers: the branches, at least one.
        merge: `"concat"` or `"sum"`.

    Returns:
        A `Layer` whose spec has the branches' specs as children.

    Examples:
        >>> block = jdnn.branches(jdnn.Conv2D(8, 1), jdnn.Conv2D(8, 3), jdnn.MaxPool2D(3, 1,
        ...                       "SAME"))   # (N, H, W, C) -> (N, H, W, 16 + C)
    """
    _check_layers("branches", layers)
    check_hparam("branches", "layers", layers, len(layers) >= 1, "at least one layer")
    check_hparam("branches", "merge", merge, merge in MERGES, f"one of {MERGES}")
    spec = make_spec("branches", *(layer.spec for layer in layers), merge=merge)
    names = [child_name(i, layer.spec) for i, layer in enumerate(layers)]

    def merged_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        first = tuple(shapes[0])
        agree = all(tuple(s[:-1]) == first[:-1] if merge == "concat" else tuple(s) == first
                    for s in shapes)
        if not agree:
            need = "agree on every axis but the last" if merge == "concat" else "have one shape"
            raise LayerError("branches", f"merge={merge!r} needs the branches' outputs to "
                                         f"{need}, got {[tuple(s) for s in shapes]}")
        return (*first[:-1], sum(s[-1] for s in shapes)) if merge == "concat" else first

    def init(key, input_shape):
        params, state, shapes = {}, {}, []
        for name, layer, layer_key in zip(names, layers, child_keys(spec, key)):
            try:
                shape, params[name], state[name] = layer.init(layer_key, input_shape)
            except LayerError as error:
                raise error.within(name) from None
            shapes.append(shape)
        return merged_shape(shapes), params, state

    def apply(params, state, x, *, key=None, train=False):
        outputs, new_state = [], {}
        for name, layer, layer_key in zip(names, layers, child_keys(spec, key)):
            try:
                y, new_state[name] = apply_child(layer, params[name], state[name], x,
                                                 key=layer_key, train=train)
            except LayerError as error:
                raise error.within(name) from None
            outputs.append(y)
        # padded outputs are merged as their values, keeping the lengths only if every branch
        # kept them (a branch whose time axis is gone leaves none to keep)
        kept = all(isinstance(y, Padded) for y in outputs)
        lengths = outputs[0].lengths if kept else None
        outputs = [unpad(y)[0] for y in outputs]
        merged_shape([y.shape for y in outputs])
        y = jnp.concatenate(outputs, axis=-1) if merge == "concat" else sum(outputs[1:],
                                                                             outputs[0])
        return repad(y, lengths), new_state

    return Layer(init, apply, spec)
