"""fit: a thin host loop around compiled epochs.

By default the data go to the device once and each epoch is ONE compiled `lax.scan` over its
batches: the padding mask, the gathers, every step; only the epoch's order, drawn on the host
from the state's key and step, goes in with it. Python runs once
per epoch, for validation, callbacks, the progress bar and the history. `mode="step"` keeps the
data on the host and dispatches one compiled step per batch, for datasets that do not fit on
the device; it draws the same permutations.

The step scanned is fit's own (`jdnn.train.step.train_step_fn`) or any pure step with the same
contract, `step(train_state, x, y, mask) -> (train_state, metrics)` (`fit(..., step=)`, e.g.
DP-SGD's): every way of training gets callbacks, history and checkpoints from this one loop.
Data-parallel training is the same epoch given a sharding hook (`EpochSharding`).

This module is that host loop; the epochs it runs, their sharding hook and the program caches
that keep them across fits are built in `jdnn.train.epoch` (their names still import from here).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax
from tqdm.auto import tqdm

from jdnn.core import Layer, whole_number
from jdnn.data.batching import epoch_order, num_batches
from jdnn.distributed import put_global
from jdnn.losses import Loss
from jdnn.metrics import Metrics, resolve_metrics
from jdnn.train.arguments import (check_callbacks, check_step, check_train_state, checked_data,
                                  on_device)
from jdnn.train.callbacks import Callback, Run, copy_state
from jdnn.train.compilation_cache import enable_compilation_cache
from jdnn.train.epoch import (DATA_AXIS, EpochSharding, auto_mesh, axis_size, check_batch_size,
                              epoch_fn, epoch_orders, epoch_runner, epoch_sharding,
                              host_key_and_step, make_epoch, step_runner, weighted_means)
from jdnn.train.evaluate import DEFAULT_BATCH_SIZE, make_evaluator
from jdnn.train.history import History
from jdnn.train.precision import Precision, resolve_precision
from jdnn.train.state import DonationGuard, TrainState, donated, key_or_seed
from jdnn.train.step import check_step_arguments
from jdnn.train.stream import StreamEpochs, StreamRun, is_stream, open_stream, stream_evaluator

# The epoch's names keep their first home here: `from jdnn.train.fit import epoch_fn` works.
__all__ = ["DATA_AXIS", "EpochSharding", "MODES", "auto_mesh", "axis_size", "check_batch_size",
           "epoch_fn", "epoch_orders", "epoch_sharding", "fit", "host_key_and_step",
           "make_epoch", "weighted_means"]

MODES = ("scan", "step")


def _ordered(report: dict) -> dict[str, float]:
    """Host floats, the loss first (compiled dicts come back sorted by key)."""
    return {k: float(report[k]) for k in sorted(report, key=lambda k: (k != "loss", k))}


def _attach(error: BaseException, train_state: Any, history: History, note: str) -> None:
    """Hangs the run's last completed state and its history on `error`, with a note."""
    for name, value in (("train_state", train_state), ("history", history)):
        try:
            setattr(error, name, value)
        except AttributeError:  # an exception type without a __dict__
            pass
    if hasattr(error, "add_note"):
        error.add_note(note)


