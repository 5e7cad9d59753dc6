"""jdnn's layers by hand, in NumPy: for every layer kind a `forward` and a `backward`.

Every kind obeys one pair of signatures:

    forward(params, x, **hparams) -> (y, cache)
    backward(params, cache, dy)   -> (dx, dparams)

`params` is the dict the JAX layer's `init` returns, as NumPy arrays (`{}` for parameter-free
layers); `dparams` has exactly its keys and shapes. `hparams` are keyword-only and named as in
the layer's spec, e.g. `conv.forward(params, x, strides=(1, 1), padding="SAME")`; each forward
takes only the ones its math needs (`inspect.signature(KINDS[kind].forward)` lists them).
Two kinds take inputs that are not hyper-parameters: Dropout's `keep_mask` (the caller's mask,
or None at evaluation) and BatchNorm's `state` and `train`; BatchNorm's forward is also the one
that returns three values, `(y, cache, new_state)`.

`KINDS` maps each spec kind to its pair, e.g. `KINDS["Dense"] is dense` and
`KINDS["Relu"] is activations.relu`; each value has `.forward` and `.backward`.

Examples:
    >>> y, cache = KINDS["Dense"].forward({"w": w, "b": b}, x)
    >>> dx, dparams = KINDS["Dense"].backward({"w": w, "b": b}, cache, dy)

Nothing here imports JAX or jdnn's JAX code: the reference checks jdnn, so it shares no code
with it.
"""

from jdnn.reference.layers import (
    activations,
    attention,
    conv,
    conv1d,
    dense,
    dropout,
    embedding,
    normalization,
    pooling,
    recurrent,
    reshape,
)

KINDS = {
    "Dense": dense,
    "Conv2D": conv,
    "MaxPool2D": pooling.max_pool,
    "AvgPool2D": pooling.avg_pool,
    "Flatten": reshape,
    "Dropout": dropout,
    "BatchNorm": normalization,
    "LayerNorm": normalization.layer_norm,
    "Embedding": embedding.lookup,
    "PositionalEmbedding": embedding.positional,
    "Relu": activations.relu,
    "Sigmoid": activations.sigmoid,
    "Tanh": activations.tanh,
    "LeakyRelu": activations.leaky_relu,
    "PRelu": activations.prelu,
    "Elu": activations.elu,
    "Gelu": activations.gelu,
    "Softmax": activations.softmax,
    "MultiHeadAttention": attention,
    "Conv1D": conv1d,
    "MaxPool1D": pooling.max_pool_1d,
    "AvgPool1D": pooling.avg_pool_1d,
    "GlobalAvgPool": pooling.global_avg_pool,
    "GlobalMaxPool": pooling.global_max_pool,
    "SimpleRNN": recurrent.simple_rnn,
    "GRU": recurrent.gru,
    "LSTM": recurrent.lstm,
}

__all__ = ["KINDS", "activations", "attention", "conv", "conv1d", "dense", "dropout",
           "embedding", "normalization", "pooling", "recurrent", "reshape"]
