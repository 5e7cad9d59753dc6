"""The compiled training and evaluation steps.

One step, read in a single pass: fold this step's dropout key in from the run's key; apply the
model in training mode; per-example loss -> masked mean (+ penalty); `jax.value_and_grad`; the optax
update; a new `TrainState`. All of it inside one `jax.jit`, with the incoming state donated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jdnn.core import Layer, is_under, path_of
# Loss, masked_mean, Metric, Metrics and resolve_metrics live in jdnn.losses and jdnn.metrics;
# imported here by name, they keep their old import path, jdnn.train.step.
from jdnn.losses import Loss, masked_mean, per_example_values
from jdnn.metrics import Metric, Metrics, resolve_metrics
from jdnn.padded import Padded, apply_child, sequence_mask
from jdnn.train import arguments
from jdnn.train.precision import (Precision, cast_to_compute, cast_to_output, keep_dtypes,
                                  resolve_precision)
from jdnn.train.state import AUGMENT, DROPOUT, TrainState, step_key

__all__ = ["check_step_arguments", "eval_step_fn", "Loss", "make_eval_step", "make_train_step",
           "masked_mean", "Metric", "Metrics", "resolve_metrics", "train_step_fn"]


def _check_mask(mask: jax.Array | None, x: jax.Array) -> None:
    if mask is not None and mask.shape != (x.shape[0],):
        raise ValueError(f"mask must have shape ({x.shape[0]},), one entry per example, got "
                         f"shape {tuple(mask.shape)}")


def _metric(fn: Metric, outputs: Any, y: Any, mask: jax.Array | None) -> jax.Array:
    """`fn(outputs, y, mask)`; per-step outputs of a padded batch are scored step by step, each
    real step of a kept example counting once (token-level accuracy, say)."""
    if not isinstance(outputs, Padded):
        return fn(outputs, y, mask)
    values = outputs.values
    batch, steps = values.shape[:2]
    real = sequence_mask(outputs.lengths, steps)
    if mask is not None:
        real = real & (mask[:, None] != 0)
    return fn(values.reshape(batch * steps, *values.shape[2:]),
              y.reshape(batch * steps, *y.shape[2:]), real.reshape(-1))


def _augmented(augment: Callable, key: jax.Array, x: Any) -> Any:
    """`augment(key, x)`; a padded batch's values are augmented, its lengths kept."""
    if isinstance(x, Padded):
        return Padded(augment(key, x.values), x.lengths)
    return augment(key, x)


def _freeze(new_state: Any, old_state: Any, frozen: Sequence[str]) -> Any:
    """`new_state`, with the leaves under the path prefixes in `frozen` kept at `old_state`."""
    if not frozen:
        return new_state

    def pick(keypath, new, old):
        return old if is_under(path_of(keypath), frozen) else new

    return jax.tree_util.tree_map_with_path(pick, new_state, old_state)


_NO_OPTIMIZER = object()


def check_step_arguments(where: str, *, loss: Any, optimizer: Any = _NO_OPTIMIZER,
                         metrics: Any = (), penalty: Any = None, augment: Any = None,
                         frozen_state: Any = ()) -> None:
    """The checks every entry point that builds a step runs (`fit`, `evaluate`,
    `make_train_step`, `make_eval_step`): a loss function, an optax transformation (when one is
    given), known metrics, a penalty function, a called augmentation and a list of state paths,
    each a clear error naming `where`. See `jdnn.train.arguments`."""
    arguments.check_loss(where, loss)
    if penalty is not None and not callable(penalty):
        raise TypeError(f"{where}: penalty must be a function penalty(params) -> scalar or "
                        f"None, got {type(penalty).__name__} {penalty!r:.40}; e.g. "
                        f"penalty=jdnn.regularizers.penalty(l2=1e-4)")
    if optimizer is not _NO_OPTIMIZER:
        arguments.check_optimizer(where, optimizer)
    resolve_metrics(metrics, where)
    arguments.check_augment(where, augment)
    arguments.check_names(where, frozen_state, "frozen_state")


def train_step_fn(model: Layer, loss: Loss, optimizer: optax.GradientTransformation, *,
                  penalty: Callable[[Any], jax.Array] | None = None, metrics: Metrics = (),
                  augment: Callable | None = None, frozen_state: Sequence[str] = (),
                  precision: str | Precision = "float32") -> Callable:
    """The pure, uncompiled training step that `make_train_step` jits and `fit` scans over.

    Arguments as in `make_train_step`. Returns `step(train_state, x, y, mask=None)`.
    """
    metric_fns = resolve_metrics(metrics, loss=loss)
    frozen = tuple(frozen_state)
    policy = resolve_precision("train_step_fn", precision)

    def objective(params, state, x, y, mask, key):
        compute_params, x = cast_to_compute(policy, (params, x))   # grads come back float32
        outputs, new_state = apply_child(model, compute_params, state, x, key=key, train=True)
        outputs = cast_to_output(policy, outputs)
        new_state = keep_dtypes(policy, new_state, state)
        data_loss = masked_mean(per_example_values(loss, outputs, y), mask)
        extra = penalty(params) if penalty is not None else jnp.zeros((), data_loss.dtype)
        return data_loss + extra, (data_loss, extra, outputs, new_state)

    def step(train_state: TrainState, x, y, mask=None):
        _check_mask(mask, x)
        if augment is not None:
            x = _augmented(augment, step_key(train_state, AUGMENT), x)
        grads, (data_loss, extra, outputs, new_state) = jax.grad(objective, has_aux=True)(
            train_state.params, train_state.state, x, y, mask, step_key(train_state, DROPOUT))
        updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
        params = optax.apply_updates(train_state.params, updates)
        new_state = _freeze(new_state, train_state.state, frozen)
        report = {"loss": data_loss}
        if penalty is not None:
            report["penalty"] = extra
        report.update({name: _metric(fn, outputs, y, mask) for name, fn in metric_fns.items()})
        return TrainState(params, new_state, opt_state, train_state.key,
                          train_state.step + 1), report

    return step


