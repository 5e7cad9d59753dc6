"""A small zoo of models that, together, use every layer kind jdnn has.

`jdnn gradcheck` checks each of them with each loss; tests use them as realistic networks.
Every builder takes the number of outputs, so one architecture serves regression, binary and
multi-class losses alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from jdnn.core import Layer, Shape
from jdnn.layers import (
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Elu,
    Flatten,
    Gelu,
    LeakyRelu,
    MaxPool2D,
    PRelu,
    Relu,
    Sigmoid,
    Softmax,
    Tanh,
    branches,
    residual,
    serial,
)


def xor_sigmoid(outputs: int = 1) -> Layer:
    """The 2-3-2-1 sigmoid network of the DNN tutorials' XOR example (inputs: 2 features)."""
    return serial(Dense(3), Sigmoid(), Dense(2), Sigmoid(), Dense(outputs))


def mlp(outputs: int = 10) -> Layer:
    """A ReLU-family MLP with batch norm and dropout (inputs: 8 features)."""
    return serial(Dense(16, w_init="he_normal"), BatchNorm(), Relu(), Dropout(0.25),
                  Dense(16, w_init="he_normal"), LeakyRelu(0.1), Dense(16), PRelu(),
                  Dense(outputs))


def cnn(outputs: int = 10) -> Layer:
    """A small CNN: conv, batch norm, max and average pooling, strides, VALID and SAME padding
    (inputs: 8x8 images with 2 channels, NHWC)."""
    return serial(Conv2D(4, 3, w_init="he_normal"), BatchNorm(), Relu(), MaxPool2D(2),
                  Conv2D(6, (2, 3), strides=2, padding="VALID"), Elu(),
                  AvgPool2D(2, strides=1, padding="SAME"), Flatten(), Dense(outputs))


def residual_mlp(outputs: int = 10) -> Layer:
    """Residual blocks with GELU (both forms), tanh and a softmax bottleneck (8 features)."""
    return serial(Dense(8), Tanh(),
                  residual(serial(Dense(8), Gelu(), Dense(8))),
                  residual(serial(Dense(8), Gelu(approximate=False))),
                  Softmax(), Dense(outputs))


def branches_mlp(outputs: int = 10) -> Layer:
    """Branches on one input merged by concatenation (one with dropout) and by sum (8
    features): the inception block's shape, as a small MLP."""
    return serial(branches(Dense(6), serial(Dense(4), Tanh()), serial(Dropout(0.2), Dense(3))),
                  Relu(),
                  branches(Dense(8), serial(Dense(8), Sigmoid()), merge="sum"),
                  Dense(outputs))


class Entry(NamedTuple):
    """A zoo model: its builder `build(outputs) -> Layer` and the shape of one input example."""

    build: Callable[[int], Layer]
    example_shape: Shape
    description: str


MODELS: dict[str, Entry] = {
    "xor_sigmoid": Entry(xor_sigmoid, (2,), "2-3-2-1 sigmoid MLP of the XOR tutorial"),
    "mlp": Entry(mlp, (8,), "ReLU/LeakyReLU/PReLU MLP with batch norm and dropout"),
    "cnn": Entry(cnn, (8, 8, 2), "CNN with conv, batch norm, max/avg pooling, ELU, flatten"),
    "residual": Entry(residual_mlp, (8,), "residual blocks with tanh, GELU and softmax"),
    "branches": Entry(branches_mlp, (8,), "branches merged by concat (with dropout) and sum"),
}


def example_batch(name: str, batch: int, outputs: int, targets: str,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random input batch for zoo model `name`, with targets of the given kind.

    Args:
        name: a key of `MODELS`.
        batch: the batch size.
        outputs: the model's number of outputs.
        targets: `"regression"` (float `(batch, outputs)`), `"binary"` (0/1 floats
            `(batch,)`, for one output) or `"classes"` (ints in `[0, outputs)`, `(batch,)`).
        seed: the NumPy seed.

    Returns:
        `(x, y)` as float32 / NumPy arrays.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *MODELS[name].example_shape)).astype(np.float32)
    if targets == "regression":
        y = rng.normal(size=(batch, outputs)).astype(np.float32)
    elif targets == "binary":
        y = rng.integers(0, 2, size=batch).astype(np.float32)
    elif targets == "classes":
        y = rng.integers(0, outputs, size=batch).astype(np.int32)
    else:
        raise ValueError(f"targets must be 'regression', 'binary' or 'classes', got {targets!r}")
    return x, y
