"""One structure of a search: the model `model_fn` builds, its optimizer, and its members.

Configurations that share their structural values (everything but `VECTORIZED`) train as
members of one stacked `TrainState`. This module builds that structure once (`make_group`, with
every check made before anything compiles) and, per trial, the member's fresh state
(`member_state`), its traced hyper-parameters (`member_hparams`) and the epoch the members
engine vmaps (`member_epoch_fn`). Both `jdnn.search`'s grid and random strategies and its
Bayesian rounds build on these.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jdnn.core import Layer, Spec, path_of, trait, walk
from jdnn.losses import Loss
from jdnn.metrics import Metrics
from jdnn.multi.space import VECTORIZED
from jdnn.regularizers import Penalty
from jdnn.train.fit import epoch_fn
from jdnn.train.state import TrainState
from jdnn.train.step import train_step_fn

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



@dataclasses.dataclass
class Group:
    """One structure: its trials, the model `model_fn` built for them, batch size, optimizer."""

    trials: list[int]
    structural: dict[str, Any]
    model: Layer
    batch_size: int
    optimizer: str | Callable


def make_group(model_fn: Callable, trials: list[int], configs: list[dict], batch_size: int,
           optimizer: Any) -> Group:
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
    return Group(trials, structural, model, batch_size, kind)


def _placeholder_optimizer(group: Group, config: dict[str, Any]):
    """The group's optimizer with placeholder hyper-parameters: `optax.inject_hyperparams`
    keeps the values in the optimizer state, so one optimizer serves every member, and the
    compiled step and initialization are the same program for all of them."""
    return _optimizer(group.optimizer, DEFAULT_LEARNING_RATE,
                      0.0 if "momentum" in config else None)


def member_state(group: Group, config: dict[str, Any], key: jax.Array,
                 input_shape: tuple[int, ...]) -> TrainState:
    """One trial's fresh `TrainState`: its own learning rate and momentum in the optimizer
    state (as data), its key `fold_in(key, seed)`, and its dropout rate in the layer state.

    The state is created with the placeholder optimizer (one compiled initialization for
    every trial; a value built into it would compile once per trial) and the trial's values
    are then written into `opt_state.hyperparams`, where `optax.inject_hyperparams` reads
    them."""
    train_state = TrainState.create(group.model, _placeholder_optimizer(group, config),
                                    jax.random.fold_in(key, int(config.get("seed", 0))),
                                    input_shape)
    hyperparams = dict(train_state.opt_state.hyperparams)
    values = {"learning_rate": config.get("learning_rate", DEFAULT_LEARNING_RATE)}
    if "momentum" in config:  # the slot `_optimizer` filled: momentum (SGD) or b1 (Adam)
        values["momentum" if "momentum" in hyperparams else "b1"] = config["momentum"]
    for name, value in values.items():
        hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
    train_state = train_state._replace(
        opt_state=train_state.opt_state._replace(hyperparams=hyperparams))
    if "dropout" in config:
        rate = jnp.asarray(config["dropout"])
        train_state = train_state._replace(state=_set_dropout(group.model, train_state.state,
                                                              rate))
    return train_state


def member_hparams(configs: list[dict[str, Any]]) -> dict[str, jax.Array]:
    """The traced hyper-parameters of stacked members: `l1` and `l2`, each `(K,)`."""
    return {n: jnp.asarray([c[n] for c in configs], jnp.float32)
            for n in ("l1", "l2") if n in configs[0]}


def member_epoch_fn(group: Group, config: dict[str, Any], loss: Loss,
                    metrics: Metrics) -> Callable:
    """`member_epoch(train_state, hparams, x, y, order)`: one member's epoch of `jdnn.fit`,
    for `jdnn.multi.members.train_members` to vmap. `config` is any of the group's trials: it
    tells which hyper-parameters the space sets."""
    # The step's optimizer only routes the update: inject_hyperparams reads the values from
    # each member's state, so these placeholders never count.
    step_optimizer = _placeholder_optimizer(group, config)

    model, batch_size = group.model, group.batch_size  # what the closure holds: compared by
    # content when the members engine looks its compiled program up

    def member_epoch(train_state, hp, x, y, order):
        step = train_step_fn(model, loss, step_optimizer, penalty=Penalty(**hp) if hp else None,
                             metrics=metrics)
        return epoch_fn(step, batch_size)(train_state, x, y, order)

    return member_epoch
