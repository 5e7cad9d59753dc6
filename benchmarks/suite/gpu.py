"""`python benchmarks/run.py --gpu-check`: the workloads at GPU-sized batches, in <= 5 minutes.

No GPU is lent to this project's machines today; this check is ready for the day one is. On a
machine whose JAX backend is not a GPU it prints so and returns 0 without measuring anything.
On a GPU it records the device and times, interleaved like every other comparison:

- the MLP 784-512-512-10 at batch 4096 and the CNN at batch 256 (Adam): jdnn's step and scan
  epoch, the raw-JAX step and scan floors, Flax linen, Equinox (peers skipped when missing);
  the NumPy and PyTorch-CPU sides are left out (they would time the host, not the GPU);
- the GEMM rate through XLA in float32 and in bfloat16 (4096^2), the precision where bfloat16
  applies today (jdnn's mixed-precision training is its own issue);

and writes `gpu.json` into the results folder, so `report.md` gains a "GPU check" section.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

GPU_SIDES = ("jdnn_step", "jdnn_epoch", "raw_jax", "raw_jax_scan", "linen", "equinox")
GEMM_N = 4096


def on_gpu() -> bool:
    """Whether JAX's default backend is a GPU."""
    return jax.default_backend() == "gpu"


def gemm_rates(n: int = GEMM_N, rounds: int = 5) -> dict[str, float]:
    """XLA's `(n, n) @ (n, n)` rate in GFLOP/s per dtype, the best of `rounds`."""
    out = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype)
        matmul = jax.jit(lambda a, b: a @ b)
        matmul(a, b).block_until_ready()
        best = float("inf")
        for _ in range(rounds):
            began = time.perf_counter()
            matmul(a, b).block_until_ready()
            best = min(best, time.perf_counter() - began)
        out[jnp.dtype(dtype).name] = 2.0 * n**3 / best / 1e9
    return out


def check(ctx) -> dict | None:
    """The GPU check's payload, or None (after saying so) when there is no GPU."""
    if not on_gpu():
        print(f"--gpu-check: JAX's backend here is {jax.default_backend()!r} "
              f"({jax.devices()[0].device_kind}), not a GPU; nothing to measure.", flush=True)
        return None
    from benchmarks.suite import compare, workloads

    settings = dataclasses.replace(compare.QUICK, rounds=5)
    results = {}
    for w in (workloads.mlp(4096, batches=4), workloads.cnn(256)):
        print(f"  {w.name}: {w.describe()}", flush=True)
        results[w.name] = compare.compare(workloads.make_problem(w), GPU_SIDES,
                                          settings=settings)
    del ctx
    return {"results": results, "gemm_gflops": gemm_rates(), "targets": []}
