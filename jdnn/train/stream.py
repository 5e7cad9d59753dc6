"""Streaming input: `fit`, `evaluate` and `predict` over an iterable of batches.

Arrays that fit in memory go to the device once, and an epoch is one compiled `lax.scan`
(`jdnn.train.fit`). A stream cannot be scanned: its batches come from the host one at a time
(a grain `DataLoader`, a generator reading files). So an epoch over a stream runs the compiled
step once per batch, while a background thread (`jdnn.data.prefetch`) checks, pads and puts the
next batches on the device: the step, dispatched asynchronously, never waits on the host while
the pipeline keeps up.

    a stream      any iterable of `(x, y)` batches (`x` alone for `predict`), `x` `(B, ...)`,
                  `y` `(B, ...)`, other than a tuple or list (those are `(x, y)` arrays): a
                  generator, an iterator, a grain `MapDataset`/`IterDataset`/`DataLoader`
    batch size    the first batch's (or `batch_size=`); a batch with fewer examples is padded
                  with its own examples repeated and masked, as the array path pads its last
                  batch, so the step compiles once; one with more, or of another per-example
                  shape or dtype, is an error naming the batch
    an epoch      `steps_per_epoch` batches (default `len(source)`). The run reads one
                  iterator; when a re-iterable source (a grain dataset or loader, a custom
                  iterable) runs dry, the next pass begins (`iter(source)` again); an
                  iterator that runs dry inside an epoch is an error
    a position    what the source's iterator returns from `get_state()` (grain's iterators,
                  or any object with `get_state`/`set_state`) after a batch, kept with the
                  step it belongs to: `{"step": s, "state": ...}` (bytes as base64)

Resuming. Each step's state is kept (an interrupt returns the state after the last completed
step, mid-epoch) together with the position after that step's batch, as
`StreamRun.data_position`: `ModelCheckpoint` saves it in the checkpoint's metadata and hands it
back when a run resumes from that checkpoint, and `fit` then `set_state`s a fresh iterator
there. In one process, a run continued with `fit(..., train_state=...)` and the same source
goes on where the last one stopped (the iterator is rewound over the batches prefetched but not
trained on). A re-iterable source that cannot save its position is fast-forwarded instead: a
new iterator, the batches the state has already trained on read again and skipped. An
iterator that cannot is taken where it stands: after an interrupt, the (at most 3) batches
read ahead are lost to it.
"""

from __future__ import annotations

import base64
import dataclasses
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from jdnn.core import Layer, whole_number
from jdnn.data.validate import check_data
from jdnn.data.prefetch import Prefetcher
from jdnn.metrics import resolve_metrics
from jdnn.padded import Padded, apply_child
from jdnn.train.arguments import checked_data
from jdnn.train.callbacks import Run
from jdnn.train.precision import cast_to_compute, cast_to_output
from jdnn.train.program_cache import ProgramCache
from jdnn.train.state import DonationGuard, TrainState
from jdnn.train.step import eval_step_fn

PREFETCH = 2   # batches put on the device ahead of the step: double buffering


def is_stream(data: Any) -> bool:
    """Whether `data` is a stream of batches rather than `(x, y)` arrays (see the module)."""
    if isinstance(data, (tuple, list, dict, str, bytes, np.ndarray, jax.Array, Padded)):
        return False
    return isinstance(data, Iterable) or callable(getattr(data, "__iter__", None))


def _describe(item: Any) -> str:
    if isinstance(item, (tuple, list)):
        return f"a {type(item).__name__} of length {len(item)}"
    if isinstance(item, dict):
        return f"a dict with keys {sorted(map(str, item))}"
    if hasattr(item, "shape"):
        return f"a single array of shape {tuple(item.shape)}"
    return f"{type(item).__name__} {item!r:.60}"


# ---------------------------------------------------------------------------------------------
# One batch: unpacked, checked against the first, padded to the batch size.


class BatchSpec(NamedTuple):
    """What every batch of a stream must be: at most `size` examples of `x`'s and `y`'s
    per-example shapes and dtypes (`y` None for `predict`)."""

    size: int
    x: tuple[tuple, np.dtype]
    y: tuple[tuple, np.dtype] | None


