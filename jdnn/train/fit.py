"""fit: a thin host loop around compiled epochs.

By default the data go to the device once and each epoch is ONE compiled `lax.scan` over its
batches: the padding mask, the gathers, every step; only the epoch's order, drawn on the host
from the state's key and step, goes in with it. Python runs once
per epoch, for validation, callbacks, the progress bar and the history. `mode="step"` keeps the
data on the host and dispatches one compiled step per batch, for datasets that do not fit on
the device; it draws the same permutations.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from tqdm.auto import tqdm

from jdnn.core import Layer
from jdnn.data.batching import batches_from_order, epoch_order, num_batches
from jdnn.data.validate import as_arrays, check_data
from jdnn.train.callbacks import Callback, Run
from jdnn.train.evaluate import DEFAULT_BATCH_SIZE, make_evaluator
from jdnn.train.history import History
from jdnn.train.state import TrainState
from jdnn.train.step import Loss, Metrics, train_step_fn

MODES = ("scan", "step")


def weighted_means(reports: dict, masks: jax.Array) -> dict:
    """Per-batch means `(steps,)` (each over its real examples) -> means over all real examples."""
    counts = jnp.sum(masks, axis=1)
    return {k: jnp.sum(v * counts) / jnp.sum(counts) for k, v in reports.items()}


def host_key_and_step(train_state: TrainState) -> tuple[np.ndarray, Any]:
    """The state's key as raw words and its step count, read back to the host (one sync)."""
    return jax.device_get((jax.random.key_data(train_state.key), train_state.step))


def epoch_orders(train_state: TrainState, n: int) -> np.ndarray:
    """The next epoch's order of the `n` examples, drawn on the host from the state's key and
    step (`jdnn.data.batching.epoch_order`): `(n,)`, or `(K, n)` for a stacked state of K
    members, each from its own key. Reads the key and step back from the device (one sync;
    `fit` reads them once and counts the steps itself)."""
    key_data, step = host_key_and_step(train_state)
    if np.ndim(step) == 0:
        return epoch_order(key_data, step, n)
    return np.stack([epoch_order(k, s, n) for k, s in zip(key_data, step)])


def epoch_fn(step: Callable, batch_size: int, *, drop_remainder: bool = False) -> Callable:
    """One epoch as a pure function `epoch(train_state, x, y, order) -> (train_state, means)`.

    `x` and `y` hold all `n` examples (device arrays) and `order` `(n,)` is the epoch's
    permutation (`epoch_orders`); the batches are cut from it (the last padded and masked, or
    dropped), gathered, and scanned with `step`; `means` holds each metric averaged over the
    epoch's real (unpadded) examples. Uncompiled: `make_epoch` jits it, `jax.vmap` can batch it
    (ensembles, hyper-parameter search).
    """

    def epoch(train_state, x, y, order):
        indices, masks = batches_from_order(order, batch_size, drop_remainder=drop_remainder)

        def body(state, batch):
            i, mask = batch
            return step(state, x[i], y[i], mask)

        train_state, reports = lax.scan(body, train_state, (indices, masks))
        return train_state, weighted_means(reports, masks)

    return epoch


def make_epoch(step: Callable, batch_size: int, *, drop_remainder: bool = False) -> Callable:
    """`epoch_fn` compiled, with the incoming train state donated."""
    return jax.jit(epoch_fn(step, batch_size, drop_remainder=drop_remainder), donate_argnums=0)


def _host_epoch(step: Callable, batch_size: int, drop_remainder: bool) -> Callable:
    """The per-step mode: the same batches, each gathered on the host and sent alone."""

    def epoch(train_state, x, y, order):
        indices, masks = batches_from_order(order, batch_size, drop_remainder=drop_remainder)
        reports = []
        for i, mask in zip(indices, masks):
            train_state, report = step(train_state, x[i], y[i], mask)
            reports.append(report)
        stacked = {k: jnp.stack([r[k] for r in reports]) for k in reports[0]}
        return train_state, weighted_means(stacked, masks)

    return epoch


