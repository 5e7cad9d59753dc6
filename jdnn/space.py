"""Search spaces: every combination of a grid, or configurations drawn at random.

A space maps hyper-parameter names to a list (the choices), a scalar (fixed), or, for random
search, a distribution `("uniform", a, b)`, `("log_uniform", a, b)` or `("int_uniform", a, b)`.
`jdnn.search` trains the configurations these give; `check` stops a value out of range before
anything is compiled.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

VECTORIZED = ("learning_rate", "momentum", "l1", "l2", "dropout", "seed")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform")


def _is_distribution(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and value[0] in DISTRIBUTIONS


def _choices(name: str, value: Any) -> list:
    if isinstance(value, (list, tuple)) and not _is_distribution(value):
        if not value:
            raise ValueError(f"space[{name!r}] is an empty list; give at least one value")
        return list(value)
    if _is_distribution(value):
        raise ValueError(f"space[{name!r}] = {value!r} is a distribution: grid search needs a "
                         f"list of values (or use strategy='random')")
    return [value]


def grid(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the space's lists (a scalar is a fixed value), first name slowest.

    Example:
        >>> grid({"learning_rate": [1e-3, 1e-2], "width": [64, 128]})   # 4 configurations
    """
    names = list(space)
    return [dict(zip(names, combo))
            for combo in itertools.product(*(_choices(n, space[n]) for n in names))]


def _draw(rng: np.random.Generator, name: str, value: Any) -> Any:
    if not _is_distribution(value):
        options = _choices(name, value)
        return options[int(rng.integers(len(options)))]
    if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value[1:]) \
            or not value[1] < value[2]:
        raise ValueError(f"space[{name!r}] = {value!r}: a distribution is (kind, low, high) with "
                         f"low < high, kind one of {DISTRIBUTIONS}")
    kind, low, high = value
    if kind == "log_uniform":
        if low <= 0:
            raise ValueError(f"space[{name!r}] = {value!r}: log_uniform needs low > 0")
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    if kind == "int_uniform":
        return int(rng.integers(math.ceil(low), math.floor(high) + 1))
    return float(rng.uniform(low, high))


def sample(space: Mapping[str, Any], trials: int, key: jax.Array | int) -> list[dict[str, Any]]:
    """`trials` configurations drawn at random, reproducibly from `key`.

    A list is a choice; `("uniform", a, b)`, `("log_uniform", a, b)` (a > 0) and
    `("int_uniform", a, b)` (both ends included) are distributions; a scalar is fixed.

    Example:
        >>> sample({"learning_rate": ("log_uniform", 1e-4, 1e-1), "width": [64, 128]}, 8, 0)
    """
    if not (isinstance(trials, int) and trials >= 1):
        raise ValueError(f"strategy='random' needs trials, an int >= 1, got {trials!r}")
    key = jax.random.key(key) if isinstance(key, int) else key
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    return [{name: _draw(rng, name, value) for name, value in space.items()}
            for _ in range(trials)]


def check(config: dict[str, Any]) -> None:
    """Raises a clear error for a vectorized value out of its range."""
    rules = {"learning_rate": (lambda v: v > 0, "a float > 0"),
             "momentum": (lambda v: 0 <= v < 1, "a float in [0, 1)"),
             "l1": (lambda v: v >= 0, "a float >= 0"), "l2": (lambda v: v >= 0, "a float >= 0"),
             "dropout": (lambda v: 0 <= v < 1, "a float in [0, 1)")}
    for name, (ok, expected) in rules.items():
        value = config.get(name)
        if name in config and not (isinstance(value, (int, float, np.number))
                                   and not isinstance(value, bool)
                                   and math.isfinite(value) and ok(value)):
            raise ValueError(f"{name} must be {expected}, got {value!r} in {config}")
    for name, low in (("seed", 0), ("batch_size", 1)):
        value = config.get(name)
        if name in config and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                               or value < low):
            raise ValueError(f"{name} must be an int >= {low}, got {value!r} in {config}")
