"""Input pipeline throughput against the training step's demand, per workload.

For the digits MLP and the MNIST-shaped CNN of the suite (`benchmarks.suite.workloads`), it
measures the batches per second `jdnn.data.pipeline` delivers (from in-memory arrays, and from
gzipped IDX files with 0 and 2 worker processes) against the steps per second of jdnn's
compiled train step on device-resident batches, and the step fed by the pipeline end to end.
A pipeline keeps up when its rate exceeds the step's; the last column is the ratio of the
slowest pipeline to the step. Prints a markdown table.

    python benchmarks/pipeline_throughput.py [--seconds 2] [--examples 10000]

Needs grain (`pip install 'jdnn[grain]'`). Each rate is taken after a warm-up (the pipeline's
first batch, which starts its workers, and the step's compilation are excluded and the
pipeline's start time is reported apart); the step's loop blocks only at the end.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jdnn  # noqa: E402
from benchmarks.suite.sides.jdnn_side import loss_fn, optimizer, train_state  # noqa: E402
from benchmarks.suite.workloads import cnn, digits_mlp, make_problem  # noqa: E402
from jdnn.data import pipeline, write_idx  # noqa: E402


def step_rate(problem, seconds: float) -> float:
    """Steps/s of `make_train_step` on one device-resident batch, compiled beforehand."""
    w = problem.workload
    step = jdnn.make_train_step(problem.model, loss_fn(w), optimizer(w))
    x, y = (jnp.asarray(a) for a in problem.batch(0))
    ts = train_state(problem)
    for _ in range(3):
        ts, _ = step(ts, x, y)
    jax.block_until_ready(ts)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            ts, _ = step(ts, x, y)
        n += 20
        jax.block_until_ready(ts)
    return n / (time.perf_counter() - start)


def fed_rate(problem, source, seconds: float) -> float:
    """Steps/s of the same step fed batch by batch from `source` (full batches only)."""
    w = problem.workload
    step = jdnn.make_train_step(problem.model, loss_fn(w), optimizer(w))
    ts, batches = train_state(problem), iter(source)
    for _ in range(3):
        ts, _ = step(ts, *next(batches))
    jax.block_until_ready(ts)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ts, _ = step(ts, *next(batches))
        n += 1
    jax.block_until_ready(ts)
    return n / (time.perf_counter() - start)


def pipeline_rate(source, seconds: float) -> tuple[float, float]:
    """`(batches/s after the first batch, seconds to the first batch)` of `source`."""
    start = time.perf_counter()
    batches = iter(source)
    next(batches)
    first = time.perf_counter() - start
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(batches)
        n += 1
    return n / (time.perf_counter() - start), first


def idx_files(directory: Path, problem, examples: int) -> tuple[Path, Path]:
    """Uint8 images shaped like the workload's examples, and labels, as gzipped IDX files."""
    rng = np.random.default_rng(0)
    shape = problem.workload.example_shape
    image_shape = (8, 8) if shape == (64,) else shape[:2]   # digits: 8x8, read as flat rows
    images = rng.integers(0, 256, (examples, *image_shape), dtype=np.uint8)
    labels = rng.integers(0, 10, examples, dtype=np.uint8)
    return (write_idx(directory / f"{problem.workload.name}-images.gz", images),
            write_idx(directory / f"{problem.workload.name}-labels.gz", labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per rate")
    parser.add_argument("--examples", type=int, default=10000, help="examples in the files")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in (digits_mlp(32), cnn(64)):
            problem = make_problem(workload)
            layout = "flat" if len(workload.example_shape) == 1 else "nhwc"
            x = np.resize(problem.x, (args.examples, *workload.example_shape))
            y = np.resize(problem.y, args.examples)
            paths = idx_files(Path(tmp), problem, args.examples)
            common = dict(key=0, epochs=None, drop_remainder=True, layout=layout)
            sources = {
                "arrays, 0 workers": pipeline((x, y), workload.batch, **common),
                "IDX, 0 workers": pipeline(paths, workload.batch, **common),
                "IDX, 2 workers": pipeline(paths, workload.batch, workers=2, **common),
            }
            rates = {name: pipeline_rate(source, args.seconds) for name, source in sources.items()}
            step = step_rate(problem, args.seconds)
            fed = fed_rate(problem, sources["IDX, 0 workers"], args.seconds)
            rows.append((workload.describe(), step, rates, fed))

    names = list(rows[0][2])
    print(f"jdnn {jdnn.__version__}, jax {jax.__version__}, "
          f"grain {importlib.metadata.version('grain')}, {jax.devices()[0].platform}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}; {args.examples} examples, "
          f"{args.seconds:g} s per rate\n")
    print("| workload | train step (steps/s) | " + " | ".join(f"pipeline: {n} (batches/s)"
                                                        for n in names)
          + " | step fed by the IDX pipeline, 0 workers (steps/s) | slowest pipeline / step |")
    print("|---" * (len(names) + 4) + "|")
    for describe, step, rates, fed in rows:
        cells = " | ".join(f"{rate:,.0f} (first batch {first:.2f} s)"
                           for rate, first in rates.values())
        slowest = min(rate for rate, _ in rates.values())
        print(f"| {describe} | {step:,.0f} | {cells} | {fed:,.0f} | {slowest / step:.2f}x |")


if __name__ == "__main__":
    main()
