"""Stopping `jdnn train` gracefully: while it trains, SIGINT raises `KeyboardInterrupt` and
SIGTERM `Terminated` (`graceful_signals`), which `fit` treats alike, handing back the last
completed epoch; `StopOnSignal` is the backstop for an interrupt Python swallowed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from jdnn.train import Callback


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as the same graceful stop as Ctrl-C while `jdnn train` runs."""


@contextlib.contextmanager
def graceful_signals() -> Iterator[dict[str, str]]:
    """For the duration of the block, SIGINT raises `KeyboardInterrupt` and SIGTERM raises
    `Terminated` (which `fit` treats alike: it stops and hands back the last completed epoch);
    the old handlers are put back after. Yields a dict whose `"signal"` is set to the first
    signal's name (`"SIGINT"`, `"SIGTERM"`) once one arrives. Main thread only (elsewhere
    signals cannot be handled; the block runs without)."""
    received: dict[str, str] = {}

    def handle(signum: int, frame: Any) -> None:
        del frame
        received.setdefault("signal", signal.Signals(signum).name)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {signum: signal.signal(signum, handle)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


class StopOnSignal(Callback):
    """Stops `fit` after the current epoch once `graceful_signals` has seen a signal: a
    backstop for a `KeyboardInterrupt` Python swallowed (one raised while a finalizer or a
    weakref callback runs is printed as "Exception ignored" and lost), so a signal always ends
    the run, at the latest when the epoch ends. Put it last: the others see the epoch first."""

    def __init__(self, received: dict[str, str]):
        self.received = received

    def on_epoch_end(self, run) -> None:
        if "signal" in self.received and run.stop_reason is None:
            run.stop("interrupted", f"interrupted ({self.received['signal']}) after epoch "
                                    f"{run.epoch}: the state is the one after epoch "
                                    f"{run.epoch}")
