"""Hyper-parameter search that trains every configuration of a structure at once.

A configuration's hyper-parameters are of two kinds:

- vectorized: `learning_rate` and `momentum` (held in the optimizer state by
  `optax.inject_hyperparams`), `l1` and `l2` (the penalty's strengths, traced), `dropout` (the
  rate of every `jdnn.Dropout(rate, rate_in_state=True)` layer, held in that layer's state) and
  `seed` (the member's key is `jax.random.fold_in(key, seed)`). Configurations that differ
  only in these are members of one stacked `TrainState`, trained by one compiled program
  (`jdnn.multi.members.train_members`).
- structural: everything else. `model_fn(**structural)` builds the model (layer widths, depth);
  `optimizer` (an optax name or factory) and `batch_size` are read by the search itself.
  Configurations are grouped by their structural values: one program per group.

Three strategies choose the configurations: `"grid"` (every combination), `"random"` (draws)
and `"bayes"` (Optuna's TPE or Gaussian process, asked K at a time; `jdnn.multi.bayes` and
`jdnn.multi.rounds`). Every member stops early on its own (`patience`): it is frozen by
masking, and the program stays the same. Without `seed` in the space every trial starts from
the same initialization and data order (common random numbers), so the comparison measures
the hyper-parameters.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jdnn.core import Layer, whole_number
from jdnn.data.batching import num_batches
from jdnn.losses import Loss
from jdnn.metrics import Metrics, resolve_metrics
from jdnn.multi import bayes
from jdnn.multi.members import check_member_data, member_evaluator, one_key, stack, train_members
from jdnn.multi.result import SearchResult, _plain, ranked, trial_row
from jdnn.multi.rounds import Rounds, progress_bar
from jdnn.multi.space import VECTORIZED, check, check_space, grid, sample
from jdnn.multi.structure import (DEFAULT_LEARNING_RATE, HANDLED, Group, _check_dropout,
                                  _optimizer, _set_dropout, check_model_fn, make_group,
                                  member_epoch_fn, member_hparams, member_state)
from jdnn.train.compilation_cache import enable_compilation_cache
from jdnn.train.step import check_step_arguments

# Old names of what moved to jdnn.multi.structure and jdnn.multi.result.
_Group, _group = Group, make_group
__all__ = ["DEFAULT_LEARNING_RATE", "HANDLED", "SearchResult", "check_model_fn", "search",
           "_check_dropout", "_optimizer", "_plain", "_set_dropout"]
STRATEGIES = ("grid", "random", "bayes")


def _train_group(group: Group, configs: list[dict], x: jax.Array, y: jax.Array,
                 validation: Any, *, key: jax.Array, loss: Loss, metrics: Metrics,
                 **engine: Any):
    """Trains all the configurations of one structure as one stack."""
    shape = (group.batch_size, *x.shape[1:])
    states = stack([member_state(group, c, key, shape) for c in configs])
    return train_members(states, member_hparams(configs),
                         member_epoch_fn(group, configs[0], loss, metrics), x, y,
                         steps_per_epoch=num_batches(x.shape[0], group.batch_size),
                         validation=validation,
                         evaluate=member_evaluator(group.model, loss, metrics), **engine)


def _structure(config: dict[str, Any]) -> str:
    """What configurations of one program share: their structural values."""
    return repr(sorted((n, v) for n, v in config.items() if n not in VECTORIZED))


def search(model_fn: Callable[..., Layer], data: Any, space: Mapping[str, Any], *, loss: Loss,
           epochs: int, batch_size: int, key: jax.Array | int, strategy: str = "grid",
           trials: int | None = None, validation_data: Any = None,
           metric: str = "val_accuracy", mode: str = "max", optimizer: str | Callable = "adam",
           patience: int | None = None, restore_best: bool = True,
           metrics: Metrics = ("accuracy",), epochs_per_call: int | None = None,
           batch: int | None = None, sampler: Any = "tpe", pruner: Any = None,
           refill: bool = True, progress: bool = True) -> SearchResult:
    """Trains one model per configuration of `space`, vectorized, and ranks them by `metric`.

    Configurations that differ only in vectorized hyper-parameters (`VECTORIZED`) train
    together in one compiled program; each structure (the other values) gets its own. Trial
    `t` trains exactly like `jdnn.fit(model_fn(**structural), data, optimizer=optax.<kind>(lr,
    ...), penalty=jdnn.regularizers.penalty(l1=..., l2=...), key=jax.random.fold_in(key,
    seed), ...)` with its `Dropout(..., rate_in_state=True)` layers at rate `dropout` (equal
    up to float rounding).

    Args:
        model_fn: builds the model from the structural hyper-parameters, as keyword arguments
            (none if the space has none). Where `dropout` applies, build
            `jdnn.Dropout(rate, rate_in_state=True)`: the search sets its rate per trial.
        data: the training `(x, y)` pair.
        space: name -> a list of values, a fixed scalar, or (random search) a distribution
            `("uniform" | "log_uniform" | "int_uniform", low, high)`. Names in `VECTORIZED`
            are vectorized; `optimizer` and `batch_size` are structural and read here; all
            other names go to `model_fn`. Without `learning_rate` it is 1e-3.
        loss: as in `jdnn.fit`.
        epochs: as in `jdnn.fit`.
        batch_size: as in `jdnn.fit`.
        metrics: as in `jdnn.fit`.
        key: seeds the random sampling and, folded with each trial's `seed` (0 if absent),
            the trial's initialization, data order and dropout.
        strategy: `"grid"` (every combination of the lists, `jdnn.multi.space.grid`),
            `"random"` (`trials` draws, `jdnn.multi.space.sample`) or `"bayes"` (Bayesian
            optimization with Optuna, the optional extra `jdnn[search]`: each round asks the
            sampler for `batch` configurations, trains them together and tells it their
            `metric`, the best epoch's with `restore_best`; `result.study` is the study).
        trials: the number of configurations to try (random and Bayesian search).
        validation_data: the `(x, y)` pair the `val_*` metrics are computed on every epoch.
        metric: the record entry to rank by, e.g. `"val_accuracy"`, `"val_loss"`, `"loss"`.
        mode: `"max"` or `"min"`: whether a larger `metric` is better.
        optimizer: an optax optimizer's name or factory `f(learning_rate, ...)`, wrapped in
            `optax.inject_hyperparams`; `momentum` goes to its `momentum` (SGD, RMSprop) or
            `b1` (Adam-like) argument.
        patience: the number of epochs without improving `metric` after which a trial stops,
            >= 1 (as in `jdnn.EarlyStopping` and Keras: best at epoch 4, `patience=2`, it stops
            after epoch 6); None trains every trial for all epochs. A trial whose loss is not
            finite stops at once.
        restore_best: rank, and return the state of, each trial's best epoch, not its last.
        epochs_per_call: the most epochs per compiled call (the host meets the program once
            per call: early stopping is decided every epoch inside it, pruning only between
            calls). Default 10, or 1 with a `pruner`.
        batch: Bayesian search: the configurations trained together, as members of one
            program (default `min(trials, 8)`). Configurations of different structures are
            trained one structure after another.
        sampler: Bayesian search: `"tpe"` (Optuna's `TPESampler`), `"gp"` (`GPSampler`, which
            needs PyTorch and SciPy), `"random"`, each seeded with
            `jdnn.multi.bayes.seed_of(key)` and, for TPE and the GP, random for the first
            `min(10, batch)` trials (`jdnn.multi.bayes.make_sampler`); or any
            `optuna.samplers.BaseSampler`, used as it is.
        pruner: Bayesian search: None (no pruning), `"median"` (`MedianPruner`), `"halving"`
            (`SuccessiveHalvingPruner`), `"hyperband"` (`HyperbandPruner` up to `epochs`) or
            any `optuna.pruners.BasePruner`. Each member reports its `metric` every epoch; a
            pruned trial stops (its row says `stopped="pruned"`).
        refill: Bayesian search: when a trial ends (its epochs done, stopped early or
            pruned), its member slot trains the next asked configuration at once; with False
            it stays frozen until the round ends (frozen members still cost their share of
            each vmapped step).
        progress: show a tqdm bar per structure, or of trials for Bayesian search (only when
            stderr is a terminal).

    Returns:
        A `SearchResult`: `print(result)` shows the table, best first. Trials are numbered in
        the order they were enumerated, drawn or asked (Optuna's trial numbers).

    Raises:
        ImportError: for `strategy="bayes"` without Optuna installed, naming the extra.
        TypeError: for a `model_fn` whose parameters do not match the space (names it does
            not take, required ones the space does not give; see `check_model_fn`), a space
            that is not a mapping, a loss or metric of the wrong kind, or a `key` that is not
            one seed or key.
        ValueError: for any other bad argument or value, and for data that do not fit a
            structure's model or loss (a label out of range, NaN or inf inputs, a wrong
            shape): all found before anything is compiled.

    Examples:
        >>> def model_fn(width):
        ...     return jdnn.serial(jdnn.Dense(width), jdnn.Relu(),
        ...                        jdnn.Dropout(0.0, rate_in_state=True), jdnn.Dense(10))
        >>> result = search(model_fn, train, {"width": [64, 128],
        ...                 "learning_rate": ("log_uniform", 1e-4, 1e-1),
        ...                 "dropout": ("uniform", 0.0, 0.5)}, strategy="random", trials=16,
        ...                 loss=jdnn.losses.softmax_cross_entropy, epochs=20, batch_size=32,
        ...                 key=0, validation_data=test)
        >>> print(result); result.best_config
        >>> bayes = search(model_fn, train, {"learning_rate": ("log_uniform", 1e-4, 1e-1),
        ...                "dropout": ("uniform", 0.0, 0.5)}, strategy="bayes", trials=32,
        ...                batch=8, pruner="median", loss=jdnn.losses.softmax_cross_entropy,
        ...                epochs=20, batch_size=32, key=0, validation_data=test)
    """
    if strategy not in STRATEGIES:
        close = difflib.get_close_matches(str(strategy), STRATEGIES, n=1)
        raise ValueError(f"search: strategy must be one of {STRATEGIES}, got {strategy!r}"
                         + (f"; did you mean {close[0]!r}?" if close else ""))
    if strategy == "grid" and trials is not None:
        raise ValueError("search: trials is for strategy='random' or 'bayes'; a grid runs "
                         "every combination")
    if strategy != "grid" and trials is None:
        raise ValueError(f"search: strategy={strategy!r} needs trials=, the number of "
                         f"configurations to try")
    if strategy != "bayes":
        for name, value in (("batch", batch), ("pruner", pruner)):
            if value is not None:
                raise ValueError(f"search: {name} is for strategy='bayes', got {name}="
                                 f"{value!r} with strategy={strategy!r}")
    if mode not in ("max", "min"):
        raise ValueError(f"search: mode must be 'max' or 'min', got {mode!r}")
    epochs = whole_number("search", "epochs", epochs, 1)
    batch_size = whole_number("search", "batch_size", batch_size, 1)
    epochs_per_call = whole_number("search", "epochs_per_call", epochs_per_call, 1) \
        if epochs_per_call is not None else 1 if pruner is not None else 10
    if patience is not None:
        patience = whole_number("search", "patience", patience, 1)
    check_step_arguments("search", loss=loss, metrics=metrics)
    check_space("search", space)
    check_model_fn(model_fn, list(space))
    names = ["loss", *resolve_metrics(metrics, "search")]
    names += [f"val_{n}" for n in names] if validation_data is not None else []
    if metric not in names:
        raise ValueError(f"search: metric {metric!r} is not recorded; choose one of {names}"
                         + ("" if validation_data is not None else
                            " (val_* metrics need validation_data)"))
    key = one_key("search", key)
    enable_compilation_cache()   # as fit does: before anything compiles, where it is safe
    engine = dict(loss=loss, metrics=metrics, epochs=epochs, mode=mode, patience=patience,
                  epochs_per_call=epochs_per_call, progress=progress)
    if strategy == "bayes":
        trials = whole_number("search", "trials", trials, 1)
        batch = min(trials, 8) if batch is None else whole_number("search", "batch", batch, 1)
        return _bayes(model_fn, data, validation_data, space, key=key, trials=trials,
                      batch=batch, sampler=sampler, pruner=pruner, refill=refill,
                      batch_size=batch_size, optimizer=optimizer, metric=metric,
                      restore_best=restore_best, **engine)
    configs = (grid(space, where="search") if strategy == "grid"
               else sample(space, trials, key, where="search"))
    for config in configs:
        check(config, where="search")
    structures: dict[str, list[int]] = {}
    for t, config in enumerate(configs):
        structures.setdefault(_structure(config), []).append(t)
    # Every structure's model is built and the data checked against it before any compiles.
    groups = [make_group(model_fn, trials, configs, batch_size, optimizer)
              for trials in structures.values()]
    for g in groups:
        where = f"search (structure {g.structural})" if g.structural else "search"
        x, y, validation = check_member_data(where, g.model, loss, data, validation_data)
    x, y = jnp.asarray(x), jnp.asarray(y)

    rows, history, members = [None] * len(configs), [None] * len(configs), {}
    for g, group in enumerate(groups):
        trained = _train_group(
            group, [configs[t] for t in group.trials], x, y, validation, key=key, loss=loss,
            metrics=metrics, epochs=epochs, monitor=metric, mode=mode, patience=patience,
            keep_best=restore_best, epochs_per_call=epochs_per_call, progress=progress,
            desc=f"search {g + 1}/{len(groups)}")
        stacked = trained.best_state if restore_best else trained.train_state
        for j, t in enumerate(group.trials):
            h = history[t] = trained.histories[j]
            chosen = int(trained.best_epoch[j]) if restore_best and trained.best_epoch[j] \
                else len(h)
            rows[t] = trial_row(t, configs[t], h, chosen)
            members[t] = (group.model, stacked, j)
    return SearchResult(ranked(rows, metric, mode), metric, mode, configs, history, members)


def _bayes(model_fn: Callable[..., Layer], data: Any, validation_data: Any,
           space: Mapping[str, Any], *, key: jax.Array, trials: int, batch: int, sampler: Any,
           pruner: Any, refill: bool, batch_size: int, optimizer: Any, metric: str,
           restore_best: bool, loss: Loss, metrics: Metrics, epochs: int, mode: str,
           patience: int | None, epochs_per_call: int, progress: bool) -> SearchResult:
    """`search(strategy="bayes")`: rounds of `batch` asked configurations, each structure's
    trained as the members of one program (`jdnn.multi.rounds.Rounds`), until `trials` were
    asked. An asked configuration of another structure than the slot it would refill waits
    for the next round."""
    optuna = bayes.require_optuna("search")
    if validation_data is None and metric.startswith("val_"):
        raise ValueError("search: strategy='bayes' ranks by a validation metric; give "
                         "validation_data")
    bayes.check_ranges(space)
    asker = bayes.Asker(optuna, space, mode=mode, sampler=sampler, pruner=pruner, epochs=epochs,
                        seed=bayes.seed_of(key), batch=batch)
    groups: dict[str, Rounds] = {}
    pending: list = []
    asked = 0

    def ask():
        nonlocal asked
        if asked == trials:
            return None
        asked += 1
        return asker.ask()

    def rounds_for(config: dict[str, Any]) -> Rounds:
        """The structure's trainer, built (and its data checked) the first time it is met."""
        structure = _structure(config)
        if structure not in groups:
            group = make_group(model_fn, [0], [config], batch_size, optimizer)
            where = f"search (structure {group.structural})" if group.structural else "search"
            x, y, validation = check_member_data(where, group.model, loss, data,
                                                 validation_data)
            groups[structure] = Rounds(
                group, config, asker, jnp.asarray(x), jnp.asarray(y), validation, key=key,
                loss=loss, metrics=metrics, epochs=epochs, monitor=metric, mode=mode,
                patience=patience, keep_best=restore_best, epochs_per_call=epochs_per_call,
                prune=pruner is not None,
                steps_per_epoch=num_batches(x.shape[0], group.batch_size))
        return groups[structure]

    bar = progress_bar(trials, "search (bayes)", progress)
    ended = []
    while True:
        round_ = pending[:batch]
        del pending[:batch]
        while len(round_) < batch and (nxt := ask()) is not None:
            round_.append(nxt)
        if not round_:
            break
        by_structure: dict[str, list] = {}
        for asked_trial in round_:
            by_structure.setdefault(_structure(asked_trial[1]), []).append(asked_trial)
        for structure, first in by_structure.items():
            rounds = rounds_for(first[0][1])

            def next_trial(structure=structure):
                if not refill or (nxt := ask()) is None:
                    return None
                if _structure(nxt[1]) == structure:
                    return nxt
                pending.append(nxt)
                return None

            ended += rounds.run(first, next_trial, progress=bar)
    bar.close()

    ended.sort(key=lambda e: e.number)
    configs = [e.config for e in ended]
    history = [e.history for e in ended]
    rows = [trial_row(e.number, e.config, e.history, e.chosen) for e in ended]
    members = {e.number: (rounds_for(e.config).group.model,
                          jax.tree.map(lambda leaf: leaf[None], e.train_state), 0)
               for e in ended}
    return SearchResult(ranked(rows, metric, mode), metric, mode, configs, history, members,
                        study=asker.study)
