"""Vectorized training against sequential training: an ensemble of 16 and a 16-trial search.

On the digits MLP (64-128-10, Adam, batch 32), four comparisons, each side timed in interleaved
rounds after a warm-up, synchronised with `block_until_ready`, medians reported:

  ensemble     jdnn.ensemble.fit_ensemble(size=16)       vs 16 x jdnn.fit, one per member key
  search       jdnn.search.search over 16 configurations vs 16 x jdnn.fit, one per configuration
               (4 learning rates x 2 L2 strengths x 2 dropout rates, Adam)
  epoch        one compiled jax.vmap(epoch_fn) call       vs 16 calls of jdnn.fit's compiled
               epoch (compilation excluded: the compute alone)
  compile      jax.vmap(epoch_fn) for 16 members          vs jdnn.fit's epoch, lowered+compiled

The first two are end to end, as a user runs them: every jdnn.fit call compiles its epoch,
every fit_ensemble/search call compiles its program once per structure. The warm-up run of each
side fills what is cached across calls (eager initializers, the evaluator). The target is a 5x
speedup end to end for the ensemble and the search. Run:
`python benchmarks/vectorized.py [--epochs 10] [--rounds 3] [--json out.json]`.
"""

import argparse
import json
import platform
import statistics
import tempfile
import time

import jax
import numpy as np
import optax

import jdnn
from jdnn.ensemble import ensemble_keys, fit_ensemble, init_members
from jdnn.search import TunableDropout, grid, search
from jdnn.train.fit import epoch_fn, make_epoch
from jdnn.train.step import train_step_fn

MEMBERS, WIDTH, BATCH, LEARNING_RATE, TARGET = 16, 128, 32, 1e-3, 5.0
SPACE = {"learning_rate": [3e-4, 1e-3, 3e-3, 1e-2], "l2": [0.0, 1e-4], "dropout": [0.0, 0.2]}
LOSS = jdnn.losses.softmax_cross_entropy


def mlp(dropout=None):
    middle = [] if dropout is None else [dropout]
    return jdnn.serial(jdnn.Dense(WIDTH), jdnn.Relu(), *middle, jdnn.Dense(10))


def timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def ensemble_sides(train, test, epochs):
    common = dict(loss=LOSS, epochs=epochs, batch_size=BATCH, validation_data=test,
                  progress=False)
    model = mlp()

    def vectorized():
        return fit_ensemble(model, train, size=MEMBERS, optimizer=optax.adam(LEARNING_RATE),
                            key=0, **common)[0]

    def sequential(members=MEMBERS):
        return [jdnn.fit(model, train, optimizer=optax.adam(LEARNING_RATE), key=k, **common)[0]
                for k in ensemble_keys(0, MEMBERS)[:members]]

    return vectorized, sequential


def search_sides(train, test, epochs):
    common = dict(loss=LOSS, epochs=epochs, batch_size=BATCH, validation_data=test,
                  progress=False)
    configs = grid(SPACE)

    def vectorized():
        return search(lambda: mlp(TunableDropout()), train, SPACE, key=0, restore_best=False,
                      **common).best_train_state

    def sequential(members=MEMBERS):
        key = jax.random.fold_in(jax.random.key(0), 0)
        return [jdnn.fit(mlp(jdnn.Dropout(c["dropout"])), train,
                         optimizer=optax.adam(c["learning_rate"]),
                         penalty=jdnn.regularizers.penalty(l2=c["l2"]), key=key, **common)[0]
                for c in configs[:members]]

    return vectorized, sequential


def end_to_end(sides, rounds):
    vectorized, sequential = sides
    timed(vectorized)  # warm-up: eager initializers, data checks, the evaluator
    timed(lambda: sequential(1))
    times = {"vectorized": [], "sequential": []}
    for _ in range(rounds):
        times["vectorized"].append(timed(vectorized))
        times["sequential"].append(timed(sequential))
    medians = {side: statistics.median(t) for side, t in times.items()}
    return {"median_s": medians, "rounds_s": times,
            "speedup": medians["sequential"] / medians["vectorized"]}


