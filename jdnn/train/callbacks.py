"""Callbacks: small host-side hooks `fit` calls between epochs.

A callback sees the `Run` (the model, the current `TrainState`, the `History`) after each
epoch and may replace the train state (restore the best one, lower the learning rate) or stop
the run. Compiled epochs never see them, so they cost nothing inside the loop. The checkpoint
callback, `ModelCheckpoint`, lives with the checkpoints (`jdnn.checkpoint.callback`), which
build on this module; nothing here imports them.
"""

from __future__ import annotations

import csv
import dataclasses
import io as text_io
import math
import pathlib
import warnings

import jax
import jax.numpy as jnp
import optax
from tqdm.auto import tqdm

from jdnn import io
from jdnn.core import Layer
from jdnn.train.history import History
from jdnn.train.state import TrainState


@dataclasses.dataclass
class Run:
    """What callbacks see and may change.

    Attributes:
        model: the model being trained.
        train_state: the current state; a callback may replace it.
        history: the records so far (the current epoch's is the last).
        epoch: the epoch just finished, counting from 1.
        stop_reason: set it (a message) to end training after this epoch; `stop` sets it.
        stopped_by: what stopped the run, as data (`History.stopped_by`); `"callback"` when
            only `stop_reason` was set.
    """

    model: Layer
    train_state: TrainState
    history: History
    epoch: int = 0
    stop_reason: str | None = None
    stopped_by: str | None = None

    def stop(self, cause: str, reason: str) -> None:
        """Ends training after this epoch: `cause` for programs (e.g. `"early_stopping"`),
        `reason` for people."""
        self.stopped_by, self.stop_reason = cause, reason


def copy_state(train_state: TrainState) -> TrainState:
    """A copy whose buffers survive the donation of `train_state` to the next epoch."""
    return jax.tree.map(lambda a: a.copy(), train_state)