def unpack(where: str, name: str, index: int, item: Any, targets: bool
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """A batch as host arrays `(x (B, ...), y (B, ...))` (`y` None without `targets`).

    Raises:
        ValueError: for an item that is not an `(x, y)` pair (with `targets`), an `x` with no
            batch axis or no example, or an `x` and `y` of different batch sizes.
    """
    pair = isinstance(item, (tuple, list)) and len(item) == 2
    if targets and not pair:
        raise ValueError(f"{where}: {name} batch {index} must be an (x, y) pair of arrays, got "
                         f"{_describe(item)}; make the source yield (x, y) tuples, e.g. map a "
                         f"record to (record['image'], record['label'])")
    x, y = item if pair else (item, None)
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{where}: {name} batch {index} has x of shape {x.shape}, expected "
                         f"(B, ...) with B >= 1 examples on the first axis; batch the source "
                         f"(e.g. grain's .batch(batch_size))")
    if not targets:
        return x, None
    y = np.asarray(y)
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: {name} batch {index} has x of shape {x.shape} but y of "
                         f"shape {y.shape}; x and y must hold the same examples, "
                         f"{x.shape[0]} of them on the first axis of both")
    return x, y


def spec_of(x: np.ndarray, y: np.ndarray | None, batch_size: int | None) -> BatchSpec:
    """The spec set by the first batch (its size unless `batch_size` is given)."""
    return BatchSpec(batch_size or x.shape[0], (x.shape[1:], x.dtype),
                     None if y is None else (y.shape[1:], y.dtype))


def check(where: str, name: str, index: int, x: np.ndarray, y: np.ndarray | None,
          spec: BatchSpec) -> None:
    """Raises a `ValueError` naming batch `index` unless `(x, y)` fits `spec`."""
    if x.shape[0] > spec.size:
        raise ValueError(f"{where}: {name} batch {index} has {x.shape[0]} examples, more than "
                         f"the batch size {spec.size} (the first batch's, or batch_size=); "
                         f"pass batch_size= the largest batch the source yields")
    for part, array, (shape, dtype) in (("x", x, spec.x), ("y", y, spec.y or (None, None))):
        if array is None:
            continue
        if array.shape[1:] != shape or array.dtype != dtype:
            raise ValueError(f"{where}: {name} batch {index} has {part} of shape "
                             f"{array.shape} and dtype {array.dtype}, expected (<={spec.size}, "
                             f"{', '.join(map(str, shape))}) of dtype {dtype} like batch 0; "
                             f"the step is compiled for one shape, so every batch needs the "
                             f"same per-example shape and dtype (resize or cast in the "
                             f"pipeline)")


def padded(x: np.ndarray, y: np.ndarray | None, size: int):
    """`(x, y, mask)` with `size` examples: a short batch is filled with its own examples
    repeated, `mask` `(size,)` False on them (never copies of one example: batch-norm
    statistics see the padding)."""
    real = x.shape[0]
    mask = np.arange(size) < real
    if real == size:
        return x, y, mask
    fill = np.resize(np.arange(real), size)
    return x[fill], None if y is None else y[fill], mask


# ---------------------------------------------------------------------------------------------
# The source: one iterator read by the prefetch thread, a new pass for a re-iterable that runs
# dry, and its position (get_state/set_state) in a form JSON keeps.


def encode(state: Any) -> Any:
    """A source's state as JSON can hold it: bytes (grain's `DataLoader`) as base64."""
    if isinstance(state, bytes):
        return {"base64": base64.b64encode(state).decode("ascii")}
    return state


def decode(state: Any) -> Any:
    """`encode`'s inverse."""
    if isinstance(state, dict) and set(state) == {"base64"}:
        return base64.b64decode(state["base64"])
    return state


class Source:
    """A run's batches from `data`, one iterator at a time (see the module).

    `next` is called by the prefetch thread only; everything else by the training loop while
    no prefetch thread runs."""

    def __init__(self, data: Any):
        self.data = data
        self.one_shot = isinstance(data, Iterator)
        self.iterator = data if self.one_shot else None
        self.pending: list = []      # the first batch, read ahead for its shapes
        self.before_first: Any = None
        self.at: int | None = 0      # the step the iterator stands at (None: unknown)

    def _open(self) -> None:
        self.iterator = self.data if self.one_shot else iter(self.data)

    def __next__(self) -> Any:
        if self.pending:
            return self.pending.pop()
        if self.iterator is None:
            self._open()
        try:
            return next(self.iterator)
        except StopIteration:
            if self.one_shot:
                raise
            self._open()             # a re-iterable: its next pass (an empty one stops)
            return next(self.iterator)

    def __iter__(self) -> Source:
        return self

    def first(self) -> Any:
        """The next batch, read ahead and kept: the next `next` returns it again."""
        if self.iterator is None:
            self._open()
        self.before_first = self.position()
        item = next(self)
        self.pending.append(item)
        return item

    @property
    def resumable(self) -> bool:
        """Whether the iterator can save and restore its position."""
        if self.iterator is None:
            self._open()
        return all(callable(getattr(self.iterator, name, None))
                   for name in ("get_state", "set_state"))

    def position(self) -> Any:
        """The position after the last batch handed out (encoded), or None."""
        if self.pending:
            return self.before_first
        return encode(self.iterator.get_state()) if self.resumable else None

    def seek(self, state: Any) -> None:
        """Moves the iterator to an encoded `position`."""
        self.pending.clear()
        self.iterator.set_state(decode(state))

    def skip(self, count: int) -> None:
        """Reads `count` batches and drops them (for a source that cannot `seek`)."""
        for _ in range(count):
            next(self)


