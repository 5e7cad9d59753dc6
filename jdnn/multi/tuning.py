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

Every member stops early on its own (`patience`): it is frozen by masking, and the program
stays the same. Without `seed` in the space every trial starts from the same initialization and
data order (common random numbers), so the comparison measures the hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdnn import io
from jdnn.core import Layer, Spec, trait, walk, whole_number
from jdnn.data.batching import num_batches
from jdnn.core import path_of
from jdnn.regularizers import Penalty
from jdnn.multi.space import VECTORIZED, check, check_space, grid, sample
from jdnn.train.fit import epoch_fn
from jdnn.train.history import History
from jdnn.multi.members import (check_member_data, member_evaluator, one_key, stack,
                                train_members)
from jdnn.train.state import TrainState
from jdnn.losses import Loss
from jdnn.metrics import Metrics, resolve_metrics
from jdnn.train.step import check_step_arguments, train_step_fn

DEFAULT_LEARNING_RATE = 1e-3
# The space names the search reads itself; every other name is a keyword argument of model_fn.
HANDLED = (*VECTORIZED, "optimizer", "batch_size")


def _parameters(factory: Callable) -> dict[str, inspect.Parameter] | None:
    """A callable's parameters by name, or None where Python cannot tell (some builtins)."""
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return None


def _takes(parameters: dict[str, inspect.Parameter] | None, name: str) -> bool:
    """Whether a callable with these parameters accepts `name=` (unknown counts as yes)."""
    return parameters is None or any(
        p.kind is p.VAR_KEYWORD or (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                   p.KEYWORD_ONLY))
        for p in parameters.values())


def _optimizer(kind: str | Callable, learning_rate: Any, momentum: Any):
    """`optax.inject_hyperparams(kind)(learning_rate=..., momentum or b1=...)`."""
    factory = getattr(optax, kind, None) if isinstance(kind, str) else kind
    if not callable(factory) or isinstance(factory, optax.GradientTransformation):
        got = ("a GradientTransformation, already built: pass its factory, e.g. "
               "optimizer=optax.adam or 'adam', and put learning_rate in the space"
               if isinstance(factory, optax.GradientTransformation) else f"{kind!r:.80}")
        raise ValueError(f"search: optimizer must be an optax optimizer's name (e.g. 'adam', "
                         f"'sgd') or a factory f(learning_rate, ...) -> GradientTransformation, "
                         f"got {got}")
    names = _parameters(factory)
    if not _takes(names, "learning_rate"):
        raise ValueError(f"search: optimizer {kind!r} takes no learning_rate argument; the "
                         f"search sets each trial's learning rate through it. Its parameters: "
                         f"{list(names)}")
    kwargs = {"learning_rate": learning_rate}
    if momentum is not None:
        slot = "momentum" if _takes(names, "momentum") else "b1" if _takes(names, "b1") else None
        if slot is None:
            raise ValueError(f"search: optimizer {kind!r} takes neither momentum nor b1, but "
                             f"'momentum' is in the space; drop it or pick an optimizer with "
                             f"momentum (e.g. 'sgd', 'adam')")
        kwargs[slot] = momentum
    return optax.inject_hyperparams(factory)(**kwargs)


def _describe(model_fn: Callable) -> str:
    name = getattr(model_fn, "__qualname__", None) or repr(model_fn)
    return "model_fn" if name == "<lambda>" else f"model_fn ({name})"