def fit(model: Layer, train_data: Any, *, loss: Loss, optimizer: optax.GradientTransformation,
        epochs: int, batch_size: int | None = None, key: jax.Array | int | None = None,
        validation_data: Any = None,
        metrics: Metrics | None = None, penalty: Callable | None = None,
        augment: Callable | None = None, callbacks: Sequence[Callback] = (),
        progress: bool = True, train_state: TrainState | None = None, mode: str = "scan",
        drop_remainder: bool = False, frozen_state: Sequence[str] = (),
        eval_batch_size: int = DEFAULT_BATCH_SIZE, mesh: Any = None,
        step: Callable | None = None, steps_per_epoch: int | None = None,
        precision: str | Precision = "float32") -> tuple[TrainState, History]:
    """Trains `model` on `train_data` for `epochs` epochs.

    Each epoch draws a permutation from the train state's key and step, cuts the data into
    batches of `batch_size` (the last one padded and masked, or dropped), and runs the compiled
    training step on each; then evaluates `validation_data`, records the history and runs the
    callbacks. The step is compiled once for the whole run.

    The step is `fit`'s own (`jdnn.train.step.train_step_fn`: the loss, `penalty`, `augment`,
    `frozen_state`) unless `step=` gives another, so every way of training (DP-SGD's
    `jdnn.make_dp_train_step`, a step of one's own) gets callbacks, history, validation,
    checkpoints and interrupts from this one loop. A step's contract:

        step(train_state, x, y, mask) -> (train_state, metrics)

    pure (the epoch scans it inside one `jax.jit`; a jitted step is fine too), with `x` and `y`
    one batch `(B, ...)` and `mask` `(B,)` marking its real examples (the last batch is
    padded); it returns the next `TrainState`, with the incoming one's structure, shapes and
    dtypes and `step` advanced by one (each epoch's order and every step key derive from it),
    and a dict of scalar metrics, each the mean over the examples `mask` keeps (the history
    records their means over the epoch). Draw randomness from
    `jdnn.train.state.step_key(train_state, stream)`.

    Interrupts and errors lose nothing. On `KeyboardInterrupt` (Ctrl-C, or a callback raising
    it) fit stops and *returns* `(train_state, history)` as usual, the state being the last
    completed one: the state after the last epoch in the history, or the state it started from
    if no epoch finished. `history.stopped_by` is `"interrupted"` and `history.stop_reason`
    says after which epoch; the callbacks' `on_train_end` still run (checkpoints and logs are
    written). Resuming with `fit(..., train_state=train_state)` then continues exactly as if
    nothing had happened. A Ctrl-C while an epoch runs on the device waits for that epoch (its
    input state is donated, so the epoch's result is the only whole state); a second Ctrl-C
    stops at once and gives the epoch up (the `KeyboardInterrupt` is then raised, as below). In
    `mode="step"` the state is the one the interrupted epoch started from, never a state between
    two steps, so a resumed run draws the same batches an uninterrupted one would.

    Any other exception (in a callback, in a batch, in validation) is re-raised as it is, with
    the last completed state and the history attached as `error.train_state` and
    `error.history` (and a note saying so); `on_train_end` does not run. `error.train_state` is
    None only if the state was lost inside a failed compiled call.

    Args:
        model: the network.
        train_data: an `(x, y)` pair of arrays, `x` `(N, ...)`, `y` `(N, ...)`; or a stream
            of `(x, y)` batches, any iterable but a tuple or list (a grain `DataLoader` or
            dataset, a generator): each epoch is then `steps_per_epoch` compiled steps, one per
            batch, the next batches put on the device in the background; a short batch is
            padded and masked; the order is the source's own (no shuffling by fit); an
            interrupt keeps the state after the last step, and a source that can save its
            position (`get_state`/`set_state`, as grain's iterators) resumes mid-epoch from a
            `ModelCheckpoint` (see `jdnn.train.stream`). Not with `mesh=` or `drop_remainder`.
        loss: a per-example loss function, e.g. `jdnn.losses.softmax_cross_entropy`.
        optimizer: any optax `GradientTransformation`, e.g. `optax.adam(1e-3)` (schedules work
            as they are).
        epochs: epochs to run (more, when resuming from `train_state`); an int >= 0.
        batch_size: examples per step, an int >= 1 (NumPy integers are accepted); for a
            stream, the largest batch it yields (default: its first batch's size).
        key: a `jax.random.key` or an int seed; initializes the model and seeds shuffling and
            dropout; required unless `train_state` is given (resuming continues from that
            state's own key).
        validation_data: an optional `(x, y)` pair evaluated after each epoch (`val_*` keys);
            its examples must have the training examples' shape. Or a re-iterable stream of
            `(x, y)` batches, read through once per epoch.
        metrics: names from `jdnn.metrics` or functions `fn(predictions, labels, mask)`,
            computed on each training batch (by fit's own step) and on `validation_data`.
            None, the default, follows the loss (`jdnn.metrics.default_metrics`):
            `("accuracy",)` for `softmax_cross_entropy` and `binary_cross_entropy`, none (the
            loss alone) for `mse` or a loss of one's own. Asking for `"accuracy"` needs
            targets that are class labels.
        penalty: optional `penalty(params) -> scalar`, e.g. `jdnn.regularizers.penalty(l2=1e-4)`.
        augment: optional keyed augmentation `augment(key, x) -> x` applied to every batch,
            e.g. `jdnn.data.augment.random_flip()` (called).
        callbacks: a list of callbacks, e.g. `EarlyStopping`, `ModelCheckpoint`,
            `ReduceLROnPlateau`, `TerminateOnNaN`, `CSVLogger`.
        progress: show a tqdm bar (only when stderr is a terminal).
        train_state: resume from this state (e.g. `jdnn.checkpoint.restore(...).train_state(opt)`);
            the epoch count continues from its step. It is donated: use the returned one.
        mode: `"scan"` (the data on the device, an epoch per compiled call) or `"step"` (the data
            on the host, a compiled call per batch; for datasets larger than the device; it
            keeps a copy of the state the epoch started from, see above).
        drop_remainder: drop the last, short batch instead of padding and masking it.
        frozen_state: path prefixes whose layer state (batch-norm statistics) stays fixed.
        eval_batch_size: examples per compiled batch when validating.
        mesh: a `jax.sharding.Mesh` with a data axis (`jdnn.parallel.data_mesh()`): data-parallel
            training, each batch split across the devices, the train state replicated, the
            gradients all-reduced by XLA; batch-norm statistics are the global batch's.
            `batch_size` must be a multiple of the device count; scan mode only.
        step: a training step of one's own, `step(train_state, x, y, mask) -> (train_state,
            metrics)` (the contract above), e.g. `jdnn.make_dp_train_step(model, loss,
            optimizer, l2_norm_clip=1.0, noise_multiplier=1.1)`; it replaces fit's own step, so
            `penalty`, `augment` and `frozen_state` must be left out (build them into the step)
            and `metrics` apply to validation only. `loss` still checks the labels and
            validates; `optimizer` initializes the train state unless `train_state` is given
            (pass the step's optimizer).
        steps_per_epoch: batches per epoch of a stream; default `len(train_data)`, required
            for a source with no length (an iterator, an endless grain loader).
        precision: `"float32"` (default: no casts), `"bfloat16"`, or a `jdnn.Precision`
            policy: the forward and backward passes compute in bfloat16 while the params,
            the optimizer state, batch-norm statistics, the loss and the metrics stay float32
            (`jdnn.train.precision`); validation runs under the same policy. No loss scaling
            is needed (bfloat16 has float32's range). Not with `step=` (build the policy into
            the step: `jdnn.train.step.train_step_fn(..., precision=)`).

    Returns:
        `(train_state, history)`.

    Raises:
        TypeError: for a loss, optimizer, callbacks, augmentation, step or train state of the
            wrong kind (e.g. `loss="mse"`, `optimizer=optax.adam`, a callback not in a list,
            `step=jdnn.make_dp_train_step` uncalled), or a step that returns something other
            than `(train_state, metrics)` (when it is traced).
        ValueError: for bad counts or data, before anything is compiled; data errors start
            with `train_data` or `validation_data` (e.g. targets `(N,)` for outputs `(N, 1)`
            under a loss of one's own, or accuracy asked for on targets that are not class
            labels). For a step that does not advance `train_state.step` by one per batch
            (after the first epoch).

    Examples:
        >>> (x, y), (x_test, y_test) = jdnn.data.digits()
        >>> model = jdnn.serial(jdnn.Dense(128), jdnn.Relu(), jdnn.Dense(10))
        >>> train_state, history = jdnn.fit(model, (x, y),
        ...     loss=jdnn.losses.softmax_cross_entropy, optimizer=optax.adam(1e-3),
        ...     epochs=20, batch_size=64, key=jax.random.key(0), validation_data=(x_test, y_test))
        >>> loss, sgd = jdnn.losses.softmax_cross_entropy, optax.sgd(0.1)   # DP-SGD, same loop
        >>> dp_step = jdnn.make_dp_train_step(model, loss, sgd, l2_norm_clip=1.0,
        ...                                   noise_multiplier=1.1)
        >>> train_state, history = jdnn.fit(model, (x, y), loss=loss, optimizer=sgd, step=dp_step,
        ...     epochs=20, batch_size=64, key=0, callbacks=[jdnn.EarlyStopping(patience=3)],
        ...     validation_data=(x_test, y_test))
    """
    if mode not in MODES:
        raise ValueError(f"fit: mode must be one of {MODES}, got {mode!r}")
    epochs = whole_number("fit", "epochs", epochs, minimum=0)
    if not is_stream(train_data):   # a stream's batch size is its first batch's by default
        batch_size = whole_number("fit", "batch_size", batch_size, minimum=1)
    eval_batch_size = whole_number("fit", "eval_batch_size", eval_batch_size, minimum=1)
    check_step_arguments("fit", loss=loss, optimizer=optimizer, metrics=metrics,
                         penalty=penalty, augment=augment, frozen_state=frozen_state)
    if step is not None:
        check_step("fit", step, penalty=penalty, augment=augment, frozen_state=frozen_state)
    policy = resolve_precision("fit", precision)
    if step is not None and policy.casts:
        raise ValueError(f"fit: precision={precision!r} applies to fit's own step, and step= "
                         f"replaces it; build the step with the policy instead (e.g. "
                         f"jdnn.train.step.train_step_fn(..., precision={precision!r})), or "
                         f"leave out step=")
    callbacks = check_callbacks("fit", callbacks)
    enable_compilation_cache()   # before anything compiles; only where it is safe (see there)
    source = stream = None
    if is_stream(train_data):   # batches from an iterable: a compiled step each (train.stream)
        source, spec, stream_steps, x, validation = open_stream(
            model, loss, train_data, validation_data, metrics=metrics, batch_size=batch_size,
            steps_per_epoch=steps_per_epoch, train_state=train_state,
            drop_remainder=drop_remainder, mesh=mesh)
        batch_size = spec.size
    elif steps_per_epoch is not None:
        raise ValueError("fit: steps_per_epoch= counts the batches of a stream; (x, y) arrays "
                         "make ceil(N / batch_size) per epoch")
    else:
        x, y, validation = checked_data(model, loss, train_data, validation_data,
                                        metrics=metrics)
    n = x.shape[0]
    if drop_remainder and batch_size > n:
        raise ValueError(f"fit: batch_size={batch_size} is larger than train_data's {n} "
                         f"examples, and drop_remainder=True drops that one short batch, so no "
                         f"step would run; lower batch_size to at most {n}, or pass "
                         f"drop_remainder=False")
    if train_state is None:
        if key is None:
            raise ValueError("fit needs key= to initialize the model (or train_state= to resume)")
        train_state = TrainState.create(model, optimizer, key_or_seed("fit", key),
                                        (batch_size, *x.shape[1:]))
    else:
        check_train_state("fit", model, train_state, x)

    if step is None:
        step_parts = ("own", model, loss, optimizer, penalty,
                      tuple(resolve_metrics(metrics, loss=loss).items()), augment,
                      tuple(frozen_state), policy)
    else:
        step_parts = ("given", step)
    sharding = None
    if mesh is not None:
        if mode != "scan":
            raise ValueError(f"fit: mesh= trains data-parallel in mode='scan' only, got "
                             f"mode={mode!r}")
        sharding = epoch_sharding(mesh, batch_size)
        # put_global: jax.device_put, also onto a mesh that spans processes (jdnn.distributed)
        train_state, x, y = put_global((train_state, x, y), sharding.replicated)
    elif mode == "scan" and source is None:
        x, y = on_device(x), on_device(y)
    if source is None:
        run_epoch = epoch_runner(step_parts, batch_size, drop_remainder, mode, sharding)
    else:
        stream = StreamEpochs("fit", "train_data", source, step_runner(step_parts), spec,
                              stream_steps)
    evaluator = (make_evaluator(model, loss, metrics=metrics, batch_size=eval_batch_size,
                                precision=policy) if validation is not None else None)
    if is_stream(validation_data):
        evaluator, validation = stream_evaluator(model, loss, metrics, policy,
                                                 validation_data), ()

    steps_per_epoch = (num_batches(n, batch_size, drop_remainder=drop_remainder)
                       if stream is None else stream.steps_per_epoch)
    key_data, count = host_key_and_step(train_state)   # then counted here: no sync per epoch
    count = int(count)
    start = count // steps_per_epoch
    run = (Run if stream is None else StreamRun)(model, train_state, History(), epoch=start)
    begun: list = []          # callbacks whose on_train_begin ran: they get on_train_end
    trained, finished = None, False   # the running epoch's output, and whether it completed
    bar = tqdm(range(start + 1, start + epochs + 1), desc="fit", unit="epoch",
               disable=not progress or not sys.stderr.isatty(), file=sys.stderr)
    guard = DonationGuard()
    try:
        with guard:
            for callback in callbacks:
                callback.on_train_begin(run)
                begun.append(callback)
            if run.train_state is not train_state:
                key_data, count = host_key_and_step(run.train_state)
                count = int(count)
            if stream is not None:   # the source to the state's step (a checkpoint's position)
                stream.start(run, count)
            for epoch in bar:
                began = time.perf_counter()
                steps = (steps_per_epoch if stream is None else   # a resumed stream: the rest
                         steps_per_epoch - count % steps_per_epoch)
                if stream is not None:   # a step per batch; each step's state kept
                    trained, means = stream.epoch(run, count)
                elif mode == "step":   # its steps donate a copy: the epoch's start survives
                    order = epoch_order(key_data, count, n)
                    trained, means = run_epoch(copy_state(run.train_state), x, y, order)
                else:                # a donated input: interrupts wait for the epoch's output
                    order = epoch_order(key_data, count, n)
                    guard.watch(run.train_state)
                    trained, means = run_epoch(run.train_state, x, y, order)
                record = {"epoch": epoch, **_ordered(means)}
                finished = True
                guard.hold()   # the epoch is done: keep it, through its validation
                if step is not None and epoch == start + 1:   # a step of one's own: once
                    _check_counted(trained, count + steps, steps)
                if evaluator is not None:
                    val = evaluator(trained, *validation)
                    record.update({f"val_{k}": v for k, v in _ordered(val).items()})
                record["seconds"] = time.perf_counter() - began
                run.history.append(record)
                run.train_state, run.epoch, count = trained, epoch, count + steps
                current, trained, finished = trained, None, False
                guard.release()
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                                 if k not in ("epoch", "seconds")})
                for callback in callbacks:
                    callback.on_epoch_end(run)
                if run.train_state is not current:   # a callback swapped the state: read it
                    key_data, count = host_key_and_step(run.train_state)
                    count = int(count)
                if run.stop_reason is not None:
                    break
    except KeyboardInterrupt as interrupt:
        state, done = _handed_back(run, trained, finished)
        if state is None:
            _attach(interrupt, None, run.history,
                    f"fit: interrupted while epoch {run.epoch + 1} ran with its input state "
                    f"donated: no whole state is left (error.train_state is None); the history "
                    f"is attached as error.history")
            raise
        run.train_state = state
        where = (f"after epoch {done} of {start + epochs}" if done > start else
                 f"before epoch {start + 1} of {start + epochs} finished")
        note = "" if done == run.epoch else f" (epoch {done}'s record is not in the history)"
        run.stop("interrupted", f"interrupted ({type(interrupt).__name__}) {where}{note}: the "
                                f"state is {_which(done, start)}; continue with "
                                f"fit(..., train_state=train_state)")
        if stream is not None:   # mid-epoch: the state after the last step taken
            run.stop("interrupted", stream.interrupted(interrupt, run))
    except Exception as error:
        state, done = _handed_back(run, trained, finished)
        _attach(error, state, run.history,
                f"fit: the last completed train state ({_which(done, start)}) is attached as "
                f"error.train_state, the history as error.history" if state is not None else
                "fit: the train state was lost inside the failed compiled call "
                "(error.train_state is None); the history is attached as error.history")
        raise
    finally:
        bar.close()
    run.history.stop_reason = run.stop_reason
    if run.stop_reason is not None:
        run.history.stopped_by = run.stopped_by or "callback"
    try:
        for callback in begun:
            callback.on_train_end(run)
    except BaseException as error:
        _attach(error, run.train_state, run.history,
                "fit: raised by a callback's on_train_end; the train state is attached as "
                "error.train_state and the history as error.history")
        raise
    return run.train_state, run.history


def _check_counted(train_state: TrainState, expected: int, steps: int) -> None:
    """A step of one's own must advance `train_state.step` by one per batch: fit counts the
    steps on the host and draws every epoch's order (and the step keys) from the count."""
    got = int(jax.device_get(train_state.step))
    if got != expected:
        raise ValueError(f"fit: step= must advance train_state.step by one per call (return "
                         f"TrainState(..., train_state.step + 1)): after an epoch of {steps} "
                         f"steps it is {got}, not {expected}; fit draws each epoch's order and "
                         f"every step's keys from it")


def _which(epoch: int, start: int) -> str:
    """`"the one after epoch 3"`, or `"the one it started from"` if no epoch finished."""
    return f"the one after epoch {epoch}" if epoch > start else "the one it started from"


def _handed_back(run: Run, trained: Any, finished: bool) -> tuple[Any, int]:
    """The last completed state and its epoch: the run's own state unless a compiled epoch
    consumed it, then that epoch's output if the epoch finished, else None (lost)."""
    if not donated(run.train_state):
        return run.train_state, run.epoch
    if trained is not None and finished and not donated(trained):
        return trained, run.epoch + 1
    return None, run.epoch