# Sources continued in this process: a re-iterable source -> its Source, so that a run
# resumed with `fit(..., train_state=)` reads on from the iterator the last run left.
_LIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def source_for(data: Any, step: int) -> Source:
    """The `Source` of `data` for a run starting at `step`: the one a run of this process
    left at that step, or a new one."""
    try:
        live = _LIVE.get(data)
    except TypeError:           # not weakly referable: never kept
        live = None
    if live is not None and live.at == step:
        return live
    return Source(data)


def _keep(source: Source, step: int) -> None:
    source.at = step
    if not source.one_shot:
        try:
            _LIVE[source.data] = source
        except TypeError:
            pass


# ---------------------------------------------------------------------------------------------
# fit's epochs over a stream.


@dataclasses.dataclass
class StreamRun(Run):
    """A `Run` over a stream: also the position after the last step taken.

    Attributes:
        data_position: `{"step": s, "state": ...}` (see the module), or None for a source
            that cannot save its position. `ModelCheckpoint` saves it and, resuming from its
            checkpoint, sets it before the first epoch.
    """

    data_position: dict | None = None


def open_stream(model: Layer, loss: Callable, data: Any, validation_data: Any, *,
                metrics: Any, batch_size: int | None, steps_per_epoch: int | None,
                train_state: Any, drop_remainder: bool, mesh: Any):
    """`fit`'s checks of a stream, before anything is compiled; its first batch is read (and
    kept for the first step) and checked against the model and loss like arrays are.

    Returns:
        `(source, spec, steps_per_epoch, x, validation)`: `x` the first batch's inputs (for
        the train state's shapes), `validation` as `checked_data` gives it (None for no
        validation data or a stream of them).

    Raises:
        ValueError: for options that apply to arrays only (`mesh=`, `drop_remainder=True`), a
            source with no length and no `steps_per_epoch`, an empty source, or a first batch
            that is not an `(x, y)` pair or does not fit the model and loss.
    """
    if mesh is not None:
        raise ValueError("fit: mesh= trains on (x, y) arrays only; with a stream, train on one "
                         "device or pass arrays")
    if drop_remainder:
        raise ValueError("fit: drop_remainder=True cuts arrays into batches; a stream's "
                         "batches are the pipeline's: drop the short batch there (e.g. grain's "
                         ".batch(batch_size, drop_remainder=True))")
    if steps_per_epoch is None:
        try:
            steps_per_epoch = len(data)
        except TypeError:
            raise ValueError(f"fit: train_data is a stream with no length "
                             f"({type(data).__name__}); pass steps_per_epoch=, the number of "
                             f"batches in one epoch") from None
    steps_per_epoch = whole_number("fit", "steps_per_epoch", steps_per_epoch, minimum=1)
    if batch_size is not None:
        batch_size = whole_number("fit", "batch_size", batch_size, minimum=1)
    try:
        start = int(train_state.step) if train_state is not None else 0
    except (AttributeError, TypeError, RuntimeError):
        start = 0                 # not a single, whole TrainState: check_train_state says so
    source = source_for(data, start)
    try:
        item = source.first()
    except StopIteration:
        raise ValueError("fit: train_data yielded no batches") from None
    x, y = unpack("fit", "train_data", 0, item, targets=True)
    if is_stream(validation_data):
        validation_data = None    # checked when it is read (stream_evaluator)
    x, y, validation = checked_data(model, loss, (x, y), validation_data, metrics=metrics)
    spec = spec_of(x, y, batch_size)
    check("fit", "train_data", 0, x, y, spec)
    return source, spec, steps_per_epoch, x, validation