def check_model_fn(model_fn: Callable, names: list[str]) -> None:
    """Raises a clear error unless `model_fn` takes, as keyword arguments, exactly the space's
    names the search does not handle itself (`HANDLED`), and needs no others.

    `model_fn(**kwargs)` takes any name; a callable whose signature Python cannot read is
    trusted.

    Raises:
        TypeError: naming the space names `model_fn` does not take, the parameters it does
            take, the names jdnn handles itself, and any required parameter the space lacks.
    """
    if not callable(model_fn):
        raise TypeError(f"search: model_fn must be a function that builds the model from the "
                        f"space's structural values, e.g. `def model_fn(width): return "
                        f"jdnn.serial(...)`, got {type(model_fn).__name__} {model_fn!r:.60}")
    parameters = _parameters(model_fn)
    if parameters is None:
        return
    passed = [n for n in names if n not in HANDLED]
    by_keyword = [p.name for p in parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    # The search passes keywords only: a positional-only parameter can never be given.
    positional = [p.name for p in parameters.values() if p.kind is p.POSITIONAL_ONLY
                  and (p.default is p.empty or p.name in passed)]
    unknown = [n for n in passed if not _takes(parameters, n) and n not in positional]
    required = [p.name for p in parameters.values() if p.default is p.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in passed]
    handled = [n for n in required if n in HANDLED]
    missing = [n for n in required if n not in HANDLED]
    if not (unknown or positional or required):
        return
    what = _describe(model_fn)
    problems = []
    if unknown:
        problems.append(f"the space names {unknown}, which {what} does not take")
    if missing:
        problems.append(f"{what} requires {missing}, which the space does not give (a fixed "
                        f"value works: {{{missing[0]!r}: value}}; or give it a default)")
    if handled:
        problems.append(f"{what} requires {handled}, which jdnn handles itself and never passes "
                        f"to model_fn (give them defaults, or drop them from its parameters)")
    if positional:
        problems.append(f"{what}'s parameters {positional} are positional-only, but the search "
                        f"passes keyword arguments")
    takes = f"takes the keyword arguments {by_keyword}" if by_keyword \
        else "takes no keyword arguments"
    raise TypeError(
        f"search: {'; '.join(problems)}. {what} {takes}; jdnn handles {list(HANDLED)} itself, "
        f"and passes every other space name to model_fn as a keyword argument")


def _dropout_paths(spec: Spec) -> tuple[list[str], list[str]]:
    """The paths of the model's stochastic layers (Dropout): `(rate in state, fixed rate)`."""
    in_state, fixed = [], []
    for node in walk(spec):
        if trait(node.spec, "stochastic") is not None:
            reads_state = trait(node.spec, "rate_in_state", lambda spec: False)(node.spec)
            (in_state if reads_state else fixed).append(node.path)
    return in_state, fixed


def _check_dropout(model: Layer) -> list[str]:
    """The paths of `model`'s `Dropout(..., rate_in_state=True)` layers; a clear error if there
    is none for the space's `dropout` to set."""
    in_state, fixed = _dropout_paths(model.spec)
    if not in_state:
        hint = (f"; its Dropout layers at {', '.join(p or '<root>' for p in fixed)} have a fixed "
                f"rate" if fixed else "")
        raise ValueError(f"search: 'dropout' is in the space but the model model_fn built has "
                         f"no Dropout layer with its rate in the state to set it on{hint}: build "
                         f"them as jdnn.Dropout(rate, rate_in_state=True), or drop 'dropout' "
                         f"from the space. The model: {model.spec}")
    return in_state


def _set_dropout(model: Layer, state: Any, rates: jax.Array) -> Any:
    """Stacked layer state with the rate of every `Dropout(..., rate_in_state=True)` layer of
    `model` (its `.../rate` state leaf) set per member; a clear error if there is none."""
    in_state = _check_dropout(model)
    targets = {f"{path}/rate" if path else "rate" for path in in_state}
    found = set()

    def put(keypath, leaf):
        if path_of(keypath) in targets:
            found.add(path_of(keypath))
            return rates.astype(leaf.dtype)
        return leaf

    state = jax.tree_util.tree_map_with_path(put, state)
    if found != targets:
        raise ValueError(f"search: the model's state has no rate leaf at "
                         f"{sorted(targets - found)}, where its Dropout(..., "
                         f"rate_in_state=True) layers keep their rate")
    return state


def _plain(value: Any) -> Any:
    """`value` with what JSON cannot hold made plain: NumPy scalars as numbers, a function
    (e.g. `optax.adam` as the space's optimizer) as its qualified name, anything else unknown
    as its `repr`."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', None) or ''}.{value.__qualname__}".lstrip(".")
    return repr(value)


@dataclasses.dataclass
class SearchResult:
    """The outcome of `search`.

    Attributes:
        rows: one dict per trial, best first: `rank`, `trial` (its index in the enumeration),
            its hyper-parameters, its metrics at the chosen epoch (the best one with
            `restore_best`, else the last), `epoch` (that epoch), `epochs` (epochs run) and
            `stopped` (`History.stopped_by`: "early_stopping", "non_finite" or ""; the history
            says more).
        metric, mode: what the rows are sorted by.
        configs: every trial's hyper-parameters, indexed by trial.
        history: one `History` per trial, indexed by trial.
        best_config, best_train_state, best_model: the best trial's hyper-parameters, trained
            `TrainState` (un-stacked) and model (`model_fn(**structural)`).
    """

    rows: list[dict[str, Any]]
    metric: str
    mode: str
    configs: list[dict[str, Any]]
    history: list[History]
    members: dict[int, tuple] = dataclasses.field(repr=False, default_factory=dict)

    @property
    def best_config(self) -> dict[str, Any]:
        return dict(self.configs[self.rows[0]["trial"]])

    @property
    def best_train_state(self) -> TrainState:
        return self.train_state(self.rows[0]["trial"])

    @property
    def best_model(self) -> Layer:
        return self.model(self.rows[0]["trial"])

    def _member(self, where: str, trial: int) -> tuple:
        if isinstance(trial, (bool, np.bool_)) or trial not in self.members:
            raise ValueError(f"SearchResult.{where}: trial must be a trial's index, an int in "
                             f"[0, {len(self.configs)}), got {trial!r}")
        return self.members[trial]

    def train_state(self, trial: int) -> TrainState:
        """Trial `trial`'s trained state (its best epoch's with `restore_best`), un-stacked."""
        _, stacked, j = self._member("train_state", trial)
        return jax.tree.map(lambda leaf: leaf[j], stacked)

    def model(self, trial: int) -> Layer:
        """The model trial `trial` trained."""
        return self._member("model", trial)[0]

    def __str__(self) -> str:
        columns = list(self.rows[0]) if self.rows else []

        def cell(v):
            return f"{v:.4g}" if isinstance(v, float) else str(v) if v != "" else "-"

        table = [columns] + [[cell(row[c]) for c in columns] for row in self.rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
        lines = ["  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return (f"search: {len(self.rows)} trials by {self.metric} ({self.mode})\n"
                + "\n".join(lines) + f"\nbest: {self.best_config}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the metric, the best config, the rows and each trial's history.
        Values JSON cannot hold (an optimizer factory in the space) appear by name."""
        return {"metric": self.metric, "mode": self.mode,
                "best_config": _plain(self.best_config), "rows": _plain(self.rows),
                "configs": _plain(self.configs), "history": [h.to_dict() for h in self.history]}

    def to_json(self, path) -> None:
        """Writes `to_dict()` as JSON, atomically."""
        io.write_text(path, json.dumps(self.to_dict(), indent=2))


