"""Correctness, in the same run as the timings.

1. Gradients: jdnn's (`jax.grad` of its training objective) against the NumPy hand-written
   backprop reference, in float64, on every benchmark model: the largest relative difference of
   the losses and of any gradient leaf (`max |a - b| / max |b|` per leaf).
2. Same updates: every side takes three training steps from the same initial parameters on the
   same batches, in float32; its parameters are compared with jdnn's per-step side. This is what
   makes the timings a like-for-like comparison.
3. The tight NumPy baseline (side "numpy", `sides.tight_numpy`) against the oracle it is timed
   next to (side "reference", `jdnn.reference`): both take `TIGHT_STEPS` float32 steps on every
   benchmark model with each optimizer the model is trained with; the largest relative parameter
   difference must stay within `TIGHT_TOLERANCE` (Adam turns rounding in near-zero gradients
   into +-lr steps, so float32 agreement is ~1e-4, not 1e-7).
"""

from __future__ import annotations

import jax
import numpy as np

from benchmarks.suite import workloads
from benchmarks.suite.context import Context
from benchmarks.suite.sides import SIDES, Skipped, jdnn_side, numpy_side

GRAD_TOLERANCE = 1e-9
TIGHT_STEPS = 5
TIGHT_TOLERANCE = 1e-3
TRAJECTORY_STEPS = 3
TRAJECTORY_SIDES = ("numpy", "reference", "raw_jax", "nnx_jit", "nnx_split", "linen", "equinox",
                    "torch")


def max_relative(a: dict, b: dict) -> float:
    """The largest `max |a - b| / max |b|` over the leaves of two matching trees."""
    worst = 0.0
    for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        leaf_a, leaf_b = np.asarray(leaf_a, np.float64), np.asarray(leaf_b, np.float64)
        scale = max(float(np.max(np.abs(leaf_b))), 1e-30)
        worst = max(worst, float(np.max(np.abs(leaf_a - leaf_b))) / scale)
    return worst


def gradients(w: workloads.Workload, batch: int = 16) -> dict:
    """jdnn vs the NumPy reference in float64 on one batch of the workload's data."""
    problem = workloads.make_problem(w)
    x, y = problem.batch(0)
    x, y = x[:batch].astype(np.float64), y[:batch]
    if y.dtype.kind == "f":
        y = y.astype(np.float64)
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), problem.params)
    with jax.enable_x64(True):
        loss_j, grads_j = jdnn_side.loss_and_grads(problem, params, x, y)
    loss_r, grads_r = numpy_side.loss_and_grads(problem, params, x, y, dtype=np.float64)
    return {"workload": w.name, "description": w.describe(), "batch": int(x.shape[0]),
            "loss_jdnn": loss_j, "loss_reference": loss_r,
            "loss_relative_difference": abs(loss_j - loss_r) / max(abs(loss_r), 1e-30),
            "grads_max_relative_difference": max_relative(grads_j, grads_r),
            "ok": max_relative(grads_j, grads_r) <= GRAD_TOLERANCE}


def trajectories(w: workloads.Workload) -> dict:
    """Every side's parameters after a few steps, relative to jdnn's (float32)."""
    problem = workloads.make_problem(w)
    reference = SIDES["jdnn_step"].build(problem)
    reference.run(TRAJECTORY_STEPS)
    expected = reference.params()
    out = {}
    for name in TRAJECTORY_SIDES:
        try:
            runner = SIDES[name].build(problem)
        except Skipped as reason:
            out[name] = {"skipped": str(reason)}
            continue
        runner.run(TRAJECTORY_STEPS)
        out[name] = {"max_relative_difference": max_relative(runner.params(), expected)}
    return {"workload": w.name, "steps": TRAJECTORY_STEPS, "sides": out}


def tight_vs_reference(w: workloads.Workload, steps: int = TIGHT_STEPS) -> dict:
    """The tight NumPy side's parameters after `steps` steps, relative to the oracle's."""
    problem = workloads.make_problem(w)
    tight, oracle = SIDES["numpy"].build(problem), SIDES["reference"].build(problem)
    tight.run(steps)
    oracle.run(steps)
    worst = max_relative(tight.params(), oracle.params())
    return {"workload": w.name, "description": w.describe(), "steps": steps,
            "max_relative_difference": worst, "ok": worst <= TIGHT_TOLERANCE}


def tight_models() -> list[workloads.Workload]:
    """Every benchmark model, with each optimizer it is trained with (small batches)."""
    return [workloads.digits_mlp(32, "sgd"), workloads.digits_mlp(32, "adam"), workloads.xor(),
            workloads.mlp(32, "sgd"), workloads.mlp(32, "adam"), workloads.cnn(8, "sgd"),
            workloads.cnn(8, "adam")]


def run(ctx: Context) -> dict:
    models = [workloads.mlp(32), workloads.cnn(8), workloads.digits_mlp(), workloads.xor()]
    grads = []
    for w in models:
        print(f"  gradients: {w.name}", flush=True)
        grads.append(gradients(w))
    paths = [workloads.mlp(16, "sgd")]
    if not ctx.quick:
        paths += [workloads.mlp(16, "adam"), workloads.cnn(8)]
    steps = []
    for w in paths:
        print(f"  same updates: {w.name}", flush=True)
        steps.append(trajectories(w))
    tight = []
    for w in tight_models():
        print(f"  tight NumPy vs reference: {w.name}", flush=True)
        tight.append(tight_vs_reference(w))
    return {"results": {"gradients": grads, "trajectories": steps,
                        "gradient_tolerance": GRAD_TOLERANCE, "tight_vs_reference": tight,
                        "tight_tolerance": TIGHT_TOLERANCE}, "targets": []}