def make_train_step(model: Layer, loss: Loss, optimizer: optax.GradientTransformation, *,
                    penalty: Callable[[Any], jax.Array] | None = None,
                    metrics: Metrics = (), augment: Callable | None = None,
                    frozen_state: Sequence[str] = (),
                    precision: str | Precision = "float32") -> Callable:
    """Builds `step(train_state, x, y, mask=None) -> (train_state, metrics)`, jitted once.

    The step applies the model with `train=True` and a dropout key folded in from
    `train_state.key` and the step count (`jdnn.train.state.step_key`), averages the
    per-example `loss` over the examples where `mask` is set (all, by default), adds
    `penalty(params)` if given, differentiates with respect to the params, and applies the
    optax update. The incoming `train_state` is donated: use the one
    returned.

    Args:
        model: the network.
        loss: a per-example loss `loss(outputs, y) -> (B,)`, e.g. `jdnn.losses.mse`.
        optimizer: any optax `GradientTransformation`.
        penalty: optional `penalty(params) -> scalar` added to the loss, e.g.
            `jdnn.regularizers.penalty(l2=1e-4)`.
        metrics: extra metrics computed on the training batch's outputs: names from
            `jdnn.metrics` (`"accuracy"`) or functions `fn(predictions, labels, mask)`.
        augment: optional keyed augmentation `augment(key, x) -> x` applied to each batch (see
            `jdnn.data.augment`), with its own key split from the state's key.
        frozen_state: path prefixes (e.g. `("0_batchnorm",)`) whose layer state is not updated:
            batch-norm running statistics stay frozen while fine-tuning.
        precision: `"float32"` (default, no casts), `"bfloat16"` or a `jdnn.Precision`:
            the forward and backward passes in bfloat16, params, optimizer state, batch-norm
            statistics, loss and metrics in float32 (`jdnn.train.precision`).

    Returns:
        The compiled step. Its metrics dict holds `"loss"` (the masked mean data loss), then
        `"penalty"` if a penalty is given, then each requested metric; all scalars.

    Examples:
        >>> step = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, optax.adam(1e-3))
        >>> train_state, m = step(train_state, x, y)   # x: (B, ...), y: (B,)
    """
    check_step_arguments("make_train_step", loss=loss, optimizer=optimizer, metrics=metrics,
                         penalty=penalty, augment=augment, frozen_state=frozen_state)
    step = train_step_fn(model, loss, optimizer, penalty=penalty, metrics=metrics,
                         augment=augment, frozen_state=frozen_state,
                         precision=resolve_precision("make_train_step", precision))
    return jax.jit(step, donate_argnums=0)


def eval_step_fn(model: Layer, loss: Loss, *, metrics: Metrics = (),
                 precision: str | Precision = "float32") -> Callable:
    """The pure, uncompiled evaluation step that `make_eval_step` jits."""
    metric_fns = resolve_metrics(metrics, loss=loss)
    policy = resolve_precision("eval_step_fn", precision)

    def eval_step(train_state: TrainState, x, y, mask=None):
        _check_mask(mask, x)
        params, x = cast_to_compute(policy, (train_state.params, x))
        outputs, _ = apply_child(model, params, train_state.state, x, train=False)
        outputs = cast_to_output(policy, outputs)
        report = {"loss": masked_mean(per_example_values(loss, outputs, y), mask)}
        report.update({name: _metric(fn, outputs, y, mask) for name, fn in metric_fns.items()})
        return report

    return eval_step


def make_eval_step(model: Layer, loss: Loss, *, metrics: Metrics = (),
                   precision: str | Precision = "float32") -> Callable:
    """Builds `eval_step(train_state, x, y, mask=None) -> metrics`, jitted, in eval mode.

    The model runs with `train=False` (running batch-norm statistics, no dropout); nothing is
    donated or updated.

    Args:
        model: the network.
        loss: a per-example loss `loss(outputs, y) -> (B,)`.
        metrics: names from `jdnn.metrics` or functions `fn(predictions, labels, mask)`;
            none by default (`("accuracy",)` for a classifier).
        precision: as in `make_train_step`: the forward pass in its compute dtype, the loss
            and metrics in float32.

    Returns:
        The compiled function; its dict holds `"loss"` and each metric, masked means.

    Examples:
        >>> evaluate = jdnn.make_eval_step(model, jdnn.losses.softmax_cross_entropy,
        ...                                metrics=("accuracy",))
        >>> evaluate(train_state, x_test, y_test)   # {"loss": ..., "accuracy": ...}
    """
    check_step_arguments("make_eval_step", loss=loss, metrics=metrics)
    return jax.jit(eval_step_fn(model, loss, metrics=metrics,
                                precision=resolve_precision("make_eval_step", precision)))
