"""What every benchmark receives: how hard to measure, and the machine's measured limits."""

from __future__ import annotations

import dataclasses

from benchmarks.suite.compare import FULL, QUICK, Settings


@dataclasses.dataclass
class Context:
    """Shared by the benchmarks of one run.

    Attributes:
        quick: the ~3-4-minute subset (fewer workloads, rounds and shorter chunks).
        settings: rounds, chunk length and pause for `compare`.
        limits: the machine's GEMM peak and bandwidth (from `machine.limits`), once measured.
        threads: NumPy-BLAS and PyTorch threads when `--threads` set them (None: defaults), so
            benchmarks that start processes can pass it on.
    """

    quick: bool = False
    settings: Settings = FULL
    limits: dict | None = None
    threads: int | None = None

    @classmethod
    def create(cls, quick: bool, rounds: int | None = None,
               threads: int | None = None) -> Context:
        settings = QUICK if quick else FULL
        if rounds is not None:
            settings = dataclasses.replace(settings, rounds=rounds)
        return cls(quick, settings, threads=threads)

    @property
    def gemm_peak(self) -> float | None:
        return None if self.limits is None else self.limits["gemm_peak_gflops"]

    @property
    def bandwidth(self) -> float | None:
        return None if self.limits is None else self.limits["bandwidth_gbs"]["median"]
