"""DP-SGD: what a differentially private step costs against a plain one, and ghost clipping
checked against the naive clipping in the same run.

On the 784-512-512-10 MLP (SGD, the `mlp` workload's MNIST-shaped random data), four compiled
steps start from the same parameters and walk the same batches:

  plain              `jdnn.make_train_step`: the batched gradient of the mean loss
  dp_ghost           `jdnn.make_dp_train_step(method="ghost")`: ghost clipping (no per-example
                     gradient is formed) and the Gaussian noise (one normal draw per parameter)
  dp_ghost_no_noise  the same with `noise_multiplier=0`: the clipping alone
  dp_vmap            `jdnn.make_dp_train_step(method="vmap")`: `vmap(grad)` per example, clipped

They are timed by `compare` (warm-up, interleaved rounds, compile time apart). The check:
`jdnn.ghost_clipped_grad` against `jdnn.clip_and_aggregate(jdnn.per_example_grads(...))`, both in
one compiled program, float32, at a clip norm that clips half of the batch (the median
per-example norm), so both sides of the clipping are exercised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jdnn
from benchmarks.suite.compare import compare
from benchmarks.suite.context import Context
from benchmarks.suite.sides import jdnn_side
from benchmarks.suite.workloads import Workload, make_problem

CLIP, NOISE = 1.0, 1.0
TOLERANCE = 1e-5  # float32: ~100x its rounding over a batch of 128


def steps(ctx: Context, w: Workload) -> dict:
    """The four steps on workload `w` (the benchmark's: `mlp(B, "sgd")`), interleaved; ratios
    are to the plain step."""
    problem = make_problem(w)
    model, loss, optimizer = problem.model, jdnn_side.loss_fn(w), jdnn_side.optimizer(w)

    def dp(method: str, noise: float):
        return jdnn.make_dp_train_step(model, loss, optimizer, l2_norm_clip=CLIP,
                                       noise_multiplier=noise, method=method)

    built = {"plain": jdnn.make_train_step(model, loss, optimizer),
             "dp_ghost": dp("ghost", NOISE), "dp_ghost_no_noise": dp("ghost", 0.0),
             "dp_vmap": dp("vmap", NOISE)}
    result = compare(problem, [], baseline="plain", settings=ctx.settings,
                     extra={name: jdnn_side.step_runner(problem, step)
                            for name, step in built.items()})
    return {**result, "batch": w.batch, "unit": "step", "l2_norm_clip": CLIP,
            "noise_multiplier": NOISE}


def max_relative_difference(a, b) -> float:
    """Over the leaves of two trees: max |a - b| / max |b| (the largest, leaf by leaf)."""
    out = 0.0
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        out = max(out, float(np.abs(u - v).max() / max(np.abs(v).max(), 1e-30)))
    return out


def ghost_vs_naive(w: Workload) -> dict:
    """`ghost_clipped_grad` against `clip_and_aggregate(per_example_grads(...))`, float32, on
    `w`'s model and first batch, at the median per-example norm as the clip norm."""
    problem = make_problem(w)
    model, loss = problem.model, jdnn_side.loss_fn(problem.workload)
    params = jax.tree.map(jnp.asarray, problem.params)
    x, y = (jnp.asarray(a) for a in problem.batch(0))

    @jax.jit
    def both(params, clip):
        ghost, ghost_norms = jdnn.ghost_clipped_grad(model, loss, params, problem.state, x, y,
                                                     l2_norm_clip=clip)
        per_example = jdnn.per_example_grads(model, loss, params, problem.state, x, y)
        naive, naive_norms = jdnn.clip_and_aggregate(per_example, clip)
        return ghost, ghost_norms, naive, naive_norms

    norms = np.asarray(both(params, jnp.float32(CLIP))[3])  # the norms do not depend on the clip
    clip = float(np.median(norms))
    ghost, ghost_norms, naive, naive_norms = jax.device_get(both(params, jnp.float32(clip)))
    grads = max_relative_difference(ghost, naive)
    return {"batch": w.batch, "description": w.describe(), "dtype": "float32",
            "l2_norm_clip": clip, "clipped_fraction": float(np.mean(naive_norms > clip)),
            "grads_max_relative_difference": grads,
            "norms_max_relative_difference": max_relative_difference(ghost_norms, naive_norms),
            "tolerance": TOLERANCE, "ok": grads <= TOLERANCE}
