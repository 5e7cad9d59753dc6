"""What a `Config` names, made: the dataset (`load`) and the model's output width (`outputs_of`),
the loss and metrics (`objective`), the model (`build`: the MLP or CNN, or the GRU or transformer
for the sequence datasets) and the optax optimizer (`make_optimizer`). Each is a library call a
user could make; this module only chooses them.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from jdnn import data, losses
from jdnn.cli.config import MODELS, OPTIMIZERS, Config, check_fits
from jdnn.core import Layer
from jdnn.layers import (BatchNorm, Conv2D, Dense, Dropout, Embedding, Flatten, Gelu,
                         GlobalAvgPool, LayerNorm, MaxPool2D, MultiHeadAttention,
                         PositionalEmbedding, Relu, residual, serial)
from jdnn.layers.recurrent import GRU

# The sequence datasets' fixed sizes (the command line has no option for them):
# chars: next-character prediction on windows of Python stdlib source (`jdnn.data.text`);
# adding: the adding problem's sum of two marked numbers (`jdnn.data.adding_problem`).
CHARS, CHAR_WINDOW = 100_000, 64        # corpus characters, characters per window
ADDING_N, ADDING_LENGTH = 2000, 50      # examples (train and test), steps per sequence
# The sequence models' sizes: the GRU's state; the transformer's width, heads and blocks.
GRU_FEATURES, EMBED_FEATURES = 128, 64
D_MODEL, HEADS, BLOCKS = 64, 4, 2


def load(config: Config) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The dataset: images in NHWC for the CNN and integer class labels; for `chars` windows
    of character ids `(N, CHAR_WINDOW)` and the next character at every step; for `adding`
    sequences `(N, ADDING_LENGTH, 2)` and float sums `(N, 1)`.

    Raises:
        ValueError: for an unknown dataset, one the model cannot read (`check_fits`), or
            mnist/fashion-mnist without `data_dir`.
    """
    name = config.dataset
    check_fits(config.model, name)
    if name == "chars":
        text = data.text.python_corpus(CHARS)
        return data.text.char_windows(text, data.text.Vocabulary.of(text), CHAR_WINDOW)
    if name == "adding":
        return data.adding_problem(ADDING_N, ADDING_LENGTH, seed=config.seed)
    if name == "digits":
        layout = "nhwc" if config.model == "cnn" else "flat"
        (x, y), (xt, yt) = data.digits(layout=layout, seed=config.seed)
    elif name in ("mnist", "fashion-mnist"):
        if config.data_dir is None:
            raise ValueError(f"--dataset {name} reads IDX files from --data-dir; fetch them once "
                             f"with jdnn.data.download_mnist(DIR)")
        loader = data.load_mnist if name == "mnist" else data.load_fashion_mnist
        (x, y), (xt, yt) = loader(config.data_dir)
    elif name == "xor":
        (x, y), (xt, yt) = data.xor(repeat=16)
    else:
        (x, y), (xt, yt) = data.moons(seed=config.seed)
    return (x, y.astype(np.int32)), (xt, yt.astype(np.int32))


def outputs_of(config: Config, train_data, test_data) -> int:
    """The model's output width: 1 for `adding`, else the number of classes (for `chars`, of
    character ids, inputs included)."""
    if config.dataset == "adding":
        return 1
    arrays = (*train_data, *test_data) if config.dataset == "chars" else (train_data[1],
                                                                          test_data[1])
    return int(max(np.max(a) for a in arrays)) + 1


def step_accuracy(logits, labels, mask=None):
    """The accuracy of next-character predictions: per example the fraction of steps whose
    argmax is the label (`logits (B, T, C)`, `labels (B, T)`), averaged over the examples
    `mask` keeps. (`jdnn.metrics.accuracy` takes one prediction per example, `(B, C)`.)"""
    correct = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32), axis=1)
    return losses.masked_mean(correct, mask)


