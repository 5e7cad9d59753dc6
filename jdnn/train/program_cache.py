"""Keys for the compiled programs `fit` keeps between calls: what makes two runs "the same".

A compiled program closes over user functions (the model's `init` and `apply`, the loss, the
optimizer's `init` and `update`, metrics, a penalty). `jax.jit` keys a function by identity,
so `optax.adam(1e-3)` called again, or a model built again from the same code, would be a new
program each time. `fingerprint` compares such functions by what they are made of instead:
the same code, the same globals, and equal captured values, compared recursively. Numbers,
strings, tuples, lists, dicts, sets and frozen dataclasses (specs) are compared by their
contents as they are at the lookup, right before the program is traced, so equal contents
mean an equal trace; anything else (an array, a method, an object) is the same only if it is
the very same object. A program is thus never shared between runs that could compute different
things, with one exception that `jax.jit` shares: a function that reads a module global which
is rebound between two runs sees the value it had when first traced.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import types
import weakref
from collections.abc import Callable
from typing import Any

_PLAIN = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
_MAX_DEPTH = 40


class _Same:
    """Equal only to a wrapper of the very same object (which it keeps alive)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def fingerprint(obj: Any) -> Any:
    """A hashable stand-in for `obj` that is equal for two objects only when they compute the
    same thing: plain values by value, containers (NamedTuples such as `Layer` and
    `GradientTransformation`, lists, dicts, sets) and frozen dataclasses (`Spec`) element by
    element, functions and partials by their code,
    globals, defaults and captured values, anything else by identity."""
    return _fingerprint(obj, 0, set())


def _fingerprint(obj: Any, depth: int, active: set[int]) -> Any:
    if isinstance(obj, _PLAIN):
        return (type(obj), obj)
    if depth > _MAX_DEPTH or id(obj) in active:
        return _Same(obj)
    active = active | {id(obj)}

    def inner(value):
        return _fingerprint(value, depth + 1, active)

    if type(obj) in (tuple, list) or (isinstance(obj, tuple) and hasattr(obj, "_fields")):
        return (type(obj), tuple(inner(v) for v in obj))
    if type(obj) is dict:
        return (dict, tuple((inner(k), inner(v)) for k, v in obj.items()))
    if type(obj) in (set, frozenset):
        return (type(obj), frozenset(inner(v) for v in obj))
    if isinstance(obj, types.FunctionType):
        cells = []
        for cell in obj.__closure__ or ():
            try:
                cells.append(inner(cell.cell_contents))
            except ValueError:   # an empty cell
                cells.append(("empty",))
        return (types.FunctionType, obj.__code__, _Same(obj.__globals__), tuple(cells),
                inner(obj.__defaults__), inner(tuple(sorted((obj.__kwdefaults__ or {}).items()))))
    if type(obj) is functools.partial:
        return (functools.partial, inner(obj.func), inner(obj.args),
                inner(tuple(sorted(obj.keywords.items()))))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        params = getattr(type(obj), "__dataclass_params__", None)
        if params is not None and params.frozen:
            return (type(obj), tuple(inner(getattr(obj, f.name))
                                     for f in dataclasses.fields(obj)))
    return _Same(obj)  # builtins, modules, classes, arrays, objects: by identity


class ProgramCache:
    """A small least-recently-used cache of compiled programs keyed by `fingerprint`.

    Examples:
        >>> epochs = ProgramCache(16)
        >>> run_epoch = epochs.get((model, loss, optimizer), lambda: jax.jit(...))
    """

    def __init__(self, size: int):
        self.size = size
        self.entries: collections.OrderedDict = collections.OrderedDict()
        _CACHES.add(self)

    def get(self, parts: Any, build: Callable[[], Any]) -> Any:
        """The entry for `parts`, built by `build()` the first time (or every time, if some
        part cannot be fingerprinted)."""
        try:
            key = fingerprint(parts)
            hash(key)
        except TypeError:
            return build()
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        value = self.entries[key] = build()
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self.entries.clear()


_CACHES: weakref.WeakSet = weakref.WeakSet()


def clear_all() -> None:
    """Empties every `ProgramCache` (fit's epochs, evaluators, predictors, initializers): the
    next call compiles again, as in a fresh process. For benchmarks and tests that time or
    count compilations."""
    for cache in list(_CACHES):
        cache.clear()
