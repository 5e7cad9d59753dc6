"""Mixed precision: a float32 training step against a bfloat16 one (`jdnn.train.precision`).

    python benchmarks/precision.py [--rounds 15] [--chunk-s 0.3] [--mlp-batch 1024]
                                   [--cnn-batch 64] [--out FILE.json]

Times `jdnn.make_train_step(..., precision=p)` (Adam) for `p` in float32 and bfloat16 on

  mlp   the 784-512-512-10 ReLU MLP, batch 1024 (`benchmarks.suite.workloads.mlp`)
  cnn   the MNIST-shaped CNN conv32-pool-conv64-pool-dense128-10, batch 64 (`workloads.cnn`)

in one process: each step compiled and run twice untimed (the first call's excess over a
steady one is reported as its compile time), then the two precisions timed in interleaved,
shuffled rounds (`benchmarks.suite.timing.interleave`: a pause and an untimed step before each
timed chunk of several steps, `block_until_ready` at its end, no host sync inside). Reported:
the median milliseconds per step and interquartile range over rounds, and the bfloat16 /
float32 ratio taken within each round (below 1: bfloat16 is faster).

On a CPU, XLA has no bfloat16 matrix kernels: it converts the operands to float32 around each
product, so bfloat16 usually costs time there (the casts) and saves nothing; the gain is on
GPUs and TPUs with bfloat16 units. The script prints the device so the table says which it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))   # run as a script

import jdnn  # noqa: E402
from benchmarks.suite import timing, workloads  # noqa: E402

PRECISIONS = ("float32", "bfloat16")


def make_variant(w: workloads.Workload, precision: str) -> tuple[timing.Variant, float, float]:
    """A timed chunk of `variant.steps` training steps of workload `w` under `precision` (one
    until set), its compile time (first call minus a steady one) and a steady step's time, in
    seconds."""
    model = workloads.build_model(w)
    loss = getattr(jdnn.losses, w.loss)
    optimizer = optax.adam(w.lr)
    x, y = workloads.make_data(w)
    x, y = jnp.asarray(x[:w.batch]), jnp.asarray(y[:w.batch])
    step = jdnn.make_train_step(model, loss, optimizer, precision=precision)
    holder = [jdnn.TrainState.create(model, optimizer, w.seed, (w.batch, *w.example_shape))]

    def one() -> None:
        holder[0], _ = step(holder[0], x, y)   # the state is donated: keep the new one

    def chunk() -> None:
        for _ in range(variant.steps):
            one()
        jax.block_until_ready(holder[0])

    def timed(fn: Callable[[], None]) -> float:
        began = time.perf_counter()
        fn()
        jax.block_until_ready(holder[0])
        return time.perf_counter() - began

    variant = timing.Variant(precision, chunk, warm=one)
    first = timed(one)
    steady = timed(one)
    return variant, timing.compile_seconds(first, steady), steady


def measure(w: workloads.Workload, rounds: int, chunk_s: float) -> dict:
    """Both precisions of workload `w`, interleaved; medians, IQRs and ratios."""
    variants, compile_s, steady_s = [], {}, {}
    for precision in PRECISIONS:
        variant, compile_s[precision], steady_s[precision] = make_variant(w, precision)
        variants.append(variant)
    steps = timing.calibrate(steady_s["float32"], chunk_s)   # the same chunk for both
    for variant in variants:
        variant.steps = steps
    times = timing.interleave(variants, rounds)
    ratio = timing.summarize(timing.ratios(times, "float32")["bfloat16"])
    return {"workload": w.name, "describe": w.describe(), "steps_per_chunk": steps,
            "rounds": rounds, "compile_s": compile_s,
            "ms_per_step": {p: dataclasses.asdict(timing.summarize([t * 1e3 for t in times[p]]))
                            for p in PRECISIONS},
            "bf16_over_f32": dataclasses.asdict(ratio)}


def render(results: list[dict], device: str) -> str:
    """A Markdown table of the results."""
    lines = [f"device: {device}; jax {jax.__version__}; {platform.python_version()}", "",
             "| workload | float32 ms/step (IQR) | bfloat16 ms/step (IQR) | bf16/f32 ratio (IQR) "
             "| compile f32 / bf16 s |", "|---|---|---|---|---|"]
    for r in results:
        f32, b16, ratio = r["ms_per_step"]["float32"], r["ms_per_step"]["bfloat16"], \
            r["bf16_over_f32"]
        lines.append(f"| {r['workload']} | {f32['median']:.2f} ({f32['q1']:.2f}-{f32['q3']:.2f}) "
                     f"| {b16['median']:.2f} ({b16['q1']:.2f}-{b16['q3']:.2f}) "
                     f"| {ratio['median']:.2f} ({ratio['q1']:.2f}-{ratio['q3']:.2f}) "
                     f"| {r['compile_s']['float32']:.2f} / {r['compile_s']['bfloat16']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--chunk-s", type=float, default=0.3)
    parser.add_argument("--mlp-batch", type=int, default=1024)
    parser.add_argument("--cnn-batch", type=int, default=64)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    device = f"{jax.default_backend()} ({jax.devices()[0].device_kind})"
    print(f"timing float32 vs bfloat16 steps on {device}", flush=True)
    results = []
    for w in (workloads.mlp(args.mlp_batch), workloads.cnn(args.cnn_batch)):
        print(f"  {w.name}: {w.describe()}", flush=True)
        results.append(measure(w, args.rounds, args.chunk_s))
    print(render(results, device))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": device, "jax": jax.__version__, "results": results}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
