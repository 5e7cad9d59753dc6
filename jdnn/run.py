"""The main job behind `jdnn train`: a built-in model on a built-in dataset, trained with `fit`
and written into a run directory (configuration, history, final checkpoint, pictures).

Every step is a library call a user could make; this module only chooses and wires them.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import numpy as np
import optax

from jdnn import checkpoint, data, io, losses, regularizers
from jdnn.core import Layer
from jdnn.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Relu, serial
from jdnn.train import EarlyStopping, PrintLogger, TerminateOnNaN, evaluate, fit

DATASETS = ("digits", "xor", "moons", "mnist", "fashion-mnist")
MODELS = ("mlp", "cnn")
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on; saved as `config.json` in the run directory."""

    model: str = "mlp"
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    l1: float = 0.0
    l2: float = 0.0
    dropout: float = 0.0
    batch_norm: bool = False
    early_stopping: int | None = None
    seed: int = 0
    out: str | None = None
    resume: str | None = None
    progress: bool = True


def load(config: Config) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The dataset, with images in NHWC for the CNN and integer class labels."""
    name = config.dataset
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
    elif name == "moons":
        (x, y), (xt, yt) = data.moons(seed=config.seed)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    if config.model == "cnn" and x.ndim != 4:
        raise ValueError(f"--model cnn needs images; {name} has inputs of shape {x.shape[1:]}: "
                         f"use --model mlp")
    return (x, y.astype(np.int32)), (xt, yt.astype(np.int32))


def build(config: Config, classes: int) -> Layer:
    """The MLP (256 ReLU units, or 16-16 for the 2-D toys) or the CNN (conv32-pool-conv64-pool-
    dense128), with optional batch norm after each hidden layer and dropout before the head."""
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


def run_directory(config: Config) -> pathlib.Path:
    """`--out`, or `runs/<model>-<dataset>-<time>`."""
    if config.out:
        return pathlib.Path(config.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return pathlib.Path("runs") / f"{config.model}-{config.dataset}-{stamp}"


def train(config: Config, log=print) -> dict[str, Any]:
    """Runs the job; returns a summary (test loss and accuracy, paths, epochs, seconds).

    Writes into the run directory: `config.json`, `history.json`, `final.safetensors` (the
    trained state, resumable with `--resume`), `curves.png` (and `boundary.png` for 2-D data)
    and `summary.json`.
    """
    began = time.perf_counter()
    (x, y), (x_test, y_test) = load(config)
    classes = int(max(y.max(), y_test.max())) + 1
    model = build(config, classes)
    optimizer = make_optimizer(config)
    out = run_directory(config)
    out.mkdir(parents=True, exist_ok=True)
    io.write_text(out / "config.json", json.dumps(dataclasses.asdict(config), indent=2))
    log(f"jdnn train: {config.model} on {config.dataset} ({len(x)} train, {len(x_test)} test "
        f"examples of shape {x.shape[1:]}, {classes} classes) -> {out}")
    log(f"model: {model.spec}")

    train_state = None
    if config.resume:
        train_state = checkpoint.restore(config.resume, model).train_state(optimizer)
        log(f"resumed from {config.resume} at step {int(train_state.step)}")
    penalty = (regularizers.penalty(l1=config.l1, l2=config.l2)
               if config.l1 or config.l2 else None)
    callbacks = [TerminateOnNaN(), PrintLogger(log if log is not print else None)]
    if config.early_stopping is not None:
        callbacks.append(EarlyStopping("val_loss", patience=config.early_stopping))
    loss = losses.softmax_cross_entropy
    train_state, history = fit(
        model, (x, y), loss=loss, optimizer=optimizer, epochs=config.epochs,
        batch_size=config.batch_size, key=jax.random.key(config.seed),
        validation_data=(x_test, y_test), penalty=penalty, callbacks=callbacks,
        progress=config.progress, train_state=train_state)
    history.to_json(out / "history.json")
    from jdnn import viz  # matplotlib only when a run is written

    plots = viz.save_run_plots(out, history, model=model, train_state=train_state,
                               data=(x_test, y_test))
    checkpoint.save(out / "final.safetensors", train_state, model,
                    metadata={"config": dataclasses.asdict(config)})
    test = evaluate(model, train_state, (x_test, y_test), loss=loss)
    summary = {"test_loss": test["loss"], "test_accuracy": test["accuracy"],
               "epochs": len(history), "seconds": time.perf_counter() - began,
               "run_directory": str(out), "checkpoint": str(out / "final.safetensors"),
               "plots": [str(p) for p in plots]}
    io.write_text(out / "summary.json", json.dumps(summary, indent=2))
    log(f"test accuracy {test['accuracy']:.4f} (test loss {test['loss']:.4f}) after "
        f"{len(history)} epochs in {summary['seconds']:.1f}s; wrote {out}")
    return summary
