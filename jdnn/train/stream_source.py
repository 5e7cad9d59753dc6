"""A stream's batches and where they come from (`jdnn.train.stream` says what a stream is).

One batch: unpacked into host arrays, checked against the first batch's `BatchSpec`, padded to
the batch size and masked; the reports of the steps over such batches are averaged over their
real examples (`host_means`). The source: one iterator over the data, read by the prefetch
thread (`jdnn.data.prefetch`), a new pass for a re-iterable that runs dry, and its position
(`get_state`/`set_state`) in a form JSON keeps.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

PREFETCH = 2   # batches put on the device ahead of the step: double buffering


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


def host_means(reports: list[dict], counts: list[int]) -> dict:
    """Per-batch means -> means over all real examples, on the host (one transfer)."""
    reports = jax.device_get(reports)
    weights = np.asarray(counts, np.float64)
    return {k: float(np.sum(np.stack([r[k] for r in reports]) * weights) / np.sum(weights))
            for k in reports[0]}


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
