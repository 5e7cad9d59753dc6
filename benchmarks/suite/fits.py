"""Vectorized training against sequential training, end to end: an ensemble of 16, a
16-configuration search and a 16-trial Bayesian search, each against 16 `jdnn.fit` calls, on
scikit-learn's digits (MLP 64-128-10, Adam, batch 32, validation on the test split every epoch).

  ensemble  `jdnn.fit_ensemble(size=16)` against `jdnn.fit` with each member's key
            (`jdnn.multi.ensemble.ensemble_keys`), which trains that member identically
  search    `jdnn.search` over 16 configurations of one structure (4 learning rates x 2 L2
            strengths x 2 dropout rates) against `jdnn.fit` per configuration (a fixed-rate
            `jdnn.Dropout`, `jdnn.regularizers.penalty(l2=...)`, the trial's key)
  bayes     `jdnn.search(strategy="bayes", sampler="tpe")`, 16 trials asked and trained in
            rounds of 8, against an Optuna study (the search's `TPESampler`, same seed) whose
            16 trials each call `jdnn.fit` (`optax.adam(lr)`, a fixed-rate `jdnn.Dropout`, the
            trial's key) and return the best validation accuracy, as the search tells Optuna.
            Needs Optuna (`jdnn[search]`); without it the part raises `Skipped`.

As a user runs them in a fresh process: the first `jdnn.fit` compiles its programs and the 15
after it reuse them (`fit` keeps its compiled programs across calls,
`jdnn.train.program_cache`); each `fit_ensemble` / `search` call compiles its one program.
Before every timed call jdnn's program caches are emptied (`program_cache.clear_all`), and
JAX's persistent compilation cache is off while they run, so each timed call starts as in a
fresh process (imports aside). The sides alternate in rounds, and the XLA compile time inside
every timed call is recorded apart (`jax.monitoring`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import optax

import jdnn
from benchmarks.suite import timing
from benchmarks.suite.compilation import Recorder
from benchmarks.suite.context import Context
from benchmarks.suite.sides.base import require
from jdnn.multi import bayes
from jdnn.multi.ensemble import ensemble_keys
from jdnn.multi.space import grid
from jdnn.train import program_cache

MEMBERS, WIDTH, BATCH, LEARNING_RATE = 16, 128, 32, 1e-3
SPACE = {"learning_rate": [3e-4, 1e-3, 3e-3, 1e-2], "l2": [0.0, 1e-4], "dropout": [0.0, 0.2]}
BAYES_SPACE = {"learning_rate": ("log_uniform", 1e-4, 1e-1), "dropout": ("uniform", 0.0, 0.5)}
BAYES_ROUND = 8   # Bayesian trials asked, and trained as members of one program, together
LOSS = jdnn.losses.softmax_cross_entropy


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to run: epochs per fit, rounds, sequential fits timed per round (of 16)."""

    epochs: int
    rounds: int
    fits: int


QUICK, FULL = Plan(epochs=5, rounds=2, fits=MEMBERS), Plan(epochs=10, rounds=3, fits=MEMBERS)


def spread(count: int, total: int = MEMBERS) -> list[int]:
    """`count` indices spread evenly over `range(total)`, the first and the last included."""
    if not 1 <= count <= total:
        raise ValueError(f"count must be in [1, {total}], got {count}")
    return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})


@contextlib.contextmanager
def no_persistent_cache():
    """JAX's persistent compilation cache off inside (as in a script that never turns it on);
    restored on exit. Yields whether it was on before."""
    from jax.experimental.compilation_cache import compilation_cache

    was = bool(jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir)
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield was
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()


def mlp(dropout: jdnn.Layer | None = None) -> jdnn.Layer:
    middle = [] if dropout is None else [dropout]
    return jdnn.serial(jdnn.Dense(WIDTH), jdnn.Relu(), *middle, jdnn.Dense(10))


def _common(plan: Plan, test) -> dict:
    return dict(loss=LOSS, epochs=plan.epochs, batch_size=BATCH, validation_data=test,
                progress=False)


def ensemble_sides(data, test, plan: Plan) -> tuple[Callable, Callable[[Sequence[int]], None]]:
    """`(vectorized(), sequential(members))`: fit_ensemble of 16, and `fit` per member."""
    common, model, keys = _common(plan, test), mlp(), ensemble_keys(0, MEMBERS)

    def vectorized():
        states, _ = jdnn.fit_ensemble(model, data, size=MEMBERS,
                                      optimizer=optax.adam(LEARNING_RATE), key=0, **common)
        jax.block_until_ready(states)

    def sequential(members):
        for i in members:
            ts, _ = jdnn.fit(model, data, optimizer=optax.adam(LEARNING_RATE), key=keys[i],
                             **common)
            jax.block_until_ready(ts)

    return vectorized, sequential


def search_sides(data, test, plan: Plan) -> tuple[Callable, Callable[[Sequence[int]], None]]:
    """`(vectorized(), sequential(trials))`: `jdnn.search` of the grid, and `fit` per trial."""
    common, configs = _common(plan, test), grid(SPACE)
    trial_key = jax.random.fold_in(jax.random.key(0), 0)  # search(key=0), a trial of seed 0

    def vectorized():
        result = jdnn.search(lambda: mlp(jdnn.Dropout(0.0, rate_in_state=True)), data, SPACE,
                             key=0, restore_best=False, **common)
        jax.block_until_ready(result.best_train_state)

    def sequential(trials):
        for t in trials:
            c = configs[t]
            ts, _ = jdnn.fit(mlp(jdnn.Dropout(c["dropout"])), data,
                             optimizer=optax.adam(c["learning_rate"]),
                             penalty=jdnn.regularizers.penalty(l2=c["l2"]), key=trial_key,
                             **common)
            jax.block_until_ready(ts)

    return vectorized, sequential


