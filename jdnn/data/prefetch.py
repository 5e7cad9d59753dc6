"""Prefetching: the next batches are prepared and sent to the device while the step runs.

A small background thread pulls items from a host iterator, prepares each (checks, pads,
`jax.device_put`s it) and hands it over through a bounded queue, so the compiled step, which
JAX dispatches asynchronously, never waits on the host while the pipeline keeps up: double
buffering with the default `size=2` (one batch being consumed, the next one ready). The idea
is flax's `jax_utils.prefetch_to_device`, written here in a few lines so jdnn needs no flax.

Three guarantees the training loop builds on:

- an exception raised by the source or by `prepare` in the thread is raised again in the
  consuming thread, the same exception object with its original traceback, at the item where
  it happened (the items before it are delivered first);
- the thread never reads more than `count` items, when given, so a run that asks for exactly
  the batches it trains on reads no further from the source;
- `close` stops the thread and waits for it, so that the caller may touch the source again
  (e.g. rewind it with `set_state`) once `close` returns. Each item comes with what `mark()`
  returned right after the source yielded it (the source's position), for that rewinding.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax

_END = object()     # the source is exhausted (or `count` items were read)


class _Failed:
    """An exception raised in the thread, carried to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Iterates over `prepare(i, item)` for the source's items, prepared ahead in a thread.

    Yields `(prepared, mark)` pairs: the prepared item and what `mark()` returned right after
    the source yielded it (None without `mark`). Use as a context manager, or call `close`.

    Args:
        source: any iterator.
        prepare: `prepare(index, item) -> prepared`, run in the thread (e.g. checks, padding,
            `jax.device_put`); its exceptions reach the consumer like the source's.
        size: how many prepared items may wait in the queue (2: double buffering).
        count: read at most this many items (None: until the source is exhausted).
        mark: optional `mark() -> Any`, called in the thread after each item is read (e.g. the
            source's `get_state`).
    """

    def __init__(self, source: Iterator, prepare: Callable[[int, Any], Any], *, size: int = 2,
                 count: int | None = None, mark: Callable[[], Any] | None = None):
        if not (isinstance(size, int) and size >= 1):
            raise ValueError(f"prefetch: size must be an int >= 1, got {size!r}")
        self._source, self._prepare, self._count, self._mark = source, prepare, count, mark
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._fill, name="jdnn-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        """Hands `item` over unless the consumer closed first; whether it was handed over."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        index = 0
        try:
            while not self._stop.is_set() and (self._count is None or index < self._count):
                try:
                    item = next(self._source)
                except StopIteration:
                    break
                mark = self._mark() if self._mark is not None else None
                if not self._put((self._prepare(index, item), mark)):
                    return
                index += 1
        except BaseException as error:  # noqa: BLE001 -- carried to the consumer, raised there
            self._put(_Failed(error))
            return
        self._put(_END)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> tuple[Any, Any]:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _Failed):
            self._done = True
            self._thread.join()
            raise item.error.with_traceback(item.error.__traceback__)
        return item

    def close(self) -> None:
        """Stops the thread and waits for it (an item being read is read to its end first)."""
        self._stop.set()
        self._done = True
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def prefetch_to_device(iterable: Iterable, size: int = 2) -> Iterator:
    """The items of `iterable` (pytrees of arrays), each put on the default device ahead of
    use by a background thread: `size` items wait ready while the caller works on one.

    Errors in `iterable` are raised in the caller's thread, the original exception. The
    iterator stops its thread when exhausted, on an error, or when closed (`.close()`, or when
    garbage collected).

    Args:
        iterable: e.g. a grain `DataLoader` or any iterator of `(x, y)` NumPy batches.
        size: items prepared ahead (2: double buffering).

    Returns:
        A generator of the items as `jax.Array` pytrees.

    Examples:
        >>> for x, y in jdnn.data.prefetch.prefetch_to_device(loader):
        ...     train_state, metrics = train_step(train_state, x, y)
    """
    prefetcher = Prefetcher(iter(iterable), lambda _, item: jax.device_put(item), size=size)
    try:
        for item, _ in prefetcher:
            yield item
    finally:
        prefetcher.close()
