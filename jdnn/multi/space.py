"""Search spaces: every combination of a grid, or configurations drawn at random.

A space maps hyper-parameter names to a list (the choices), a scalar (fixed), or, for random
search, a distribution `("uniform", a, b)`, `("log_uniform", a, b)` or `("int_uniform", a, b)`.
`jdnn.search` trains the configurations these give; `check` stops a value out of range before
anything is compiled.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jdnn.core import whole_number
from jdnn.multi.members import one_key

VECTORIZED = ("learning_rate", "momentum", "l1", "l2", "dropout", "seed")
"""The hyper-parameters `jdnn.search` vectorizes: members of one compiled program differ in
them. Every other name is structural (one program per value) or goes to `model_fn`."""
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform")
"""The distributions random search draws from: `(name, low, high)` with one of these names."""


def _real(value: Any) -> bool:
    """A real number: a Python or NumPy int or float, not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) \
        and not isinstance(value, (bool, np.bool_))


def _python(value: Any) -> Any:
    """NumPy scalars as Python ones, so configurations print plainly and serialize to JSON."""
    return value.item() if isinstance(value, np.generic) else value


def _is_distribution(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and isinstance(value[0], str) \
        and value[0] in DISTRIBUTIONS


def _check_not_a_misspelt_distribution(where: str, name: str, value: Any) -> None:
    """`("loguniform", 1e-4, 1e-1)` would otherwise be three choices, one of them a string."""
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[0], str) \
            and value[0] not in DISTRIBUTIONS and all(_real(v) for v in value[1:]):
        close = difflib.get_close_matches(value[0], DISTRIBUTIONS, n=1, cutoff=0.75)
        if close:
            raise ValueError(f"{where}: space[{name!r}] = {value!r} looks like a distribution "
                             f"but {value[0]!r} is not one of {DISTRIBUTIONS}; did you mean "
                             f"{close[0]!r}? (a list gives choices: [{value[0]!r}, ...])")


def _choices(where: str, name: str, value: Any) -> list:
    """The values a name takes: a list, tuple, range or 1-D NumPy array gives choices; a
    distribution is refused (grid search cannot enumerate it); anything else is fixed."""
    _check_not_a_misspelt_distribution(where, name, value)
    if _is_distribution(value):
        raise ValueError(f"{where}: space[{name!r}] = {value!r} is a distribution: grid search "
                         f"needs a list of values (or use strategy='random')")
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise ValueError(f"{where}: space[{name!r}] is an array of shape {value.shape}; "
                             f"give the choices as a list or a 1-D array")
        value = value.tolist()
    if isinstance(value, (list, tuple, range)):
        if not len(value):
            raise ValueError(f"{where}: space[{name!r}] is an empty list; give at least one "
                             f"value")
        return [_python(v) for v in value]
    return [_python(value)]


