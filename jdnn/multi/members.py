"""Many members of one model trained together: K stacked train states, one compiled program.

The engine under `jdnn.fit_ensemble` and `jdnn.search`. `train_members` vmaps one member's epoch
(`jdnn.fit`'s own, usually) over a `TrainState` whose leaves have a leading member axis, with
per-member hyper-parameters as data; each member gets its own epoch orders, drawn on the host
exactly as `jdnn.fit` draws them from its key. Several epochs (validation included) run per
compiled call, so the host syncs once per call, not once per member and epoch; a member that
stops early (no improvement for `patience` epochs, or a non-finite loss) is frozen by masking
while the others go on, so the program stays one.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm.auto import tqdm

from jdnn.core import Layer, whole_number
from jdnn.data.batching import epoch_batches, epoch_order
from jdnn.train.arguments import checked_data
from jdnn.train.fit import host_key_and_step
from jdnn.train.history import History
from jdnn.train.program_cache import ProgramCache
from jdnn.train.state import TrainState, as_key
from jdnn.losses import Loss
from jdnn.metrics import Metrics, resolve_metrics

EVAL_BATCH_SIZE = 1024


def one_key(where: str, key: Any) -> jax.Array:
    """One typed PRNG key, what `jax.random.split` into members and `fold_in` per trial need,
    from anything `jdnn.train.state.as_key` takes (an int seed, NumPy ints too, a
    `jax.random.key`, a legacy `jax.random.PRNGKey`, which is wrapped); a clear error for an
    array of several keys.

    Raises:
        TypeError: naming `where`, e.g. `"fit_ensemble: key must be one key, ..."`.
    """
    key = as_key(where, key)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == (2,):
        key = jax.random.wrap_key_data(key)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape != ():
        raise TypeError(f"{where}: key must be one key (an int seed or jax.random.key(seed)), "
                        f"got an array of keys of shape {key.shape}; the members' keys are "
                        f"derived from it")
    return key


def stack(states: Sequence[TrainState]) -> TrainState:
    """Train states of one structure stacked into one, each leaf with a leading member axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def members_of(where: str, train_state: Any) -> int:
    """The member count K of a stacked train state (its `step` is `(K,)`), or a clear error
    for anything else (e.g. one member's state, whose `step` is a scalar)."""
    step = getattr(train_state, "step", None)
    if not isinstance(train_state, TrainState) or np.ndim(step) != 1:
        got = (f"a TrainState whose step has shape {np.shape(step)}"
               if isinstance(train_state, TrainState) else type(train_state).__name__)
        raise ValueError(f"{where}: train_state must be the stacked TrainState fit_ensemble "
                         f"returns (each leaf with a leading member axis, step of shape (K,)), "
                         f"got {got}; stack single states with jdnn.multi.ensemble.stack([...])")
    return int(np.shape(step)[0])


def member(train_state: TrainState, i: int) -> TrainState:
    """Member `i` of a stacked train state, as the `TrainState` `jdnn.fit` would return.

    `i` may be negative (from the end), as in a list, and a NumPy or concrete JAX integer
    (e.g. `jnp.argmax(accuracies)`).

    Raises:
        ValueError: for an `i` outside `[-K, K)` or a train state that is not stacked.
    """
    k = members_of("member", train_state)
    try:
        index = None if isinstance(i, (bool, np.bool_)) else operator.index(i)
    except TypeError:
        index = None
    if index is None or not -k <= index < k:
        raise ValueError(f"member: i must be an int in [{-k}, {k}) for a state of {k} members, "
                         f"got {i!r}")
    return jax.tree.map(lambda leaf: leaf[index], train_state)


def check_member_data(where: str, model: Layer, loss: Loss, train_data: Any,
                      validation_data: Any):
    """`jdnn.fit`'s data checks (pairs, shapes against the model, NaN and inf, labels against
    the loss and the model's classes), each error prefixed with `where`, the entry point the
    user called. Returns `x`, `y` as NumPy arrays and the validation pair on the device."""
    try:
        return checked_data(model, loss, train_data, validation_data)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def prepare_data(model: Layer, loss: Loss, train_data: Any, validation_data: Any, *,
                 where: str = "train_members"):
    """Checks the data as `jdnn.fit` does (`check_member_data`); returns `x`, `y` and
    `validation` on the device."""
    x, y, validation = check_member_data(where, model, loss, train_data, validation_data)
    return jnp.asarray(x), jnp.asarray(y), validation


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
    metric_fns = resolve_metrics(metrics, loss=loss)

    def scores(outputs, y):
        return {"loss": jnp.mean(loss(outputs, y)),
                **{name: fn(outputs, y, None) for name, fn in metric_fns.items()}}

    return scores


def member_evaluator(model: Layer, loss: Loss, metrics: Metrics,
                     combine: Callable[[jax.Array], jax.Array] | None = None,
                     batch_size: int = EVAL_BATCH_SIZE) -> Callable:
    """`evaluate(states, x, y) -> (each member's scores (K,), the combined scores)`, pure.

    `combine` maps the members' outputs `(K, N, ...)` to one output `(N, ...)` scored like a
    member's (an ensemble's rule); without it the combined scores are `{}`.
    """
    outputs, scores = outputs_fn(model, batch_size), scores_fn(loss, metrics)

    def evaluate(states, x, y):
        out = jax.vmap(outputs, in_axes=(0, None))(states, x)
        members = jax.vmap(scores, in_axes=(0, None))(out, y)
        return members, ({} if combine is None else scores(combine(out), y))

    return evaluate


