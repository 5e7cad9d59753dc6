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
    GRU,
    LSTM,
    AvgPool1D,
    AvgPool2D,
    BatchNorm,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Elu,
    Embedding,
    Flatten,
    Gelu,
    GlobalAvgPool,
    GlobalMaxPool,
    LayerNorm,
    LeakyRelu,
    MaxPool1D,
    MaxPool2D,
    MultiHeadAttention,
    PositionalEmbedding,
    PRelu,
    Relu,
    Sigmoid,
    SimpleRNN,
    Softmax,
    Tanh,
    bidirectional,
    branches,
    residual,
    serial,
)
from jdnn.padded import Padded


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


VOCAB = 11   # the token models' vocabulary


def recurrent(outputs: int = 10) -> Layer:
    """A sequence model on padded batches: a causal 1-D convolution, GRU, a reversed LSTM, a
    bidirectional simple RNN, 1-D average pooling, layer norm and global average pooling over
    the real steps (inputs: 8 steps of 3 features). Max pools sit in `transformer`: their
    kinks, taken through three recurrences, are too small for the finite differences' kink
    detector and too large for their 1e-6 tolerance."""
    return serial(Conv1D(6, 3, padding="CAUSAL"), Tanh(), GRU(5), LSTM(4, reverse=True),
                  bidirectional(SimpleRNN(3)), AvgPool1D(2, padding="SAME"), LayerNorm(),
                  GlobalAvgPool(), Dense(outputs))


def transformer(outputs: int = 10) -> Layer:
    """A one-block transformer on padded token ids: embedding, learned positions, pre-norm
    causal self-attention and a GELU feed-forward block, each residual, then 1-D max pooling
    and mean and max pooling over the real steps (inputs: 6 token ids below `VOCAB`)."""
    return serial(Embedding(VOCAB, 8), PositionalEmbedding(6),
                  residual(serial(LayerNorm(), MultiHeadAttention(2, 4, causal=True))),
                  residual(serial(LayerNorm(), Dense(16), Gelu(), Dense(8))),
                  LayerNorm(), MaxPool1D(2, padding="SAME"),
                  branches(GlobalAvgPool(), GlobalMaxPool()), Dense(outputs))


class Entry(NamedTuple):
    """A zoo model: its builder `build(outputs) -> Layer`, the shape of one input example, and
    what its inputs are: `"features"` (floats) or `"ids"` (token ids below `VOCAB`), as a plain
    batch or, with `padded`, a `jdnn.Padded` batch of sequences of random lengths."""

    build: Callable[[int], Layer]
    example_shape: Shape
    description: str
    inputs: str = "features"
    padded: bool = False


MODELS: dict[str, Entry] = {
    "xor_sigmoid": Entry(xor_sigmoid, (2,), "2-3-2-1 sigmoid MLP of the XOR tutorial"),
    "mlp": Entry(mlp, (8,), "ReLU/LeakyReLU/PReLU MLP with batch norm and dropout"),
    "cnn": Entry(cnn, (8, 8, 2), "CNN with conv, batch norm, max/avg pooling, ELU, flatten"),
    "residual": Entry(residual_mlp, (8,), "residual blocks with tanh, GELU and softmax"),
    "branches": Entry(branches_mlp, (8,), "branches merged by concat (with dropout) and sum"),
    "recurrent": Entry(recurrent, (8, 3), "Conv1D, GRU, LSTM, bidirectional RNN, 1-D and global "
                       "average pools on padded sequences", padded=True),
    "transformer": Entry(transformer, (6,), "embedding, positions, causal attention, layer "
                         "norm, feed-forward, max pools on padded token ids", inputs="ids",
                         padded=True),
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
        `(x, y)` as NumPy arrays: x float32 features or int32 ids, a `jdnn.Padded` of those
        with lengths from 1 to the full length (the first example full) for a padded model.
    """
    rng = np.random.default_rng(seed)
    entry = MODELS[name]
    shape = (batch, *entry.example_shape)
    x = (rng.integers(0, VOCAB, size=shape).astype(np.int32) if entry.inputs == "ids"
         else rng.normal(size=shape).astype(np.float32))
    if entry.padded:
        lengths = rng.integers(1, shape[1] + 1, size=batch).astype(np.int32)
        lengths[0] = shape[1]
        x = Padded(x, lengths)
    if targets == "regression":
        y = rng.normal(size=(batch, outputs)).astype(np.float32)
    elif targets == "binary":
        y = rng.integers(0, 2, size=batch).astype(np.float32)
    elif targets == "classes":
        y = rng.integers(0, outputs, size=batch).astype(np.int32)
    else:
        raise ValueError(f"targets must be 'regression', 'binary' or 'classes', got {targets!r}")
    return x, y
