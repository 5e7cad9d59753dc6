"""Diagnostics behind the findings: measured in the same run, so the report's explanations of
its misses rest on numbers, not on memory.

- `page_faults`: minor page faults and kernel (system) time per training step, one step per
  dispatch against eight steps inside one `lax.scan`, and one step per dispatch in a process
  whose glibc keeps freed memory (`GLIBC_KEEP_MEMORY`). XLA:CPU takes a fresh temporary buffer
  from `malloc` for each execution, on one of its threads; from a thread's arena, or above
  glibc's mmap threshold (32 MB at most), that is fresh `mmap`ed memory, so every execution
  page-faults its whole temporary buffer in again.
- `epoch_overhead`: where a small net's scan-fused epoch spends its time: jdnn's epoch as it
  is (the order drawn on the host, no per-step key split), against the epoch as it was before
  those two fixes (a `jax.random.split` of the carried key every step; the permutation drawn
  by `jax.random.permutation` inside the epoch; both), the raw-JAX scan floor, and each way of
  drawing the order alone.
- `dispatch`: how long one dispatched call takes to return to Python (async dispatch), jdnn's
  step against the raw-JAX step, on the digits MLP.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.suite import timing, workloads
from benchmarks.suite.context import Context
from benchmarks.suite.sides import SIDES, jdnn_side, raw_jax
from jdnn.data.batching import epoch_batches, epoch_order
from jdnn.train import make_epoch
from jdnn.train.fit import weighted_means
from jdnn.train.step import train_step_fn


# glibc settings that keep freed memory in the process: every thread allocates from the main
# heap (one arena), never through a fresh `mmap`, and the heap is not trimmed back to the OS.
GLIBC_KEEP_MEMORY = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
                     "MALLOC_TRIM_THRESHOLD_": str(2**30)}
WORKLOADS = {"cnn": workloads.cnn, "mlp": workloads.mlp}


def _faults(kind: str, batch: int, steps: int = 8, scan: bool = True) -> dict:
    """Minor faults, system time and wall time per step of one workload, in this process."""
    w = WORKLOADS[kind](batch)
    problem = workloads.make_problem(w)
    x, y = (jnp.asarray(a) for a in problem.batch(0))
    step = train_step_fn(problem.model, jdnn_side.loss_fn(w), jdnn_side.optimizer(w))
    one = jax.jit(lambda ts, x, y: step(ts, x, y)[0], donate_argnums=0)
    many = jax.jit(lambda ts, x, y: lax.scan(lambda c, _: (step(c, x, y)[0], None), ts, None,
                                             length=steps)[0], donate_argnums=0)
    temp = one.lower(jdnn_side.train_state(problem), x, y).compile().memory_analysis()
    out = {"workload": w.name, "temp_mb": temp.temp_size_in_bytes / 2**20}
    modes = (("per_step", one, steps), (f"scan_{steps}", many, 1))
    for name, fn, calls in modes if scan else modes[:1]:
        ts = fn(jdnn_side.train_state(problem), x, y)
        for _ in range(3):   # warm up: the heap settles after a few executions
            ts = fn(ts, x, y)
        jax.block_until_ready(ts)
        before, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(calls):
            ts = fn(ts, x, y)
        jax.block_until_ready(ts)
        wall, after = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF)
        out[name] = {"minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
                     "system_ms_per_step": (after.ru_stime - before.ru_stime) / steps * 1e3,
                     "wall_ms_per_step": wall / steps * 1e3}
    return out


def page_faults(kind: str, batch: int, steps: int = 8) -> dict:
    """Per-step dispatch against a scan of `steps`, in this process; then per-step dispatch
    again in a child process started with `GLIBC_KEEP_MEMORY` in its environment (glibc reads
    these settings once, at process start)."""
    out = _faults(kind, batch, steps)
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.suite.diagnose", kind, str(batch), str(steps)],
        env={**os.environ, **GLIBC_KEEP_MEMORY}, capture_output=True, text=True, timeout=600)
    if child.returncode == 0:
        out["per_step, glibc keeps memory"] = json.loads(child.stdout.strip().splitlines()[-1])[
            "per_step"]
    return out


AS_IS = "jdnn_epoch (as is: host order, no key split)"


def _step_with_key_split(step):
    """jdnn's step as it was before the run key became constant: a `jax.random.split` of the
    carried key every step, whether or not a layer uses randomness."""

    def split_step(ts, x, y, mask=None):
        key, _ = jax.random.split(ts.key)
        ts, report = step(ts, x, y, mask)
        return ts._replace(key=key), report

    return split_step


def _device_permutation_epoch(w, step):
    """jdnn's epoch as it was: the permutation drawn inside the compiled epoch by
    `jax.random.permutation` (an XLA:CPU sort), from a key split off the state's key."""

    def epoch(ts, x, y):
        key, order_key = jax.random.split(ts.key)
        indices, masks = epoch_batches(order_key, w.examples, w.batch)
        ts, reports = lax.scan(lambda s, b: step(s, x[b[0]], y[b[0]], b[1]),
                               ts._replace(key=key), (indices, masks))
        return ts, weighted_means(reports, masks)

    return jax.jit(epoch, donate_argnums=0)