def stream_evaluator(model: Layer, loss: Callable, metrics: Any, policy: Any,
                     data: Any) -> Callable:
    """`fit`'s validation over a stream: `evaluator(train_state) -> means`, one pass of
    `data` each call (so a re-iterable source; an iterator is spent after one epoch)."""
    resolved = tuple(resolve_metrics(metrics, loss=loss).items())

    def check_first(x, y):
        check_data(x, y, model=model, loss=loss, name="validation_data", metrics=metrics)

    def evaluator(train_state: TrainState) -> dict[str, float]:
        return evaluate_stream("fit", model, loss, resolved, policy, train_state, data, None,
                               name="validation_data", check_first=check_first)

    return evaluator


class StreamEpochs:
    """`fit`'s epochs over a stream: `epoch(run, count) -> (train_state, means)`.

    Args:
        where, name: the entry point and the argument, for errors (`"fit"`, `"train_data"`).
        source: the run's `Source`, its first batch read (`Source.first`).
        step: the compiled step `step(train_state, x, y, mask) -> (train_state, metrics)`,
            donating the state.
        spec: what every batch must be.
        steps_per_epoch: batches per epoch.
    """

    def __init__(self, where: str, name: str, source: Source, step: Callable, spec: BatchSpec,
                 steps_per_epoch: int, prefetch: int = PREFETCH):
        self.where, self.name, self.source, self.step = where, name, source, step
        self.spec, self.steps_per_epoch, self.prefetch = spec, steps_per_epoch, prefetch

    def start(self, run: Run, count: int) -> None:
        """Puts the source at step `count`: the checkpoint's position if it holds one for
        that step, else where this process left it, else skipping what was trained on."""
        position = getattr(run, "data_position", None)
        if (isinstance(position, dict) and position.get("step") == count
                and self.source.resumable):
            self.source.seek(position["state"])
        elif not self.source.one_shot and self.source.at != count:
            self.source.skip(count)       # from a new iterator: the batches trained on
        self.source.at = count
        run.data_position = self._position(count)

    def _position(self, step: int) -> dict | None:
        state = self.source.position()
        return None if state is None else {"step": step, "state": state}

    def _prepare(self, first: int) -> Callable:
        def prepare(i: int, item: Any):
            index = first + i
            x, y = unpack(self.where, self.name, index, item, targets=True)
            check(self.where, self.name, index, x, y, self.spec)
            x, y, mask = padded(x, y, self.spec.size)
            return jax.device_put((x, y, mask)), int(mask.sum())

        return prepare

    def epoch(self, run: Run, count: int) -> tuple[TrainState, dict]:
        """Trains from step `count` to the end of its epoch; `run.train_state` and
        `run.data_position` follow each step, so an interrupt keeps every step taken."""
        done = count % self.steps_per_epoch
        steps = self.steps_per_epoch - done
        reports, counts = [], []
        # An interrupt (Ctrl-C) acts between steps, never between a step's dispatch and its
        # result (the state is donated), nor before the reading thread is accounted for and
        # the source rewound over what it read ahead.
        with DonationGuard() as guard:
            guard.hold()
            batches = Prefetcher(self.source, self._prepare(done), size=self.prefetch,
                                 count=steps, mark=self.source.position)
            try:
                guard.release()
                for i in range(steps):
                    try:
                        ((x, y, mask), real), mark = next(batches)
                    except StopIteration:
                        raise self._ran_dry(count, done + i) from None
                    guard.watch(run.train_state)
                    state, report = self.step(run.train_state, x, y, mask)
                    run.train_state, run.data_position = state, self._at(count + i + 1, mark)
                    guard.release()
                    reports.append(report)
                    counts.append(real)
            finally:
                guard.hold()
                batches.close()
                self._settle(run, count + len(reports), early=len(reports) < steps)
                guard.release()
        return run.train_state, _means(reports, counts)

    def _at(self, step: int, mark: Any) -> dict | None:
        return None if mark is None else {"step": step, "state": mark}

    def _settle(self, run: Run, step: int, early: bool) -> None:
        """After an epoch, or an interrupt or error inside one: the source rewound over the
        batches read ahead but not trained on, and kept for a run that continues at `step`."""
        position = run.data_position
        if early and position is not None:
            self.source.seek(position["state"])
        elif early:                 # read ahead and cannot go back: never continued
            self.source.at = None
            return
        _keep(self.source, step)

    def interrupted(self, error: BaseException, run: Run) -> str:
        """The stop reason of a run interrupted inside (or between) the stream's epochs."""
        step = self.source.at
        epoch, batch = divmod(step, self.steps_per_epoch) if step is not None else (run.epoch, 0)
        where = (f"after epoch {epoch}" if batch == 0 else
                 f"after batch {batch} of epoch {epoch + 1}'s {self.steps_per_epoch}")
        return (f"interrupted ({type(error).__name__}) {where} (step {step}): the state is the "
                f"one after that step; continue with fit(..., train_state=train_state) and the "
                f"same train_data")

    def _ran_dry(self, count: int, batch: int) -> ValueError:
        epoch = count // self.steps_per_epoch + 1
        return ValueError(f"{self.where}: {self.name} ran out after batch {batch} of epoch "
                          f"{epoch}, which has steps_per_epoch={self.steps_per_epoch} batches; "
                          f"an iterator cannot start again: pass a re-iterable source (e.g. the "
                          f"grain dataset or loader itself, not iter() of it), make it repeat "
                          f"(grain's .repeat(), num_epochs=None), or lower steps_per_epoch")


