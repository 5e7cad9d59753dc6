"""`evaluate` and `predict` over a stream of batches: one pass, a compiled step per batch.

The batches are read, checked, padded and put on the device ahead of the step by the prefetch
thread, as in `fit`'s epochs over a stream (`jdnn.train.stream`); the compiled programs (the
evaluation step, the model applied in evaluation mode) are kept across calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jdnn.core import Layer
from jdnn.data.prefetch import Prefetcher
from jdnn.padded import apply_child
from jdnn.train.precision import cast_to_compute, cast_to_output
from jdnn.train.program_cache import ProgramCache
from jdnn.train.state import TrainState
from jdnn.train.step import eval_step_fn
from jdnn.train.stream_source import PREFETCH, Source, check, host_means, padded, spec_of, unpack

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
    return host_means(reports, counts)


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