def bayes_sides(data, test, plan: Plan) -> tuple[Callable, Callable[[Sequence[int]], None]]:
    """`(vectorized(), sequential(trials))`: a Bayesian `jdnn.search` of 16 TPE trials in rounds
    of 8, and an Optuna study of `len(trials)` trials, each a `fit`, with the same TPE seed.

    Raises:
        Skipped: where Optuna is not installed.
    """
    optuna = require("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    common = _common(plan, test)
    seed = bayes.seed_of(jax.random.key(0))   # the TPE seed search(key=0) uses
    trial_key = jax.random.fold_in(jax.random.key(0), 0)  # search(key=0), a trial of seed 0
    rates, dropouts = BAYES_SPACE["learning_rate"][1:], BAYES_SPACE["dropout"][1:]

    def vectorized():
        result = jdnn.search(lambda: mlp(jdnn.Dropout(0.0, rate_in_state=True)), data,
                             BAYES_SPACE, strategy="bayes", trials=MEMBERS, batch=BAYES_ROUND,
                             sampler="tpe", key=0, **common)
        jax.block_until_ready(result.best_train_state)

    def objective(trial) -> float:
        rate = trial.suggest_float("learning_rate", *rates, log=True)
        dropout = trial.suggest_float("dropout", *dropouts)
        ts, history = jdnn.fit(mlp(jdnn.Dropout(dropout)), data, optimizer=optax.adam(rate),
                               key=trial_key, **common)
        jax.block_until_ready(ts)
        return max(history["val_accuracy"])

    def sequential(trials):
        study = optuna.create_study(direction="maximize",
                                    sampler=bayes.make_sampler(optuna, "tpe", seed, BAYES_ROUND))
        study.optimize(objective, n_trials=len(trials))

    return vectorized, sequential


def end_to_end(vectorized: Callable, sequential: Callable, plan: Plan, *,
               pause_s: float = 0.05) -> dict:
    """Times both sides in `plan.rounds` alternating rounds; the sequential side's time is that
    of `plan.fits` fits scaled to 16. Ratios (`sequential / vectorized`) are the speed-up."""
    began = time.perf_counter()
    chosen = spread(plan.fits)
    scale = MEMBERS / len(chosen)
    spent: dict[str, list[dict]] = {"vectorized": [], "sequential": []}
    with Recorder() as recorder, no_persistent_cache() as cache_was_on:

        def tracked(name: str, fn: Callable, factor: float) -> Callable:
            def run():
                program_cache.clear_all()   # as in a fresh process: this call compiles
                start = len(recorder.events)
                fn()
                spent[name].append({k: v * factor for k, v in recorder.totals(start).items()})
            return run

        warm_up = {"vectorized": timing.first_call(vectorized),
                   "sequential_one_fit": timing.first_call(lambda: sequential(chosen[:1]))}
        variants = [timing.Variant("vectorized", tracked("vectorized", vectorized, 1.0)),
                    timing.Variant("sequential", tracked("sequential",
                                                         lambda: sequential(chosen), scale))]
        times = timing.interleave(variants, plan.rounds, pause_s=pause_s, warm=False)
    times["sequential"] = [t * scale for t in times["sequential"]]
    return {"members": MEMBERS, "epochs": plan.epochs, "rounds": plan.rounds,
            "sequential_fits_timed": chosen, "sequential_scale": scale,
            "persistent_cache": f"off while timed (was {'on' if cache_was_on else 'off'})",
            "baseline": "vectorized", "unit": f"{MEMBERS} trained models",
            "sides": timing.table(times, "vectorized"), "raw_seconds": times,
            "compile": {side: {kind: timing.summarize([s[kind] for s in rounds]).to_dict()
                               for kind in ("compile_s", "trace_s", "lower_s")}
                        for side, rounds in spent.items()},
            "warm_up_s": warm_up, "wall_s": time.perf_counter() - began}


def run_one(kind: str, ctx: Context, plan: Plan | None = None) -> dict:
    """`kind` is `"ensemble"`, `"search"` or `"bayes"`; the plan defaults to QUICK or FULL by
    `ctx`. `"bayes"` raises `Skipped` where Optuna is not installed."""
    plan = plan or (QUICK if ctx.quick else FULL)
    data, test = jdnn.data.digits()
    build = {"ensemble": ensemble_sides, "search": search_sides, "bayes": bayes_sides}[kind]
    labels = {"ensemble": (f"jdnn.fit_ensemble(size={MEMBERS})", f"{MEMBERS} x jdnn.fit"),
              "search": (f"jdnn.search, {MEMBERS}-configuration grid {SPACE}",
                         f"{MEMBERS} x jdnn.fit, one per configuration"),
              "bayes": (f"jdnn.search(strategy='bayes', sampler='tpe'), {MEMBERS} trials in "
                        f"rounds of {BAYES_ROUND}, space {BAYES_SPACE}",
                        f"optuna study.optimize, {MEMBERS} TPE trials (same seed), each a "
                        f"jdnn.fit")}[kind]
    result = end_to_end(*build(data, test, plan), plan, pause_s=ctx.settings.pause_s)
    return {"description": f"digits MLP 64-{WIDTH}-10, Adam, batch {BATCH}, {plan.epochs} "
                           f"epochs with validation",
            "labels": {"vectorized": labels[0], "sequential": labels[1]}, **result}