def _means(reports: list[dict], counts: list[int]) -> dict:
    """Per-batch means -> means over all real examples, on the host (one transfer)."""
    reports = jax.device_get(reports)
    weights = np.asarray(counts, np.float64)
    return {k: float(np.sum(np.stack([r[k] for r in reports]) * weights) / np.sum(weights))
            for k in reports[0]}


# ---------------------------------------------------------------------------------------------
# evaluate and predict over a stream: one pass, a compiled step per batch.

_EVAL_STEPS = ProgramCache(64)
_APPLY = ProgramCache(64)


def _prepared(where: str, name: str, data: Any, batch_size: int | None, targets: bool,
              check_first: Callable | None = None) -> Iterator:
    """One pass over `data`: `((x, y, mask), real)` per batch, padded and on the device,
    prepared ahead by the prefetch thread. `check_first(x, y)` checks the first batch."""
    source = Source(data)
    try:
        item = source.first()
    except StopIteration:
        raise ValueError(f"{where}: {name} yielded no batches") from None
    source.one_shot = True        # one pass: a re-iterable is not started again
    x, y = unpack(where, name, 0, item, targets)
    if check_first is not None:
        check_first(x, y)
    spec = spec_of(x, y, batch_size)

    def prepare(i: int, batch: Any):
        bx, by = unpack(where, name, i, batch, targets)
        check(where, name, i, bx, by, spec)
        bx, by, mask = padded(bx, by, spec.size)
        return jax.device_put((bx, by, mask)), int(mask.sum())

    with Prefetcher(source, prepare, size=PREFETCH) as batches:
        for prepared, _ in batches:
            yield prepared


def evaluate_stream(where: str, model: Layer, loss: Callable, metrics: tuple, policy: Any,
                    train_state: TrainState, data: Any, batch_size: int | None,
                    name: str = "data", check_first: Callable | None = None) -> dict[str, float]:
    """`evaluate` over a stream of `(x, y)` batches: the means over all its real examples.

    Args:
        metrics: resolved, as `(name, fn)` pairs; `policy`: a resolved `Precision`.
        batch_size: the largest batch; None: the first batch's size.
        check_first: `check_first(x, y)` run on the first batch (e.g. `check_data`).
    """
    step = _EVAL_STEPS.get((model, loss, metrics, policy), lambda: jax.jit(
        eval_step_fn(model, loss, metrics=dict(metrics), precision=policy)))
    reports, counts = [], []
    for (x, y, mask), real in _prepared(where, name, data, batch_size, True, check_first):
        reports.append(step(train_state, x, y, mask))
        counts.append(real)
    return _means(reports, counts)


def _apply_fn(model: Layer, policy: Any) -> Callable:
    """The model in evaluation mode on one batch, under the precision policy, compiled."""

    def apply(train_state, x):
        params, x = cast_to_compute(policy, (train_state.params, x))
        outputs, _ = apply_child(model, params, train_state.state, x, train=False)
        return cast_to_output(policy, outputs)

    return jax.jit(apply)


def predict_stream(model: Layer, policy: Any, train_state: TrainState, data: Any,
                   batch_size: int | None) -> np.ndarray:
    """`predict` over a stream of `x` batches (or `(x, y)` pairs, `y` unused): the outputs
    `(N, ...)` of all its examples in order, as one NumPy array."""
    apply = _APPLY.get((model, policy), lambda: _apply_fn(model, policy))
    outputs, counts = [], []
    for (x, _, _), real in _prepared("predict", "x", data, batch_size, False):
        outputs.append(apply(train_state, x))
        counts.append(real)
    return np.concatenate([np.asarray(out)[:real]
                           for out, real in zip(jax.device_get(outputs), counts)])