class Callback:
    """Base class: override the hooks you need; each gets the `Run`."""

    def on_train_begin(self, run: Run) -> None:
        """Before the first epoch."""

    def on_epoch_end(self, run: Run) -> None:
        """After each epoch (and its validation); `run.history.records[-1]` is its record."""

    def on_train_end(self, run: Run) -> None:
        """After the last epoch, after a callback stopped the run, or after an interrupt
        (`KeyboardInterrupt`; `run.train_state` is then the last completed state)."""


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return math.isfinite(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _mode(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor else "min"


def _monitored(run: Run, monitor: str) -> float:
    record = run.history.records[-1]
    if monitor not in record:
        raise ValueError(f"cannot monitor {monitor!r}: the epoch records hold {sorted(record)}; "
                         f"'val_*' quantities need validation_data")
    return record[monitor]


class EarlyStopping(Callback):
    """Stops when `monitor` has not improved for `patience` epochs.

    `patience` means what it means in Keras ("number of epochs with no improvement after which
    training will be stopped") and in `jdnn.search` (`jdnn.multi.members.train_members`): with
    the best value at epoch 4 and `patience=2`, epochs 5 and 6 do not improve and the run stops
    after epoch 6; `patience=0` stops after the first epoch that does not improve.

    Args:
        monitor: a history key, e.g. `"val_loss"` or `"val_accuracy"`.
        patience: the number of epochs without improvement after which training stops, >= 0.
        min_delta: the smallest change that counts as an improvement.
        mode: `"min"`, `"max"`, or `"auto"` (max for accuracies, min otherwise).
        restore_best: end with the parameters of the best epoch, not the last.

    Examples:
        >>> jdnn.fit(..., validation_data=(x_val, y_val),
        ...          callbacks=[jdnn.EarlyStopping("val_loss", patience=5)])
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best: bool = True):
        if patience < 0 or min_delta < 0:
            raise ValueError(f"EarlyStopping: patience and min_delta must be >= 0, got "
                             f"{patience} and {min_delta}")
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode, self.restore_best = _mode(monitor, mode), restore_best

    def on_train_begin(self, run: Run) -> None:
        self.best, self.best_epoch, self.best_state, self.wait = None, None, None, 0

    def on_epoch_end(self, run: Run) -> None:
        value = _monitored(run, self.monitor)
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = value, run.epoch, 0
            if self.restore_best:
                self.best_state = copy_state(run.train_state)
            return
        self.wait += 1
        if self.wait >= self.patience:
            run.stop("early_stopping",
                     f"early stopping: {self.monitor} did not improve for {self.patience} "
                     f"epochs after epoch {self.best_epoch} ({self.best:.6g})")

    def on_train_end(self, run: Run) -> None:
        if self.restore_best and self.best_state is not None:
            run.train_state = self.best_state


class TerminateOnNaN(Callback):
    """The NaN guard: stops on a non-finite training loss and keeps the last good state.

    Examples:
        >>> jdnn.fit(..., callbacks=[jdnn.TerminateOnNaN()])
    """

    def on_train_begin(self, run: Run) -> None:
        self.good, self.good_epoch = copy_state(run.train_state), run.epoch

    def on_epoch_end(self, run: Run) -> None:
        loss = run.history.records[-1]["loss"]
        if math.isfinite(loss):
            self.good, self.good_epoch = copy_state(run.train_state), run.epoch
            return
        run.stop("non_finite",
                 f"non-finite training loss ({loss}) in epoch {run.epoch}: stopped, keeping the "
                 f"state after epoch {self.good_epoch}; lower the learning rate, or check the "
                 f"data for NaN/inf")
        run.train_state = self.good
        warnings.warn(run.stop_reason, RuntimeWarning, stacklevel=2)


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by `factor` when `monitor` stalls for `patience` epochs.

    The optimizer must expose its learning rate as a hyper-parameter:
    `optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)` (inside a chain is fine).

    Args:
        monitor: a history key.
        factor: in (0, 1).
        patience: epochs without improvement.
        min_delta: the smallest improvement.
        min_lr: the floor.
        cooldown: epochs to wait after a reduction.
        mode: `"min"`, `"max"` or `"auto"`.

    Examples:
        >>> optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
        >>> jdnn.fit(..., optimizer=optimizer, callbacks=[jdnn.ReduceLROnPlateau(patience=2)])
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.5, patience: int = 2,
                 min_delta: float = 0.0, min_lr: float = 0.0, cooldown: int = 0,
                 mode: str = "auto"):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        self.monitor, self.factor, self.patience = monitor, factor, patience
        self.min_delta, self.min_lr, self.cooldown = min_delta, min_lr, cooldown
        self.mode = _mode(monitor, mode)

    def on_train_begin(self, run: Run) -> None:
        self.best, self.wait, self.cooling = None, 0, 0
        self.learning_rate(run.train_state)  # fails now if there is no learning rate to set

    @staticmethod
    def learning_rate(train_state: TrainState) -> float:
        """The current learning rate held in the optimizer state."""
        value = optax.tree_utils.tree_get(train_state.opt_state, "learning_rate", default=None)
        if value is None:
            raise ValueError("ReduceLROnPlateau needs the learning rate in the optimizer state: "
                             "build the optimizer with optax.inject_hyperparams, e.g. "
                             "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)")
        return float(value)

    def on_epoch_end(self, run: Run) -> None:
        value = _monitored(run, self.monitor)
        run.history.records[-1]["lr"] = self.learning_rate(run.train_state)
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            return
        if self.cooling:
            self.cooling -= 1
            return
        self.wait += 1
        if self.wait >= self.patience:
            old = self.learning_rate(run.train_state)
            new = max(old * self.factor, self.min_lr)
            current = optax.tree_utils.tree_get(run.train_state.opt_state, "learning_rate")
            opt_state = optax.tree_utils.tree_set(
                run.train_state.opt_state, learning_rate=jnp.asarray(new, current.dtype))
            run.train_state = run.train_state._replace(opt_state=opt_state)
            self.wait, self.cooling = 0, self.cooldown


class PrintLogger(Callback):
    """Prints one line per epoch, e.g. `epoch   3  loss 0.2104  accuracy 0.9412  val_loss ...`
    (through tqdm, so a progress bar stays intact)."""

    def __init__(self, print_fn=None):
        self.print_fn = print_fn

    def on_epoch_end(self, run: Run) -> None:
        record = run.history.records[-1]
        values = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch",
                                                                                 "seconds"))
        line = f"epoch {record['epoch']:3d}  {values}  ({record['seconds']:.2f}s)"
        if self.print_fn is not None:
            self.print_fn(line)
        else:
            tqdm.write(line)

    def on_train_end(self, run: Run) -> None:
        if run.stop_reason:
            (self.print_fn or print)(run.stop_reason)


class CSVLogger(Callback):
    """Rewrites `path` (atomically) after every epoch with the history as CSV, one row each."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def on_epoch_end(self, run: Run) -> None:
        columns: list[str] = []
        for record in run.history.records:
            columns += [key for key in record if key not in columns]
        buffer = text_io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(run.history.records)
        io.write_text(self.path, buffer.getvalue())


class JSONLogger(Callback):
    """Rewrites `path` (atomically) after every epoch with `history.to_dict()` as JSON."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def on_epoch_end(self, run: Run) -> None:
        run.history.to_json(self.path)

    def on_train_end(self, run: Run) -> None:
        run.history.to_json(self.path)  # with the stop reason, if any
