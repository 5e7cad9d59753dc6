"""The main job behind `jdnn train`: a built-in model on a built-in dataset, trained with `fit`
and written into a run directory (configuration, history, checkpoints, pictures).

Every step is a library call a user could make; this module only chooses and wires them. A run
loses nothing: `ModelCheckpoint` saves into `<run>/checkpoints/` on a schedule, SIGINT and
SIGTERM stop `fit` gracefully (it hands back the last completed epoch, which is saved), and
`--resume` continues a run directory or a checkpoint file up to the run's total `--epochs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdnn import checkpoint, data, io, losses, parallel, regularizers
from jdnn.core import Layer
from jdnn.data.batching import num_batches
from jdnn.layers import (BatchNorm, Conv2D, Dense, Dropout, Embedding, Flatten, Gelu,
                         GlobalAvgPool, LayerNorm, MaxPool2D, MultiHeadAttention,
                         PositionalEmbedding, Relu, residual, serial)
from jdnn.layers.recurrent import GRU
from jdnn.checkpoint import ModelCheckpoint
from jdnn.train import (Callback, EarlyStopping, History, PrintLogger, TerminateOnNaN, evaluate,
                        fit)

DATASETS = ("digits", "xor", "moons", "mnist", "fashion-mnist", "chars", "adding")
MODELS = ("mlp", "cnn", "gru", "transformer")
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")

# Which models fit which datasets, and what each model reads. `load` refuses the other pairs.
FITS = {"mlp": ("digits", "xor", "moons", "mnist", "fashion-mnist"),
        "cnn": ("digits", "mnist", "fashion-mnist"),
        "gru": ("chars", "adding"),
        "transformer": ("chars", "adding")}
READS = {"mlp": "vectors or images", "cnn": "images", "gru": "sequences",
         "transformer": "sequences"}
# The sequence datasets' fixed sizes (the command line has no option for them):
# chars: next-character prediction on windows of Python stdlib source (`jdnn.data.text`);
# adding: the adding problem's sum of two marked numbers (`jdnn.data.adding_problem`).
CHARS, CHAR_WINDOW = 100_000, 64        # corpus characters, characters per window
ADDING_N, ADDING_LENGTH = 2000, 50      # examples (train and test), steps per sequence
# The sequence models' sizes: the GRU's state; the transformer's width, heads and blocks.
GRU_FEATURES, EMBED_FEATURES = 128, 64
D_MODEL, HEADS, BLOCKS = 64, 4, 2


# The numeric options' valid ranges: (kind, what is expected, test). The CLI checks them as it
# parses (`jdnn train --lr nan` is a usage error), `Config` when it is built.
RULES = {
    "lr": (float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0),
    "l1": (float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0),
    "l2": (float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0),
    "dropout": (float, "a rate in [0, 1)", lambda v: 0 <= v < 1),
    "epochs": (int, "an int >= 1", lambda v: v >= 1),
    "batch_size": (int, "an int >= 1", lambda v: v >= 1),
    "early_stopping": (int, "an int >= 0 (epochs of patience)", lambda v: v >= 0),
    "checkpoint_every": (int, "an int >= 1 (epochs)", lambda v: v >= 1),
    "keep_checkpoints": (int, "an int >= 1", lambda v: v >= 1),
    "seed": (int, "an int >= 0", lambda v: v >= 0),
}
# What a run directory holds; a directory with any of these is a run, never overwritten.
RUN_FILES = ("config.json", "history.json", "summary.json", "final.safetensors", "checkpoints")


def check_option(name: str, value: Any) -> Any:
    """`value` if it is valid for the numeric option `name` (see `RULES`), else a `ValueError`
    such as `"lr must be a finite number > 0, got nan"`."""
    kind, expected, test = RULES[name]
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and (kind is float or isinstance(value, int)) and test(value))
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on; saved as `config.json` in the run directory.

    `epochs` is the run's total: a resumed run trains the epochs its checkpoint has not done
    yet, as Keras's `initial_epoch` does. The numeric fields are checked (`RULES`).
    """

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
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    out: str | None = None
    resume: str | None = None
    progress: bool = True
    distributed: bool = False   # data parallel over every process's devices

    def __post_init__(self):
        for name in RULES:
            value = getattr(self, name)
            if value is not None:
                try:
                    check_option(name, value)
                except ValueError as error:
                    raise ValueError(f"Config: {error}") from None


