"""Timing that holds up on a shared, noisy machine.

The method, in the order a measurement happens:

1. Warm-up: each variant runs once untimed (the first call compiles; its excess over a steady
   call is reported apart as the compile time), then once more.
2. Rounds: the variants run interleaved, A B C A B C ..., so a burst of load from another
   process hits every variant of a round alike. By default each round starts one variant later
   (A B C, B C A, C A B, ...), so no variant always runs right after the same neighbour (whose
   BLAS threads may still be spinning) or always first.
3. Before each timed chunk: a short pause (NumPy's and PyTorch's BLAS threads keep spinning for a
   moment after a call and would steal cores from the next variant) and one untimed warm call.
4. Each timed chunk blocks until its results are ready (`block_until_ready`; PyTorch on the CPU
   and NumPy are synchronous), and there is no host sync inside it.
5. Reported: the median and the interquartile range over rounds, and the ratio of each variant
   to the baseline computed *within* each round, then summarized the same way.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Clock = Callable[[], float]


@dataclasses.dataclass
class Variant:
    """One contender in a timing: `run()` executes one timed chunk and returns only when its
    work is done (the variant blocks on its own results).

    Attributes:
        name: a short label, e.g. `"jdnn_step"`.
        run: the timed chunk.
        warm: an untimed call run just before each timed chunk (None: no warm call).
        steps: how many training steps one chunk holds (times are divided by it).
    """

    name: str
    run: Callable[[], Any]
    warm: Callable[[], Any] | None = None
    steps: int = 1


@dataclasses.dataclass(frozen=True)
class Summary:
    """Order statistics of a sample: median, quartiles (linear interpolation), IQR, extremes."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "iqr": self.iqr,
                "min": self.min, "max": self.max, "n": self.n}


def summarize(values: Sequence[float]) -> Summary:
    """The median, first and third quartiles (NumPy's linear rule), min, max and count."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("summarize needs at least one value")
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    return Summary(float(median), float(q1), float(q3), float(data.min()), float(data.max()),
                   int(data.size))


def schedule(count: int, rounds: int, shuffle: bool = True, seed: int = 0) -> list[list[int]]:
    """The order of the variants in each round: a fresh seeded permutation per round when
    shuffling, `[[0, 1, 2], [0, 1, 2], ...]` when not. Every round holds every variant once.

    Shuffled, not rotated: a rotation keeps each variant's predecessor (B always follows A), and
    the predecessor matters. NumPy's OpenBLAS and PyTorch's OpenMP threads keep spinning for a
    while after a call; a rotated schedule made jdnn's step, first in the list, always follow
    the NumPy GEMM and pay for its spinning threads, 5-10% per step on this 2-core machine.
    """
    if not shuffle:
        return [list(range(count)) for _ in range(rounds)]
    rng = np.random.default_rng(seed)
    return [rng.permutation(count).tolist() for _ in range(rounds)]


def interleave(variants: Sequence[Variant], rounds: int, *, pause_s: float = 0.02,
               warm: bool = True, shuffle: bool = True, clock: Clock = time.perf_counter,
               sleep: Callable[[float], None] = time.sleep) -> dict[str, list[float]]:
    """Times `variants` in `rounds` interleaved rounds (see `schedule`).

    Args:
        variants: the contenders; names must be unique.
        rounds: how many rounds (each variant is timed once per round).
        pause_s: the pause before each timed chunk (lets other libraries' BLAS threads idle).
        warm: run each variant's `warm` call (untimed) before its timed chunk.
        shuffle: a new seeded order each round (see `schedule`); else A B C, A B C.
        clock, sleep: injectable for tests.

    Returns:
        `{name: [seconds per step, one per round]}`, rounds in order, so that entry `r` of
        every variant comes from the same round.
    """
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    times: dict[str, list[float]] = {name: [] for name in names}
    for order in schedule(len(variants), rounds, shuffle):
        for variant in (variants[i] for i in order):
            if pause_s > 0:
                sleep(pause_s)
            if warm and variant.warm is not None:
                variant.warm()
            began = clock()
            variant.run()
            times[variant.name].append((clock() - began) / variant.steps)
    return times


def ratios(times: dict[str, list[float]], baseline: str) -> dict[str, list[float]]:
    """Per round, each variant's time divided by the baseline's time in that same round."""
    base = times[baseline]
    return {name: [t / b for t, b in zip(values, base, strict=True)]
            for name, values in times.items()}


def first_call(fn: Callable[[], Any], clock: Clock = time.perf_counter) -> float:
    """Seconds taken by one call of `fn` (the first one: tracing, compiling and running)."""
    began = clock()
    fn()
    return clock() - began


def compile_seconds(first_s: float, steady_s: float) -> float:
    """Compile (and first-touch) time: the first call's excess over a steady call, >= 0."""
    return max(first_s - steady_s, 0.0)


def calibrate(fn_seconds: float, target_s: float, quantum: int = 1, most: int = 10_000) -> int:
    """How many quanta a chunk needs to last about `target_s`, given one quantum's time."""
    if fn_seconds <= 0 or not math.isfinite(fn_seconds):
        return quantum
    count = max(1, math.ceil(target_s / fn_seconds))
    return min(count, max(1, most // quantum)) * quantum


def table(times: dict[str, list[float]], baseline: str | None = None) -> dict[str, dict]:
    """`{name: {"seconds": Summary dict, "ratio": Summary dict (vs baseline, within rounds)}}`."""
    report = {name: {"seconds": summarize(values).to_dict()} for name, values in times.items()}
    if baseline is not None and baseline in times:
        for name, values in ratios(times, baseline).items():
            report[name]["ratio"] = summarize(values).to_dict()
    return report
