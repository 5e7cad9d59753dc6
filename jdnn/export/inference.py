"""The function every artifact holds, and the checks of what `save` and `to_onnx` are given.

    inference_fn(model, train_state, padded)      -> infer(x) or infer(values, lengths)
    input_specs(caller, input_shape, batch, dtype, padded, batch_dim)
                                                   -> the inputs' jax.ShapeDtypeStructs

`infer` is the model in evaluation mode (`train=False`: no dropout, batch norm's running
statistics), exactly what `jdnn.predict` runs, with the trained params and state closed over.
Closed-over arrays are constants of the traced program, so both formats embed them: the artifact
is self-contained, one file a deployer copies and calls with inputs alone, with no second file
of weights to keep in step with the program and no params tree to rebuild without jdnn. (The
price: re-exporting for new weights, and programs of a few GB at most, far above jdnn's models.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jdnn.core import Layer, Shape
from jdnn.padded import Padded, apply_child
from jdnn.train.state import TrainState


class ExportError(ValueError):
    """A model, state or argument that cannot be exported as asked; the message says why and
    what to do instead."""


def inference_fn(model: Layer, train_state: TrainState, padded: bool = False) -> Callable:
    """The model in evaluation mode with `train_state`'s params and state baked in.

    Args:
        model: the network.
        train_state: its trained state (only `params` and `state` are read).
        padded: False: `infer(x) -> y`. True: `infer(values, lengths)` runs the model on
            `jdnn.Padded(values, lengths)` and returns `y`, or `(y_values, y_lengths)` where
            the output keeps a time axis (a `Padded`).

    Returns:
        The function to export; outputs `(B, ...)` as `jdnn.predict` gives them.
    """
    params, state = train_state.params, train_state.state

    if not padded:
        def infer(x):
            return apply_child(model, params, state, x, train=False)[0]

        return infer

    def infer_padded(values, lengths):
        y = apply_child(model, params, state, Padded(values, lengths), train=False)[0]
        return (y.values, y.lengths) if isinstance(y, Padded) else y

    return infer_padded


def check_model(caller: str, model: Any, train_state: Any) -> None:
    """Refuses a `model` that is not a jdnn `Layer` or a `train_state` without params."""
    if not isinstance(model, Layer):
        raise TypeError(f"{caller}: model must be a jdnn Layer (e.g. jdnn.serial(...)), got "
                        f"{type(model).__name__}")
    if not (hasattr(train_state, "params") and hasattr(train_state, "state")):
        raise TypeError(f"{caller}: train_state must be a jdnn.TrainState (or anything with "
                        f".params and .state, e.g. a checkpoint restored with "
                        f"jdnn.checkpoint.restore), got {type(train_state).__name__}")


def check_input_shape(caller: str, input_shape: Any) -> Shape:
    """`input_shape` as a tuple of positive ints with the batch axis first, e.g. `(1, 64)`."""
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else None
    if (not shape or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                             and n > 0 for n in shape)):
        raise ExportError(f"{caller}: input_shape must be the model's input shape with its "
                          f"batch axis first, positive ints such as (1, 64) or (1, 28, 28, 1), "
                          f"got {input_shape!r}")
    return tuple(int(n) for n in shape)


def check_batch(caller: str, batch: Any) -> str | int:
    """`"dynamic"` or a positive int."""
    if batch == "dynamic" or (isinstance(batch, int) and not isinstance(batch, bool)
                              and batch > 0):
        return batch
    raise ExportError(f"{caller}: batch must be 'dynamic' (any batch size at run time) or a "
                      f"fixed batch size, an int >= 1, got {batch!r}")


def check_dtype(caller: str, dtype: Any) -> np.dtype:
    """The input dtype, a float or integer NumPy dtype (ints for token ids)."""
    try:
        kind = np.dtype(dtype)
    except TypeError:
        kind = None
    if kind is None or kind.kind not in "fiu":
        raise ExportError(f"{caller}: dtype must be the input's dtype, e.g. 'float32' for "
                          f"features or 'int32' for token ids (Embedding), got {dtype!r}")
    return kind


def input_specs(caller: str, input_shape: Any, batch: Any, dtype: Any, padded: bool,
                batch_dim: Any) -> tuple[jax.ShapeDtypeStruct, ...]:
    """The exported inputs: `x` `(B, ...)`, plus `lengths` `(B,)` int32 when `padded`.

    Args:
        caller: the entry point, for messages.
        input_shape: the model's input shape, batch axis first; the batch entry is replaced.
        batch: `"dynamic"` (then `batch_dim`, a symbolic dimension) or a fixed size.
        dtype: the input's dtype.
        padded: whether a `lengths` input follows (a `jdnn.Padded` batch of sequences).
        batch_dim: what stands for the batch axis when `batch="dynamic"`.
    """
    shape = check_input_shape(caller, input_shape)
    batch = check_batch(caller, batch)
    kind = check_dtype(caller, dtype)
    size = batch_dim if batch == "dynamic" else batch
    if padded and len(shape) < 2:
        raise ExportError(f"{caller}: padded=True needs sequences, an input_shape (B, T, ...) "
                          f"with a time axis, got {shape}")
    x = jax.ShapeDtypeStruct((size, *shape[1:]), kind)
    return (x, jax.ShapeDtypeStruct((size,), np.int32)) if padded else (x,)


def num_params(train_state: TrainState) -> int:
    """How many numbers the params hold (all leaves)."""
    return int(sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(train_state.params)))
