"""jdnn: a functional deep-neural-network library for JAX.

A model is data plus pure functions: `Layer(init, apply, spec)`. Parameters, state, random keys
and optimizer state go in as arguments and come out as results, so `jax.grad`, `jax.jit`,
`jax.vmap` and sharding compose with every layer. See `jdnn.core` for the contract.
"""

from jdnn import data, losses, metrics, reference, regularizers
from jdnn.core import Layer, LayerError, Spec
from jdnn.gradcheck import GradReport, check_gradients
from jdnn.layers import (AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Elu, Flatten, Gelu,
                         LeakyRelu, MaxPool2D, PRelu, Relu, Sigmoid, Softmax, Tanh, residual,
                         serial)
from jdnn.regularizers import freeze
from jdnn.train import (Callback, CSVLogger, EarlyStopping, History, JSONLogger, ModelCheckpoint,
                        ReduceLROnPlateau, TerminateOnNaN, TrainState, evaluate, fit,
                        make_eval_step, make_train_step, predict)

from jdnn import checkpoint  # noqa: E402  (after train: checkpoints hold a TrainState)

__version__ = "0.1.0"

__all__ = [
    "AvgPool2D", "BatchNorm", "CSVLogger", "Callback", "Conv2D", "Dense", "Dropout",
    "EarlyStopping", "Elu", "Flatten", "Gelu", "GradReport", "History", "JSONLogger", "Layer",
    "LayerError", "LeakyRelu", "MaxPool2D", "ModelCheckpoint", "PRelu", "ReduceLROnPlateau",
    "Relu", "Sigmoid", "Softmax", "Spec", "Tanh", "TerminateOnNaN", "TrainState",
    "__version__", "check_gradients", "checkpoint", "data", "evaluate", "fit", "freeze",
    "losses", "make_eval_step", "make_train_step", "metrics", "predict", "reference",
    "regularizers", "residual", "serial",
]
