"""One comparison: several sides train the same problem, timed in interleaved rounds.

Per side: build (a missing peer becomes a "skipped" entry with the reason), first call (its
excess over the second, steady call is the compile time, reported apart), then the rounds. Every
side walks the same batches in the same order; each side's timed chunk holds as many steps as
make it last about `Settings.chunk_s` (a multiple of its quantum: whole epochs for a fused
epoch), so a side 100x slower than another does not stretch the run 100x. Before each timed
chunk a side runs one untimed quantum, when that is cheap (`Settings.warm_s`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from benchmarks.suite import timing
from benchmarks.suite.sides import SIDES, Skipped
from benchmarks.suite.workloads import Problem


@dataclasses.dataclass(frozen=True)
class Settings:
    """How hard to measure: rounds, the target length of a timed chunk, the pause before it."""

    rounds: int = 11
    chunk_s: float = 0.2
    pause_s: float = 0.05
    max_steps: int = 4096
    warm_s: float = 0.1


QUICK = Settings(rounds=5, chunk_s=0.05, pause_s=0.02, max_steps=1024, warm_s=0.03)
FULL = Settings()


def build_sides(problem: Problem, names: Sequence[str]) -> tuple[dict, dict, dict]:
    """Builds and warms each side: `(runners, compile_report, skipped)`."""
    runners, compiled, skipped = {}, {}, {}
    for name in names:
        side = SIDES[name]
        try:
            runner = side.build(problem)
        except Skipped as reason:
            skipped[name] = str(reason)
            continue
        compiled[name], runners[name] = warm_up(runner), runner
    return runners, compiled, skipped


def warm_up(runner) -> dict:
    """Runs one quantum twice: the first call compiles, the second is steady; both timed."""
    first = timing.first_call(lambda: runner.run(runner.quantum))
    steady = timing.first_call(lambda: runner.run(runner.quantum))
    return {"first_call_s": first, "steady_call_s": steady,
            "compile_s": timing.compile_seconds(first, steady), "steps_per_call": runner.quantum}


def chunk_steps(runner, compiled: dict, settings: Settings) -> int:
    """Steps per timed chunk for one side: a multiple of its quantum lasting ~`chunk_s`."""
    return timing.calibrate(compiled["steady_call_s"], settings.chunk_s, runner.quantum,
                            settings.max_steps)


def compare(problem: Problem, names: Sequence[str], *, baseline: str = "jdnn_step",
            settings: Settings = FULL, extra: dict | None = None) -> dict:
    """Times `names` on `problem`; ratios are `side time / baseline time` within each round.

    `extra` adds ready-made runners (`{name: Runner}`, e.g. the machine's GEMM) to the rounds.

    Returns:
        A JSON-ready dict: workload, steps per chunk, rounds, per side the seconds per step
        (median, quartiles, IQR), the ratio to the baseline and the runner's `info` (e.g. its
        BLAS threads), compile times, skipped sides.
    """
    began = time.perf_counter()
    runners, compiled, skipped = build_sides(problem, names)
    for name, runner in (extra or {}).items():
        compiled[name], runners[name] = warm_up(runner), runner
    result = {"workload": dataclasses.asdict(problem.workload),
              "description": problem.workload.describe(), "baseline": baseline,
              "compile": compiled, "skipped": skipped, "sides": {}}
    if not runners:
        return result
    steps = {name: chunk_steps(r, compiled[name], settings) for name, r in runners.items()}
    variants = []
    for name, r in runners.items():
        cheap = compiled[name]["steady_call_s"] <= settings.warm_s
        variants.append(timing.Variant(name, lambda r=r, n=steps[name]: r.run(n),
                                       (lambda r=r: r.run(r.quantum)) if cheap else None,
                                       steps[name]))
    times = timing.interleave(variants, settings.rounds, pause_s=settings.pause_s)
    table = timing.table(times, baseline if baseline in times else None)
    for name, entry in table.items():
        entry["info"] = dict(runners[name].info)
    result.update(steps_per_chunk=steps, rounds=settings.rounds, sides=table,
                  raw_seconds=times, wall_s=time.perf_counter() - began)
    return result


def seconds(result: dict, side: str) -> float | None:
    """The median seconds per step of `side` in a `compare` result (None if it did not run)."""
    entry = result["sides"].get(side)
    return None if entry is None else entry["seconds"]["median"]


def ratio(result: dict, side: str, over: str) -> dict | None:
    """`side / over` per round (median, quartiles), from the raw round times."""
    raw = result.get("raw_seconds", {})
    if side not in raw or over not in raw:
        return None
    return timing.summarize([a / b for a, b in zip(raw[side], raw[over])]).to_dict()
