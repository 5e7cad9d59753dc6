"""Resolving the `w_init` / `b_init` arguments of parametric layers.

An initializer is anything `jax.nn.initializers` provides: a function `init(key, shape, dtype)`.
A string names one of them (`"he_normal"`, `"zeros"`, ...), which keeps the layer's `spec`
printable and serializable; a callable is used as it is and recorded by its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Initializer = Callable[..., jax.Array]

# jax.nn.initializers exposes these as initializers themselves; every other name is a factory.
_DIRECT = ("zeros", "ones")


def resolve(kind: str, arg: str, value: str | Initializer) -> tuple[Initializer, str]:
    """Returns `(initializer, description)` for a `w_init`/`b_init` argument.

    Args:
        kind: the layer kind, for error messages.
        arg: the argument's name, for error messages.
        value: a `jax.nn.initializers` name such as `"lecun_normal"`, or an initializer.

    Returns:
        The initializer function and the string recorded in the layer's spec.
    """
    if callable(value):
        return value, _describe(value)
    factory: Any = getattr(jax.nn.initializers, value, None) if isinstance(value, str) else None
    if factory is None or not callable(factory):
        raise ValueError(f"{kind}: {arg} must be an initializer or the name of one in "
                         f"jax.nn.initializers (e.g. 'lecun_normal', 'he_normal', 'zeros'), "
                         f"got {value!r}")
    if value in _DIRECT:
        return factory, value
    try:
        return factory(), value
    except TypeError:
        raise ValueError(f"{kind}: {arg} {value!r} names an initializer factory that needs "
                         f"arguments; pass the initializer itself, e.g. "
                         f"{arg}=jax.nn.initializers.{value}(...)") from None


def _describe(fn: Initializer) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"<{name}>"
