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

`train_members` is the engine, shared with `jdnn.search`: it also takes per-member
hyper-parameters and stops members early one by one, masking, within the same program.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from tqdm.auto import tqdm

from jdnn import io, losses
from jdnn.core import Layer
from jdnn.data.batching import epoch_batches, epoch_order, num_batches
from jdnn.data.validate import as_arrays, check_data
from jdnn.train.fit import checked_data, epoch_fn, host_key_and_step
from jdnn.train.history import History
from jdnn.train.state import TrainState
from jdnn.train.step import Loss, Metrics, resolve_metrics, train_step_fn

COMBINE = ("softmax", "sigmoid", "mean")
EVAL_BATCH_SIZE = 1024


def ensemble_keys(key: jax.Array | int, size: int) -> jax.Array:
    """The `size` member keys `fit_ensemble(key=key)` gives its members: `jax.random.split`.

    Example:
        >>> k3 = ensemble_keys(0, 16)[3]   # jdnn.fit(..., key=k3) reproduces member 3
    """
    if not (isinstance(size, int) and size >= 1):
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    return jax.random.split(jax.random.key(key) if isinstance(key, int) else key, size)


def stack(states: Sequence[TrainState]) -> TrainState:
    """Train states of one structure stacked into one, each leaf with a leading member axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def init_members(model: Layer, optimizer: optax.GradientTransformation, keys: jax.Array,
                 input_shape: tuple[int, ...]) -> TrainState:
    """`TrainState.create(model, optimizer, key, input_shape)` for each key, stacked.

    Each member is created exactly as `jdnn.fit` creates its state; only training is vmapped.
    (Vmapping the initialization instead compiles a batched random-number program that cost
    seconds on a small CPU, more than the whole eager loop.)
    """
    return stack([TrainState.create(model, optimizer, k, input_shape) for k in keys])


def member(train_state: TrainState, i: int) -> TrainState:
    """Member `i` of a stacked train state, as the `TrainState` `jdnn.fit` would return."""
    return jax.tree.map(lambda leaf: leaf[i], train_state)


def default_combine(loss: Loss) -> str:
    """`"softmax"` for `softmax_cross_entropy`, `"sigmoid"` for `binary_cross_entropy`
    (partials included), `"mean"` for any other loss."""
    fn = loss.func if isinstance(loss, functools.partial) else loss
    return {losses.softmax_cross_entropy: "softmax",
            losses.binary_cross_entropy: "sigmoid"}.get(fn, "mean")


def _check_combine(combine: str) -> str:
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
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


def outputs_fn(model: Layer, batch_size: int = EVAL_BATCH_SIZE) -> Callable:
    """`outputs(train_state, x) -> (N, ...)`: eval-mode outputs in fixed-size batches (pure)."""

    def outputs(train_state, x):
        n = x.shape[0]
        if n <= batch_size:
            return model.apply(train_state.params, train_state.state, x, train=False)[0]
        indices, _ = epoch_batches(None, n, batch_size)

        def body(carry, i):
            return carry, model.apply(train_state.params, train_state.state, x[i], train=False)[0]

        _, out = lax.scan(body, None, indices)
        return out.reshape(-1, *out.shape[2:])[:n]

    return outputs


def scores_fn(loss: Loss, metrics: Metrics) -> Callable:
    """`scores(outputs, y) -> {"loss": mean loss, metric: value}` over a whole dataset (pure)."""
    metric_fns = resolve_metrics(metrics)

    def scores(outputs, y):
        return {"loss": jnp.mean(loss(outputs, y)),
                **{name: fn(outputs, y, None) for name, fn in metric_fns.items()}}

    return scores


class Tracker(NamedTuple):
    """Per-member early-stopping bookkeeping, carried through the compiled epochs."""

    epoch: jax.Array       # () epochs run so far
    best: jax.Array        # (K,) best monitored value, sign-flipped so that larger is better
    best_epoch: jax.Array  # (K,) the epoch of `best`, 0 before any
    wait: jax.Array        # (K,) epochs since `best`
    stopped: jax.Array     # (K,) frozen: the state no longer changes


def _where(mask: jax.Array, old: Any, new: Any) -> Any:
    """`new`, with the members where `mask` `(K,)` is set taken from `old`."""
    def pick(o, n):
        return jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), o, n)
    return jax.tree.map(pick, old, new)


def _track(tracker: Tracker, record: dict, monitor: str | None, sign: float,
           patience: int | None) -> tuple[Tracker, jax.Array]:
    active = ~tracker.stopped
    epoch = tracker.epoch + 1
    if monitor is None:
        return tracker._replace(epoch=epoch), jnp.zeros_like(active)
    value = sign * record[monitor]
    improved = active & jnp.isfinite(value) & (value > tracker.best)
    wait = jnp.where(improved, 0, tracker.wait + active)
    stop = ~jnp.isfinite(record["loss"])
    if patience is not None:
        stop = stop | (wait >= patience)
    return Tracker(epoch, jnp.where(improved, value, tracker.best),
                   jnp.where(improved, epoch, tracker.best_epoch), wait,
                   tracker.stopped | (active & stop)), improved


def _program(member_epoch: Callable, evaluate: Callable | None, monitor: str | None,
             sign: float, patience: int | None, keep_best: bool):
    """Epochs of every member (and their validation) as one compiled call, one per order in
    `orders` `(epochs, K, n)`."""

    def chunk(carry, hparams, x, y, validation, orders):
        def one(carry, order):
            states, best_states, tracker = carry
            new, means = jax.vmap(member_epoch, in_axes=(0, 0, None, None, 0))(
                states, hparams, x, y, order)
            if monitor is not None:  # stopped members keep their state: the program stays one
                new = _where(tracker.stopped, states, new)
            record, ensemble = dict(means), {}
            if evaluate is not None:
                members, ensemble = evaluate(new, *validation)
                record.update({f"val_{k}": v for k, v in members.items()})
            active = ~tracker.stopped
            tracker, improved = _track(tracker, record, monitor, sign, patience)
            if keep_best:
                best_states = _where(~improved, best_states, new)
            return (new, best_states, tracker), (record, ensemble, active)

        return lax.scan(one, carry, orders)

    # On CPU, LLVM's -O1 compiles this program ~1.3x faster than the default -O2 and runs it as
    # fast: its time goes to library matmuls and memory-bound fusions (benchmarks/vectorized.py).
    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
    return jax.jit(chunk, donate_argnums=0, compiler_options=options)


def _evaluator(model: Layer, loss: Loss, metrics: Metrics, combine: str | None,
               batch_size: int = EVAL_BATCH_SIZE) -> Callable:
    """`evaluate(states, x, y) -> (each member's scores (K,), the ensemble's scores)`."""
    outputs, scores = outputs_fn(model, batch_size), scores_fn(loss, metrics)

    def evaluate(states, x, y):
        out = jax.vmap(outputs, in_axes=(0, None))(states, x)
        members = jax.vmap(scores, in_axes=(0, None))(out, y)
        return members, ({} if combine is None else scores(combined_logits(out, combine), y))

    return evaluate


def _ordered(record: dict, index: int | None = None) -> dict[str, float]:
    """Host floats of one member (`index`) or of the ensemble, ordered as `jdnn.fit` orders
    them: the loss first, then the metrics, then the same for validation."""
    def order(name):
        base = name.removeprefix("val_")
        return (name.startswith("val_"), base != "loss", base)
    return {k: float(record[k] if index is None else record[k][index])
            for k in sorted(record, key=order)}


def chunk_orders(train_state: TrainState, n: int, length: int, steps_per_epoch: int
                 ) -> np.ndarray:
    """The orders of the next `length` epochs of every member, `(length, K, n)`: member i's
    epoch e is shuffled as `jdnn.fit` would shuffle it, from its key and the step it will have
    reached, `step_i + e * steps_per_epoch` (a member stopped early ignores its orders)."""
    key_data, steps = host_key_and_step(train_state)
    return np.stack([np.stack([epoch_order(k, s + e * steps_per_epoch, n)
                               for k, s in zip(key_data, steps)]) for e in range(length)])


def chunk_length(epochs: int, cap: int) -> int:
    """The largest divisor of `epochs` that is at most `cap`: every call has the same length,
    so the program compiles once."""
    return max(d for d in range(1, max(1, min(epochs, cap)) + 1) if epochs % d == 0)


@dataclasses.dataclass
class Trained:
    """What `train_members` returns: the stacked final (and best) states and the histories."""

    train_state: TrainState
    best_state: TrainState | None
    histories: list[History]
    ensemble: History | None
    best_epoch: np.ndarray


def train_members(model: Layer, train_state: TrainState, hparams: Any, member_epoch: Callable,
                  x: jax.Array, y: jax.Array, validation: tuple | None, *, epochs: int,
                  steps_per_epoch: int,
                  loss: Loss, metrics: Metrics, combine: str | None = None,
                  monitor: str | None = None, mode: str = "max", patience: int | None = None,
                  keep_best: bool = False, epochs_per_call: int = 10, progress: bool = True,
                  desc: str = "members") -> Trained:
    """Trains K stacked members together; the engine of `fit_ensemble` and `jdnn.search`.

    `member_epoch(train_state, hparams, x, y, order) -> (train_state, means)` is one member's
    epoch, vmapped over the stacked `train_state`, `hparams` (any pytree with a leading K axis)
    and each member's epoch order, drawn on the host as `jdnn.fit` draws it (`chunk_orders`;
    `steps_per_epoch` tells the step count each later epoch of a chunk starts at).
    With a `monitor`, a member whose value has not improved for `patience` epochs, or whose
    loss is not finite, is frozen (`jnp.where(stopped, old, new)` after each epoch) while the
    others go on; `keep_best` also keeps each member's state from its best epoch.
    """
    k = jax.tree.leaves(train_state)[0].shape[0]
    evaluate = None if validation is None else _evaluator(model, loss, metrics, combine)
    sign = 1.0 if mode == "max" else -1.0
    length = chunk_length(epochs, epochs_per_call) if epochs else 1
    run = _program(member_epoch, evaluate, monitor, sign, patience, keep_best)
    best = jax.tree.map(jnp.copy, train_state) if keep_best else None
    tracker = Tracker(jnp.zeros((), jnp.int32), jnp.full(k, -jnp.inf), jnp.zeros(k, jnp.int32),
                      jnp.zeros(k, jnp.int32), jnp.zeros(k, bool))
    carry = (train_state, best, tracker)
    histories, ensemble = [History() for _ in range(k)], History() if combine else None
    bar = tqdm(total=epochs, desc=desc, unit="epoch", file=sys.stderr,
               disable=not progress or not sys.stderr.isatty())
    done = 0
    while done < epochs:
        began = time.perf_counter()
        orders = chunk_orders(carry[0], x.shape[0], length, steps_per_epoch)
        carry, (records, ens, active) = run(carry, hparams, x, y, validation, orders)
        records, ens, active, stopped = jax.device_get((records, ens, active, carry[2].stopped))
        seconds = (time.perf_counter() - began) / length
        for e in range(length):
            epoch, record = done + e + 1, {name: v[e] for name, v in records.items()}
            for i in np.flatnonzero(active[e]):
                histories[i].append({"epoch": epoch, **_ordered(record, i), "seconds": seconds})
            if ensemble is not None and ens:
                ensemble.append({"epoch": epoch, **_ordered({f"val_{n}": v[e]
                                                             for n, v in ens.items()}),
                                 "seconds": seconds})
        done += length
        bar.update(length)
        if monitor is not None and stopped.all():
            break
    bar.close()
    train_state, best, tracker = carry
    tracker = jax.device_get(tracker)
    for i, history in enumerate(histories):
        if tracker.stopped[i] and history.records:
            last = history.records[-1]
            history.stop_reason = (
                f"non-finite loss at epoch {last['epoch']}" if not math.isfinite(last["loss"])
                else f"early stopping: {monitor} did not improve for {patience} epochs (best "
                     f"{sign * tracker.best[i]:.4g} at epoch {tracker.best_epoch[i]})")
    return Trained(train_state, best, histories, ensemble, np.asarray(tracker.best_epoch))


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
                 metrics: Metrics = ("accuracy",), penalty: Callable | None = None,
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
        loss, optimizer, epochs, batch_size, metrics, penalty: as in `jdnn.fit`.
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

    Example:
        >>> (x, y), test = jdnn.data.digits()
        >>> model = jdnn.serial(jdnn.Dense(128), jdnn.Relu(), jdnn.Dense(10))
        >>> states, history = fit_ensemble(model, (x, y), size=16,
        ...     loss=jdnn.losses.softmax_cross_entropy, optimizer=optax.adam(1e-3), epochs=20,
        ...     batch_size=32, key=0, validation_data=test)
        >>> history.ensemble["val_accuracy"][-1], history["val_accuracy"][-1]   # (K,) members
    """
    if not (isinstance(epochs, int) and epochs >= 0 and isinstance(batch_size, int)
            and batch_size >= 1):
        raise ValueError(f"epochs must be an int >= 0 and batch_size an int >= 1, got "
                         f"epochs={epochs!r}, batch_size={batch_size!r}")
    combine = _check_combine(default_combine(loss) if combine is None else combine)
    x, y, validation = prepare_data(model, loss, train_data, validation_data)
    keys = ensemble_keys(key, size)
    states = init_members(model, optimizer, keys, (batch_size, *x.shape[1:]))
    epoch = epoch_fn(train_step_fn(model, loss, optimizer, penalty=penalty, metrics=metrics),
                     batch_size)
    trained = train_members(model, states, {}, lambda ts, hp, x, y, order: epoch(ts, x, y, order),
                            x, y, validation, epochs=epochs,
                            steps_per_epoch=num_batches(x.shape[0], batch_size),
                            loss=loss, metrics=metrics,
                            combine=combine, epochs_per_call=epochs_per_call,
                            progress=progress, desc="ensemble")
    return trained.train_state, EnsembleHistory(trained.histories, trained.ensemble)