def epoch_overhead(ctx: Context, w: workloads.Workload, epochs: int = 4) -> dict:
    problem = workloads.make_problem(w)
    x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)
    step = train_step_fn(problem.model, jdnn_side.loss_fn(w), jdnn_side.optimizer(w))
    host_order, split = make_epoch(step, w.batch), make_epoch(_step_with_key_split(step), w.batch)
    words = np.asarray(jax.random.key_data(jdnn_side.train_state(problem).key))

    count = [0]

    def order(ts):   # as fit draws it: the key read once, the step counted on the host
        count[0] += w.batches
        return epoch_order(words, count[0], w.examples)

    device, both = (_device_permutation_epoch(w, step),
                    _device_permutation_epoch(w, _step_with_key_split(step)))
    epochs_fns = {
        AS_IS: lambda ts: host_order(ts, x, y, order(ts)),
        "before: key split per step": lambda ts: split(ts, x, y, order(ts)),
        "before: device permutation": lambda ts: device(ts, x, y),
        "before: both": lambda ts: both(ts, x, y)}
    calls = {}
    for name, fn in epochs_fns.items():
        box = [jdnn_side.train_state(problem)]

        def run(fn=fn, box=box):
            ts = box[0]
            for _ in range(epochs):
                ts, _ = fn(ts)
            box[0] = jax.block_until_ready(ts)

        calls[name] = run
    floor = SIDES["raw_jax_scan"].build(problem)
    calls["raw_jax_scan (floor)"] = lambda: floor.run(epochs * w.batches)
    plan = jax.jit(lambda k: epoch_batches(k, w.examples, w.batch))
    key = jax.random.key(1)
    calls["device permutation alone"] = lambda: [jax.block_until_ready(plan(key))
                                                 for _ in range(epochs)]
    calls["host order alone"] = lambda: [epoch_order(words, e, w.examples) for e in range(epochs)]
    for call in calls.values():
        call()
    times = timing.interleave([timing.Variant(n, c, steps=epochs * w.batches)
                               for n, c in calls.items()], ctx.settings.rounds + 4,
                              pause_s=ctx.settings.pause_s)
    return {"workload": w.name, "description": w.describe(),
            "sides": timing.table(times, AS_IS)}


def dispatch(calls: int = 300) -> dict:
    """Median time for one dispatched step to return, and the loop's time per step."""
    problem = workloads.make_problem(workloads.digits_mlp())
    w = problem.workload
    x, y = (jnp.asarray(a) for a in problem.batch(0))
    jdnn_step = jax.jit(train_step_fn(problem.model, jdnn_side.loss_fn(w),
                                      jdnn_side.optimizer(w)), donate_argnums=0)
    raw_step = jax.jit(raw_jax.make_step(problem), donate_argnums=(0, 1))
    state = {"jdnn": (jdnn_side.train_state(problem),),
             "raw_jax": (raw_jax.to_raw(problem, problem.params),)}
    state["raw_jax"] += (raw_jax.opt_init(w, state["raw_jax"][0]),)
    fns = {"jdnn": lambda s: jdnn_step(*s, x, y)[:1], "raw_jax": lambda s: raw_step(*s, x, y)[:2]}
    out = {}
    for name, fn in fns.items():
        s = jax.block_until_ready(fn(fn(state[name])))
        returns, began = [], time.perf_counter()
        for _ in range(calls):
            t = time.perf_counter()
            s = fn(s)
            returns.append(time.perf_counter() - t)
        jax.block_until_ready(s)
        out[name] = {"call_returns_us": float(np.median(returns)) * 1e6,
                     "us_per_step": (time.perf_counter() - began) / calls * 1e6}
    return out


def run(ctx: Context) -> dict:
    print("  page faults per step", flush=True)
    faults = [page_faults("cnn", 64), page_faults("mlp", 1024)]
    print("  small-net epoch decomposition", flush=True)
    nets = [workloads.digits_mlp()] if ctx.quick else [workloads.digits_mlp(), workloads.xor()]
    small = [epoch_overhead(ctx, w) for w in nets]
    print("  dispatch", flush=True)
    return {"results": {"page_faults": faults, "epoch_overhead": small,
                        "dispatch": dispatch()}, "targets": []}


if __name__ == "__main__":   # the child of `page_faults`: one workload's per-step figures
    print(json.dumps(_faults(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), scan=False)))
