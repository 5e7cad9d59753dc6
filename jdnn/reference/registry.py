"""What the NumPy reference knows, and how a user adds to it: a twin per layer kind, a builder
per combinator, a twin per loss.

    register_layer(kind, forward, backward)     a layer kind, e.g. a user's "Swish"
    register_combinator(kind, build)            a combinator, e.g. "branches"
    register_loss(loss_fn, numpy_fn)            a per-example loss, keyed by its JAX function

A layer twin obeys the signatures every built-in twin obeys:

    forward(params, x, **hparams) -> (y, cache)
    backward(params, cache, dy)   -> (dx, dparams)

`hparams` are keyword arguments named as in the layer's spec; the network passes exactly those
`forward` declares (by `inspect.signature`). Three names are extras the network supplies instead
of the spec: `state` (the layer's state; a forward that takes it returns `(y, cache,
new_state)`), `train` (training mode), `keep_mask` (a stochastic layer's boolean mask of kept
units, drawn with the spec's `rate`, or the state's with `rate_in_state=True`; None when not
training) and `lengths` (the `(B,)` lengths of a padded batch, or None: a twin that mixes time
steps takes it and returns a `jdnn.reference.padded.Padded` while a time axis remains; see that
module). `dparams` has exactly the keys and shapes of `params`.

A loss twin is `numpy_fn(outputs, y, **kwargs) -> (loss, dloss)`: `loss` the `(B,)` per-example
values, `dloss` their gradients with respect to `outputs` (each example's own, unweighted);
`kwargs` are those of a `functools.partial` of the JAX loss (e.g. `label_smoothing`).

Nothing here imports JAX: the registry keys losses by the JAX function object, never calls it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

from jdnn.reference.layers import KINDS

EXTRAS = ("state", "train", "keep_mask", "lengths")


class Twin(NamedTuple):
    """A user's layer twin: `forward` and `backward` as in the module docstring."""

    forward: Callable
    backward: Callable


def _check_callable(where: str, name: str, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{where}: {name} must be a function, got {value!r}")


def register_layer(kind: str, forward: Callable, backward: Callable) -> None:
    """Gives the reference a twin for the layer kind `kind` (a user's own, usually).

    Args:
        kind: the kind, as in the layer's spec (e.g. `"Swish"`).
        forward: `forward(params, x, **hparams) -> (y, cache)`; see the module docstring for
            the extras `state`, `train` and `keep_mask`.
        backward: `backward(params, cache, dy) -> (dx, dparams)`.

    Examples:
        >>> def forward(params, x, *, beta):
        ...     s = 1 / (1 + np.exp(-beta * x))
        ...     return x * s, (x, s, beta)
        >>> def backward(params, cache, dy):
        ...     x, s, beta = cache
        ...     return dy * (s + beta * x * s * (1 - s)), {}
        >>> jdnn.reference.register_layer("Swish", forward, backward)
    """
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"register_layer: kind must be a layer kind name (a non-empty str), got "
                        f"{kind!r}")
    _check_callable("register_layer", "forward", forward)
    _check_callable("register_layer", "backward", backward)
    positional = [p for p in inspect.signature(forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    if len(positional) != 2:
        raise TypeError(f"register_layer({kind!r}): forward must take (params, x) positionally "
                        f"and the hyper-parameters by keyword, got the signature "
                        f"{inspect.signature(forward)}")
    KINDS[kind] = Twin(forward, backward)


# A combinator's builder: build(children, hparams) -> Node, `children` a list of (key, Node);
# jdnn.reference.network defines Node and the built-in builders.
COMBINATORS: dict[str, Callable] = {}


def register_combinator(kind: str, build: Callable) -> None:
    """Gives the reference a builder for the combinator kind `kind`.

    Args:
        kind: the combinator's kind, as in its spec (e.g. `"branches"`).
        build: `build(children, hparams) -> Node`: `children` is a list of `(key, Node)`, one per
            child in order (`key` like `"0_dense"`, where the child's params sit); a `Node` is
            `jdnn.reference.network.Node(forward, backward)` with `forward(params, state, x,
            train, masks) -> (y, cache, new_state)` and `backward(params, cache, dy) -> (dx,
            dparams)` over the combinator's own params and state dicts.
    """
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"register_combinator: kind must be a non-empty str, got {kind!r}")
    _check_callable("register_combinator", "build", build)
    COMBINATORS[kind] = build


LOSSES: dict[Any, Callable] = {}


def register_loss(loss_fn: Callable, numpy_fn: Callable) -> None:
    """Gives the reference a twin for the per-example loss `loss_fn` (a JAX function).

    Args:
        loss_fn: the loss as `fit` and `check_gradients` take it: `loss_fn(outputs, y) -> (B,)`.
        numpy_fn: `numpy_fn(outputs, y, **kwargs) -> (loss, dloss)`, see the module docstring.

    Examples:
        >>> def huber_twin(outputs, y, delta=1.0):
        ...     r = outputs - y.reshape(outputs.shape)
        ...     small = np.abs(r) <= delta
        ...     values = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
        ...     grads = np.where(small, r, delta * np.sign(r)) / r[0].size
        ...     return values.reshape(len(r), -1).mean(1), grads
        >>> jdnn.reference.register_loss(huber, huber_twin)
    """
    _check_callable("register_loss", "loss_fn", loss_fn)
    _check_callable("register_loss", "numpy_fn", numpy_fn)
    LOSSES[loss_fn] = numpy_fn


def loss_twin(loss_fn: Callable) -> tuple[Callable, dict[str, Any]] | None:
    """`(numpy_fn, kwargs)` for `loss_fn` or a `functools.partial` of a registered loss (its
    keyword arguments become `kwargs`); None when the loss has no twin."""
    try:
        if loss_fn in LOSSES:
            return LOSSES[loss_fn], {}
        if isinstance(loss_fn, functools.partial) and not loss_fn.args and loss_fn.func in LOSSES:
            return LOSSES[loss_fn.func], dict(loss_fn.keywords)
    except TypeError:  # an unhashable callable cannot have been registered
        pass
    return None
