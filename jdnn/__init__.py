"""jdnn: a functional deep-neural-network library for JAX.

A model is data plus pure functions: `Layer(init, apply, spec)`. Parameters, state, random keys
and optimizer state go in as arguments and come out as results, so `jax.grad`, `jax.jit`,
`jax.vmap` and sharding compose with every layer. See `jdnn.core` for the contract.
"""

import sys as _sys

from jdnn import data, losses, metrics, reference, regularizers
from jdnn.core import Layer, LayerError, MissingKeyError, Spec, make_spec, register_layer, walk
from jdnn.gradcheck import GradReport, check_gradients
from jdnn.padded import Padded, sequence_mask
from jdnn.layers import (AvgPool2D, BatchNorm, Conv2D, branches, Dense, Dropout, Elu, Embedding,
                         Flatten, Gelu, LayerNorm, LeakyRelu, MaxPool2D, MultiHeadAttention,
                         PositionalEmbedding, PRelu, Relu, Sigmoid, Softmax, Tanh, residual,
                         serial,
                         AvgPool1D, Conv1D, GlobalAvgPool, GlobalMaxPool, MaxPool1D,
                         bidirectional, GRU, LSTM, SimpleRNN)
from jdnn.regularizers import freeze
from jdnn.train import (Callback, CSVLogger, EarlyStopping, History, JSONLogger, Precision,
                        PrintLogger, ReduceLROnPlateau, TerminateOnNaN, TrainState, evaluate, fit,
                        make_eval_step, make_train_step, predict)

from jdnn import checkpoint, distributed, parallel, sharding  # noqa: E402  (on jdnn.train)
from jdnn.checkpoint import ModelCheckpoint  # noqa: E402
from jdnn import multi, privacy  # noqa: E402
from jdnn.multi import (SearchResult, evaluate_ensemble, fit_ensemble,  # noqa: E402
                        predict_ensemble, search)
from jdnn.multi import space  # noqa: E402
from jdnn.privacy import (PerExampleAux, clip_and_aggregate, ghost_clipped_grad,  # noqa: E402
                          make_dp_train_step, per_example_grads)
from jdnn.summarize import summary  # noqa: E402
from jdnn import compress, explain  # noqa: E402  (both build on jdnn.train; no optional extra)

# Modules that moved keep their old import paths (`from jdnn.vectorize import ...`). The old
# `jdnn.summary` and `jdnn.search` modules are reachable only by import: the attributes
# `jdnn.summary` and `jdnn.search` are the functions.
_sys.modules.update({
    "jdnn.vectorize": privacy.per_example, "jdnn.ghost": privacy.ghost, "jdnn.dp": privacy.dp,
    "jdnn.ensemble": multi.ensemble, "jdnn.search": multi.tuning, "jdnn.space": multi.space,
    "jdnn.train.members": multi.members, "jdnn.summary": _sys.modules["jdnn.summarize"],
})

__version__ = "0.1.0"

# Submodules imported on first use, so `import jdnn` pulls in neither matplotlib nor flax, nor
# jax.export's serialization for those who never export.
_LAZY = ("cli", "export", "interop", "viz")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return importlib.import_module(f"jdnn.{name}")
    raise AttributeError(f"module 'jdnn' has no attribute {name!r}")

__all__ = [
    "__version__", "AvgPool2D", "BatchNorm", "branches", "Callback", "check_gradients",
    "checkpoint", "clip_and_aggregate", "compress", "Conv2D", "CSVLogger", "data", "Dense",
    "Dropout", "EarlyStopping", "Elu", "Embedding", "evaluate", "evaluate_ensemble", "explain",
    "fit", "fit_ensemble",
    "Flatten", "freeze", "Gelu", "ghost_clipped_grad", "GradReport", "History", "JSONLogger",
    "Layer", "LayerError", "LayerNorm", "LeakyRelu", "losses", "make_dp_train_step",
    "make_eval_step", "make_spec", "make_train_step", "MaxPool2D", "metrics", "MissingKeyError",
    "ModelCheckpoint", "multi", "MultiHeadAttention", "Padded", "parallel", "per_example_grads",
    "PerExampleAux", "Precision", "distributed", "sharding",
    "PositionalEmbedding", "predict", "predict_ensemble", "PRelu", "PrintLogger", "privacy",
    "ReduceLROnPlateau", "reference", "register_layer",
    "regularizers", "Relu", "residual", "search", "SearchResult", "serial", "Sigmoid",
    "sequence_mask", "Softmax", "space", "Spec", "summary", "Tanh", "TerminateOnNaN",
    "TrainState", "walk",
    "AvgPool1D", "Conv1D", "GlobalAvgPool", "GlobalMaxPool", "MaxPool1D",
    "bidirectional", "GRU", "LSTM", "SimpleRNN",
]