def checked_data(model: Layer, loss: Loss, train_data: Any, validation_data: Any):
    """The training `(x, y)` as NumPy arrays and the validation pair on the device (or None),
    each checked against the model and loss before anything is compiled."""
    x, y = as_arrays(train_data, "train_data")
    check_data(x, y, model=model, loss=loss, name="train_data")
    validation = None
    if validation_data is not None:
        validation = as_arrays(validation_data, "validation_data")
        check_data(*validation, model=model, loss=loss, name="validation_data")
        validation = tuple(jnp.asarray(a) for a in validation)
    return x, y, validation


def _ordered(report: dict) -> dict[str, float]:
    """Host floats, the loss first (compiled dicts come back sorted by key)."""
    return {k: float(report[k]) for k in sorted(report, key=lambda k: (k != "loss", k))}


def fit(model: Layer, train_data: Any, *, loss: Loss, optimizer: optax.GradientTransformation,
        epochs: int, batch_size: int, key: jax.Array | int | None = None,
        validation_data: Any = None,
        metrics: Metrics = ("accuracy",), penalty: Callable | None = None,
        augment: Callable | None = None, callbacks: Sequence[Callback] = (),
        progress: bool = True, train_state: TrainState | None = None, mode: str = "scan",
        drop_remainder: bool = False, frozen_state: Sequence[str] = (),
        eval_batch_size: int = DEFAULT_BATCH_SIZE, mesh: Any = None
        ) -> tuple[TrainState, History]:
    """Trains `model` on `train_data` for `epochs` epochs.

    Each epoch draws a permutation from the train state's key and step, cuts the data into
    batches of `batch_size` (the last one padded and masked, or dropped), and runs the compiled
    training step on each; then evaluates `validation_data`, records the history and runs the
    callbacks. The step is compiled once for the whole run.

    Args:
        model: the network.
        train_data: an `(x, y)` pair of arrays, `x` `(N, ...)`, `y` `(N, ...)`.
        loss: a per-example loss, e.g. `jdnn.losses.softmax_cross_entropy`.
        optimizer: any optax `GradientTransformation` (schedules work as they are).
        epochs: epochs to run (more, when resuming from `train_state`).
        batch_size: examples per step.
        key: initializes the model and seeds shuffling and dropout; required unless
            `train_state` is given (resuming continues from that state's own key).
        validation_data: an optional `(x, y)` pair evaluated after each epoch (`val_*` keys).
        metrics: names from `jdnn.metrics` or functions; `()` for regression.
        penalty: optional `penalty(params) -> scalar`, e.g. `jdnn.regularizers.penalty(l2=1e-4)`.
        augment: optional keyed augmentation `augment(key, x) -> x` applied to every batch.
        callbacks: e.g. `EarlyStopping`, `ModelCheckpoint`, `ReduceLROnPlateau`,
            `TerminateOnNaN`, `CSVLogger`.
        progress: show a tqdm bar (only when stderr is a terminal).
        train_state: resume from this state (e.g. `jdnn.checkpoint.restore(...).train_state(opt)`);
            the epoch count continues from its step. It is donated: use the returned one.
        mode: `"scan"` (the data on the device, an epoch per compiled call) or `"step"` (the data
            on the host, a compiled call per batch; for datasets larger than the device).
        drop_remainder: drop the last, short batch instead of padding and masking it.
        frozen_state: path prefixes whose layer state (batch-norm statistics) stays fixed.
        eval_batch_size: examples per compiled batch when validating.
        mesh: a `jax.sharding.Mesh` with a data axis (`jdnn.parallel.data_mesh()`): data-parallel
            training, each batch split across the devices, the train state replicated, the
            gradients all-reduced by XLA; batch-norm statistics are the global batch's.
            `batch_size` must be a multiple of the device count; scan mode only.

    Returns:
        `(train_state, history)`.

    Example:
        >>> (x, y), (x_test, y_test) = jdnn.data.digits()
        >>> model = jdnn.serial(jdnn.Dense(128), jdnn.Relu(), jdnn.Dense(10))
        >>> train_state, history = jdnn.fit(model, (x, y),
        ...     loss=jdnn.losses.softmax_cross_entropy, optimizer=optax.adam(1e-3),
        ...     epochs=20, batch_size=64, key=jax.random.key(0), validation_data=(x_test, y_test))
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (isinstance(epochs, int) and epochs >= 0 and isinstance(batch_size, int)
            and batch_size >= 1):
        raise ValueError(f"epochs must be an int >= 0 and batch_size an int >= 1, got "
                         f"epochs={epochs!r}, batch_size={batch_size!r}")
    x, y, validation = checked_data(model, loss, train_data, validation_data)
    if train_state is None:
        if key is None:
            raise ValueError("fit needs key= to initialize the model (or train_state= to resume)")
        train_state = TrainState.create(model, optimizer, key, (batch_size, *x.shape[1:]))

    n = x.shape[0]
    step = train_step_fn(model, loss, optimizer, penalty=penalty, metrics=metrics,
                         augment=augment, frozen_state=frozen_state)
    if mesh is not None:
        if mode != "scan":
            raise ValueError(f"mesh= trains data-parallel in mode='scan' only, got mode={mode!r}")
        from jdnn import parallel  # parallel builds on this module

        run_epoch = parallel.make_parallel_epoch(step, batch_size, mesh,
                                                 drop_remainder=drop_remainder)
        train_state = parallel.replicate(train_state, mesh)
        x, y = parallel.put_data((x, y), mesh)
    elif mode == "scan":
        run_epoch = make_epoch(step, batch_size, drop_remainder=drop_remainder)
        x, y = jnp.asarray(x), jnp.asarray(y)
    else:
        run_epoch = _host_epoch(jax.jit(step, donate_argnums=0), batch_size, drop_remainder)
    evaluator = (make_evaluator(model, loss, metrics=metrics, batch_size=eval_batch_size)
                 if validation is not None else None)

    steps_per_epoch = num_batches(n, batch_size, drop_remainder=drop_remainder)
    key_data, step = host_key_and_step(train_state)   # then counted here: no sync per epoch
    step = int(step)
    start = step // steps_per_epoch
    run = Run(model, train_state, History(), epoch=start)
    for callback in callbacks:
        callback.on_train_begin(run)
    if run.train_state is not train_state:
        key_data, step = host_key_and_step(run.train_state)
        step = int(step)
    bar = tqdm(range(start + 1, start + epochs + 1), desc="fit", unit="epoch",
               disable=not progress or not sys.stderr.isatty(), file=sys.stderr)
    for epoch in bar:
        began = time.perf_counter()
        trained, means = run_epoch(run.train_state, x, y, epoch_order(key_data, step, n))
        run.train_state, step = trained, step + steps_per_epoch
        record = {"epoch": epoch, **_ordered(means)}
        if evaluator is not None:
            val = evaluator(run.train_state, *validation)
            record.update({f"val_{k}": v for k, v in _ordered(val).items()})
        record["seconds"] = time.perf_counter() - began
        run.history.append(record)
        run.epoch = epoch
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("epoch",
                                                                               "seconds")})
        for callback in callbacks:
            callback.on_epoch_end(run)
        if run.train_state is not trained:   # a callback swapped the state: read it again
            key_data, step = host_key_and_step(run.train_state)
            step = int(step)
        if run.stop_reason is not None:
            break
    bar.close()
    run.history.stop_reason = run.stop_reason
    if run.stop_reason is not None:
        run.history.stopped_by = run.stopped_by or "callback"
    for callback in callbacks:
        callback.on_train_end(run)
    return run.train_state, run.history