def check_space(where: str, space: Any) -> None:
    """Raises a clear error unless `space` is a non-empty mapping with string names.

    Raises:
        ValueError: `"search: space is empty; ..."`.
        TypeError: for a space that is not a mapping, or a name that is not a string.
    """
    if not isinstance(space, Mapping):
        raise TypeError(f"{where}: space must be a dict mapping hyper-parameter names to "
                        f"values, got {type(space).__name__} {space!r:.80}; e.g. "
                        f"{{'learning_rate': [1e-3, 1e-2], 'width': [64, 128]}}")
    if not space:
        raise ValueError(f"{where}: space is empty: give at least one name -> values, e.g. "
                         f"{{'learning_rate': [1e-3, 1e-2]}} (to train a single model, use "
                         f"jdnn.fit)")
    bad = [n for n in space if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{where}: space names must be strings (keyword arguments of model_fn "
                        f"or one of {VECTORIZED}), got {bad!r}")


def grid(space: Mapping[str, Any], *, where: str = "jdnn.space.grid") -> list[dict[str, Any]]:
    """Every combination of the space's lists (a scalar is a fixed value), first name slowest.

    A list, tuple, `range` or 1-D NumPy array gives the choices; NumPy scalars come out as
    Python numbers. `where` names the caller in error messages.

    Examples:
        >>> grid({"learning_rate": [1e-3, 1e-2], "width": [64, 128]})   # 4 configurations
    """
    check_space(where, space)
    names = list(space)
    return [dict(zip(names, combo))
            for combo in itertools.product(*(_choices(where, n, space[n]) for n in names))]


def _check_distribution(where: str, name: str, value: tuple) -> None:
    dist = value[0]
    if len(value) != 3 or not all(_real(v) and math.isfinite(v) for v in value[1:]) \
            or not value[1] < value[2]:
        raise ValueError(f"{where}: space[{name!r}] = {value!r}: a distribution is (kind, low, "
                         f"high) with finite numbers low < high, kind one of {DISTRIBUTIONS}")
    low, high = value[1:]
    if dist == "log_uniform" and low <= 0:
        raise ValueError(f"{where}: space[{name!r}] = {value!r}: log_uniform needs low > 0")
    if dist == "int_uniform" and math.ceil(low) > math.floor(high):
        raise ValueError(f"{where}: space[{name!r}] = {value!r}: int_uniform draws whole "
                         f"numbers from [low, high], and there is none in that range")


def _draw(rng: np.random.Generator, name: str, value: Any) -> Any:
    if not _is_distribution(value):
        options = _choices("sample", name, value)
        return options[int(rng.integers(len(options)))]
    dist, low, high = value
    if dist == "log_uniform":
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    if dist == "int_uniform":
        return int(rng.integers(math.ceil(low), math.floor(high) + 1))
    return float(rng.uniform(low, high))


def sample(space: Mapping[str, Any], trials: int, key: jax.Array | int, *,
           where: str = "jdnn.space.sample") -> list[dict[str, Any]]:
    """`trials` configurations drawn at random, reproducibly from `key`.

    A list (tuple, `range`, 1-D NumPy array) is a choice; `("uniform", a, b)`,
    `("log_uniform", a, b)` (a > 0) and `("int_uniform", a, b)` (both ends included) are
    distributions; a scalar is fixed. `trials` and an int `key` may be NumPy ints. `where`
    names the caller in error messages.

    Examples:
        >>> sample({"learning_rate": ("log_uniform", 1e-4, 1e-1), "width": [64, 128]}, 8, 0)
    """
    check_space(where, space)
    trials = whole_number(where, "trials", trials, 1)
    for name, value in space.items():  # every value checked once, before any draw
        if _is_distribution(value):
            _check_distribution(where, name, value)
        else:
            _choices(where, name, value)
    key = one_key(where, key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    return [{name: _draw(rng, name, value) for name, value in space.items()}
            for _ in range(trials)]


def check(config: dict[str, Any], *, where: str = "jdnn.space.check") -> None:
    """Raises a clear error for a vectorized value (or `batch_size`) out of its range; `where`
    names the caller in the message."""
    rules = {"learning_rate": (lambda v: v > 0, "a float > 0"),
             "momentum": (lambda v: 0 <= v < 1, "a float in [0, 1)"),
             "l1": (lambda v: v >= 0, "a float >= 0"), "l2": (lambda v: v >= 0, "a float >= 0"),
             "dropout": (lambda v: 0 <= v < 1, "a float in [0, 1)")}
    for name, (ok, expected) in rules.items():
        value = config.get(name)
        if name in config and not (_real(value) and math.isfinite(value) and ok(value)):
            raise ValueError(f"{where}: {name} must be {expected}, got {value!r} in {config}")
    for name, low in (("seed", 0), ("batch_size", 1)):
        value = config.get(name)
        if name in config and (isinstance(value, (bool, np.bool_))
                               or not isinstance(value, (int, np.integer)) or value < low):
            raise ValueError(f"{where}: {name} must be an int >= {low}, got {value!r} in "
                             f"{config}")
