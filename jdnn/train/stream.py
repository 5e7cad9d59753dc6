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

Here: what a stream is (`is_stream`) and `fit`'s epochs over one (`open_stream`,
`StreamEpochs`, `stream_evaluator`). One batch and the source it comes from are
`jdnn.train.stream_source`; `evaluate` and `predict` over a stream are `jdnn.train.stream_eval`.
Their names still import from here, their first home.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from jdnn.core import Layer, whole_number
from jdnn.data.validate import check_data
from jdnn.data.prefetch import Prefetcher
from jdnn.metrics import resolve_metrics
from jdnn.padded import Padded
from jdnn.train.arguments import checked_data
from jdnn.train.callbacks import Run
from jdnn.train.state import DonationGuard, TrainState
from jdnn.train.stream_eval import evaluate_stream, predict_stream
from jdnn.train.stream_source import (PREFETCH, BatchSpec, Source, check, decode, encode,
                                      host_means, padded, spec_of, unpack)

__all__ = ["BatchSpec", "PREFETCH", "Source", "StreamEpochs", "StreamRun", "check", "decode",
           "encode", "evaluate_stream", "is_stream", "open_stream", "padded", "predict_stream",
           "source_for", "spec_of", "stream_evaluator", "unpack"]


def is_stream(data: Any) -> bool:
    """Whether `data` is a stream of batches rather than `(x, y)` arrays (see the module)."""
    if isinstance(data, (tuple, list, dict, str, bytes, np.ndarray, jax.Array, Padded)):
        return False
    return isinstance(data, Iterable) or callable(getattr(data, "__iter__", None))


# ---------------------------------------------------------------------------------------------
# fit's epochs over a stream.


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
        return run.train_state, host_means(reports, counts)

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
