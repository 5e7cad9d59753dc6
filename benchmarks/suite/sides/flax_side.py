"""Flax: NNX with `nnx.jit` (how its guide writes a step), NNX with `jax.jit` and split/merge
(the fast form its performance guide recommends), and linen with `jax.jit`; optax updates.

Layers are filed under jdnn's own keys (`"0_dense"`), so parameters convert one to one: Flax's
`kernel` is jdnn's `w` (same `(in, out)` / HWIO layout), `bias` is `b`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from benchmarks.suite.sides.base import Runner, Side, batches, require
from benchmarks.suite.sides.jdnn_side import optimizer
from benchmarks.suite.workloads import Problem, Workload


def _loss(w: Workload, logits, y):
    if w.classes == 1:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits[:, 0], y))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _max_pool(x):
    """Flax's own 2x2 max pool (`lax.reduce_window`, whose gradient is select-and-scatter)."""
    linen = require("flax.linen", "flax")
    return linen.max_pool(x, (2, 2), strides=(2, 2))


# `Op` kind -> `f(x)` for the layers without parameters, a batch through it (NHWC, as jdnn).
_PARAMETER_FREE = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "maxpool": _max_pool,
                   "flatten": lambda x: x.reshape(x.shape[0], -1)}


def _to_jdnn(problem: Problem, get) -> dict:
    """jdnn's tree from `get(name) -> (kernel, bias)` for each parametric layer."""
    tree = {}
    for op in problem.ops:
        if op.has_params:
            kernel, bias = get(op.name)
            tree[op.name] = {"w": jax.device_get(kernel), "b": jax.device_get(bias)}
        else:
            tree[op.name] = {}
    return tree


# --- NNX -------------------------------------------------------------------------------------


# `Op` kind -> `f(nnx, op, rngs)`: the NNX layer of a layer with parameters.
_NNX_LAYERS = {
    "dense": lambda nnx, op, rngs: nnx.Linear(op.in_shape[-1], op.out_shape[-1], rngs=rngs),
    "conv": lambda nnx, op, rngs: nnx.Conv(op.in_shape[-1], op.out_shape[-1], (3, 3),
                                           padding="SAME", rngs=rngs),
}


def nnx_model(problem: Problem, params: dict):
    nnx = require("flax.nnx", "flax")

    class Net(nnx.Module):
        def __init__(self, ops, rngs):
            self.ops = tuple(ops)
            self.layers = nnx.Dict({op.name: _NNX_LAYERS[op.kind](nnx, op, rngs)
                                    for op in ops if op.has_params})

        def __call__(self, x):
            for op in self.ops:
                x = (self.layers[op.name](x) if op.name in self.layers
                     else _PARAMETER_FREE[op.kind](x))
            return x

    model = Net(problem.ops, nnx.Rngs(0))
    for name, layer in model.layers.items():
        layer.kernel[...] = jnp.array(params[name]["w"])
        layer.bias[...] = jnp.array(params[name]["b"])
    return model


def _nnx_params(problem: Problem, model) -> dict:
    return _to_jdnn(problem, lambda name: (model.layers[name].kernel[...],
                                           model.layers[name].bias[...]))


def _nnx_train_step(w: Workload):
    nnx = require("flax.nnx", "flax")

    def train_step(model, opt, x, y):
        loss, grads = nnx.value_and_grad(lambda m: _loss(w, m(x), y))(model)
        opt.update(model, grads)
        return loss

    return train_step


def build_nnx_jit(problem: Problem) -> Runner:
    nnx = require("flax.nnx", "flax")
    model = nnx_model(problem, problem.params)
    opt = nnx.Optimizer(model, optimizer(problem.workload), wrt=nnx.Param)
    step = nnx.jit(_nnx_train_step(problem.workload))
    cursor = batches(problem, lambda x, y: (jnp.asarray(x), jnp.asarray(y)))

    def run(n: int) -> None:
        for _ in range(n):
            loss = step(model, opt, *cursor.next())
        jax.block_until_ready((loss, nnx.state(model)))

    return Runner(run, lambda: _nnx_params(problem, model))


