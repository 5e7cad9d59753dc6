"""What every side of a comparison provides, and how a missing peer is reported.

A side turns a `Problem` (model, initial parameters, data, optimizer) into a `Runner`: a
function that takes `n` training steps on the problem's batches, in order, and returns only
when they are done. Each side also states how it computes the loss and the gradients at given
parameters, so tests and the correctness benchmark can check that every side trains the same
model the same way.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.suite.workloads import Problem


class Skipped(Exception):
    """A side that cannot run here (an optional peer is not installed); the message says why."""


def require(module: str, install: str | None = None) -> Any:
    """Imports `module` or raises `Skipped` naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = install or module.split(".")[0]
        raise Skipped(f"{package} is not installed ({error}); pip install {package}") from None


@dataclasses.dataclass
class Runner:
    """A side, built and ready to train.

    Attributes:
        run: `run(n)` takes `n` steps (a multiple of `quantum`) and blocks until they are done.
        params: the current parameters as a jdnn tree of NumPy arrays (a host copy).
        quantum: the smallest number of steps one call can take (an epoch, for a fused epoch).
        info: what the report shows next to the side's name, e.g. `{"blas_threads": 1}`.
    """

    run: Callable[[int], None]
    params: Callable[[], dict]
    quantum: int = 1
    info: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Side:
    """A contender: its key, a description, how to build it and how it differentiates.

    Attributes:
        name: the key, e.g. `"raw_jax"`.
        label: what it is, for the report.
        build: `build(problem) -> Runner`; raises `Skipped` if its library is missing.
        loss_and_grads: `loss_and_grads(problem, params, x, y) -> (loss, grads)` at jdnn-format
            params, grads back in jdnn's tree format (NumPy); raises `Skipped` likewise.
        library: the package it needs (for the versions table), or None.
    """

    name: str
    label: str
    build: Callable[[Problem], Runner]
    loss_and_grads: Callable[[Problem, dict, np.ndarray, np.ndarray], tuple[float, dict]]
    library: str | None = None


class Cursor:
    """Walks a problem's batches in order, wrapping at the end of the epoch."""

    def __init__(self, batches: list):
        self.batches, self.position = batches, 0

    def next(self):
        batch = self.batches[self.position]
        self.position = (self.position + 1) % len(self.batches)
        return batch


def batches(problem: Problem, convert: Callable[[np.ndarray, np.ndarray], Any]) -> Cursor:
    """A `Cursor` over the problem's batches, each converted once (to device arrays, tensors)."""
    return Cursor([convert(*problem.batch(i)) for i in range(problem.workload.batches)])


def host(tree: Any) -> Any:
    """A NumPy copy of a tree of arrays (dicts and lists)."""
    if isinstance(tree, dict):
        return {k: host(v) for k, v in tree.items()}
    return np.array(tree)