def prepare_data(model: Layer, loss: Loss, train_data: Any, validation_data: Any):
    """Checks the data as `jdnn.fit` does; returns `x`, `y` and `validation` on the device."""
    x, y, validation = checked_data(model, loss, train_data, validation_data)
    return jnp.asarray(x), jnp.asarray(y), validation


@functools.lru_cache(maxsize=32)
def _predictor(model: Layer, combine: str, batch_size: int) -> Callable:
    outputs = jax.vmap(outputs_fn(model, batch_size), in_axes=(0, None))
    return jax.jit(lambda states, x: combined_prediction(outputs(states, x), combine))


@functools.lru_cache(maxsize=32)
def _scorer(model: Layer, loss: Loss, metrics: tuple, combine: str, batch_size: int):
    return jax.jit(_evaluator(model, loss, dict(metrics), combine, batch_size))


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

    Example:
        >>> labels = predict_ensemble(model, states, x_test).argmax(-1)
    """
    predict = _predictor(model, _check_combine(combine), batch_size)
    return np.asarray(predict(train_state, jnp.asarray(x)))


def evaluate_ensemble(model: Layer, train_state: TrainState, data: Any, *, loss: Loss,
                      metrics: Metrics = ("accuracy",), combine: str | None = None,
                      batch_size: int = EVAL_BATCH_SIZE) -> dict[str, Any]:
    """Each member's and the ensemble's loss and metrics on `data`, in evaluation mode.

    Args:
        model, train_state: the network and its stacked state (from `fit_ensemble`).
        data: an `(x, y)` pair.
        loss, metrics: as in `jdnn.evaluate`.
        combine: the combination rule; by default picked from the loss (`default_combine`).
        batch_size: examples per compiled batch.

    Returns:
        `{"members": [{"loss": ..., "accuracy": ...}, ...], "ensemble": {"loss": ..., ...}}`.

    Example:
        >>> report = evaluate_ensemble(model, states, test, loss=jdnn.losses.softmax_cross_entropy)
        >>> report["ensemble"]["accuracy"], [m["accuracy"] for m in report["members"]]
    """
    x, y = as_arrays(data, "data")
    check_data(x, y, model=model, loss=loss, name="data")
    combine = _check_combine(default_combine(loss) if combine is None else combine)
    score = _scorer(model, loss, tuple(resolve_metrics(metrics).items()), combine, batch_size)
    members, ensemble = jax.device_get(score(train_state, jnp.asarray(x), jnp.asarray(y)))
    size = jax.tree.leaves(train_state)[0].shape[0]
    return {"members": [{k: float(v[i]) for k, v in members.items()} for i in range(size)],
            "ensemble": {k: float(v) for k, v in ensemble.items()}}
