"""Pruning in a vectorized Bayesian search: refilling a pruned trial's slot against leaving it.

    python benchmarks/bayes_refill.py [--trials 32] [--batch 8] [--epochs 10] [--rounds 3]
                                      [--pruners median halving] [--widths 128 1024]
                                      [--out benchmarks/results/bayes_refill.json]

`jdnn.search(strategy="bayes")` trains `--batch` trials as the members of one vmapped program.
When the pruner stops a trial, its member slot either takes the next asked configuration at once
(`refill=True`) or stays frozen until every member of its round has ended (`refill=False`); a
frozen member still costs its share of every vmapped step. For each pruner in `--pruners`
(Optuna's `MedianPruner()`, `SuccessiveHalvingPruner()`, ...; `search`'s names), three searches of
the same budget on scikit-learn's digits (an MLP 64-width-10, for each width in `--widths`, with
`Dropout(rate_in_state=True)`, Adam, batch 32, validation on the test split; learning_rate ~
log-uniform(1e-4, 1e-1), dropout ~ uniform(0, 0.5); TPE seeded from `key=0`):

  refill     pruner=<pruner>, refill=True
  stop       pruner=<pruner>, refill=False
  no_pruner  pruner=None (every trial runs all its epochs)

With a pruner the program runs one epoch per call (the host reports to Optuna between calls);
without, `search`'s default of 10. Each is run once untimed (its warm-up), then the three are
timed in `--rounds` interleaved, shuffled rounds in this process (`benchmarks.suite.timing`),
jdnn's program caches emptied before every call and JAX's persistent compilation cache off, so
every call compiles its program as a user's search does. Reported: the median wall-clock seconds
and each side's ratio to `refill` within each round (above 1: slower than refill), the same
with the XLA compile time inside each call taken out, the trial-epochs trained, the trials
pruned, and the best validation accuracy each search found.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from importlib import metadata

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))   # run as a script

import jdnn  # noqa: E402
from benchmarks.suite import machine, timing  # noqa: E402
from benchmarks.suite.compilation import Recorder  # noqa: E402
from benchmarks.suite.fits import BAYES_SPACE, BATCH, LOSS, WIDTH, no_persistent_cache  # noqa: E402
from jdnn.train import program_cache  # noqa: E402

SIDES = ("refill", "stop", "no_pruner")
BASELINE = "refill"
DESCRIPTION = ("jdnn.search(strategy='bayes', sampler='tpe', key=0) on digits, MLP 64-<width>-10 "
               "with Dropout(rate_in_state=True), Adam, batch 32, validation on the test split")
OUT = pathlib.Path("benchmarks") / "results" / "bayes_refill.json"


def sides(pruner: str) -> dict[str, dict]:
    """`search`'s options of each side, for `pruner` (a `search` pruner name)."""
    return {"refill": dict(pruner=pruner, refill=True),
            "stop": dict(pruner=pruner, refill=False),
            "no_pruner": dict(pruner=None)}


def searches(trials: int, batch: int, epochs: int, pruner: str, width: int = WIDTH) -> dict:
    """One `() -> SearchResult` per side, all of the same budget and seed."""
    data, test = jdnn.data.digits()

    def model_fn() -> jdnn.Layer:
        return jdnn.serial(jdnn.Dense(width), jdnn.Relu(), jdnn.Dropout(0.0, rate_in_state=True),
                           jdnn.Dense(10))

    def side(options: dict):
        return lambda: jdnn.search(model_fn, data, BAYES_SPACE, strategy="bayes", trials=trials,
                                   batch=batch, sampler="tpe", key=0, loss=LOSS, epochs=epochs,
                                   batch_size=BATCH, validation_data=test, progress=False,
                                   **options)

    return {name: side(options) for name, options in sides(pruner).items()}


def outcome(result: jdnn.SearchResult) -> dict:
    """What a search found and what it trained: the best validation accuracy, the trials the
    pruner stopped (and after how many epochs each) and the epochs all trials trained."""
    pruned = sorted(row["epochs"] for row in result.rows if row["stopped"] == "pruned")
    return {"best_val_accuracy": result.rows[0]["val_accuracy"],
            "best_config": result.best_config, "pruned": len(pruned), "pruned_after": pruned,
            "trial_epochs": sum(len(h) for h in result.history)}