def objective(config: Config) -> tuple[losses.Loss, Any]:
    """`(loss, metrics)` for the dataset: the mean squared error alone for `adding`, per-step
    softmax cross-entropy with `step_accuracy` for `chars`, else softmax cross-entropy with
    its default metric (accuracy)."""
    if config.dataset == "adding":
        return losses.mse, None
    if config.dataset == "chars":
        return losses.softmax_cross_entropy, {"accuracy": step_accuracy}
    return losses.softmax_cross_entropy, None


def _transformer_blocks(causal: bool) -> list[Layer]:
    """`BLOCKS` pre-norm blocks: `x + attention(LayerNorm(x))`, `x + MLP(LayerNorm(x))`."""
    def block():
        attend = serial(LayerNorm(), MultiHeadAttention(HEADS, D_MODEL // HEADS, causal=causal))
        mlp = serial(LayerNorm(), Dense(4 * D_MODEL), Gelu(), Dense(D_MODEL))
        return serial(residual(attend), residual(mlp))

    return [block() for _ in range(BLOCKS)]


def build_sequence_model(config: Config, outputs: int) -> Layer:
    """The GRU or the transformer for `chars` (a language model: a prediction at every step,
    the transformer causal) or `adding` (one prediction per sequence: the GRU's last state,
    the transformer's mean over steps), with dropout before the head."""
    drop = [Dropout(config.dropout)] if config.dropout else []
    if config.batch_norm:
        own = ("normalizes with its own LayerNorms" if config.model == "transformer"
               else "has no normalization layers")
        raise ValueError(f"--batch-norm applies to --model mlp and cnn; --model {config.model} "
                         f"{own}")
    chars = config.dataset == "chars"
    if config.model == "gru":
        embed = [Embedding(outputs, EMBED_FEATURES)] if chars else []
        return serial(*embed, GRU(GRU_FEATURES, return_sequences=chars), *drop, Dense(outputs))
    steps = CHAR_WINDOW if chars else ADDING_LENGTH
    embed = Embedding(outputs, D_MODEL) if chars else Dense(D_MODEL)
    pool = [] if chars else [GlobalAvgPool()]
    return serial(embed, PositionalEmbedding(steps), *_transformer_blocks(causal=chars),
                  LayerNorm(), *pool, *drop, Dense(outputs))


def build(config: Config, classes: int) -> Layer:
    """The MLP (256 ReLU units, or 16-16 for the 2-D toys) or the CNN (conv32-pool-conv64-pool-
    dense128), with optional batch norm after each hidden layer and dropout before the head;
    the sequence models by `build_sequence_model` (`classes` is then the output width)."""
    if config.model in ("gru", "transformer"):
        return build_sequence_model(config, classes)
    norm = [BatchNorm()] if config.batch_norm else []
    drop = [Dropout(config.dropout)] if config.dropout else []
    if config.model == "mlp":
        widths = (16, 16) if config.dataset in ("xor", "moons") else (256,)
        hidden = [layer for w in widths
                  for layer in (Dense(w, w_init="he_normal"), *norm, Relu())]
        return serial(Flatten(), *hidden, *drop, Dense(classes))
    if config.model == "cnn":
        return serial(Conv2D(32, 3, w_init="he_normal"), *norm, Relu(), MaxPool2D(2),
                      Conv2D(64, 3, w_init="he_normal"), *norm, Relu(), MaxPool2D(2),
                      Flatten(), Dense(128, w_init="he_normal"), Relu(), *drop, Dense(classes))
    raise ValueError(f"unknown model {config.model!r}; choose from {MODELS}")


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """The optax optimizer named in the config."""
    choices = {"sgd": lambda: optax.sgd(config.lr),
               "momentum": lambda: optax.sgd(config.lr, momentum=0.9),
               "adam": lambda: optax.adam(config.lr),
               "rmsprop": lambda: optax.rmsprop(config.lr)}
    if config.optimizer not in choices:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from {OPTIMIZERS}")
    return choices[config.optimizer]()
