"""jdnn: a functional deep-neural-network library for JAX.

A model is data plus pure functions: `Layer(init, apply, spec)`. Parameters, state, random keys
and optimizer state go in as arguments and come out as results, so `jax.grad`, `jax.jit`,
`jax.vmap` and sharding compose with every layer. See `jdnn.core` for the contract.
"""

from jdnn import data, losses, metrics, reference, regularizers
from jdnn.core import Layer, LayerError, MissingKeyError, Spec
from jdnn.gradcheck import GradReport, check_gradients
from jdnn.layers import (AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Elu, Flatten, Gelu,
                         LeakyRelu, MaxPool2D, PRelu, Relu, Sigmoid, Softmax, Tanh, residual,
                         serial)
from jdnn.regularizers import freeze
from jdnn.train import (Callback, CSVLogger, EarlyStopping, History, JSONLogger, ModelCheckpoint,
                        PrintLogger, ReduceLROnPlateau, TerminateOnNaN, TrainState, evaluate, fit,
                        make_eval_step, make_train_step, predict)

from jdnn import checkpoint, parallel  # noqa: E402  (both build on jdnn.train)
from jdnn.ghost import ghost_clipped_grad  # noqa: E402
from jdnn.dp import make_dp_train_step  # noqa: E402
from jdnn.vectorize import PerExampleAux, clip_and_aggregate, per_example_grads  # noqa: E402
from jdnn.ensemble import evaluate_ensemble, fit_ensemble, predict_ensemble  # noqa: E402
from jdnn import space  # noqa: E402
from jdnn.search import SearchResult, search  # noqa: E402  (jdnn.search: the function)

__version__ = "0.1.0"

__all__ = [
    "__version__", "AvgPool2D", "BatchNorm", "Callback", "check_gradients", "checkpoint",
    "clip_and_aggregate", "Conv2D", "CSVLogger", "data", "Dense", "Dropout", "EarlyStopping",
    "Elu", "evaluate", "evaluate_ensemble", "fit", "fit_ensemble", "Flatten", "freeze", "Gelu",
    "ghost_clipped_grad", "GradReport", "History", "JSONLogger", "Layer", "LayerError",
    "LeakyRelu", "losses", "make_dp_train_step", "make_eval_step", "make_train_step",
    "MaxPool2D", "metrics", "MissingKeyError", "ModelCheckpoint", "parallel",
    "per_example_grads", "PerExampleAux", "predict", "predict_ensemble", "PRelu", "PrintLogger",
    "ReduceLROnPlateau", "reference", "regularizers", "Relu", "residual", "search",
    "SearchResult", "serial", "Sigmoid", "Softmax", "space", "Spec", "Tanh", "TerminateOnNaN",
    "TrainState",
]