def measure(trials: int, batch: int, epochs: int, rounds: int, pruner: str,
            width: int = WIDTH, pause_s: float = 0.5) -> dict:
    """Warm-up, then the sides interleaved; seconds, ratios, compile time and outcomes."""
    runs = searches(trials, batch, epochs, pruner, width)
    outcomes: dict[str, list[dict]] = {name: [] for name in runs}
    compile_s: dict[str, list[float]] = {name: [] for name in runs}
    with Recorder() as recorder, no_persistent_cache() as cache_was_on:

        def tracked(name: str):
            def run():
                program_cache.clear_all()   # as in a fresh process: this call compiles
                start = len(recorder.events)
                result = runs[name]()
                jax.block_until_ready(result.best_train_state)
                compile_s[name].append(recorder.totals(start)["compile_s"])
                outcomes[name].append(outcome(result))
            return run

        variants = [timing.Variant(name, tracked(name)) for name in runs]
        warm_up = {v.name: timing.first_call(v.run) for v in variants}
        for name in runs:   # the warm-up's entries are not the timed rounds'
            compile_s[name].clear()
            outcomes[name].clear()
        times = timing.interleave(variants, rounds, pause_s=pause_s, warm=False)
    training = {name: [t - c for t, c in zip(times[name], compile_s[name], strict=True)]
                for name in times}
    return {"pruner": pruner, "sides": sides(pruner),
            "persistent_cache": f"off while timed (was {'on' if cache_was_on else 'off'})",
            "baseline": BASELINE, "warm_up_s": warm_up,
            "wall": timing.table(times, BASELINE),
            "without_compile": timing.table(training, BASELINE),
            "compile_s": {name: timing.summarize(c).to_dict() for name, c in compile_s.items()},
            "raw_seconds": times, "raw_compile_s": compile_s, "outcomes": outcomes}


def render(result: dict) -> str:
    """A Markdown table: per side, wall and compile-free seconds and ratios, and outcomes."""
    lines = ["| side | wall s [IQR] | ratio to refill [IQR] | without compile s | ratio "
             "| compile s | trial-epochs | pruned | best val acc |", "|---|" + "---|" * 8]

    def cell(summary: dict, digits: str = ".3g") -> str:
        return (f"{summary['median']:{digits}} [{summary['q1']:{digits}}-"
                f"{summary['q3']:{digits}}]")

    for name in SIDES:
        wall, bare = result["wall"][name], result["without_compile"][name]
        found = result["outcomes"][name][-1]
        best = sorted({round(o["best_val_accuracy"], 4) for o in result["outcomes"][name]})
        lines.append(f"| {name} | {cell(wall['seconds'])} | {cell(wall['ratio'], '.2f')} | "
                     f"{bare['seconds']['median']:.3g} | {bare['ratio']['median']:.2f} | "
                     f"{result['compile_s'][name]['median']:.2f} | {found['trial_epochs']} | "
                     f"{found['pruned']} | {', '.join(f'{b:.4f}' for b in best)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="+", default=[WIDTH],
                        help=f"the hidden layer's units, each measured in turn (default {WIDTH})")
    parser.add_argument("--pruners", nargs="+", default=["median"],
                        help="search's pruner names, each measured in turn (default median)")
    parser.add_argument("--out", type=pathlib.Path, default=OUT,
                        help=f"the JSON results file (default {OUT}); '-' writes none")
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = machine.describe()
    print(f"{args.trials} Bayesian trials in slots of {args.batch}, {args.epochs} epochs, "
          f"{args.rounds} rounds on {info['device']} ({info['cpu_count']} CPUs, load "
          f"{info['load_average']})", flush=True)
    began = time.perf_counter()
    runs = {}
    for width in args.widths:
        for pruner in args.pruners:
            name = f"width{width}/{pruner}"
            runs[name] = {"width": width, **measure(args.trials, args.batch, args.epochs,
                                                    args.rounds, pruner, width)}
            print(f"MLP 64-{width}-10, pruner={pruner!r}:\n{render(runs[name])}", flush=True)
    info["load_average_end"] = machine.load_average()
    payload = {"name": "bayes_refill", "description": DESCRIPTION,
               "settings": {"trials": args.trials, "batch": args.batch, "epochs": args.epochs,
                            "rounds": args.rounds, "space": BAYES_SPACE, "batch_size": BATCH,
                            "widths": args.widths,
                            "pruners": args.pruners},
               "machine": info, "optuna": metadata.version("optuna"),
               "seconds": time.perf_counter() - began, "runs": runs}
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1, default=str))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