def epoch_compute(x, y, rounds, epochs_per_round=5):
    model, optimizer = mlp(), optax.adam(LEARNING_RATE)
    step = train_step_fn(model, LOSS, optimizer, metrics=("accuracy",))
    keys = ensemble_keys(0, MEMBERS)
    n = x.shape[0]
    stacked = init_members(model, optimizer, keys, (BATCH, x.shape[1]))
    singles = [jdnn.TrainState.create(model, optimizer, k, (BATCH, x.shape[1])) for k in keys]
    vmapped = jax.jit(jax.vmap(epoch_fn(step, n, BATCH), in_axes=(0, None, None)),
                      donate_argnums=0)
    single = make_epoch(step, n, BATCH)
    compile_s = {"vectorized": timed(lambda: vmapped.lower(stacked, x, y).compile()),
                 "sequential": timed(lambda: single.lower(singles[0], x, y).compile())}
    for _ in range(2):  # compile and burn in
        stacked, m = vmapped(stacked, x, y)
        singles = [single(s, x, y)[0] for s in singles]
    jax.block_until_ready((stacked, singles))
    times = {"vectorized": [], "sequential": []}
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(epochs_per_round):
            stacked, m = vmapped(stacked, x, y)
        jax.block_until_ready(stacked)
        times["vectorized"].append((time.perf_counter() - start) / epochs_per_round)
        start = time.perf_counter()
        for _ in range(epochs_per_round):
            singles = [single(s, x, y)[0] for s in singles]
        jax.block_until_ready(singles)
        times["sequential"].append((time.perf_counter() - start) / epochs_per_round)
    medians = {side: statistics.median(t) for side, t in times.items()}
    steps = -(-n // BATCH)
    return {"median_s_per_16_member_epochs": medians, "compile_s": compile_s,
            "us_per_member_step": {k: v / MEMBERS / steps * 1e6 for k, v in medians.items()},
            "speedup": medians["sequential"] / medians["vectorized"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("ensemble", "search", "epoch"), nargs="+",
                        default=("ensemble", "search", "epoch"))
    parser.add_argument("--cache", action="store_true",
                        help="JAX's persistent compilation cache on (in a fresh temporary "
                             "folder, filled by the warm-up): a re-run of the same script")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jdnn-bench-"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    (x, y), test = jdnn.data.digits()
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {platform.processor() or ''}"
          f" {platform.machine()}, python {platform.python_version()}")
    print(f"digits {x.shape[0]} train / {test[0].shape[0]} test, MLP 64-{WIDTH}-10, batch {BATCH},"
          f" {MEMBERS} members, {args.epochs} epochs, {args.rounds} rounds"
          + (", persistent compilation cache on" if args.cache else ""))
    results = {"epochs": args.epochs, "rounds": args.rounds, "cache": args.cache}
    if "epoch" in args.only:
        r = results["epoch"] = epoch_compute(jax.device_put(x), jax.device_put(y), args.rounds)
        med, us = r["median_s_per_16_member_epochs"], r["us_per_member_step"]
        print(f"epoch (compute only)  vectorized {med['vectorized'] * 1e3:7.1f} ms  sequential "
              f"{med['sequential'] * 1e3:7.1f} ms  per member-step {us['vectorized']:.1f} vs "
              f"{us['sequential']:.1f} us  speedup {r['speedup']:.2f}x (no target)")
        print(f"compile               vectorized {r['compile_s']['vectorized']:7.2f} s   "
              f"sequential {r['compile_s']['sequential']:7.2f} s (once per fit)")
    for name, build in (("ensemble", ensemble_sides), ("search", search_sides)):
        if name in args.only:
            r = results[name] = end_to_end(build((x, y), test, args.epochs), args.rounds)
            med = r["median_s"]
            verdict = "PASS" if r["speedup"] >= TARGET else "MISS"
            print(f"{name:9s} end to end  vectorized {med['vectorized']:7.2f} s   sequential "
                  f"{med['sequential']:7.2f} s   speedup {r['speedup']:.2f}x  target "
                  f">= {TARGET:g}x  {verdict}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