def build_nnx_split(problem: Problem) -> Runner:
    nnx = require("flax.nnx", "flax")
    model = nnx_model(problem, problem.params)
    opt = nnx.Optimizer(model, optimizer(problem.workload), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))
    body = _nnx_train_step(problem.workload)

    @functools.partial(jax.jit, donate_argnums=1)
    def step(graphdef, state, x, y):
        model, opt = nnx.merge(graphdef, state)
        loss = body(model, opt, x, y)
        return loss, nnx.state((model, opt))

    cursor = batches(problem, lambda x, y: (jnp.asarray(x), jnp.asarray(y)))
    box = [state]

    def run(n: int) -> None:
        state = box[0]
        for _ in range(n):
            _, state = step(graphdef, state, *cursor.next())
        box[0] = jax.block_until_ready(state)

    def params() -> dict:
        model, _ = nnx.merge(graphdef, box[0])
        return _nnx_params(problem, model)

    return Runner(run, params)


def nnx_loss_and_grads(problem: Problem, params: dict, x, y) -> tuple[float, dict]:
    nnx = require("flax.nnx", "flax")
    w = problem.workload

    @nnx.jit
    def value_and_grad(model, x, y):
        return nnx.value_and_grad(lambda m: _loss(w, m(x), y))(model)

    loss, grads = value_and_grad(nnx_model(problem, params), jnp.asarray(x), jnp.asarray(y))
    layers = grads["layers"]
    return float(loss), _to_jdnn(problem, lambda name: (layers[name]["kernel"][...],
                                                        layers[name]["bias"][...]))


# --- linen -----------------------------------------------------------------------------------


# `Op` kind -> `f(linen, op)`: the linen layer of a layer with parameters, under jdnn's name.
_LINEN_LAYERS = {
    "dense": lambda linen, op: linen.Dense(op.out_shape[-1], name=op.name),
    "conv": lambda linen, op: linen.Conv(op.out_shape[-1], (3, 3), padding="SAME",
                                         name=op.name),
}


def linen_module(problem: Problem):
    linen = require("flax.linen", "flax")

    class Net(linen.Module):
        ops: tuple

        @linen.compact
        def __call__(self, x):
            for op in self.ops:
                x = (_LINEN_LAYERS[op.kind](linen, op)(x) if op.has_params
                     else _PARAMETER_FREE[op.kind](x))
            return x

    return Net(tuple(problem.ops))


def _linen_params(problem: Problem, params: dict) -> dict:
    return {op.name: {"kernel": jnp.array(params[op.name]["w"]),
                      "bias": jnp.array(params[op.name]["b"])}
            for op in problem.ops if op.has_params}


def build_linen(problem: Problem) -> Runner:
    net, w = linen_module(problem), problem.workload
    tx = optimizer(w)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(
            lambda p: _loss(w, net.apply({"params": p}, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    params = _linen_params(problem, problem.params)
    box = [params, tx.init(params)]
    cursor = batches(problem, lambda x, y: (jnp.asarray(x), jnp.asarray(y)))

    def run(n: int) -> None:
        params, opt_state = box
        for _ in range(n):
            params, opt_state, _ = step(params, opt_state, *cursor.next())
        box[:] = jax.block_until_ready([params, opt_state])

    return Runner(run, lambda: _to_jdnn(problem, lambda name: (box[0][name]["kernel"],
                                                               box[0][name]["bias"])))


def linen_loss_and_grads(problem: Problem, params: dict, x, y) -> tuple[float, dict]:
    net = linen_module(problem)
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda p, x, y: _loss(problem.workload, net.apply({"params": p}, x), y)))
    loss, grads = value_and_grad(_linen_params(problem, params), jnp.asarray(x), jnp.asarray(y))
    return float(loss), _to_jdnn(problem, lambda name: (grads[name]["kernel"],
                                                        grads[name]["bias"]))


# Flax's max pool is `flax.linen.max_pool`, i.e. `lax.reduce_window` (idiomatic, left as is).
_POOL = "max pool: linen.max_pool = lax.reduce_window"
NNX_JIT = Side("nnx_jit", f"Flax NNX, nnx.jit step (as in its guide); {_POOL}", build_nnx_jit,
               nnx_loss_and_grads, "flax")
NNX_SPLIT = Side("nnx_split", f"Flax NNX, jax.jit + split/merge + donation (its fast form); "
                 f"{_POOL}", build_nnx_split, nnx_loss_and_grads, "flax")
LINEN = Side("linen", f"Flax linen, jax.jit + donation, optax; {_POOL}", build_linen,
             linen_loss_and_grads, "flax")
