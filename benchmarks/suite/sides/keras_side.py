"""Keras 3 on its JAX backend: a `keras.Sequential` rebuilt from jdnn's spec, trained by
`model.fit` (its documented loop), compiled with `jit_compile=True` and
`steps_per_execution` = the batches of one epoch, so one `run` quantum is one epoch.

Keras is channel-last like jdnn: `Dense.kernel` is `(in, out)`, `Conv2D.kernel` is HWIO, and
`Flatten` orders `(H, W, C)` as jdnn does, so weights copy over unchanged.

Adam differs from optax in where eps goes: Keras computes
`alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)` and steps by `alpha * m / (sqrt(v) + eps)`, with `m`,
`v` not bias-corrected: that is optax's `lr * m_hat / (sqrt(v_hat) + eps')` with
`eps' = eps / sqrt(1 - b2^t)` (3.2e-7 at the first step for eps = 1e-8, tending to eps). The
difference is far below float32 noise unless a gradient is ~1e-7; SGD is identical.

Keras reads `KERAS_BACKEND` once, at its first import; this module sets it to `"jax"` if unset.
The side is an optional extra (`pip install -e ".[keras]"`): without it, or with Keras already
imported on another backend, it raises `Skipped` saying so.
"""

from __future__ import annotations

import importlib
import os

import jax
import numpy as np

from benchmarks.suite.sides.base import Runner, Side, Skipped
from benchmarks.suite.workloads import Problem

INSTALL = 'pip install -e ".[keras]"'


def keras_module():
    """Keras on the JAX backend, or `Skipped` naming the extra to install."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        keras = importlib.import_module("keras")
    except ImportError as error:
        raise Skipped(f"keras is not installed ({error}); {INSTALL}") from None
    backend = keras.backend.backend()
    if backend != "jax":
        raise Skipped(f"keras runs on its {backend!r} backend (KERAS_BACKEND="
                      f"{os.environ.get('KERAS_BACKEND')!r} when it was first imported); this "
                      f"side needs KERAS_BACKEND=jax ({INSTALL})")
    return keras


# `Op` kind -> `f(keras.layers, op)`: the Keras layer (channel-last, as jdnn). Kernels start at
# zeros: jdnn's weights overwrite them, and a random initializer costs a compile per shape.
_KERAS_LAYERS = {
    "dense": lambda layers, op: layers.Dense(op.out_shape[-1], kernel_initializer="zeros"),
    "conv": lambda layers, op: layers.Conv2D(op.out_shape[-1], 3, padding="same",
                                             kernel_initializer="zeros"),
    "maxpool": lambda layers, op: layers.MaxPooling2D(2),
    "relu": lambda layers, op: layers.ReLU(),
    "sigmoid": lambda layers, op: layers.Activation("sigmoid"),
    "flatten": lambda layers, op: layers.Flatten(),
}


def keras_model(problem: Problem, params: dict):
    """The model with jdnn's `params` copied in; returns `(model, {op name: layer})`."""
    keras = keras_module()
    layers = {op.name: _KERAS_LAYERS[op.kind](keras.layers, op) for op in problem.ops}
    model = keras.Sequential([keras.Input(problem.workload.example_shape), *layers.values()])
    weighted = {op.name: layers[op.name] for op in problem.ops if op.has_params}
    for name, layer in weighted.items():
        layer.set_weights([np.asarray(params[name]["w"]), np.asarray(params[name]["b"])])
    return model, weighted


def _loss(keras, problem: Problem):
    if problem.workload.classes == 1:
        return keras.losses.BinaryCrossentropy(from_logits=True)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _labels(problem: Problem, y: np.ndarray) -> np.ndarray:
    """Binary labels as `(batch, 1)` floats, the logits' shape; class labels unchanged."""
    return np.asarray(y, np.float32).reshape(-1, 1) if problem.workload.classes == 1 else y


def _params(problem: Problem, weighted: dict) -> dict:
    tree = {op.name: {} for op in problem.ops}
    for name, layer in weighted.items():
        tree[name] = {"w": np.array(layer.kernel.value), "b": np.array(layer.bias.value)}
    return tree


def build(problem: Problem) -> Runner:
    keras = keras_module()
    w = problem.workload
    model, weighted = keras_model(problem, problem.params)
    opt = (keras.optimizers.SGD(learning_rate=w.lr) if w.optimizer == "sgd"
           else keras.optimizers.Adam(learning_rate=w.lr, epsilon=1e-8))
    model.compile(optimizer=opt, loss=_loss(keras, problem), steps_per_execution=w.batches,
                  jit_compile=True)
    x, y = problem.x, _labels(problem, problem.y)  # one epoch, its batches in order

    def run(n: int) -> None:
        model.fit(x, y, batch_size=w.batch, epochs=n // w.batches, shuffle=False, verbose=0)
        jax.block_until_ready([v.value for v in model.trainable_variables])

    return Runner(run, lambda: _params(problem, weighted), quantum=w.batches)


def loss_and_grads(problem: Problem, params: dict, x, y) -> tuple[float, dict]:
    """`jax.value_and_grad` through `model.stateless_call` (Keras' documented JAX loop)."""
    keras = keras_module()
    model, weighted = keras_model(problem, params)
    loss = _loss(keras, problem)
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def objective(trainable, x, y):
        logits, _ = model.stateless_call(trainable, frozen, x, training=True)
        return loss(y, logits)

    value, grads = jax.jit(jax.value_and_grad(objective))(trainable, np.asarray(x),
                                                          _labels(problem, y))
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    tree = {op.name: {} for op in problem.ops}
    for name, layer in weighted.items():
        tree[name] = {"w": np.asarray(grads[index[id(layer.kernel)]]),
                      "b": np.asarray(grads[index[id(layer.bias)]])}
    return float(value), tree


SIDE = Side("keras", "Keras 3 on JAX: model.fit, jit_compile=True, steps_per_execution = one "
            "epoch, shuffle=False (Adam's eps on the uncorrected sqrt(v)); max pool: "
            "MaxPooling2D = lax.reduce_window", build, loss_and_grads, "keras")