def check_fits(model: str, dataset: str) -> None:
    """Refuses (`ValueError`) a model that cannot read a dataset, naming the ones that can."""
    if model not in FITS:
        raise ValueError(f"unknown model {model!r}; choose from {MODELS}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
    if dataset not in FITS[model]:
        fitting = [m for m in MODELS if dataset in FITS[m]]
        raise ValueError(f"--model {model} needs {READS[model]} ({', '.join(FITS[model])}); "
                         f"for --dataset {dataset} use --model {' or '.join(fitting)}")


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


# Options a resumed run takes from its run directory's config.json unless given again.
INHERITED = ("model", "dataset", "data_dir", "epochs", "batch_size", "optimizer", "lr", "l1",
             "l2", "dropout", "batch_norm", "early_stopping", "seed", "checkpoint_every",
             "keep_checkpoints")


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where `--resume PATH` continues from: the checkpoint file, and the run directory it
    belongs to (None for a loose file)."""

    checkpoint: pathlib.Path
    run_dir: pathlib.Path | None


def _run_dir_of(folder: pathlib.Path) -> pathlib.Path | None:
    return folder if (folder / "config.json").is_file() else None


def find_resume(path: str | pathlib.Path) -> Resume:
    """Resolves `--resume PATH`: a run directory (its newest checkpoint in `checkpoints/`, by
    `ModelCheckpoint.latest`, else its `final.safetensors`), a `checkpoints/` folder, or a
    checkpoint file (whose run directory is the folder holding it or, for a file in
    `checkpoints/`, the one above).

    Raises:
        FileNotFoundError: if `path` does not exist or a directory holds no checkpoint.
    """
    path = pathlib.Path(path)
    if path.is_file():
        parent = path.parent
        run_dir = _run_dir_of(parent) or (_run_dir_of(parent.parent)
                                          if parent.name == "checkpoints" else None)
        return Resume(path, run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {path}: no such file or directory; give a run "
                                f"directory or a checkpoint file")
    if path.name == "checkpoints" and _run_dir_of(path.parent):
        path = path.parent
    found = ModelCheckpoint.latest(path / "checkpoints") if (path / "checkpoints").is_dir() \
        else None
    if found is None and (path / "final.safetensors").is_file():
        found = path / "final.safetensors"
    if found is None:
        raise FileNotFoundError(f"--resume {path}: the directory holds no checkpoint "
                                f"(checkpoints/epoch-*.safetensors or final.safetensors)")
    return Resume(found, _run_dir_of(path))


def resolve_config(options: dict[str, Any]) -> Config:
    """The `Config` of a run from the options given on the command line (None = not given):
    with `resume` naming a run directory, its `config.json` supplies every option in
    `INHERITED` that is not given; `Config`'s defaults the rest, except that without `--model`
    a dataset the default model cannot read gets the first model that can (`chars` -> gru)."""
    given = {k: v for k, v in options.items() if v is not None}
    base: dict[str, Any] = {}
    if given.get("resume"):
        resume = find_resume(given["resume"])
        if resume.run_dir is not None:
            saved = json.loads((resume.run_dir / "config.json").read_text())
            base = {k: saved[k] for k in INHERITED if k in saved}
    merged = {**base, **given}
    dataset = merged.get("dataset", Config.dataset)
    if "model" not in merged and dataset in DATASETS and dataset not in FITS[Config.model]:
        # no --model for a dataset the default model cannot read: the first model that can
        merged["model"] = next(m for m in MODELS if dataset in FITS.get(m, ()))
    return Config(**merged)


def check_fresh(out: pathlib.Path) -> None:
    """Refuses (`ValueError`) an `--out` that is an existing file or already holds a run."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file, not a directory; choose a new "
                         f"directory for the run")
    taken = [name for name in RUN_FILES if (out / name).exists()]
    if taken:
        raise ValueError(f"--out {out} already holds a run ({', '.join(taken)}); it is never "
                         f"overwritten: choose a new directory, or continue that run with "
                         f"jdnn train --resume {out}")


