"""Evaluation and prediction over whole datasets, in compiled batches on the device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdnn.core import Layer, whole_number
from jdnn.data.batching import epoch_batches
from jdnn.data.validate import as_arrays, check_data, padded_arrays
from jdnn.losses import Loss
from jdnn.metrics import Metrics, resolve_metrics
from jdnn.padded import Padded, apply_child
from jdnn.train.arguments import on_device
from jdnn.train.precision import Precision, cast_to_compute, cast_to_output, resolve_precision
from jdnn.train.program_cache import ProgramCache
from jdnn.train.state import TrainState
from jdnn.train.step import check_step_arguments, eval_step_fn
from jdnn.train.stream import is_stream
from jdnn.train.stream_eval import evaluate_stream, predict_stream

DEFAULT_BATCH_SIZE = 1024


# Compiled evaluators and predictors, kept across calls: keyed by what the model, loss and
# metrics are made of (`jdnn.train.program_cache`), so `fit`'s validation and a later
# `evaluate` of the same model share one program, even when the model was built again.
_EVALUATORS = ProgramCache(64)
_PREDICTORS = ProgramCache(64)


def _evaluator(model: Layer, loss: Loss, metrics: tuple, batch_size: int,
               policy: Precision) -> Callable:
    return _EVALUATORS.get((model, loss, metrics, batch_size, policy),
                           lambda: _build_evaluator(model, loss, metrics, batch_size, policy))


def _build_evaluator(model: Layer, loss: Loss, metrics: tuple, batch_size: int,
                     policy: Precision) -> Callable:
    step = eval_step_fn(model, loss, metrics=dict(metrics),  # resolved already: never None
                        precision=policy)

    @jax.jit
    def run(train_state, x, y):
        n = x.shape[0]
        indices, masks = epoch_batches(None, n, min(batch_size, n))

        def body(carry, batch):
            i, mask = batch
            return carry, step(train_state, x[i], y[i], mask)

        _, reports = lax.scan(body, None, (indices, masks))
        counts = jnp.sum(masks, axis=1)
        return {k: jnp.sum(v * counts) / n for k, v in reports.items()}

    return run


def make_evaluator(model: Layer, loss: Loss, *, metrics: Metrics | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   precision: str | Precision = "float32") -> Callable:
    """A compiled `evaluator(train_state, x, y) -> {"loss": ..., metric: ...}` over a dataset.

    The data are cut into padded, masked batches scanned on the device; each value is the mean
    over all examples. Built once per (model, loss, metrics, batch size) and cached. `metrics`
    and `precision` as in `evaluate` (None: the loss's default).
    """
    check_step_arguments("make_evaluator", loss=loss, metrics=metrics)
    batch_size = whole_number("make_evaluator", "batch_size", batch_size, minimum=1)
    return _evaluator(model, loss, tuple(resolve_metrics(metrics, loss=loss).items()),
                      batch_size, resolve_precision("make_evaluator", precision))


def evaluate(model: Layer, train_state: TrainState, data: Any, *, loss: Loss,
             metrics: Metrics | None = None, batch_size: int | None = None,
             precision: str | Precision = "float32") -> dict[str, float]:
    """The loss and metrics of a trained model on a dataset, in evaluation mode.

    Args:
        model: the network.
        train_state: its trained state (params and batch-norm statistics are used).
        data: an `(x, y)` pair of arrays, `x` `(N, ...)`, `y` `(N, ...)`; or a stream of
            `(x, y)` batches (any iterable but a tuple or list, e.g. a grain `DataLoader`),
            read once to its end, a compiled step per batch (`jdnn.train.stream`).
        loss: the per-example loss, e.g. `jdnn.losses.softmax_cross_entropy`.
        metrics: names from `jdnn.metrics` or functions `fn(predictions, labels, mask)`. None,
            the default, follows the loss: `("accuracy",)` for a classification loss
            (`softmax_cross_entropy`, `binary_cross_entropy`), none for any other (`mse`, a loss
            of one's own). Asking for `"accuracy"` needs targets that are class labels.
        batch_size: examples per compiled batch (default 1024); for a stream, the largest
            batch it yields (default: its first batch's size; shorter ones are padded).
        precision: `"float32"` (default), `"bfloat16"` or a `jdnn.Precision`: the forward pass
            in its compute dtype, the loss and metrics in float32 (as `fit` trained).

    Returns:
        `{"loss": float, **metrics}`, means over all `N` examples.

    Raises:
        TypeError: for a loss or metric of the wrong kind.
        ValueError: for data that do not fit the model and loss (starting with `data`), e.g.
            targets `(N,)` for outputs `(N, 1)` under a loss of one's own, or accuracy asked
            for on targets that are not class labels.

    Examples:
        >>> jdnn.evaluate(model, train_state, (x_test, y_test),
        ...               loss=jdnn.losses.softmax_cross_entropy)   # {"loss": ..., "accuracy": ...}
    """
    check_step_arguments("evaluate", loss=loss, metrics=metrics)
    if is_stream(data):
        return _evaluate_stream(model, train_state, data, loss, metrics, batch_size, precision)
    batch_size = whole_number("evaluate", "batch_size",
                              DEFAULT_BATCH_SIZE if batch_size is None else batch_size, minimum=1)
    x, y = as_arrays(data, "data")
    check_data(x, y, model=model, loss=loss, name="data", metrics=metrics)
    policy = resolve_precision("evaluate", precision)
    report = make_evaluator(model, loss, metrics=metrics, batch_size=batch_size,
                            precision=policy)(train_state, on_device(x), on_device(y))
    return {name: float(value) for name, value in report.items()}


def _evaluate_stream(model: Layer, train_state: TrainState, data: Any, loss: Loss,
                     metrics: Metrics | None, batch_size: int | None, precision: Any
                     ) -> dict[str, float]:
    if batch_size is not None:
        batch_size = whole_number("evaluate", "batch_size", batch_size, minimum=1)

    def check_first(x, y):
        check_data(x, y, model=model, loss=loss, name="data", metrics=metrics)

    return evaluate_stream("evaluate", model, loss,
                           tuple(resolve_metrics(metrics, loss=loss).items()),
                           resolve_precision("evaluate", precision), train_state, data,
                           batch_size, check_first=check_first)


def _predictor(model: Layer, batch_size: int, policy: Precision) -> Callable:
    return _PREDICTORS.get((model, batch_size, policy),
                           lambda: _build_predictor(model, batch_size, policy))


def _build_predictor(model: Layer, batch_size: int, policy: Precision) -> Callable:
    @jax.jit
    def run(train_state, x):
        n = x.shape[0]
        indices, _ = epoch_batches(None, n, min(batch_size, n))
        params = cast_to_compute(policy, train_state.params)

        def body(carry, i):
            y, _ = apply_child(model, params, train_state.state,
                               cast_to_compute(policy, x[i]), train=False)
            return carry, cast_to_output(policy, y)

        _, outputs = lax.scan(body, None, indices)   # (batches, batch, ...) per array
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], outputs)

    return run


def predict(model: Layer, train_state: TrainState, x: Any, *,
            batch_size: int | None = None,
            precision: str | Precision = "float32") -> np.ndarray:
    """The model's outputs on `x` in evaluation mode (no dropout, running statistics).

    Args:
        model: the network.
        train_state: its trained state.
        x: inputs `(N, ...)`, or a `jdnn.Padded` batch of sequences; or a stream of `x`
            batches (any iterable but a tuple or list; `(x, y)` pairs are taken for their
            `x`), read once to its end, a compiled call per batch (`jdnn.train.stream`).
        batch_size: examples per compiled batch (default 1024); for a stream, the largest
            batch it yields (default: its first batch's size; shorter ones are padded).
        precision: `"float32"` (default), `"bfloat16"` or a `jdnn.Precision`: the forward pass
            in its compute dtype, the outputs in its output dtype (float32).

    Returns:
        The outputs `(N, ...)` as a NumPy array (logits, for a classifier); for a padded `x`
        (`jdnn.Padded`) whose outputs keep the time axis, a `Padded` of NumPy arrays. For
        `N = 0` the
        result is empty, `(0, ...)` with the output's trailing shape and dtype, as NumPy would
        give for an empty batch.

    Raises:
        ValueError: for a `batch_size` that is not a positive int, or an `x` with no example
            axis; a `LayerError` (a `ValueError`) names the layer an `x` of the wrong shape
            does not fit.

    Examples:
        >>> labels = jdnn.predict(model, train_state, x_test).argmax(-1)
    """
    if batch_size is not None or not is_stream(x):
        batch_size = whole_number("predict", "batch_size",
                                  DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
                                  minimum=1)
    policy = resolve_precision("predict", precision)
    if is_stream(x):
        return predict_stream(model, policy, train_state, x, batch_size)
    x = on_device(padded_arrays("predict", x) if isinstance(x, Padded) else x)
    if x.ndim == 0:
        raise ValueError(f"predict: x must have a first axis with one entry per example, got a "
                         f"scalar {x!r}; pass e.g. x[None] for one example")
    if x.shape[0] == 0:  # nothing to run: the output's shape and dtype, found abstractly
        out = jax.eval_shape(lambda ts, one: model.apply(ts.params, ts.state, one)[0],
                             train_state, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
        dtype = jnp.dtype(policy.output) if policy.casts else out.dtype
        return np.zeros((0, *out.shape[1:]), dtype)
    return jax.tree.map(np.asarray, _predictor(model, batch_size, policy)(train_state, x))
