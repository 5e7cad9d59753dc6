"""What every explanation shares: the model read as class scores, and checks on what it gets.

Every explanation asks one question of a trained model: how does the score of one class depend
on the input? The score is the model's output for that class in inference mode (`train=False`:
running batch-norm statistics, no dropout), by default as it is (`output="raw"`: the logit, for
a jdnn classifier, which ends in a `Dense` and leaves the softmax to its loss), as Captum
attributes the output it is given. Logits are the usual choice: a probability also moves when
*other* classes' logits move, and saturates near 1, where its gradients vanish.
`output="softmax"` or `"log_softmax"` explains the probability or its log instead.

The model comes as `(model, params, state)`, the convention of jdnn's other tools that look
inside a trained model (`jdnn.check_gradients`, `jdnn.per_example_grads`, `jdnn.viz`): an
explanation needs the parameters, not the optimizer state, and params from anywhere (a
checkpoint, a `TrainState`, a hand-built tree) work the same. With a `TrainState` pass
`train_state.params, train_state.state`; passing the `TrainState` itself is a clear error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdnn.checks import whole_number
from jdnn.core import Layer, output_layer, trait
from jdnn.train.state import TrainState

OUTPUTS = ("raw", "softmax", "log_softmax")


# ---------------------------------------------------------------------------------------------
# The model, its parameters and its state.


def check_model(entry: str, model: Any, params: Any, state: Any) -> None:
    """Raises a clear error for a model that is not a `Layer`, or a `TrainState` passed where
    its params or state belong."""
    if not isinstance(model, Layer):
        raise TypeError(f"{entry}: model must be a jdnn Layer (e.g. jdnn.serial(...)), got "
                        f"{type(model).__name__}")
    for name, value in (("params", params), ("state", state)):
        if isinstance(value, TrainState):
            raise TypeError(f"{entry}: {name} is a TrainState; pass its parts: "
                            f"{entry}(model, train_state.params, train_state.state, ...)")


@functools.lru_cache(maxsize=64)
def _empty_state(model: Layer, input_shape: tuple[int, ...]) -> Any:
    """The state tree of `model` from an abstract `init`, or None if the model keeps state."""
    _, _, state = jax.eval_shape(lambda: model.init(jax.random.key(0), input_shape))
    return None if jax.tree.leaves(state) else state


def full_state(entry: str, model: Layer, state: Any, input_shape: tuple[int, ...]) -> Any:
    """`state`, or for None (or `{}`) the model's empty state tree (`{}` per layer); a clear
    error if the model keeps something in its state (batch-norm statistics)."""
    if state:
        return state
    empty = _empty_state(model, (1, *input_shape))
    if empty is None:
        raise ValueError(f"{entry}: this model keeps statistics in its state (batch "
                         f"normalization); pass the trained state, e.g. train_state.state, "
                         f"not {state!r}")
    return empty


# ---------------------------------------------------------------------------------------------
# The inputs and the classes to explain.


def as_batch(entry: str, x: Any) -> jax.Array:
    """`x` as an array, checked to be floats with a batch axis, `(B, *input_shape)`."""
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{entry}: x must be a non-empty batch of inputs, shape (B, ...), e.g. "
                         f"(B, 64) rows or (B, H, W, C) images; got shape {x.shape}. For one "
                         f"example pass x[None]")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{entry}: x must be floats, got dtype {x.dtype}: attributions vary the "
                        f"input continuously. Cast images, e.g. x.astype(np.float32) / 255; a "
                        f"model on token ids (Embedding) has no input gradient to explain")
    return x


def _structure(tree: Any) -> tuple[Any, tuple[jax.ShapeDtypeStruct, ...]]:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(jax.ShapeDtypeStruct(np.shape(leaf), jnp.result_type(leaf))
                          for leaf in leaves)


@functools.lru_cache(maxsize=64)
def _output_shape(model: Layer, params: Any, state: Any, x: jax.ShapeDtypeStruct) -> tuple:
    params, state = (jax.tree.unflatten(treedef, leaves) for treedef, leaves in (params, state))
    out = jax.eval_shape(lambda p, s, one: model.apply(p, s, one)[0], params, state, x)
    return tuple(out.shape)


def output_shape(model: Layer, params: Any, state: Any, x: jax.Array) -> tuple[int, ...]:
    """The model's output shape for a batch of one `x[:1]`, from an abstract `apply`, cached by
    the shapes of the arguments (so repeated calls trace nothing). A `LayerError` names the
    layer an `x` of the wrong shape does not fit."""
    one = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    return _output_shape(model, _structure(params), _structure(state), one)


def check_output(entry: str, model: Layer, output: str, out_shape: tuple[int, ...]) -> int:
    """The number of classes `C` of a model whose output is `(B, C)`; a clear error otherwise,
    or for an `output` that is not one of `OUTPUTS`."""
    if output not in OUTPUTS:
        raise ValueError(f"{entry}: output must be one of {OUTPUTS}, got {output!r}")
    if len(out_shape) != 2:
        raise ValueError(f"{entry}: explanations need a model whose output is one score per "
                         f"class, shape (B, classes); this model outputs shape "
                         f"{('B', *out_shape[1:])}")
    if output != "raw" and trait(output_layer(model.spec), "outputs_probabilities", False):
        raise ValueError(f"{entry}: this model already outputs probabilities (it ends in "
                         f"{output_layer(model.spec).kind}); use output='raw' to explain them")
    return out_shape[1]


def targets(entry: str, target: Any, batch: int, classes: int) -> jax.Array:
    """`target` (an int, or `(B,)` ints) as `(B,)` int32 class indices in `[0, classes)`."""
    if isinstance(target, jax.core.Tracer):  # inside the user's jit: shape checks only
        target = jnp.broadcast_to(jnp.asarray(target, jnp.int32), (batch,))
        return target
    values = np.asarray(target)
    if not (np.issubdtype(values.dtype, np.integer) and values.ndim in (0, 1)):
        raise TypeError(f"{entry}: target must be a class index (an int) or one per example "
                        f"(B,) ints; got {type(target).__name__} of dtype {values.dtype} and "
                        f"shape {values.shape}")
    if values.ndim == 1 and values.shape[0] != batch:
        raise ValueError(f"{entry}: target has {values.shape[0]} entries but x has {batch} "
                         f"examples; pass one target per example, or one int for all")
    bad = values[(values < 0) | (values >= classes)]
    if bad.size:
        raise ValueError(f"{entry}: target {bad.ravel()[0]} is not a class of this model, "
                         f"which has {classes} outputs (classes 0..{classes - 1})")
    return jnp.broadcast_to(jnp.asarray(values, jnp.int32), (batch,))


# ---------------------------------------------------------------------------------------------
# The score of one class for one input: what every explanation differentiates or compares.


def class_score(model: Layer, output: str) -> Callable[..., jax.Array]:
    """`score(params, state, x_one, target) -> ()`: the model's output for the class `target`
    on ONE input `x_one` (`input_shape`, no batch axis), in inference mode, after `output`'s
    transform. Batches come from `jax.vmap` over it, so no example can see another."""
    transform = {"raw": lambda y: y, "softmax": jax.nn.softmax,
                 "log_softmax": jax.nn.log_softmax}[output]

    def score(params, state, x_one, target):
        y, _ = model.apply(params, state, x_one[None], train=False)
        return transform(y[0])[target]

    return score


def prepare(entry: str, model: Any, params: Any, state: Any, x: Any, target: Any,
            output: str) -> tuple[Any, jax.Array, jax.Array]:
    """Every check an attribution method runs before it computes: returns `(state, x, target)`
    ready for the compiled method (the full state tree, float `x`, `(B,)` int32 targets)."""
    check_model(entry, model, params, state)
    x = as_batch(entry, x)
    state = full_state(entry, model, state, x.shape[1:])
    classes = check_output(entry, model, output, output_shape(model, params, state, x))
    return state, x, targets(entry, target, x.shape[0], classes)


# ---------------------------------------------------------------------------------------------
# Examples side by side, or a few at a time.


def each_example(one, args: tuple, batch_size: int | None):
    """`one(*example_args)` over the examples: all side by side under `jax.vmap`, or
    `batch_size` at a time (`lax.map`), which bounds the memory of the many model evaluations
    each example costs."""
    if batch_size is None:
        return jax.vmap(one)(*args)
    return lax.map(lambda example: one(*example), args, batch_size=batch_size)


def batch_size_of(entry: str, batch_size: Any) -> int | None:
    """`batch_size` checked: None, or a positive int."""
    return None if batch_size is None else whole_number(entry, "batch_size", batch_size, 1)