@dataclasses.dataclass
class _Group:
    """One structure: its trials, the model `model_fn` built for them, batch size, optimizer."""

    trials: list[int]
    structural: dict[str, Any]
    model: Layer
    batch_size: int
    optimizer: str | Callable


def _group(model_fn: Callable, trials: list[int], configs: list[dict], batch_size: int,
           optimizer: Any) -> _Group:
    """Builds one structure's model and checks what it needs, before anything trains: the
    optimizer takes the space's learning rate (and momentum), the model has Dropout layers with
    their rate in the state if the space sets `dropout`."""
    config = configs[trials[0]]
    structural = {n: v for n, v in config.items() if n not in VECTORIZED}
    batch_size = int(structural.pop("batch_size", batch_size))
    kind = structural.pop("optimizer", optimizer)
    model = model_fn(**structural)
    if not isinstance(model, Layer):
        call = ", ".join(f"{n}={v!r}" for n, v in structural.items())
        raise TypeError(f"search: model_fn({call}) returned {type(model).__name__}, not a "
                        f"jdnn Layer; model_fn must return the model, e.g. jdnn.serial(...)")
    _optimizer(kind, config.get("learning_rate", DEFAULT_LEARNING_RATE), config.get("momentum"))
    if "dropout" in config:
        _check_dropout(model)
    return _Group(trials, structural, model, batch_size, kind)


def _train_group(group: _Group, configs: list[dict], x: jax.Array, y: jax.Array,
                 validation: Any, *, key: jax.Array, loss: Loss, metrics: Metrics,
                 **engine: Any):
    """Trains all the configurations of one structure as one stack."""
    model, batch_size, kind = group.model, group.batch_size, group.optimizer
    shape = (batch_size, *x.shape[1:])
    states = stack([TrainState.create(  # each trial's own learning rate and momentum, as data
        model, _optimizer(kind, c.get("learning_rate", DEFAULT_LEARNING_RATE), c.get("momentum")),
        jax.random.fold_in(key, int(c.get("seed", 0))), shape) for c in configs])
    if "dropout" in configs[0]:
        rates = jnp.asarray([c["dropout"] for c in configs])
        states = states._replace(state=_set_dropout(model, states.state, rates))
    # The step's optimizer only routes the update: inject_hyperparams reads the values from
    # each member's state, so these placeholders never count.
    step_optimizer = _optimizer(kind, DEFAULT_LEARNING_RATE,
                                0.0 if "momentum" in configs[0] else None)
    hparams = {n: jnp.asarray([c[n] for c in configs], jnp.float32)
               for n in ("l1", "l2") if n in configs[0]}

    def member_epoch(train_state, hp, x, y, order):
        step = train_step_fn(model, loss, step_optimizer, penalty=Penalty(**hp) if hp else None,
                             metrics=metrics)
        return epoch_fn(step, batch_size)(train_state, x, y, order)

    return train_members(states, hparams, member_epoch, x, y,
                         steps_per_epoch=num_batches(x.shape[0], batch_size),
                         validation=validation,
                         evaluate=member_evaluator(model, loss, metrics), **engine)


