"""Ensembles: K copies of one model, initialized from K keys and trained in one compiled program.

Member i of `fit_ensemble(..., size=K, key=key)` is `jdnn.fit(..., key=ensemble_keys(key, K)[i])`
run alongside the others: `jax.vmap` batches `jdnn.fit`'s own epoch (`epoch_fn`) over a stacked
`TrainState`, so each member has its own initialization, data order and dropout masks, and
there is one program for all K. Several epochs (validation included) run per compiled call,
so the host syncs once per call, not once per member and epoch.

The ensemble predicts with the mean of its members' probabilities (`combine="softmax"` or
`"sigmoid"`, the deep-ensembles rule) or of their raw outputs (`"mean"`, for regression);
its loss and metrics are computed on the log of that mean probability, which a softmax maps
back to the mean itself, so `softmax_cross_entropy` and `accuracy` apply unchanged.

The engine, shared with `jdnn.search`, is `jdnn.multi.members.train_members`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdnn import io, losses
from jdnn.core import Layer, LayerError, output_shape, whole_number
from jdnn.data.batching import num_batches
from jdnn.data.validate import as_arrays, check_data
from jdnn.train.fit import epoch_fn
from jdnn.train.history import History
from jdnn.train.compilation_cache import enable_compilation_cache
from jdnn.multi.members import (EVAL_BATCH_SIZE, member, member_evaluator, members_of, one_key,
                                outputs_fn, prepare_data, stack, train_members)
from jdnn.train.state import TrainState
from jdnn.losses import Loss
from jdnn.metrics import Metrics, resolve_metrics
from jdnn.train.step import check_step_arguments, train_step_fn

__all__ = ["COMBINE", "EnsembleHistory", "combined_logits", "combined_prediction",
           "default_combine", "ensemble_keys", "evaluate_ensemble", "fit_ensemble",
           "init_members", "member", "predict_ensemble", "stack"]

COMBINE = ("softmax", "sigmoid", "mean")


def ensemble_keys(key: jax.Array | int, size: int) -> jax.Array:
    """The `size` member keys `fit_ensemble(key=key)` gives its members: `jax.random.split`.

    Examples:
        >>> k3 = ensemble_keys(0, 16)[3]   # jdnn.fit(..., key=k3) reproduces member 3
    """
    return _keys("ensemble_keys", key, size)


def _keys(where: str, key: jax.Array | int, size: int) -> jax.Array:
    size = whole_number(where, "size", size, 1)
    return jax.random.split(one_key(where, key), size)


def init_members(model: Layer, optimizer: optax.GradientTransformation, keys: jax.Array,
                 input_shape: tuple[int, ...]) -> TrainState:
    """`TrainState.create(model, optimizer, key, input_shape)` for each key, stacked.

    Each member is created exactly as `jdnn.fit` creates its state; only training is vmapped.
    (Vmapping the initialization instead compiles a batched random-number program that cost
    seconds on a small CPU, more than the whole eager loop.)
    """
    return stack([TrainState.create(model, optimizer, k, input_shape) for k in keys])


def default_combine(loss: Loss) -> str:
    """`"softmax"` for `softmax_cross_entropy`, `"sigmoid"` for `binary_cross_entropy`
    (partials included), `"mean"` for any other loss."""
    fn = loss.func if isinstance(loss, functools.partial) else loss
    return {losses.softmax_cross_entropy: "softmax",
            losses.binary_cross_entropy: "sigmoid"}.get(fn, "mean")


def _check_combine(where: str, combine: str) -> str:
    if combine not in COMBINE:
        raise ValueError(f"{where}: combine must be one of {COMBINE}, got {combine!r}")
    return combine


def combined_logits(outputs: jax.Array, combine: str) -> jax.Array:
    """Members' outputs `(K, N, ...)` -> the ensemble's, in the loss's input space: the log of
    the mean probability for `"softmax"`, its log-odds for `"sigmoid"`, the mean for `"mean"`."""
    log_k = math.log(outputs.shape[0])
    if combine == "softmax":
        return jax.nn.logsumexp(jax.nn.log_softmax(outputs, axis=-1), axis=0) - log_k
    if combine == "sigmoid":
        log_p = jax.nn.logsumexp(jax.nn.log_sigmoid(outputs), axis=0)
        log_q = jax.nn.logsumexp(jax.nn.log_sigmoid(-outputs), axis=0)
        return log_p - log_q
    return jnp.mean(outputs, axis=0)


def combined_prediction(outputs: jax.Array, combine: str) -> jax.Array:
    """Members' outputs `(K, N, ...)` -> the mean probability (`softmax`, `sigmoid`) or output."""
    if combine == "softmax":
        return jnp.mean(jax.nn.softmax(outputs, axis=-1), axis=0)
    if combine == "sigmoid":
        return jnp.mean(jax.nn.sigmoid(outputs), axis=0)
    return jnp.mean(outputs, axis=0)


