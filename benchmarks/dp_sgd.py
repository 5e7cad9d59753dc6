"""Cost of a DP-SGD step against a plain training step, for the 784-512-512-10 MLP.

Three compiled steps on the same model, data and optimizer (SGD):
  plain   jdnn.make_train_step: the batched gradient of the mean loss;
  naive   jdnn.make_dp_train_step(method="vmap"): vmap(grad) per-example gradients, clipped;
  ghost   jdnn.make_dp_train_step(method="ghost"): ghost clipping, no per-example gradient;
  ghost0  the same with noise_multiplier=0: clipping alone, without the Gaussian noise draw
          (one normal sample per parameter, a cost that grows with the model, not the batch).

Compilation is timed apart; then the three are timed interleaved (rounds of `--steps` steps
each, synchronised with `block_until_ready` only at the end of a round) and the medians per
step and their ratios to the plain step are printed, with versions and device. Run:
`python benchmarks/dp_sgd.py [--batch 32 128] [--rounds 5] [--steps 5] [--json out.json]`.
"""

import argparse
import json
import platform
import statistics
import time

import jax
import numpy as np
import optax

import jdnn
from jdnn.ghost import make_dp_train_step

SIZES = (784, 512, 512, 10)
CLIP, NOISE, LEARNING_RATE = 1.0, 1.0, 0.05


def build_steps(batch: int):
    layers = []
    for width in SIZES[1:-1]:
        layers += [jdnn.Dense(width, w_init="he_normal"), jdnn.Relu()]
    model = jdnn.serial(*layers, jdnn.Dense(SIZES[-1]))
    loss, optimizer = jdnn.losses.softmax_cross_entropy, optax.sgd(LEARNING_RATE)
    dp = dict(l2_norm_clip=CLIP, noise_multiplier=NOISE)
    steps = {
        "plain": jdnn.make_train_step(model, loss, optimizer),
        "naive": make_dp_train_step(model, loss, optimizer, method="vmap", **dp),
        "ghost": make_dp_train_step(model, loss, optimizer, method="ghost", **dp),
        "ghost0": make_dp_train_step(model, loss, optimizer, method="ghost", l2_norm_clip=CLIP,
                                     noise_multiplier=0.0),
    }
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.normal(size=(batch, SIZES[0])).astype(np.float32))
    y = jax.device_put(rng.integers(0, SIZES[-1], batch).astype(np.int32))
    states = {name: jdnn.TrainState.create(model, optimizer, jax.random.key(0), (batch, SIZES[0]))
              for name in steps}
    return steps, states, x, y


def measure(batch: int, rounds: int, steps_per_round: int) -> dict:
    steps, states, x, y = build_steps(batch)
    compile_s = {}
    for name, step in steps.items():
        start = time.perf_counter()
        states[name], metrics = step(states[name], x, y)
        jax.block_until_ready((states[name], metrics))
        compile_s[name] = time.perf_counter() - start
        for _ in range(2):  # burn-in
            states[name], metrics = step(states[name], x, y)
        jax.block_until_ready(states[name])
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            state = states[name]
            start = time.perf_counter()
            for _ in range(steps_per_round):
                state, _ = step(state, x, y)
            jax.block_until_ready(state)
            times[name].append((time.perf_counter() - start) / steps_per_round)
            states[name] = state
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"batch": batch, "median_s": medians, "compile_s": compile_s,
            "ratio_to_plain": {name: medians[name] / medians["plain"] for name in medians},
            "ghost_speedup_over_naive": medians["naive"] / medians["ghost"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, optax {optax.__version__}, {platform.processor() or ''} "
          f"{jax.devices()[0].device_kind} x{jax.device_count()}, MLP {'-'.join(map(str, SIZES))}")
    results = []
    for batch in args.batch:
        r = measure(batch, args.rounds, args.steps)
        results.append(r)
        m, ratio = r["median_s"], r["ratio_to_plain"]
        print(f"batch {batch:4d}: plain {m['plain'] * 1e3:8.2f} ms | naive vmap+clip "
              f"{m['naive'] * 1e3:8.2f} ms ({ratio['naive']:6.1f}x) | ghost "
              f"{m['ghost'] * 1e3:8.2f} ms ({ratio['ghost']:4.2f}x) | ghost without noise "
              f"{m['ghost0'] * 1e3:8.2f} ms ({ratio['ghost0']:4.2f}x) | ghost is "
              f"{r['ghost_speedup_over_naive']:.0f}x faster than naive   (compile: "
              + ", ".join(f"{k} {v:.2f}s" for k, v in r["compile_s"].items()) + ")")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jax": jax.__version__, "device": str(jax.devices()[0]),
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
