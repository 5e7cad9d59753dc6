"""vmap workloads: per-example gradients, DP-SGD, ensembles and vectorized search.

- `per_example_b<B>`: `jdnn.per_example_grads` and a plain `jax.vmap(jax.grad)` over batches of
  one against the batched gradient (784-512-512-10 MLP; batch 32, and 128 in the full run).
- `dp_sgd_b<B>`: a DP-SGD step (ghost clipping, with and without the noise; naive `vmap` clipping)
  against a plain step (`benchmarks.suite.dp_sgd`; batch 128, and 32 in the full run), and
  `ghost_vs_naive_b128`: ghost clipping's gradient against the naive one, same run.
- `ensemble`: `jax.vmap` of jdnn's pure epoch (`jdnn.train.epoch_fn`) over 16 digits MLPs
  against 16 epochs one after another: the compute alone, compiled once each.
- `ensemble_end_to_end`, `search_end_to_end`: `fit_ensemble(size=16)` and a 16-configuration
  `search` against 16 `jdnn.fit` calls, as a user runs them (`benchmarks.suite.fits`).
- `bayes_end_to_end`: a 16-trial Bayesian `search` (TPE, rounds of 8) against an Optuna study
  of 16 `jdnn.fit` trials (`benchmarks.suite.fits.bayes_sides`); needs Optuna.

Everything is timed like the rest of the suite (`compare`: warm-up, interleaved rounds, medians
and IQRs, compile time apart). A part that raises is reported in the payload's `failed` (and
the run's exit status) without losing the others; one whose optional library is missing
raises `Skipped` and is reported in `skipped`, with the reason, and its target as SKIP. The
targets (issues 6 and 17) are in `targets_for`.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp

import jdnn
from benchmarks.suite import dp_sgd, fits, targets
from benchmarks.suite.compare import compare
from benchmarks.suite.context import Context
from benchmarks.suite.sides import jdnn_side
from benchmarks.suite.sides.base import Runner, Skipped
from benchmarks.suite.workloads import Workload, digits_mlp, make_problem, mlp
from jdnn.train import epoch_fn, make_epoch
from jdnn.train.fit import epoch_orders
from jdnn.losses import masked_mean
from jdnn.train.step import train_step_fn

ENSEMBLE = 16
DP_RATIO, SPEEDUP = 3.0, 5.0


def _calls(fn: Callable) -> Runner:
    """A runner that calls `fn()` `n` times and blocks on the last result."""

    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = fn()
        jax.block_until_ready(out)

    return Runner(run, dict)


def per_example(ctx: Context, w: Workload) -> dict:
    """Per-example gradients (jdnn's, and `vmap(grad)` over batches of one) against the batched
    gradient of the mean loss, on the same parameters and batch (the benchmark's: `mlp(B)`)."""
    problem = make_problem(w)
    model, loss = problem.model, jdnn_side.loss_fn(problem.workload)
    params = jax.tree.map(jnp.asarray, problem.params)
    x, y = (jnp.asarray(a) for a in problem.batch(0))

    def objective(p, x, y):
        out, _ = model.apply(p, problem.state, x, train=True)
        return masked_mean(loss(out, y), None)

    batched = jax.jit(jax.grad(objective))
    naive = jax.jit(jax.vmap(lambda p, xi, yi: jax.grad(objective)(p, xi[None], yi[None]),
                             in_axes=(None, 0, 0)))
    jdnn_grads = jax.jit(lambda p, x, y: jdnn.per_example_grads(model, loss, p, problem.state,
                                                                x, y))
    runners = {"batched_grad": _calls(lambda: batched(params, x, y)),
               "vmap_grad": _calls(lambda: naive(params, x, y)),
               "jdnn_per_example_grads": _calls(lambda: jdnn_grads(params, x, y))}
    result = compare(problem, [], baseline="batched_grad", settings=ctx.settings, extra=runners)
    return {**result, "batch": w.batch, "unit": "gradient of the batch"}


def ensemble(ctx: Context, w: Workload | None = None) -> dict:
    """16 epochs of `w` (default: the digits MLP): one `vmap`ped, compiled epoch against 16
    calls of `fit`'s compiled epoch (each compiled once before the rounds: the compute alone)."""
    problem = make_problem(w or digits_mlp())
    w = problem.workload
    step = train_step_fn(problem.model, jdnn_side.loss_fn(w), jdnn_side.optimizer(w))
    x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)
    keys = jax.random.split(jax.random.key(0), ENSEMBLE)

    def fresh(key):
        return jdnn_side.train_state(problem)._replace(key=key)

    one = make_epoch(step, w.batch)
    many = jax.jit(jax.vmap(epoch_fn(step, w.batch), in_axes=(0, None, None, 0)),
                   donate_argnums=0)
    states = {"sequential": [fresh(k) for k in keys], "vmapped": jax.vmap(fresh)(keys)}

    def sequential(n: int) -> None:
        for _ in range(n):
            states["sequential"] = [one(ts, x, y, epoch_orders(ts, w.examples))[0]
                                    for ts in states["sequential"]]
        jax.block_until_ready(states["sequential"])

    def vmapped(n: int) -> None:
        for _ in range(n):
            ts = states["vmapped"]
            states["vmapped"] = many(ts, x, y, epoch_orders(ts, w.examples))[0]
        jax.block_until_ready(states["vmapped"])

    runners = {"sequential_16_epochs": Runner(sequential, dict),
               "vmap_epoch_fn_16": Runner(vmapped, dict)}
    result = compare(problem, [], baseline="sequential_16_epochs", settings=ctx.settings,
                     extra=runners)
    return {**result, "members": ENSEMBLE, "unit": f"{ENSEMBLE} member-epochs"}


def parts(ctx: Context) -> dict[str, Callable[[], dict]]:
    """The measurements of this run, by result key, in the order they run."""
    out = {}
    for batch in (32,) if ctx.quick else (32, 128):
        out[f"per_example_b{batch}"] = lambda b=batch: per_example(ctx, mlp(b))
    for batch in (128,) if ctx.quick else (32, 128):
        out[f"dp_sgd_b{batch}"] = lambda b=batch: dp_sgd.steps(ctx, mlp(b, "sgd"))
    out["ghost_vs_naive_b128"] = lambda: dp_sgd.ghost_vs_naive(mlp(128, "sgd"))
    out["ensemble"] = lambda: ensemble(ctx)
    out["ensemble_end_to_end"] = lambda: fits.run_one("ensemble", ctx)
    out["search_end_to_end"] = lambda: fits.run_one("search", ctx)
    out["bayes_end_to_end"] = lambda: fits.run_one("bayes", ctx)
    return out


def _sides_ratio(results: dict, key: str, side: str) -> dict | None:
    return results.get(key, {}).get("sides", {}).get(side, {}).get("ratio")


def targets_for(results: dict, failed: dict | None = None,
                skipped: dict | None = None) -> list[dict]:
    """Issues 6 and 17's targets from this section's results (SKIP where a part did not run:
    `failed` and `skipped` map a part's key to why)."""
    failed, skipped = failed or {}, skipped or {}

    def why(key: str) -> str:
        return (f"failed: {failed[key]}" if key in failed
                else f"skipped: {skipped[key]}" if key in skipped else "")

    out = [targets.from_ratio(
        "dp_sgd/b128", f"DP-SGD step (ghost clipping + noise) <= {DP_RATIO:g}x a plain step, "
        "batch 128, MLP 784-512-512-10", _sides_ratio(results, "dp_sgd_b128", "dp_ghost"),
        DP_RATIO, "<=", note=why("dp_sgd_b128"))]
    check = results.get("ghost_vs_naive_b128")
    note = why("ghost_vs_naive_b128") or (
        "" if check is None else f"float32, batch {check['batch']}, "
        f"{check['clipped_fraction']:.0%} of the examples clipped")
    out.append(targets.check(
        "ghost_equals_naive/b128", "ghost-clipped gradient = naive vmap(grad) clipping "
        "(max relative difference)",
        None if check is None else check["grads_max_relative_difference"],
        dp_sgd.TOLERANCE, "<=", unit="", note=note))
    for key, text, against in (
            ("ensemble_end_to_end", f"ensemble of {fits.MEMBERS} (fit_ensemble)",
             f"{fits.MEMBERS} sequential fits"),
            ("search_end_to_end", f"{fits.MEMBERS}-configuration search",
             f"{fits.MEMBERS} sequential fits"),
            ("bayes_end_to_end", f"{fits.MEMBERS}-trial Bayesian search (TPE, rounds of "
             f"{fits.BAYES_ROUND})", f"{fits.MEMBERS} sequential Optuna trials of fit")):
        r = results.get(key, {})
        note = why(key)
        if r.get("sequential_scale", 1) != 1:
            note = (f"{len(r['sequential_fits_timed'])} of the {fits.MEMBERS} sequential fits "
                    f"timed per round, scaled x{r['sequential_scale']:g}")
        out.append(targets.from_ratio(
            f"{key.split('_')[0]}_vs_sequential",
            f"{text} >= {SPEEDUP:g}x faster than {against}, end to end",
            _sides_ratio(results, key, "sequential"), SPEEDUP, ">=", note=note))
    return out


def run(ctx: Context) -> dict:
    results, failed, skipped = {}, {}, {}
    for key, measure in parts(ctx).items():
        print(f"  {key}", flush=True)
        try:
            results[key] = measure()
        except Skipped as reason:  # an optional library is missing: not a failure
            print(f"    skipped: {reason}", flush=True)
            skipped[key] = str(reason)
        except Exception as error:  # one broken part must not lose the others
            traceback.print_exc(file=sys.stderr)
            failed[key] = f"{type(error).__name__}: {error}"
    return {"results": results, "targets": targets_for(results, failed, skipped),
            "failed": failed, "skipped": skipped}
