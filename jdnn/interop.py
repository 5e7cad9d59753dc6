"""Flax linen modules inside jdnn models, and jdnn layers inside linen modules.

    from_linen(module, *, train_kwargs=None, rngs=("dropout",))  -> a jdnn Layer
    to_linen(layer, input_shape=None)                           -> a flax.linen.Module

How the two contracts meet:

- Variables. Linen keeps a module's variables in named collections, jdnn in `params` and
  `state`. A wrapped module's `"params"` collection is the layer's `params`; every other
  collection (BatchNorm's `"batch_stats"`) is filed in `state` under its name, e.g.
  `state == {"batch_stats": {"mean": ..., "var": ...}}`. The other way, `to_linen` files the jdnn
  layer's `params` as the module's `"params"` collection and its `state` as a `"state"`
  collection, key for key: `variables == {"params": params, "state": state}`.
- The train flag. jdnn passes `train` to every `apply`; a linen module takes an argument of its
  own (`deterministic` for Dropout, `use_running_average` for BatchNorm), which `train_kwargs`
  names. In training mode the state collections are mutable and come back as the new state;
  otherwise the state is returned as it came.
- Random numbers. jdnn hands `apply` one `key`; linen draws from named rng streams. The key
  feeds the streams named in `rngs` (default: `"dropout"`). A module in a `to_linen` wrapper
  draws its layer's key from the `"dropout"` stream.
- Specs. A wrapped module's spec names its class and the fields set away from their defaults,
  `Linen(module='Dense(features=8)', train_kwargs=None, rngs=('dropout',))`. The module itself
  stays in a table of this process that `from_linen` fills, which is how `jdnn.core.rebuild(spec)`
  finds it again; a spec read in another process (a checkpoint's) needs the same `from_linen`
  call there first.

flax is an optional dependency (`pip install "jdnn[flax]"`). `import jdnn` never imports it and
neither does importing this module: flax is imported when one of its functions is called.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jdnn.core import (Layer, LayerError, MissingKeyError, Shape, Spec, UnknownKindError,
                       check_input_shape, make_spec, register_layer, registered_kinds)

TrainKwargs = str | Callable[[bool], Mapping[str, Any]] | None
"""How `from_linen` passes jdnn's `train` flag to a module: None (not at all), the name of
one of its keyword arguments, or a function `train -> {argument: value}`."""

NEGATED = frozenset({"deterministic", "use_running_average"})
"""Arguments that mean "not training": `train_kwargs="deterministic"` passes `not train`."""


def _linen() -> types.ModuleType:
    """`flax.linen`, or an ImportError that says how to install it."""
    try:
        import flax.linen as linen
    except ImportError as error:
        raise ImportError('jdnn.interop needs flax, an optional dependency of jdnn: '
                          'pip install "jdnn[flax]"') from error
    return linen


def _plain(tree: Any) -> Any:
    """Nested plain dicts, whether flax handed back dicts or FrozenDicts."""
    from flax.core import unfreeze

    return unfreeze(tree)


# ---------------------------------------------------------------------------------------------
# from_linen: what the module is told about `train`, and how its spec names it.


def _train_flags(train_kwargs: TrainKwargs) -> Callable[[bool], dict[str, Any]]:
    """`flags(train) -> the module's keyword arguments` for a `train_kwargs` (see `from_linen`)."""
    if train_kwargs is None:
        return lambda train: {}
    if isinstance(train_kwargs, str):
        if not train_kwargs.isidentifier():
            raise ValueError(f"from_linen: train_kwargs must name a keyword argument of the "
                             f"module, e.g. 'deterministic', got {train_kwargs!r}")
        negate = train_kwargs in NEGATED
        return lambda train: {train_kwargs: (not train) if negate else train}
    if not callable(train_kwargs):
        raise TypeError(f"from_linen: train_kwargs must be None, an argument name such as "
                        f"'deterministic', or a function train -> dict of keyword arguments, "
                        f"got {train_kwargs!r}")

    def flags(train: bool) -> dict[str, Any]:
        kwargs = train_kwargs(train)
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"from_linen: train_kwargs(train={train}) must return a dict of the "
                            f"module's keyword arguments, got {kwargs!r}")
        return dict(kwargs)

    return flags


def _equal(a: Any, b: Any) -> bool:
    """Whether `a` and `b` act alike: equal values; functions of the same code over equal
    defaults and closed-over values; modules field by field. Each `nn.initializers.normal(0.02)`
    is a new function, so `==` alone would call two identical modules different."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, types.FunctionType):
        cells = [[cell.cell_contents for cell in f.__closure__ or ()] for f in (a, b)]
        return a.__code__ is b.__code__ and _equal(a.__defaults__, b.__defaults__) and _equal(
            *cells)
    if dataclasses.is_dataclass(a):
        return all(_equal(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a) if f.name != "parent")
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(map(_equal, a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # arrays and other values that do not compare to one bool
        return False


def _brief(value: Any) -> str:
    """A field's value on one line: plain values as code, functions by name, modules described."""
    if value is None or isinstance(value, (bool, int, float, str, tuple)):
        return repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return describe(value)
    return getattr(value, "__name__", type(value).__name__)


def describe(module: Any) -> str:
    """The module's class and the fields set away from their defaults, on one line.

    Examples:
        >>> describe(flax.linen.Dense(8, use_bias=False))
        'Dense(features=8, use_bias=False)'
    """
    parts = [f"{field.name}={_brief(getattr(module, field.name))}"
             for field in dataclasses.fields(module)
             if field.init and field.name not in ("parent", "name")
             and not (field.default is not dataclasses.MISSING
                      and _equal(getattr(module, field.name), field.default))]
    return f"{type(module).__name__}({', '.join(parts)})"


# ---------------------------------------------------------------------------------------------
# The table `rebuild` reads: spec -> the module wrapped under it. Equal modules share a spec;
# two different ones that describe alike are told apart by an `instance` number.


class _Wrapped(NamedTuple):
    """What `from_linen` was given."""

    module: Any
    train_kwargs: TrainKwargs
    rngs: tuple[str, ...]


_WRAPPED: dict[Spec, tuple[_Wrapped, Layer]] = {}
_COLLECTIONS: dict[Spec, tuple[str, ...]] = {}  # the state collections each spec's init found
_KINDS: set[str] = set()  # the kinds from_linen registered


def _spec_for(kind: str, wrapped: _Wrapped) -> Spec:
    """The spec of `wrapped`: the one an equal wrapping already has, or a new one."""
    fn = wrapped.train_kwargs
    name = getattr(fn, "__name__", type(fn).__name__)
    hparams = {"module": describe(wrapped.module),
               "train_kwargs": fn if fn is None or isinstance(fn, str)
               else name if name.startswith("<") else f"<{name}>",  # a function, by name
               "rngs": wrapped.rngs}
    instance = 0
    while True:
        spec = make_spec(kind, **hparams, **({"instance": instance} if instance else {}))
        known = _WRAPPED.get(spec)
        if known is None or _equal(known[0], wrapped):
            return spec
        instance += 1


def _from_spec(spec: Spec, children: Sequence[Layer] = ()) -> Layer:
    del children
    if spec not in _WRAPPED:
        raise UnknownKindError(f"cannot rebuild {spec!r}: a flax module is known only to the "
                               f"process that wrapped it; call jdnn.interop.from_linen with the "
                               f"same module and arguments first")
    return _WRAPPED[spec][1]


def _state_held(spec: Spec) -> str | None:
    collections = _COLLECTIONS.get(spec)
    return f"the flax collection(s) {', '.join(collections)}" if collections else None


def _register_kind(kind: str) -> None:
    """Registers `kind` once so that `rebuild` and every reader of specs know it."""
    if kind in _KINDS:
        return
    if kind in registered_kinds():
        raise ValueError(f"from_linen: kind {kind!r} is already a registered jdnn layer kind; "
                         f"name the wrapped module's kind otherwise, e.g. kind='Linen'")

    def constructor(**hparams: Any) -> Layer:
        return _from_spec(make_spec(kind, **hparams))

    register_layer(constructor, kind=kind, family="other", state=_state_held,
                   from_spec=_from_spec, label=lambda spec: spec["module"])
    _KINDS.add(kind)


def _streams(names: tuple[str, ...], key: jax.Array | None) -> dict[str, jax.Array] | None:
    """The module's rngs: one stream gets `key` itself, several a split of it each."""
    if key is None:
        return None
    if len(names) == 1:
        return {names[0]: key}
    return dict(zip(names, jax.random.split(key, len(names))))


def from_linen(module: Any, *, train_kwargs: TrainKwargs = None,
               rngs: Sequence[str] = ("dropout",), kind: str | None = None) -> Layer:
    """A flax linen module as a jdnn layer.

    `init` runs `module.init` on zeros of `input_shape` (keeping the output's shape);
    `apply` runs `module.apply({"params": params, **state}, x, **flags, rngs=..., mutable=...)`.
    Params are the module's `"params"` collection; state holds its other collections by name.

    Args:
        module: a `flax.linen.Module` instance (unbound), e.g. `nn.Dense(8)`.
        train_kwargs: how jdnn's `train` flag reaches the module: None (the module takes no
            such argument); an argument name, given `not train` for `"deterministic"` and
            `"use_running_average"` and `train` for any other name (`"train"`, `"training"`);
            or a function `train -> dict of keyword arguments`.
        rngs: the rng stream(s) the module draws from; `apply`'s `key` feeds them (one stream:
            the key itself, so the layer draws what `module.apply(..., rngs={"dropout": key})`
            draws; several: `jax.random.split(key, len(rngs))`, in order). `init`'s key is the
            `"params"` stream, which linen also hands to streams not given.
        kind: the spec's kind, `"Linen"` by default; another name (not a jdnn kind) sets the
            module apart in summaries.

    Returns:
        A `Layer` mapping `input_shape` to the module's output shape, with the module's
        variables as params and state. A module that draws random numbers in training mode
        needs `key=`: without one `apply` raises `jdnn.core.MissingKeyError`.

    Raises:
        TypeError: if `module` is not a linen Module instance, `train_kwargs` is neither None,
            a str nor a function, or `rngs` names no stream.
        ValueError: for a `train_kwargs` str that is no argument name, or a `kind` that is no
            name or is a jdnn kind already (`"Dense"`).
        ImportError: if flax is not installed.

    Examples:
        >>> import flax.linen as nn
        >>> model = jdnn.serial(from_linen(nn.Dense(16)), jdnn.Relu(),
        ...                     from_linen(nn.Dropout(0.5), train_kwargs="deterministic"),
        ...                     from_linen(nn.BatchNorm(), train_kwargs="use_running_average"))
        >>> out_shape, params, state = model.init(jax.random.key(0), (32, 4))   # (32, 16)
        >>> y, state = model.apply(params, state, x, key=jax.random.key(1), train=True)
    """
    linen = _linen()
    if isinstance(module, type) and issubclass(module, linen.Module):
        raise TypeError(f"from_linen: expected a flax.linen.Module instance, got the class "
                        f"{module.__name__}; construct it first, e.g. {module.__name__}(...)")
    if not isinstance(module, linen.Module):
        raise TypeError(f"from_linen: expected a flax.linen.Module instance such as "
                        f"flax.linen.Dense(8), got {type(module).__name__}: {module!r}")
    flags = _train_flags(train_kwargs)
    rngs = (rngs,) if isinstance(rngs, str) else tuple(rngs)
    if not rngs or not all(isinstance(name, str) and name for name in rngs):
        raise TypeError(f"from_linen: rngs must name at least one rng stream, e.g. "
                        f"('dropout',), got {rngs!r}")
    kind = "Linen" if kind is None else kind
    if not isinstance(kind, str):
        raise TypeError(f"from_linen: kind must be a str such as 'Linen', got {kind!r}")
    if not kind.isidentifier():
        raise ValueError(f"from_linen: kind must be a name such as 'Linen', got {kind!r}")
    _register_kind(kind)
    wrapped = _Wrapped(module, train_kwargs, rngs)
    spec = _spec_for(kind, wrapped)

    def init(key, input_shape):
        shape = check_input_shape(kind, input_shape)
        y, variables = module.init_with_output(key, jnp.zeros(shape), **flags(False))
        if not hasattr(y, "shape"):
            raise LayerError(kind, f"the module returns {type(y).__name__}; a jdnn layer "
                                   f"returns one array")
        state = _plain(variables)
        params = state.pop("params", {})
        _COLLECTIONS[spec] = tuple(sorted(state))
        return tuple(y.shape), params, state

    def apply(params, state, x, *, key=None, train=False):
        from flax.errors import InvalidRngError

        mutable = list(state) if train and state else False
        try:
            out = module.apply({"params": params, **state}, x, **flags(train),
                               rngs=_streams(rngs, key), mutable=mutable)
        except InvalidRngError as error:
            if key is None:
                raise MissingKeyError(kind, "the flax module draws random numbers (e.g. "
                                            "dropout with train=True) and needs a key: call "
                                            "apply(..., key=key, train=True), or train=False "
                                            "for evaluation") from error
            raise LayerError(kind, f"the flax module draws from an rng stream other than "
                                   f"rngs={rngs}: name it in from_linen(..., rngs=...) "
                                   f"({error})") from error
        if not mutable:
            return out, state
        y, updated = out
        return y, {**state, **_plain(updated)}

    layer = Layer(init, apply, spec)
    _WRAPPED.setdefault(spec, (wrapped, layer))  # an equal wrapping keeps its first layer
    return layer


# ---------------------------------------------------------------------------------------------
# to_linen: a jdnn layer as a linen module.


@functools.cache
def _module_class() -> type:
    linen = _linen()

    class JdnnLayer(linen.Module):
        """A jdnn layer as a linen module; see `jdnn.interop.to_linen`."""

        layer: Layer
        input_shape: Shape | None = None

        @linen.compact
        def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
            if self.is_initializing():
                shape = tuple(x.shape) if self.input_shape is None else self.input_shape
                _, params, state = self.layer.init(self.make_rng("params"), shape)
                for name, value in params.items():
                    self.param(name, lambda key, value=value: value)
                for name, value in state.items():
                    self.variable("state", name, lambda value=value: value)
            params = _plain(self.variables.get("params", {}))
            state = _plain(self.variables.get("state", {}))
            key = self.make_rng("dropout") if train and self.has_rng("dropout") else None
            try:
                y, new_state = self.layer.apply(params, state, x, key=key, train=train)
            except MissingKeyError as error:
                raise MissingKeyError(error.kind, 'in a linen module (jdnn.interop.to_linen) '
                                      'train=True draws the key from the "dropout" rng stream: '
                                      'module.apply(variables, x, train=True, rngs={"dropout": '
                                      'key})', error.path) from None
            if train and not self.is_initializing() and jax.tree.leaves(new_state):
                for name, value in new_state.items():
                    self.put_variable("state", name, value)
            return y

    return JdnnLayer


def to_linen(layer: Layer, input_shape: Shape | None = None) -> Any:
    """A jdnn layer as a flax linen module.

    The module's `init` runs `layer.init` with the `"params"` rng and files the params as its
    `"params"` collection and the state as a `"state"` collection, key for key. Calling it,
    `module.apply(variables, x, train=False)`, runs `layer.apply`; with `train=True` the layer's
    key comes from the `"dropout"` rng stream (when one is given; a jdnn Dropout without it
    raises `MissingKeyError`), and a layer with state (BatchNorm) writes its new state back, so
    pass `mutable=["state"]`, as for linen's own BatchNorm.

    Args:
        layer: a jdnn `Layer`, e.g. a whole `jdnn.serial(...)` model.
        input_shape: the shape `layer.init` gets, batch axis first; by default the shape of the
            input the module is initialized on.

    Returns:
        A `flax.linen.Module`; `__call__(x, train=False)` maps `(B, ...)` to the layer's output.

    Raises:
        TypeError: if `layer` is not a jdnn `Layer`.
        ImportError: if flax is not installed.

    Examples:
        >>> module = to_linen(jdnn.serial(jdnn.Dense(4), jdnn.Relu(), jdnn.Dense(2)))
        >>> variables = module.init(jax.random.key(0), jnp.ones((8, 3)))
        >>> y = module.apply(variables, x)                                     # (8, 2)
        >>> y, updates = module.apply(variables, x, train=True, mutable=["state"],
        ...                           rngs={"dropout": jax.random.key(1)})
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"to_linen: expected a jdnn Layer such as jdnn.Dense(8), got "
                        f"{type(layer).__name__}: {layer!r}")
    if input_shape is not None:
        input_shape = check_input_shape(layer.spec.kind, input_shape)
    return _module_class()(layer, input_shape)
