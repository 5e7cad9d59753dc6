"""Equinox: a module of `eqx.nn` layers called per example under `jax.vmap`, trained with
`eqx.filter_jit` and `eqx.filter_value_and_grad`, optax updates (its documented pattern), with
and without buffer donation. Its max pool is `eqx.nn.MaxPool2d` (`lax.reduce_window`).

Donation follows `filter_jit`'s docstring (equinox 0.13): `donate="all-except-first"` donates
every array argument but the first, so the batch goes first and is kept (the runner reuses its
batches every epoch), while the model and the optimizer state are donated.

Equinox is channel-first: `Linear.weight` is `(out, in)` (jdnn's `w` transposed), `Conv2d` takes
`(C, H, W)` images with an `(O, I, kh, kw)` weight and an `(O, 1, 1)` bias, and flattening
`(C, H, W)` orders the dense layer's rows differently (see `workloads.channel_first_rows`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.suite.sides.base import Runner, Side, batches, require
from benchmarks.suite.sides.jdnn_side import optimizer
from benchmarks.suite.workloads import Problem, channel_first_rows, dense_ops


def channel_first(x: np.ndarray) -> np.ndarray:
    """NHWC -> NCHW (flat inputs unchanged)."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


def _dense_to(w: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray((w if rows is None else w[rows]).T)


def _dense_from(weight: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    if rows is None:
        return weight.T
    w = np.empty_like(weight.T)
    w[rows] = weight.T
    return w


def _conv_to(w: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    del rows
    return np.ascontiguousarray(np.asarray(w).transpose(3, 2, 0, 1))  # HWIO -> OIHW


def _conv_from(weight: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    del rows
    return weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO


# `Op` kind -> (jdnn's `w` -> the channel-first weight, and back), given the layer's row order
# (`channel_first_rows`).
_CHANNEL_FIRST = {"dense": (_dense_to, _dense_from), "conv": (_conv_to, _conv_from)}


def to_channel_first(problem: Problem, params: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """jdnn params -> `[(weight, bias), ...]` in the channel-first `(out, in)` / OIHW layout
    (shared with PyTorch); `bias` is `(out,)`."""
    rows = channel_first_rows(problem.ops)
    out = []
    for op in dense_ops(problem.ops):
        to, _ = _CHANNEL_FIRST[op.kind]
        out.append((to(params[op.name]["w"], rows[op.name]), np.asarray(params[op.name]["b"])))
    return out


def from_channel_first(problem: Problem, pairs: list) -> dict:
    """The inverse of `to_channel_first`: `[(weight, bias), ...]` back to jdnn's tree."""
    rows = channel_first_rows(problem.ops)
    tree = {op.name: {} for op in problem.ops}
    for op, pair in zip(dense_ops(problem.ops), pairs, strict=True):
        weight, bias = (np.asarray(a) for a in pair)
        _, back = _CHANNEL_FIRST[op.kind]
        tree[op.name] = {"w": np.ascontiguousarray(back(weight, rows[op.name])),
                         "b": bias.reshape(-1)}
    return tree


def _called(layer, x):
    return layer(x)


# `Op` kind -> `f(layer, x)`: one example through the layer `_EQX_LAYERS` built (or None).
_EQX_APPLY = {"dense": _called, "conv": _called, "maxpool": _called,
              "relu": lambda _, x: jax.nn.relu(x), "sigmoid": lambda _, x: jax.nn.sigmoid(x),
              "flatten": lambda _, x: x.reshape(-1)}

# `Op` kind -> `f(eqx, op, keys)`: its `eqx.nn` layer; the others have none.
_EQX_LAYERS = {
    "dense": lambda eqx, op, keys: eqx.nn.Linear(op.in_shape[-1], op.out_shape[-1],
                                                 key=next(keys)),
    "conv": lambda eqx, op, keys: eqx.nn.Conv2d(op.in_shape[-1], op.out_shape[-1], 3, padding=1,
                                                key=next(keys)),
    "maxpool": lambda eqx, op, keys: eqx.nn.MaxPool2d(2, 2),
}


def eqx_model(problem: Problem, params: dict):
    eqx = require("equinox")

    class Net(eqx.Module):
        layers: tuple
        kinds: tuple = eqx.field(static=True)

        def __call__(self, x):
            for kind, layer in zip(self.kinds, self.layers):
                x = _EQX_APPLY[kind](layer, x)
            return x

    keys = iter(jax.random.split(jax.random.key(0), len(problem.ops)))
    pairs = iter(to_channel_first(problem, params))
    layers = []
    for op in problem.ops:
        build = _EQX_LAYERS.get(op.kind)
        layer = None if build is None else build(eqx, op, keys)
        if op.has_params:
            weight, bias = next(pairs)
            layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer,
                                (jnp.array(weight), jnp.array(bias).reshape(layer.bias.shape)))
        layers.append(layer)
    return Net(tuple(layers), tuple(op.kind for op in problem.ops))


def _loss(problem: Problem, model, x, y):
    logits = jax.vmap(model)(x)
    if problem.workload.classes == 1:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits[:, 0], y))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _pairs(model) -> list:
    return [(layer.weight, layer.bias) for layer in model.layers if hasattr(layer, "weight")]


def build(problem: Problem, donate: str = "none") -> Runner:
    """Equinox's training loop; `donate` is `filter_jit`'s: "none" (its default) or
    "all-except-first" (the batch, passed first, is kept; model and optimizer state donated)."""
    eqx = require("equinox")
    model = eqx_model(problem, problem.params)
    tx = optimizer(problem.workload)
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit(donate=donate)
    def step(batch, model, opt_state):
        x, y = batch
        loss, grads = eqx.filter_value_and_grad(lambda m: _loss(problem, m, x, y))(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    cursor = batches(problem, lambda x, y: (jnp.asarray(channel_first(x)), jnp.asarray(y)))
    box = [model, opt_state]

    def run(n: int) -> None:
        model, opt_state = box
        for _ in range(n):
            model, opt_state, _ = step(cursor.next(), model, opt_state)
        box[:] = jax.block_until_ready([model, opt_state])

    return Runner(run, lambda: from_channel_first(problem, _pairs(box[0])))


def loss_and_grads(problem: Problem, params: dict, x, y) -> tuple[float, dict]:
    eqx = require("equinox")
    model = eqx_model(problem, params)
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(
        lambda m, x, y: _loss(problem, m, x, y)))
    loss, grads = value_and_grad(model, jnp.asarray(channel_first(np.asarray(x))),
                                 jnp.asarray(y))
    return float(loss), from_channel_first(problem, _pairs(grads))


SIDE = Side("equinox", "Equinox, eqx.filter_jit step, per-example modules under vmap; max "
            "pool: eqx.nn.MaxPool2d = lax.reduce_window", build, loss_and_grads, "equinox")
DONATE = Side("equinox_donate", "Equinox, eqx.filter_jit(donate='all-except-first') step (model "
              "and optimizer state donated, batch kept), per-example modules under vmap; max "
              "pool: lax.reduce_window", lambda problem: build(problem, "all-except-first"),
              loss_and_grads, "equinox")
