"""vmap workloads: per-example gradients against batched gradients, and an ensemble of 16 MLPs
trained in one program against 16 sequential trainings.

jdnn's own API for these is `jdnn.vectorize.per_example_grads` and `jdnn.ensemble.fit_ensemble`;
where this jdnn lacks one, its side is reported as skipped ("needs jdnn.vectorize..."), while
the plain-JAX baselines are still measured: `jax.vmap(jax.grad)` per example, and `jax.vmap` of
jdnn's pure epoch (`jdnn.train.epoch_fn`) over 16 train states against 16 sequential epochs
(compute only). The full run also times `fit_ensemble(size=16)` end to end against 16 `fit`s.
(`benchmarks/vectorized.py` and `benchmarks/dp_sgd.py` go deeper: search, ghost clipping.)
"""

from __future__ import annotations

import importlib
import time

import jax
import jax.numpy as jnp

from jdnn.bench import timing
from jdnn.bench.context import Context
from jdnn.bench.sides import jdnn_side
from jdnn.bench.workloads import digits_mlp, make_problem, mlp
from jdnn.train import epoch_fn, make_epoch
from jdnn.train.fit import epoch_orders
from jdnn.train.step import masked_mean, train_step_fn

ENSEMBLE = 16
END_TO_END_EPOCHS = 5


def jdnn_function(module: str, name: str):
    """`(jdnn.<module>.<name>, "")` if this jdnn has it, else `(None, why)`."""
    try:
        found = getattr(importlib.import_module(f"jdnn.{module}"), name, None)
    except ImportError:
        found = None
    why = "" if found is not None else f"needs jdnn.{module}.{name} (not in this jdnn yet)"
    return found, why


def _block(fn):
    return lambda *a: jax.block_until_ready(fn(*a))


def per_example(ctx: Context, batch: int) -> dict:
    problem = make_problem(mlp(batch))
    model, loss = problem.model, jdnn_side.loss_fn(problem.workload)
    params = jax.tree.map(jnp.asarray, problem.params)
    x, y = (jnp.asarray(a) for a in problem.batch(0))

    def objective(p, x, y):
        out, _ = model.apply(p, problem.state, x, train=True)
        return masked_mean(loss(out, y), None)

    batched = jax.jit(jax.grad(objective))
    naive = jax.jit(jax.vmap(lambda p, xi, yi: jax.grad(objective)(p, xi[None], yi[None]),
                             in_axes=(None, 0, 0)))
    calls = {"batched_grad": lambda: batched(params, x, y),
             "vmap_grad": lambda: naive(params, x, y)}
    fn, why = jdnn_function("vectorize", "per_example_grads")
    if fn is not None:
        calls["jdnn_per_example_grads"] = lambda: fn(model, loss, params, problem.state, x, y)
    compiled = {name: timing.first_call(_block(call)) for name, call in calls.items()}
    variants = [timing.Variant(name, _block(call)) for name, call in calls.items()]
    times = timing.interleave(variants, ctx.settings.rounds, pause_s=ctx.settings.pause_s)
    return {"batch": batch, "sides": timing.table(times, "batched_grad"),
            "first_call_s": compiled, "skipped": {} if fn else {"jdnn_per_example_grads": why}}


def ensemble(ctx: Context) -> dict:
    problem = make_problem(digits_mlp())
    w = problem.workload
    step = train_step_fn(problem.model, jdnn_side.loss_fn(w), jdnn_side.optimizer(w))
    x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)
    keys = jax.random.split(jax.random.key(0), ENSEMBLE)

    def fresh(key):
        ts = jdnn_side.train_state(problem)
        return ts._replace(key=key)

    one = make_epoch(step, w.batch)
    many = jax.jit(jax.vmap(epoch_fn(step, w.batch), in_axes=(0, None, None, 0)),
                   donate_argnums=0)
    states = {"sequential": [fresh(k) for k in keys],
              "vmapped": jax.vmap(fresh)(keys)}

    def sequential():
        states["sequential"] = [one(ts, x, y, epoch_orders(ts, w.examples))[0]
                                for ts in states["sequential"]]
        jax.block_until_ready(states["sequential"])

    def vmapped():
        ts = states["vmapped"]
        states["vmapped"] = jax.block_until_ready(many(ts, x, y, epoch_orders(ts, w.examples))[0])

    calls = {"sequential_16_epochs": sequential, "vmap_epoch_fn_16": vmapped}
    compiled = {name: timing.first_call(call) for name, call in calls.items()}
    times = timing.interleave([timing.Variant(n, c) for n, c in calls.items()],
                              ctx.settings.rounds, pause_s=ctx.settings.pause_s)
    result = {"members": ENSEMBLE, "workload": w.describe(),
              "sides": timing.table(times, "sequential_16_epochs"), "first_call_s": compiled,
              "skipped": {}}
    fit_ensemble, why = jdnn_function("ensemble", "fit_ensemble")
    if fit_ensemble is None:
        result["skipped"]["fit_ensemble_end_to_end"] = why
    elif ctx.quick:
        result["skipped"]["fit_ensemble_end_to_end"] = "full run only (16 fits compile 16 times)"
    else:
        result["end_to_end"] = end_to_end(problem, fit_ensemble)
    return result


def end_to_end(problem, fit_ensemble) -> dict:
    """`fit_ensemble(size=16)` against 16 `jdnn.fit` calls, as a user runs them (compiling)."""
    import jdnn

    w = problem.workload
    kw = dict(loss=jdnn_side.loss_fn(w), optimizer=jdnn_side.optimizer(w),
              epochs=END_TO_END_EPOCHS, batch_size=w.batch, progress=False)
    data = (problem.x, problem.y)

    def together():
        jax.block_until_ready(fit_ensemble(problem.model, data, size=ENSEMBLE, key=0, **kw)[0])

    def one_by_one():
        for k in range(ENSEMBLE):
            jax.block_until_ready(jdnn.fit(problem.model, data, key=k, **kw)[0])

    seconds = {}
    for name, fn in (("fit_ensemble_16", together), ("fit_x16", one_by_one)):
        began = time.perf_counter()
        fn()
        seconds[name] = time.perf_counter() - began
    return {"epochs": END_TO_END_EPOCHS, "seconds": seconds,
            "speedup": seconds["fit_x16"] / seconds["fit_ensemble_16"]}


def run(ctx: Context) -> dict:
    results = {}
    for batch in (32,) if ctx.quick else (32, 128):
        print(f"  per-example gradients, batch {batch}", flush=True)
        results[f"per_example_b{batch}"] = per_example(ctx, batch)
    print(f"  ensemble of {ENSEMBLE} digits MLPs", flush=True)
    results["ensemble"] = ensemble(ctx)
    return {"results": results, "targets": []}