class Tracker(NamedTuple):
    """Per-member early-stopping bookkeeping, carried through the compiled epochs."""

    epoch: jax.Array       # () epochs run so far
    best: jax.Array        # (K,) best monitored value, sign-flipped so that larger is better
    best_epoch: jax.Array  # (K,) the epoch of `best`, 0 before any
    wait: jax.Array        # (K,) epochs since `best`
    stopped: jax.Array     # (K,) frozen: the state no longer changes


def fresh_tracker(k: int) -> Tracker:
    """The bookkeeping of `k` members before their first epoch. Every leaf has a fixed dtype
    (a weakly typed `best` would make the second compiled call, which gets the first one's
    strongly typed output, compile again)."""
    return Tracker(jnp.zeros((), jnp.int32), jnp.full(k, -jnp.inf, jnp.float32),
                   jnp.zeros(k, jnp.int32), jnp.zeros(k, jnp.int32), jnp.zeros(k, bool))


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
    if monitor not in record:
        raise ValueError(f"train_members: monitor {monitor!r} is not recorded; each epoch "
                         f"records {sorted(record)}")
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
    # fast: its time goes to library matmuls and memory-bound fusions (jdnn bench, vectorized).
    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
    # Kept between calls, as `jdnn.fit` keeps its programs: a search or ensemble of the same
    # model, loss and settings run again (another key, another space) does not compile again.
    return _PROGRAMS.get((member_epoch, evaluate, monitor, sign, patience, keep_best),
                         lambda: jax.jit(chunk, donate_argnums=0, compiler_options=options))


_PROGRAMS = ProgramCache(16)


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
    """What `train_members` returns: the stacked final (and best) states, each member's
    history and the combined prediction's (empty without a `combine` rule)."""

    train_state: TrainState
    best_state: TrainState | None
    histories: list[History]
    combined: History
    best_epoch: np.ndarray


def train_members(train_state: TrainState, hparams: Any, member_epoch: Callable, x: jax.Array,
                  y: jax.Array, *, epochs: int, steps_per_epoch: int,
                  validation: tuple | None = None, evaluate: Callable | None = None,
                  monitor: str | None = None, mode: str = "max", patience: int | None = None,
                  keep_best: bool = False, epochs_per_call: int = 10, progress: bool = True,
                  desc: str = "members") -> Trained:
    """Trains K stacked members together; the engine of `jdnn.fit_ensemble` and `jdnn.search`.

    `member_epoch(train_state, hparams, x, y, order) -> (train_state, means)` is one member's
    epoch, vmapped over the stacked `train_state`, `hparams` (any pytree with a leading K axis)
    and each member's epoch order, drawn on the host as `jdnn.fit` draws it (`chunk_orders`;
    `steps_per_epoch` tells the step count each later epoch of a chunk starts at).
    After each epoch `evaluate(states, *validation)` (`member_evaluator`) scores every member
    (`val_*` in its history) and their combination (the `combined` history), if given.
    With a `monitor`, a member whose value has not improved for `patience` epochs, or whose
    loss is not finite, is frozen (`jnp.where(stopped, old, new)` after each epoch) while the
    others go on; `keep_best` also keeps each member's state from its best epoch. `patience`
    is Keras' and `jdnn.EarlyStopping`'s: the number of epochs without improvement after which
    a member stops (best at epoch 4, `patience=2`: it stops after epoch 6), >= 1.
    """
    epochs = whole_number("train_members", "epochs", epochs, 0)
    steps_per_epoch = whole_number("train_members", "steps_per_epoch", steps_per_epoch, 1)
    epochs_per_call = whole_number("train_members", "epochs_per_call", epochs_per_call, 1)
    if patience is not None:
        patience = whole_number("train_members", "patience", patience, 1)
    if mode not in ("max", "min"):
        raise ValueError(f"train_members: mode must be 'max' or 'min', got {mode!r}")
    k = members_of("train_members", train_state)
    evaluate = None if validation is None else evaluate
    sign = 1.0 if mode == "max" else -1.0
    length = chunk_length(epochs, epochs_per_call) if epochs else 1
    run = _program(member_epoch, evaluate, monitor, sign, patience, keep_best)
    best = jax.tree.map(jnp.copy, train_state) if keep_best else None
    tracker = fresh_tracker(k)
    carry = (train_state, best, tracker)
    histories, combined = [History() for _ in range(k)], History()
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
            if ens:
                combined.append({"epoch": epoch, **_ordered({f"val_{n}": v[e]
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
            history.stopped_by = "early_stopping" if math.isfinite(last["loss"]) else "non_finite"
            history.stop_reason = (
                f"non-finite loss at epoch {last['epoch']}" if not math.isfinite(last["loss"])
                else f"early stopping: {monitor} did not improve for {patience} epochs (best "
                     f"{sign * tracker.best[i]:.4g} at epoch {tracker.best_epoch[i]})")
    return Trained(train_state, best, histories, combined, np.asarray(tracker.best_epoch))
