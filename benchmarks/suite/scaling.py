"""How a step's time grows with the batch size, the width and the depth of the MLP.

Each sweep times jdnn's step against the raw-JAX floor (and PyTorch in the full run) at each
point, interleaved in rounds like every comparison; the report plots time against size on
log-log axes with the fitted slope: 1 means time proportional to size (compute-bound), 0 means
a fixed cost dominates (dispatch, Python), and 2 is what the width sweep tends to when the
matmuls dominate (each layer costs width squared).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks.suite.compare import compare
from benchmarks.suite.context import Context
from benchmarks.suite.workloads import Workload, make_problem, mlp


def sweeps(quick: bool) -> dict[str, list[tuple[int, Workload]]]:
    """`{sweep: [(x, workload), ...]}`: batch at 784-512-512-10, width and depth at batch 128."""
    if quick:
        return {"batch": [(b, mlp(b, batches=4)) for b in (32, 128, 512, 2048)]}
    base = mlp(128, batches=4)
    return {
        "batch": [(b, mlp(b, batches=4)) for b in (16, 32, 64, 128, 256, 512, 1024, 2048)],
        "width": [(h, dataclasses.replace(base, name=f"mlp_w{h}", hidden=(h, h)))
                  for h in (64, 128, 256, 512, 1024, 2048)],
        "depth": [(d, dataclasses.replace(base, name=f"mlp_d{d}", hidden=(512,) * d))
                  for d in (1, 2, 4, 8)],
    }


def fit_slope(xs, ys) -> float | None:
    """The slope of log(y) against log(x), least squares (None for fewer than 2 points)."""
    if len(xs) < 2:
        return None
    slope, _ = np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)
    return float(slope)


def run(ctx: Context) -> dict:
    sides = ("jdnn_step", "raw_jax") if ctx.quick else ("jdnn_step", "raw_jax", "torch")
    settings = dataclasses.replace(ctx.settings, rounds=max(3, ctx.settings.rounds // 2))
    results = {}
    for sweep, points in sweeps(ctx.quick).items():
        series: dict[str, dict] = {}
        for x, w in points:
            print(f"  {sweep} = {x}: {w.describe()}", flush=True)
            result = compare(make_problem(w), sides, settings=settings)
            for side, entry in result["sides"].items():
                s = series.setdefault(side, {"x": [], "seconds": [], "q1": [], "q3": []})
                s["x"].append(x)
                s["seconds"].append(entry["seconds"]["median"])
                s["q1"].append(entry["seconds"]["q1"])
                s["q3"].append(entry["seconds"]["q3"])
        for s in series.values():
            s["slope"] = fit_slope(s["x"], s["seconds"])
            half = len(s["x"]) // 2
            s["slope_upper_half"] = fit_slope(s["x"][half:], s["seconds"][half:])
        results[sweep] = series
    return {"results": results, "targets": []}
