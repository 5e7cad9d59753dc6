"""Bayesian search's side of Optuna: the space as Optuna distributions, the sampler and the
pruner by name, and an ask-and-tell wrapper that speaks jdnn configurations.

Optuna (the optional extra `jdnn[search]`) does the modelling: TPE or a Gaussian process
proposes each configuration from the metrics of the trials already told. jdnn asks it for K
configurations at a time, trains them together as members of one program
(`jdnn.multi.rounds`), reports each member's per-epoch metric to Optuna's pruner and tells it
each trial's result. Nothing here imports Optuna until a Bayesian search runs.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jdnn.multi.space import (_check_distribution, _choices, _is_distribution, check,
                              check_space)

EXTRA = "pip install 'jdnn[search]' (or pip install optuna)"
SAMPLERS = ("tpe", "gp", "random")
PRUNERS = ("median", "halving", "hyperband")


def require_optuna(where: str):
    """The `optuna` module, or an ImportError that names the extra to install."""
    try:
        import optuna
    except ImportError as error:
        raise ImportError(f"{where}: strategy='bayes' needs Optuna, jdnn's optional extra "
                          f"[search]: {EXTRA}") from error
    return optuna


def _plain_choice(value: Any) -> bool:
    """What an Optuna categorical distribution can hold (and store) as it is."""
    return value is None or isinstance(value, (bool, int, float, str))


def _label(value: Any) -> str:
    name = getattr(value, "__qualname__", None)
    return name if isinstance(name, str) else repr(value)


def distributions(optuna, space: Mapping[str, Any], *, where: str = "search"):
    """The space as Optuna distributions, plus the fixed values and how to read a choice back.

    A list of values becomes a `CategoricalDistribution` (choices Optuna cannot store, e.g. an
    optax factory, are named by their label and mapped back); `("uniform", a, b)` a
    `FloatDistribution(a, b)`, `("log_uniform", a, b)` one with `log=True`, `("int_uniform", a,
    b)` an `IntDistribution`; a scalar, or a list of one value, stays fixed.

    Returns:
        `(distributions, fixed, decode)`: name -> Optuna distribution for the names Optuna
        chooses, name -> value for the fixed ones, and name -> {label: value} for categorical
        names whose choices travel as labels.
    """
    check_space(where, space)
    dists, fixed, decode = {}, {}, {}
    for name, value in space.items():
        if _is_distribution(value):
            _check_distribution(where, name, value)
            kind, low, high = value
            dists[name] = (optuna.distributions.IntDistribution(math.ceil(low), math.floor(high))
                           if kind == "int_uniform" else
                           optuna.distributions.FloatDistribution(
                               float(low), float(high), log=kind == "log_uniform"))
            continue
        options = _choices(where, name, value)
        if len(options) == 1:
            fixed[name] = options[0]
        elif all(_plain_choice(v) for v in options):
            dists[name] = optuna.distributions.CategoricalDistribution(options)
        else:
            labels = {_label(v): v for v in options}
            if len(labels) != len(options):
                labels = {f"{i}: {_label(v)}": v for i, v in enumerate(options)}
            dists[name] = optuna.distributions.CategoricalDistribution(list(labels))
            decode[name] = labels
    return dists, fixed, decode


def check_ranges(space: Mapping[str, Any], *, where: str = "search") -> None:
    """A clear error, before anything trains, for a vectorized value the space can produce out
    of its range (each choice, and each end of a distribution)."""
    for name, value in space.items():
        values = value[1:] if _is_distribution(value) else _choices(where, name, value)
        for v in values:
            check({name: int(v) if name == "seed" and float(v).is_integer() else v},
                  where=where)


def seed_of(key: jax.Array) -> int:
    """A 31-bit seed for the sampler, the same for the same key."""
    data = np.asarray(jax.random.key_data(key)).ravel().tolist()
    return int(np.random.default_rng(data).integers(2**31 - 1))


def make_sampler(optuna, sampler: Any, seed: int, batch: int = 1, *, where: str = "search"):
    """An Optuna sampler from a name (`"tpe"`, `"gp"`, `"random"`, each seeded with `seed`) or
    an Optuna `BaseSampler` passed through as it is.

    TPE and the GP draw their first `min(10, batch)` trials at random before their model
    takes over (`n_startup_trials`; Optuna's default is 10). Asked `batch` at a time, the whole
    first round is random anyway (nothing has been told yet); the model then starts with the
    second round instead of after 10 trials (which would leave a 16-trial budget in rounds of
    8 only 6 modelled trials)."""
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    startup = min(10, batch)
    if sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if sampler == "gp":
        missing = [m for m in ("torch", "scipy") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"{where}: sampler='gp' is Optuna's GPSampler, which needs "
                              f"{' and '.join(missing)} (pip install {' '.join(missing)}); "
                              f"sampler='tpe' needs neither")
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"{where}: sampler must be one of {SAMPLERS} or an optuna.samplers."
                     f"BaseSampler, got {sampler!r}")


def make_pruner(optuna, pruner: Any, epochs: int, *, where: str = "search"):
    """An Optuna pruner from a name, None (never prunes) or an Optuna `BasePruner` as it is.

    `"median"`: `MedianPruner()` (a trial whose value is worse than the median of earlier
    trials at the same epoch stops); `"halving"`: `SuccessiveHalvingPruner()`;
    `"hyperband"`: `HyperbandPruner(min_resource=1, max_resource=epochs)`.
    """
    if pruner is None:
        return optuna.pruners.NopPruner()
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner()
    if pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    raise ValueError(f"{where}: pruner must be None, one of {PRUNERS} or an optuna.pruners."
                     f"BasePruner, got {pruner!r}")


class Asker:
    """An Optuna study that hands out jdnn configurations and takes back their metrics.

    Examples:
        >>> asker = Asker(optuna, {"x": ("uniform", -5, 5)}, mode="min", sampler="tpe",
        ...               pruner=None, epochs=1, seed=0, batch=4)
        >>> trial, config = asker.ask()          # config == {"x": ...}
        >>> asker.tell(trial, (config["x"] - 1) ** 2)
    """

    def __init__(self, optuna, space: Mapping[str, Any], *, mode: str, sampler: Any,
                 pruner: Any, epochs: int, seed: int, batch: int = 1, where: str = "search"):
        self.optuna = optuna
        self.names = list(space)
        self.distributions, self.fixed, self.decode = distributions(optuna, space, where=where)
        self.study = optuna.create_study(
            direction="maximize" if mode == "max" else "minimize",
            sampler=make_sampler(optuna, sampler, seed, batch, where=where),
            pruner=make_pruner(optuna, pruner, epochs, where=where))

    def ask(self) -> tuple[Any, dict[str, Any]]:
        """A new trial and its configuration (the space's names, in the space's order)."""
        trial = self.study.ask(self.distributions)
        chosen = {n: self.decode[n][v] if n in self.decode else v
                  for n, v in trial.params.items()}
        return trial, {n: chosen[n] if n in chosen else self.fixed[n] for n in self.names}

    def report(self, trial: Any, epoch: int, value: float) -> bool:
        """Reports `value` at `epoch` (1-based) to the pruner; whether the trial should stop."""
        if not math.isfinite(value):
            return False
        trial.report(float(value), epoch)
        return trial.should_prune()

    def tell(self, trial: Any, value: float | None, *, pruned: bool = False) -> None:
        """Ends the trial: pruned, failed (`value` None or not finite) or complete."""
        states = self.optuna.trial.TrialState
        if pruned:
            self.study.tell(trial, state=states.PRUNED)
        elif value is None or not math.isfinite(value):
            self.study.tell(trial, state=states.FAIL)
        else:
            self.study.tell(trial, float(value))


def _real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) \
        and not isinstance(value, (bool, np.bool_))


def study_of(optuna, result: Any):
    """An Optuna study holding a finished search's trials, for Optuna's tools (importances,
    plots): the Bayesian search's own study, or for grid and random search one built from the
    rows. A name whose values are all numbers gets a float (or int) distribution over the
    values tried, on a log scale where they span two decades or more and are all positive;
    other names a categorical one; a name with one value is left out."""
    if result.study is not None:
        return result.study
    configs = result.configs
    dists = {}
    for name in configs[0]:
        values = [c[name] for c in configs]
        if len({_label(v) for v in values}) < 2:
            continue
        if all(_real(v) for v in values):
            low, high = min(values), max(values)
            log = low > 0 and high / low >= 100
            dists[name] = (optuna.distributions.IntDistribution(int(low), int(high), log=log)
                           if all(isinstance(v, (int, np.integer)) for v in values) else
                           optuna.distributions.FloatDistribution(float(low), float(high),
                                                                  log=log))
        else:
            dists[name] = optuna.distributions.CategoricalDistribution(
                sorted({_label(v) for v in values}))
    study = optuna.create_study(direction="maximize" if result.mode == "max" else "minimize")
    states = optuna.trial.TrialState
    for row in sorted(result.rows, key=lambda r: r["trial"]):
        config = configs[row["trial"]]
        value = row.get(result.metric, math.nan)
        finite = math.isfinite(value)
        study.add_trial(optuna.trial.create_trial(
            params={n: config[n] if not isinstance(d, optuna.distributions.CategoricalDistribution)
                    else _label(config[n]) for n, d in dists.items()},
            distributions=dists, value=float(value) if finite else None,
            state=states.COMPLETE if finite else states.FAIL))
    return study