@dataclasses.dataclass
class EnsembleHistory:
    """Per-epoch records of every member (each like `jdnn.fit`'s `History`) and of the ensemble.

    Attributes:
        members: one `History` per member: `loss`, metrics, `val_*`, `seconds` per epoch.
        ensemble: the combined prediction's `val_loss` and `val_*` metrics per epoch (empty
            without validation data).
    """

    members: list[History]
    ensemble: History

    def __len__(self) -> int:
        return len(self.ensemble) or (len(self.members[0]) if self.members else 0)

    def __getitem__(self, name: str) -> np.ndarray:
        """`name` per epoch and member, `(epochs, K)`, e.g. `history["val_accuracy"]`."""
        return np.array([h[name] for h in self.members]).T

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: `{"members": [...], "ensemble": {...}}`."""
        return {"members": [h.to_dict() for h in self.members],
                "ensemble": self.ensemble.to_dict()}

    def to_json(self, path) -> None:
        """Writes `to_dict()` as JSON, atomically."""
        io.write_text(path, json.dumps(self.to_dict(), indent=2))


def fit_ensemble(model: Layer, train_data: Any, *, size: int, loss: Loss,
                 optimizer: optax.GradientTransformation, epochs: int, batch_size: int,
                 key: jax.Array | int, validation_data: Any = None,
                 metrics: Metrics | None = None, penalty: Callable | None = None,
                 combine: str | None = None, epochs_per_call: int = 10,
                 progress: bool = True) -> tuple[TrainState, EnsembleHistory]:
    """Trains `size` members of `model` together, in one compiled program.

    Member i is initialized, shuffled and dropped out exactly as
    `jdnn.fit(model, train_data, ..., key=ensemble_keys(key, size)[i])` would be (the same
    epoch, vmapped; equal up to float rounding). Each compiled call runs up to
    `epochs_per_call` epochs of every member and validates them and their combination.

    Args:
        model: the network.
        train_data: an `(x, y)` pair, `x` `(N, ...)`, `y` `(N, ...)`.
        size: the number of members K.
        loss: as in `jdnn.fit`.
        optimizer: as in `jdnn.fit`.
        epochs: as in `jdnn.fit`.
        batch_size: as in `jdnn.fit`.
        metrics: as in `jdnn.fit`.
        penalty: as in `jdnn.fit`.
        key: split into the K member keys (`ensemble_keys`).
        validation_data: an optional `(x, y)` pair, evaluated after every epoch for each
            member and for the ensemble.
        combine: `"softmax"` (mean of the members' softmax probabilities), `"sigmoid"` (mean
            of their sigmoid probabilities) or `"mean"` (mean output); by default picked from
            the loss (`default_combine`).
        epochs_per_call: the most epochs per compiled call (a divisor of `epochs` is used).
        progress: show a tqdm bar (only when stderr is a terminal).

    Returns:
        `(train_state, history)`: a `TrainState` whose leaves have a leading member axis
        (`member(train_state, i)` un-stacks one) and an `EnsembleHistory`.

    Raises:
        ValueError: for a bad argument (`size`, `epochs`, `batch_size` and `epochs_per_call`
            are ints, NumPy ints included) and for data that do not fit the model or loss (a
            label out of range, NaN or inf inputs, a wrong shape), before anything compiles.
        TypeError: for a loss, optimizer, penalty, metric or key of the wrong kind (e.g.
            `optimizer=optax.adam`, not called).

    Examples:
        >>> (x, y), test = jdnn.data.digits()
        >>> model = jdnn.serial(jdnn.Dense(128), jdnn.Relu(), jdnn.Dense(10))
        >>> states, history = fit_ensemble(model, (x, y), size=16,
        ...     loss=jdnn.losses.softmax_cross_entropy, optimizer=optax.adam(1e-3), epochs=20,
        ...     batch_size=32, key=0, validation_data=test)
        >>> history.ensemble["val_accuracy"][-1], history["val_accuracy"][-1]   # (K,) members
    """
    where = "fit_ensemble"
    check_step_arguments(where, loss=loss, optimizer=optimizer, metrics=metrics, penalty=penalty)
    size = whole_number(where, "size", size, 1)
    epochs = whole_number(where, "epochs", epochs, 0)
    batch_size = whole_number(where, "batch_size", batch_size, 1)
    epochs_per_call = whole_number(where, "epochs_per_call", epochs_per_call, 1)
    combine = _check_combine(where, default_combine(loss) if combine is None else combine)
    keys = _keys(where, key, size)
    x, y, validation = prepare_data(model, loss, train_data, validation_data, where=where)
    enable_compilation_cache()   # as fit does: before anything compiles, where safe
    states = init_members(model, optimizer, keys, (batch_size, *x.shape[1:]))
    epoch = epoch_fn(train_step_fn(model, loss, optimizer, penalty=penalty, metrics=metrics),
                     batch_size)
    evaluate = member_evaluator(model, loss, metrics,
                                functools.partial(combined_logits, combine=combine))
    trained = train_members(states, {}, lambda ts, hp, x, y, order: epoch(ts, x, y, order), x, y,
                            epochs=epochs, steps_per_epoch=num_batches(x.shape[0], batch_size),
                            validation=validation, evaluate=evaluate,
                            epochs_per_call=epochs_per_call, progress=progress, desc="ensemble")
    return trained.train_state, EnsembleHistory(trained.histories, trained.combined)


def _checked_inputs(where: str, model: Layer, x: Any) -> np.ndarray:
    """`x` as a NumPy array of real numbers with an example axis whose per-example shape fits
    `model` (checked on an abstract `init`), or a clear `ValueError` naming `where`."""
    try:
        x = np.asarray(x)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: x cannot be converted to an array ({error})") from None
    if x.dtype.kind not in "biuf" or x.ndim == 0:
        raise ValueError(f"{where}: x must be an array of real numbers with a first axis of "
                         f"examples, got dtype {x.dtype} and shape {x.shape}")
    try:
        output_shape(model, (1, *x.shape[1:]))
    except LayerError as error:
        raise ValueError(f"{where}: x of shape {x.shape} does not fit the model: "
                         f"{error}") from None
    return x


@functools.lru_cache(maxsize=32)
def _predictor(model: Layer, combine: str, batch_size: int) -> Callable:
    outputs = jax.vmap(outputs_fn(model, batch_size), in_axes=(0, None))
    return jax.jit(lambda states, x: combined_prediction(outputs(states, x), combine))


@functools.lru_cache(maxsize=32)
def _scorer(model: Layer, loss: Loss, metrics: tuple, combine: str, batch_size: int):
    return jax.jit(member_evaluator(model, loss, dict(metrics),
                                    functools.partial(combined_logits, combine=combine),
                                    batch_size))


def predict_ensemble(model: Layer, train_state: TrainState, x: Any, *, combine: str = "softmax",
                     batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """The ensemble's prediction on `x`: the mean of its members' probabilities (`"softmax"`,
    `"sigmoid"`) or outputs (`"mean"`), in evaluation mode.

    Args:
        model: the network.
        train_state: the stacked state `fit_ensemble` returned.
        x: inputs `(N, ...)`.
        combine: `"softmax"`, `"sigmoid"` or `"mean"` (see `fit_ensemble`).
        batch_size: examples per compiled batch.

    Returns:
        `(N, C)` mean probabilities (or mean outputs), a NumPy array.

    Examples:
        >>> labels = predict_ensemble(model, states, x_test).argmax(-1)
    """
    where = "predict_ensemble"
    batch_size = whole_number(where, "batch_size", batch_size, 1)
    members_of(where, train_state)
    x = _checked_inputs(where, model, x)
    predict = _predictor(model, _check_combine(where, combine), batch_size)
    return np.asarray(predict(train_state, jnp.asarray(x)))


def evaluate_ensemble(model: Layer, train_state: TrainState, data: Any, *, loss: Loss,
                      metrics: Metrics | None = None, combine: str | None = None,
                      batch_size: int = EVAL_BATCH_SIZE) -> dict[str, Any]:
    """Each member's and the ensemble's loss and metrics on `data`, in evaluation mode.

    Args:
        model: the network.
        train_state: its stacked state (from `fit_ensemble`).
        data: an `(x, y)` pair.
        loss: as in `jdnn.evaluate`.
        metrics: as in `jdnn.evaluate`.
        combine: the combination rule; by default picked from the loss (`default_combine`).
        batch_size: examples per compiled batch.

    Returns:
        `{"members": [{"loss": ..., "accuracy": ...}, ...], "ensemble": {"loss": ..., ...}}`.

    Examples:
        >>> report = evaluate_ensemble(model, states, test, loss=jdnn.losses.softmax_cross_entropy)
        >>> report["ensemble"]["accuracy"], [m["accuracy"] for m in report["members"]]
    """
    where = "evaluate_ensemble"
    check_step_arguments(where, loss=loss, metrics=metrics)
    batch_size = whole_number(where, "batch_size", batch_size, 1)
    size = members_of(where, train_state)
    try:
        x, y = as_arrays(data, "data")
        check_data(x, y, model=model, loss=loss, name="data", metrics=metrics)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    combine = _check_combine(where, default_combine(loss) if combine is None else combine)
    metric_fns = tuple(resolve_metrics(metrics, loss=loss).items())
    score = _scorer(model, loss, metric_fns, combine, batch_size)
    members, ensemble = jax.device_get(score(train_state, jnp.asarray(x), jnp.asarray(y)))
    return {"members": [{k: float(v[i]) for k, v in members.items()} for i in range(size)],
            "ensemble": {k: float(v) for k, v in ensemble.items()}}