def search(model_fn: Callable[..., Layer], data: Any, space: Mapping[str, Any], *, loss: Loss,
           epochs: int, batch_size: int, key: jax.Array | int, strategy: str = "grid",
           trials: int | None = None, validation_data: Any = None,
           metric: str = "val_accuracy", mode: str = "max", optimizer: str | Callable = "adam",
           patience: int | None = None, restore_best: bool = True,
           metrics: Metrics = ("accuracy",), epochs_per_call: int = 10,
           progress: bool = True) -> SearchResult:
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
        loss, epochs, batch_size, metrics: as in `jdnn.fit`.
        key: seeds the random sampling and, folded with each trial's `seed` (0 if absent),
            the trial's initialization, data order and dropout.
        strategy: `"grid"` (every combination of the lists, `jdnn.multi.space.grid`) or `"random"`
            (`trials` draws, `jdnn.multi.space.sample`).
        trials: the number of random configurations.
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
        epochs_per_call: the most epochs per compiled call.
        progress: show a tqdm bar per structure (only when stderr is a terminal).

    Returns:
        A `SearchResult`: `print(result)` shows the table, best first.

    Raises:
        TypeError: for a `model_fn` whose parameters do not match the space (names it does
            not take, required ones the space does not give; see `check_model_fn`), a space
            that is not a mapping, a loss or metric of the wrong kind, or a `key` that is not
            one seed or key.
        ValueError: for any other bad argument or value, and for data that do not fit a
            structure's model or loss (a label out of range, NaN or inf inputs, a wrong
            shape): all found before anything is compiled.

    Example:
        >>> def model_fn(width):
        ...     return jdnn.serial(jdnn.Dense(width), jdnn.Relu(),
        ...                        jdnn.Dropout(0.0, rate_in_state=True), jdnn.Dense(10))
        >>> result = search(model_fn, train, {"width": [64, 128],
        ...                 "learning_rate": ("log_uniform", 1e-4, 1e-1),
        ...                 "dropout": ("uniform", 0.0, 0.5)}, strategy="random", trials=16,
        ...                 loss=jdnn.losses.softmax_cross_entropy, epochs=20, batch_size=32,
        ...                 key=0, validation_data=test)
        >>> print(result); result.best_config
    """
    if strategy not in ("grid", "random"):
        close = difflib.get_close_matches(str(strategy), ("grid", "random"), n=1)
        raise ValueError(f"search: strategy must be 'grid' or 'random', got {strategy!r}"
                         + (f"; did you mean {close[0]!r}?" if close else ""))
    if strategy == "grid" and trials is not None:
        raise ValueError("search: trials is for strategy='random'; a grid runs every "
                         "combination")
    if strategy == "random" and trials is None:
        raise ValueError("search: strategy='random' needs trials=, the number of "
                         "configurations to draw")
    if mode not in ("max", "min"):
        raise ValueError(f"search: mode must be 'max' or 'min', got {mode!r}")
    epochs = whole_number("search", "epochs", epochs, 1)
    batch_size = whole_number("search", "batch_size", batch_size, 1)
    epochs_per_call = whole_number("search", "epochs_per_call", epochs_per_call, 1)
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
    configs = (grid(space, where="search") if strategy == "grid"
               else sample(space, trials, key, where="search"))
    for config in configs:
        check(config, where="search")
    structures: dict[str, list[int]] = {}
    for t, config in enumerate(configs):
        structure = sorted((n, v) for n, v in config.items() if n not in VECTORIZED)
        structures.setdefault(repr(structure), []).append(t)
    # Every structure's model is built and the data checked against it before any compiles.
    groups = [_group(model_fn, trials, configs, batch_size, optimizer)
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
            record = h.records[chosen - 1] if chosen else {}
            rows[t] = {"trial": t, **configs[t],
                       **{k: v for k, v in record.items() if k not in ("epoch", "seconds")},
                       "epoch": chosen, "epochs": len(h),
                       "stopped": h.stopped_by or ""}
            members[t] = (group.model, stacked, j)

    sign = -1.0 if mode == "max" else 1.0

    def order(row):
        value = row.get(metric, math.nan)
        return (not math.isfinite(value), sign * value if math.isfinite(value) else 0.0,
                row["trial"])

    rows = [{"rank": r + 1, **row} for r, row in enumerate(sorted(rows, key=order))]
    return SearchResult(rows, metric, mode, configs, history, members)
