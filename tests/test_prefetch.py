"""jdnn.data.prefetch: items prepared ahead in a thread, in order, errors carried over."""

import threading
import time

import jax
import numpy as np
import pytest

from jdnn.data.prefetch import Prefetcher, prefetch_to_device


class Counted:
    """An iterator over 0..n-1 that counts how many items were read, and by which thread."""

    def __init__(self, n, fail_at=None, error=None):
        self.n, self.fail_at, self.error = n, fail_at, error
        self.read, self.threads = 0, set()

    def __iter__(self):
        return self

    def __next__(self):
        self.threads.add(threading.current_thread().name)
        if self.read == self.fail_at:
            raise self.error
        if self.read >= self.n:
            raise StopIteration
        self.read += 1
        return self.read - 1


def test_items_come_in_order_prepared_in_another_thread_with_their_marks():
    source = Counted(5)
    with Prefetcher(source, lambda i, item: (i, item * 10), mark=lambda: source.read) as items:
        got = list(items)
    assert got == [((i, i * 10), i + 1) for i in range(5)]
    assert source.threads == {"jdnn-prefetch"}


def test_it_reads_ahead_while_the_consumer_works_but_no_further_than_its_size():
    source = Counted(100)
    with Prefetcher(source, lambda i, item: item, size=2) as items:
        assert next(items)[0] == 0
        time.sleep(0.3)             # the consumer "computes": the thread fills the queue
        assert 3 <= source.read <= 4   # 1 consumed + 2 queued (+ 1 waiting to be queued)


def test_count_bounds_what_is_read_from_the_source():
    source = Counted(100)
    with Prefetcher(source, lambda i, item: item, count=3) as items:
        assert [item for item, _ in items] == [0, 1, 2]
    assert source.read == 3


def test_an_error_in_the_source_is_raised_in_the_consumer_as_the_same_exception():
    error = OSError("disk gone")
    source = Counted(10, fail_at=2, error=error)
    items = Prefetcher(source, lambda i, item: item)
    assert [next(items)[0], next(items)[0]] == [0, 1]     # the items before it come first
    with pytest.raises(OSError, match="disk gone") as caught:
        next(items)
    assert caught.value is error
    assert "__next__" in "".join(str(entry.name) for entry in caught.traceback)   # its origin
    with pytest.raises(StopIteration):
        next(items)
    items.close()


def test_an_error_in_prepare_and_a_keyboard_interrupt_are_carried_too():
    def prepare(i, item):
        if i == 1:
            raise ValueError("batch 1 is bad")
        return item

    with Prefetcher(Counted(5), prepare) as items:
        next(items)
        with pytest.raises(ValueError, match="batch 1 is bad"):
            next(items)
    with Prefetcher(Counted(5, fail_at=0, error=KeyboardInterrupt()), prepare) as items:
        with pytest.raises(KeyboardInterrupt):
            next(items)


def test_close_stops_the_thread_early_and_leaves_the_source_alone():
    source = Counted(10_000)
    items = Prefetcher(source, lambda i, item: item, size=2)
    next(items)
    items.close()
    read = source.read
    assert not any(t.name == "jdnn-prefetch" and t.is_alive() for t in threading.enumerate())
    time.sleep(0.05)
    assert source.read == read < 10
    with pytest.raises(StopIteration):
        next(items)


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        Prefetcher(Counted(1), lambda i, item: item, size=0)


def test_prefetch_to_device_yields_device_arrays_in_order():
    batches = [(np.full((2, 3), i, np.float32), np.array([i, i])) for i in range(4)]
    got = list(prefetch_to_device(batches))
    assert all(isinstance(x, jax.Array) and isinstance(y, jax.Array) for x, y in got)
    np.testing.assert_array_equal(np.stack([np.asarray(x) for x, _ in got]),
                                  np.stack([x for x, _ in batches]))
