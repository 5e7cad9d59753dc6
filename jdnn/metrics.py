"""Metrics: scalar summaries of predictions against labels, with an optional example mask.

The mask is how padded batches stay honest: the last batch of an epoch is padded to full size
and its padding rows are masked out, so the step compiles once and the numbers stay exact.
Everything here works under `jax.jit` (shapes are checked at trace time).

Metrics are asked for by name (`"accuracy"`) or as functions `fn(predictions, labels, mask)`;
`resolve_metrics` turns what a user passed into `{name: fn}`. What is reported when nothing is
asked for follows the loss (`default_metrics`): accuracy for the classification losses, just
the loss for `mse` or a user's loss, since accuracy means nothing for regression targets.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jdnn import losses
from jdnn.core import Array

Metric = Callable[..., Array]
"""A metric: `fn(predictions (B, ...), labels (B, ...), mask (B,) | None) -> scalar`."""
Metrics = Sequence[str | Metric] | Mapping[str, Metric]
"""What entry points take as `metrics=`: names and functions, or a `{name: fn}` mapping."""


def _in_unit_interval(labels: Array) -> Array:
    return (labels >= 0) & (labels <= 1)


def _predicted_and_true(predictions: Array, labels: Array, threshold: float
                        ) -> tuple[Array, Array, Array]:
    """The predicted and the true class of each example and whether its label means a class,
    all `(B,)`."""
    p_shape, l_shape = tuple(predictions.shape), tuple(labels.shape)
    if predictions.ndim not in (1, 2):
        raise ValueError(f"accuracy: predictions have shape {p_shape}; expected (batch,), "
                         f"(batch, 1) or (batch, classes); reshape to (batch, classes)")
    batch = p_shape[0]
    if predictions.ndim == 2 and p_shape[1] > 1:
        if l_shape == p_shape:
            return (jnp.argmax(predictions, axis=-1), jnp.argmax(labels, axis=-1),
                    jnp.all(_in_unit_interval(labels), axis=-1))
        if l_shape == (batch,):
            valid = (labels >= 0) & (labels < p_shape[1]) & (labels == jnp.floor(labels))
            return jnp.argmax(predictions, axis=-1), labels, valid
        raise ValueError(f"accuracy: predictions have shape {p_shape} but labels have shape "
                         f"{l_shape}; labels must be class indices of shape {(batch,)} or "
                         f"one-hot of shape {p_shape}")
    if l_shape not in ((batch,), (batch, 1)):
        raise ValueError(f"accuracy: single-output predictions have shape {p_shape} but labels "
                         f"have shape {l_shape}; labels must be 0/1 of shape {(batch,)} or "
                         f"{(batch, 1)}")
    labels = labels.reshape(batch)
    return predictions.reshape(batch) > threshold, labels > 0.5, _in_unit_interval(labels)


def accuracy(predictions: Array, labels: Array, mask: Array | None = None, *,
             threshold: float = 0.0) -> Array:
    """The fraction of (unmasked) examples whose predicted class is the label.

    With `C > 1` outputs the predicted class is the argmax. With one output, `(B,)` or `(B, 1)`,
    it is `predictions > threshold`, strictly: a score exactly at the threshold is class 0. The
    default `0.0` suits logits; pass `threshold=0.5` for sigmoid probabilities. The two rules
    agree, since `sigmoid(0) == 0.5`: a logit of exactly 0 and a probability of exactly 0.5
    are both class 0. `threshold` is ignored when `C > 1`.

    Args:
        predictions: `(B, C)` scores (logits or probabilities), or `(B,)` / `(B, 1)` for a
            binary problem.
        labels: for `(B, C)` predictions, class indices `(B,)` or one-hot `(B, C)` (compared by
            argmax); for single outputs, `(B,)` or `(B, 1)` in `{0, 1}` (a label counts as class
            1 when it is above 0.5).
            A label that names no class (an index outside `[0, C)`, a one-hot or binary
            entry outside `[0, 1]`) makes the accuracy NaN unless its example is masked out:
            never a plausible number.
        mask: optional `(B,)`, bool or 0/1 floats; examples with mask 0 do not count.
        threshold: the decision threshold for single-output predictions, a finite number.

    Per-position predictions `(B, T, ..., C)` (a language model's per-step logits) with labels
    `(B, T, ...)` or one-hot `(B, T, ..., C)` are scored position by position: every position
    of a kept example counts once.

    Returns:
        A float scalar, `sum(correct * mask) / max(sum(mask), 1)`; `0.0` if all are masked;
        NaN if an unmasked label names no class.

    Raises:
        ValueError: if `predictions`, `labels` or `mask` has an unexpected shape, or
            `threshold` is NaN or infinite.

    Examples:
        >>> acc = jdnn.metrics.accuracy(logits, y, mask=batch_mask)  # logits (32, 10), y (32,)
    """
    if isinstance(threshold, (int, float, np.number)) and not math.isfinite(threshold):
        raise ValueError(f"accuracy: threshold must be a finite number (0.0 for logits, 0.5 for "
                         f"probabilities), got {threshold!r}")
    predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
    per_position = (predictions.ndim >= 3 and predictions.shape[-1] > 1
                    and tuple(labels.shape) in (tuple(predictions.shape),
                                                tuple(predictions.shape[:-1])))
    if per_position:
        positions = math.prod(predictions.shape[1:-1])
        one_hot = labels.ndim == predictions.ndim
        predictions = predictions.reshape(-1, predictions.shape[-1])
        labels = labels.reshape(-1, predictions.shape[-1]) if one_hot else labels.reshape(-1)
        if mask is not None and jnp.ndim(mask) == 1:
            mask = jnp.repeat(jnp.asarray(mask), positions)
    predicted, true, valid = _predicted_and_true(predictions, labels, threshold)
    correct = jnp.where(valid, (predicted == true).astype(jnp.float32), jnp.nan)
    if mask is None:
        return jnp.mean(correct) if correct.size else jnp.zeros((), jnp.float32)
    mask = jnp.asarray(mask)
    if tuple(mask.shape) != tuple(correct.shape):
        raise ValueError(f"accuracy: mask has shape {tuple(mask.shape)} but predictions have "
                         f"shape {tuple(predictions.shape)}; the mask needs one entry per "
                         f"example, shape {tuple(correct.shape)}")
    weights = mask.astype(jnp.float32)
    kept = jnp.where(weights != 0, correct * weights, 0.0)  # NaN * 0 is NaN: masked rows drop out
    return jnp.sum(kept) / jnp.maximum(jnp.sum(weights), 1.0)


BY_NAME = {"accuracy": accuracy}
"""The metrics that can be asked for by name (`make_train_step(..., metrics=("accuracy",))`)."""


def default_metrics(loss: Any) -> tuple[str, ...]:
    """The metrics reported when none are asked for (`metrics=None`), which follow the loss:
    `("accuracy",)` for a loss that takes class labels (`softmax_cross_entropy`,
    `binary_cross_entropy`, or partials of them; see `jdnn.losses.label_kind`), `()` for any
    other (`mse`, a user's own loss): the loss alone.

    Examples:
        >>> default_metrics(jdnn.losses.softmax_cross_entropy), default_metrics(jdnn.losses.mse)
        (('accuracy',), ())
    """
    return ("accuracy",) if losses.label_kind(loss) is not None else ()


def is_accuracy(fn: Any) -> bool:
    """Whether the metric function `fn` is `accuracy` (or a `functools.partial` of it)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn is accuracy


def _metric_name(fn: Callable) -> str:
    """A metric function's name in reports: its `__name__` (a partial's function's)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def resolve_metrics(metrics: Metrics | None, where: str | None = None, *,
                    loss: Any = None) -> dict[str, Metric]:
    """Maps metric names (`"accuracy"`) or functions `fn(predictions, labels, mask)` to a dict.

    Accepts a sequence of names and functions, a `{name: fn}` mapping, one name or function,
    or None for the loss's default (`default_metrics(loss)`; none without a loss).

    Args:
        metrics: what the user passed as `metrics=`.
        where: the entry point (e.g. `"fit"`) that starts error messages.
        loss: the run's loss, which picks the default when `metrics` is None.

    Returns:
        `{name: fn}`, in the order given.

    Raises:
        TypeError: for anything that is not a name or a function.
        ValueError: for an unknown metric name.

    Examples:
        >>> resolve_metrics(("accuracy",))                  # {"accuracy": accuracy}
        >>> resolve_metrics(None, loss=jdnn.losses.mse)      # {}
    """
    prefix = f"{where}: " if where else ""
    if metrics is None:
        metrics = default_metrics(loss)
    if isinstance(metrics, Mapping):
        bad = {k: v for k, v in metrics.items() if not (isinstance(k, str) and callable(v))}
        if bad:
            raise TypeError(f"{prefix}metrics as a mapping must map names to functions "
                            f"fn(predictions, labels, mask), got {bad!r:.100}")
        return dict(metrics)
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    if not isinstance(metrics, Sequence):
        raise TypeError(f"{prefix}metrics must be a list or tuple of metric names and functions, "
                        f"got {type(metrics).__name__} {metrics!r:.60}; e.g. "
                        f"metrics=(\"accuracy\",), or () for none")
    resolved = {}
    for metric in metrics:
        if callable(metric):
            resolved[_metric_name(metric)] = metric
        elif isinstance(metric, str) and metric in BY_NAME:
            resolved[metric] = BY_NAME[metric]
        elif isinstance(metric, str):
            raise ValueError(f"{prefix}unknown metric {metric!r}: give a name from "
                             f"{sorted(BY_NAME)} or a function fn(predictions, labels, mask)")
        else:
            raise TypeError(f"{prefix}each metric must be a name from {sorted(BY_NAME)} or a "
                            f"function fn(predictions, labels, mask), got "
                            f"{type(metric).__name__} {metric!r:.60}")
    return resolved