def run_directory(config: Config, resume: Resume | None = None) -> tuple[pathlib.Path, bool]:
    """`(directory, continuing)`: `--out` (which must be fresh, unless it is the resumed run's
    own directory), else the resumed run's directory (continued in place), else a fresh
    `runs/<model>-<dataset>-<time>`."""
    own = resume.run_dir if resume is not None else None
    if config.out:
        out = pathlib.Path(config.out)
        if own is not None and out.resolve() == own.resolve():
            return own, True
        check_fresh(out)
        return out, False
    if own is not None:
        return own, True
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out, n = pathlib.Path("runs") / f"{config.model}-{config.dataset}-{stamp}", 1
    while out.exists():
        n += 1
        out = out.with_name(f"{config.model}-{config.dataset}-{stamp}-{n}")
    return out, False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as the same graceful stop as Ctrl-C while `jdnn train` runs."""


@contextlib.contextmanager
def graceful_signals() -> Iterator[dict[str, str]]:
    """For the duration of the block, SIGINT raises `KeyboardInterrupt` and SIGTERM raises
    `Terminated` (which `fit` treats alike: it stops and hands back the last completed epoch);
    the old handlers are put back after. Yields a dict whose `"signal"` is set to the first
    signal's name (`"SIGINT"`, `"SIGTERM"`) once one arrives. Main thread only (elsewhere
    signals cannot be handled; the block runs without)."""
    received: dict[str, str] = {}

    def handle(signum: int, frame: Any) -> None:
        del frame
        received.setdefault("signal", signal.Signals(signum).name)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {signum: signal.signal(signum, handle)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


class StopOnSignal(Callback):
    """Stops `fit` after the current epoch once `graceful_signals` has seen a signal: a
    backstop for a `KeyboardInterrupt` Python swallowed (one raised while a finalizer or a
    weakref callback runs is printed as "Exception ignored" and lost), so a signal always ends
    the run, at the latest when the epoch ends. Put it last: the others see the epoch first."""

    def __init__(self, received: dict[str, str]):
        self.received = received

    def on_epoch_end(self, run) -> None:
        if "signal" in self.received and run.stop_reason is None:
            run.stop("interrupted", f"interrupted ({self.received['signal']}) after epoch "
                                    f"{run.epoch}: the state is the one after epoch "
                                    f"{run.epoch}")


def _earlier_records(resume: Resume | None, done: int) -> list[dict]:
    """The resumed run's history up to its checkpoint's epoch (none for a loose file)."""
    path = resume.run_dir / "history.json" if resume and resume.run_dir else None
    if path is None or not path.is_file():
        return []
    records = History.from_dict(json.loads(path.read_text())).records
    return [r for r in records if r.get("epoch", math.inf) <= done]


def train(config: Config, log=print) -> dict[str, Any]:
    """Runs the job; returns a summary (how it ended, test loss and accuracy, paths, epochs).

    Writes into the run directory: `config.json`, `checkpoints/epoch-*.safetensors` (every
    `checkpoint_every` epochs and at the end, the newest `keep_checkpoints` kept),
    `history.json` (the whole run's, across resumptions), `summary.json`, and when training
    ends (not when interrupted) `final.safetensors` (the final state: the best epoch's with
    early stopping, the last finite one after a divergence) and `curves.png` (and
    `boundary.png` for 2-D data).

    `summary["stopped_by"]` says how training ended (`History.stopped_by`: None when all
    epochs ran, `"interrupted"`, `"non_finite"`, `"early_stopping"`); an interrupted run's
    summary also names the `signal` and the `checkpoint` and `resume` command to continue.

    Raises:
        ValueError: for a bad configuration, an `--out` that holds a run or is a file, a
            checkpoint that does not fit the model, or a resumed run that has already trained
            `epochs` epochs.
        FileNotFoundError: for missing data or checkpoints.
        KeyboardInterrupt: (`Terminated` for SIGTERM) if a signal arrives outside training.
    """
    with graceful_signals() as received:
        return _train(config, log, received)


def _train(config: Config, log, received: dict[str, str]) -> dict[str, Any]:
    began = time.perf_counter()
    resume = find_resume(config.resume) if config.resume else None
    out, continuing = run_directory(config, resume)
    (x, y), (x_test, y_test) = load(config)
    classes = outputs_of(config, (x, y), (x_test, y_test))
    model = build(config, classes)
    optimizer = make_optimizer(config)
    train_state, done, earlier = None, 0, []
    if resume is not None:
        train_state = checkpoint.restore(resume.checkpoint, model).train_state(optimizer)
        done = int(train_state.step) // num_batches(len(x), config.batch_size)
        if done >= config.epochs:
            raise ValueError(f"--resume: {resume.checkpoint} has trained {done} epochs and "
                             f"--epochs {config.epochs} is the run's total: give --epochs "
                             f"above {done} to train more")
        earlier = _earlier_records(resume, done)
    out.mkdir(parents=True, exist_ok=True)
    io.write_text(out / "config.json", json.dumps(dataclasses.asdict(config), indent=2))
    targets = "1 output (regression)" if config.dataset == "adding" else f"{classes} classes"
    log(f"jdnn train: {config.model} on {config.dataset} ({len(x)} train, {len(x_test)} test "
        f"examples of shape {x.shape[1:]}, {targets}) -> {out}")
    log(f"model: {model.spec}")
    if resume is not None:
        log(f"resumed from {resume.checkpoint} at epoch {done} (step {int(train_state.step)}); "
            f"training epochs {done + 1} to {config.epochs}")

    penalty = (regularizers.penalty(l1=config.l1, l2=config.l2)
               if config.l1 or config.l2 else None)
    checkpoints = out / "checkpoints"
    callbacks = [TerminateOnNaN(),  # ModelCheckpoint before EarlyStopping: it keeps the last
                 ModelCheckpoint(checkpoints, every=config.checkpoint_every,  # epoch, for resume
                                 keep=config.keep_checkpoints),
                 PrintLogger(log if log is not print else None)]
    if config.early_stopping is not None:
        callbacks.append(EarlyStopping("val_loss", patience=config.early_stopping))
    callbacks.append(StopOnSignal(received))
    loss, metrics = objective(config)
    train_state, history = fit(
        model, (x, y), loss=loss, optimizer=optimizer, epochs=config.epochs - done,
        batch_size=config.batch_size, key=jax.random.key(config.seed),
        validation_data=(x_test, y_test), metrics=metrics, penalty=penalty, callbacks=callbacks,
        progress=config.progress, train_state=train_state,
        mesh=parallel.data_mesh() if config.distributed else None)   # all processes' devices
    history = History(earlier + history.records, history.stop_reason, history.stopped_by)
    history.to_json(out / "history.json")
    summary = {"stopped_by": history.stopped_by, "stop_reason": history.stop_reason,
               "epochs": len(history), "run_directory": str(out)}
    if history.stopped_by == "interrupted":
        latest = ModelCheckpoint.latest(checkpoints) if checkpoints.is_dir() else None
        summary.update({"signal": received.get("signal", "SIGINT"),
                        "checkpoint": str(latest) if latest else None,
                        "resume": f"jdnn train --resume {out}",
                        "seconds": time.perf_counter() - began, "continued": continuing})
        io.write_text(out / "summary.json", json.dumps(summary, indent=2))
        return summary
    from jdnn import viz  # matplotlib only when a run is written

    plots = viz.save_run_plots(out, history, model=model, train_state=train_state,
                               data=(x_test, y_test))
    checkpoint.save(out / "final.safetensors", train_state, model,
                    metadata={"config": dataclasses.asdict(config)})
    test = evaluate(model, train_state, (x_test, y_test), loss=loss, metrics=metrics)
    summary.update({"test_loss": test["loss"], "test_accuracy": test.get("accuracy"),
                    "seconds": time.perf_counter() - began,
                    "checkpoint": str(out / "final.safetensors"),
                    "plots": [str(p) for p in plots], "continued": continuing})
    io.write_text(out / "summary.json", json.dumps(summary, indent=2))
    score = (f"test accuracy {test['accuracy']:.4f} (test loss {test['loss']:.4f})"
             if "accuracy" in test else f"test loss {test['loss']:.4f} ({losses.loss_name(loss)})")
    log(f"{score} after {len(history)} epochs in {summary['seconds']:.1f}s; wrote {out}")
    return summary
