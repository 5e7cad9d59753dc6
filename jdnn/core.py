"""The layer contract, stated once. Every layer in jdnn obeys these three lines:

    init(key, input_shape)                             -> (output_shape, params, state)
    apply(params, state, x, *, key=None, train=False)  -> (y, new_state)
    spec                                               -> a frozen, printable description

`input_shape` includes the batch axis (any size); features are on the last axis; images are
NHWC. `params` and `state` are plain dicts (`{}` when a layer has none), so paths read like
`2_dense/w`. `key` is keyword-only: combinators split it per child, single layers never do.
`train` picks batch statistics vs running statistics and dropout on/off at call time.

`spec` tells the rest of jdnn *what* a layer is without running it: the NumPy reference, the
summary table, diagrams and checkpoints are all built from it. Layers never import those.

Kinds. A layer kind (`"Dense"`, `"serial"`, a user's `"Swish"`) is made known to everything
that reads specs by registering its constructor, built-in kinds exactly like a user's:

    @register_layer(family="activation")       def Swish(beta=1.0) -> Layer: ...
    rebuild(spec)                              the layer `spec` describes, constructed again
    walk(spec, key)                            every layer: (path, spec, key), data-flow order
    trait(spec, name, default)                 what `spec`'s kind declared under `name`

No consumer of specs compares `spec.kind` with a string: it asks `trait`. The traits jdnn reads
are listed in `TRAITS`; a kind declares only those that apply to it.

Sequences of different lengths. `x` may also be a `jdnn.Padded(values, lengths)`: a padded
batch with each example's length. Only kinds that declare `padded=True` receive one (recurrent
layers, attention, 1-D convolutions and pools); combinators hand every other kind the plain
values and keep the lengths around it (`jdnn.padded`, which states the rule).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax

from jdnn.checks import (Array, LayerError, MissingKeyError, Shape, check_features,  # noqa: F401
                         check_hparam, check_images, check_input_shape, entry_point, padding_mode,
                         positive_int, positive_ints, spatial_output_shape, whole_number,
                         window_output_size)

Params = Mapping[str, Any]
State = Mapping[str, Any]
InitFn = Callable[[Array, Shape], tuple[Shape, Params, State]]
ApplyFn = Callable[..., tuple[Array, State]]


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a layer is: its kind, its hyper-parameters and (for a combinator) its children.

    Specs are immutable, hashable and printable; `repr(spec)` reads like the code that built the
    layer, e.g. `serial(Dense(features=3), Sigmoid())`.

    Attributes:
        kind: the constructor's name, e.g. `"Dense"` or `"serial"`.
        hparams: `(name, value)` pairs of hyper-parameters, in constructor order. Values are
            plain Python (int, float, str, bool, None, tuples of those).
        children: the specs of the layers a combinator wraps, in order.
    """

    kind: str
    hparams: tuple[tuple[str, Any], ...] = ()
    children: tuple[Spec, ...] = ()

    def __getitem__(self, name: str) -> Any:
        for key, value in self.hparams:
            if key == name:
                return value
        raise KeyError(f"{self.kind} has no hyper-parameter {name!r}; it has {self.names}")

    def get(self, name: str, default: Any = None) -> Any:
        """The hyper-parameter `name`, or `default` if the spec has none by that name."""
        return dict(self.hparams).get(name, default)

    @property
    def names(self) -> tuple[str, ...]:
        """The hyper-parameter names, in constructor order."""
        return tuple(key for key, _ in self.hparams)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: `{"kind", "hparams", "children"}`, recursively."""
        return {
            "kind": self.kind,
            "hparams": {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams},
            "children": [child.to_dict() for child in self.children],
        }

    def __repr__(self) -> str:
        args = [repr(child) for child in self.children]
        args += [f"{k}={v!r}" for k, v in self.hparams]
        return f"{self.kind}({', '.join(args)})"


def make_spec(kind: str, *children: Spec, **hparams: Any) -> Spec:
    """Builds a `Spec`; keyword order is kept as the hyper-parameter order."""
    return Spec(kind, tuple(hparams.items()), tuple(children))


class Layer(NamedTuple):
    """A layer: a pair of pure functions and a description.

    Attributes:
        init: `init(key, input_shape) -> (output_shape, params, state)`.
        apply: `apply(params, state, x, *, key=None, train=False) -> (y, new_state)`.
        spec: a `Spec` describing the layer.

    Examples:
        >>> model = jdnn.serial(jdnn.Dense(3), jdnn.Sigmoid(), jdnn.Dense(1))
        >>> out_shape, params, state = model.init(jax.random.key(0), (4, 2))
        >>> y, state = model.apply(params, state, jnp.ones((4, 2)))
    """

    init: InitFn
    apply: ApplyFn
    spec: Spec

    def __repr__(self) -> str:
        return f"Layer({self.spec!r})"


def output_shape(layer: Layer, input_shape: Shape) -> Shape:
    """The layer's output shape for `input_shape` (batch axis first), from an abstract `init`
    under `jax.eval_shape`: nothing is allocated or compiled (the key too is made inside it;
    `jax.random.key(0)` outside would compile two small programs).

    Examples:
        >>> output_shape(jdnn.Dense(10), (32, 64))   # (32, 10)
    """
    found: list[Shape] = []

    def init():
        out_shape, params, state = layer.init(jax.random.key(0), tuple(input_shape))
        found.append(tuple(out_shape))
        return params, state

    jax.eval_shape(init)
    return found[0]


def child_name(index: int, spec: Spec) -> str:
    """The key a combinator files its `index`-th child under, e.g. `2_dense`."""
    return f"{index}_{spec.kind.lower()}"


# ---------------------------------------------------------------------------------------------
# Kinds: a registry from kind name to constructor, and the traits each kind declares about
# itself, so consumers of specs never switch on a kind string.

TRAITS = {
    "family": "the picture family: dense, conv, pool, norm, activation, reshape, dropout, "
              "embedding, recurrent, attention, combinator (colors in diagrams; a neuron "
              "diagram takes dense layers and their activation and dropout followers)",
    "child_keys": "a combinator: fn(spec, key) -> one key (or None) per child; default: the key "
                  "split into one per child",
    "output_child": "a combinator whose output is one child's: fn(spec) -> that child's spec",
    "outputs_probabilities": "True: the output is probabilities, not logits (Softmax, Sigmoid)",
    "flops": "fn(spec, input_shape, output_shape) -> FLOPs per example of the layer itself "
             "(a combinator: only what it adds to its children's)",
    "state": "fn(spec) -> what the layer keeps in its state (a phrase), or None",
    "stochastic": "fn(key, rate, shape) -> bool keep mask, the draw a stochastic layer makes "
                  "(the NumPy reference replays it)",
    "rate_in_state": "fn(spec) -> whether the layer reads its drop rate from its state",
    "per_example_twin": "fn(spec, rule, axis_name) -> a Layer that does not couple the "
                        "examples of a batch (BatchNorm's rules for per-example gradients)",
    "ghost_inputs": "fn(spec, x) -> (B, P, K) rows whose outer product with the output "
                    "gradient is the weight gradient (ghost clipping's norms)",
    "activation_stats": "fn(y) -> {'dead_relu' | 'saturated': fraction} for gradient-flow plots",
    "label": "fn(spec) -> a short label for diagrams, e.g. 'Dense(10)'; default: the kind",
    "from_spec": "fn(spec, children) -> Layer, when calling the constructor with the spec's "
                 "hyper-parameters is not how to rebuild the kind",
    "check_input": "fn(spec, x) -> None, or a message saying what is wrong with the concrete "
                   "NumPy input x the layer would receive (token ids out of range): run by "
                   "jdnn.data.check_data on the layers that see the model's input",
    "input_children": "a combinator: fn(spec) -> the children that receive its input; "
                      "default: all of them (serial: its first)",
    "padded": "True: apply takes a jdnn.Padded x itself (it mixes time steps, so it must see "
              "the lengths); others get the plain values (see jdnn.padded)",
    "quantize": "fn(spec) -> (kernels, apply_with): kernels maps each kernel's param name to its "
                "output-channel axis ({'w': -1}); apply_with(ops) is the layer's apply computing "
                "its products with ops.dot_general / ops.conv_general_dilated (jax.lax's "
                "signatures; jax.lax itself gives the float layer; jdnn.compress.quantize passes "
                "int8 ones)",
}

_TRAITS: dict[str, dict[str, Any]] = {}


def per_output(flops: int) -> Callable[[Spec, Shape, Shape], int]:
    """A `flops` trait for a layer costing `flops` per output entry (1 for most activations)."""
    def count(spec: Spec, input_shape: Shape, output_shape: Shape) -> int:
        del spec, input_shape
        return flops * math.prod(output_shape[1:])

    return count
_CONSTRUCTORS: dict[str, Callable[..., Layer]] = {}


def declare(kind: str, **traits: Any) -> None:
    """Records traits of the layer kind `kind` (later declarations add to earlier ones).

    Args:
        kind: the kind name, as in the layer's `Spec`, e.g. `"Softmax"`.
        **traits: names from `TRAITS`, e.g. `outputs_probabilities=True` or `family="norm"`.

    Raises:
        TypeError: for a kind that is not a non-empty str, or a trait name jdnn does not read.

    Examples:
        >>> declare("MySoftmax", outputs_probabilities=True)
    """
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"declare: kind must be a layer kind name (a non-empty str), got "
                        f"{kind!r}")
    unknown = sorted(set(traits) - set(TRAITS))
    if unknown:
        raise TypeError(f"declare({kind!r}): unknown trait(s) {unknown}; jdnn reads "
                        f"{sorted(TRAITS)}")
    _TRAITS.setdefault(kind, {}).update(traits)


def trait(spec: Spec, name: str, default: Any = None) -> Any:
    """What `spec`'s kind declared under `name`, or `default` if it declared nothing.

    Examples:
        >>> trait(jdnn.Softmax().spec, "outputs_probabilities", False)   # True
    """
    return _TRAITS.get(spec.kind, {}).get(name, default)


def register_layer(constructor: Callable[..., Layer] | None = None, *, kind: str | None = None,
                   **traits: Any) -> Any:
    """Makes a layer kind known to every consumer of specs: `rebuild`, summary, diagrams,
    search, per-example gradients, checkpoints' spec check. jdnn's own kinds register this way.

    The constructor is called again by `rebuild(spec)` as `constructor(*children, **hparams)`
    (a combinator takes its layers positionally), so the spec's hyper-parameters must be the
    constructor's keyword arguments, as plain Python values. Each call is checked to return a
    `Layer` whose spec has the registered kind.

    Args:
        constructor: a function returning a `Layer`; registered under its `__name__` unless
            `kind` is given. Use as `@register_layer` or `@register_layer(family="activation")`.
        kind: the kind name, if not the constructor's name.
        **traits: declared for the kind (see `TRAITS` and `declare`).

    Returns:
        The constructor, wrapped to check what it builds.

    Examples:
        >>> @jdnn.register_layer(family="activation")
        ... def Swish(beta: float = 1.0) -> jdnn.Layer:
        ...     spec = jdnn.core.make_spec("Swish", beta=beta)
        ...     def init(key, input_shape):
        ...         return input_shape, {}, {}
        ...     def apply(params, state, x, *, key=None, train=False):
        ...         return x * jax.nn.sigmoid(beta * x), state
        ...     return jdnn.Layer(init, apply, spec)
    """
    if constructor is None:
        return functools.partial(register_layer, kind=kind, **traits)
    if not callable(constructor):
        raise TypeError(f"register_layer: expected a constructor function returning a jdnn Layer, "
                        f"got {constructor!r}")
    name = kind if kind is not None else constructor.__name__
    declare(name, **traits)

    @functools.wraps(constructor)
    def checked(*args, **kwargs):
        layer = constructor(*args, **kwargs)
        if not isinstance(layer, Layer):
            raise TypeError(f"{name}: a registered constructor must return a jdnn Layer("
                            f"init, apply, spec), got {type(layer).__name__}")
        if layer.spec.kind != name:
            raise TypeError(f"{name}: registered as kind {name!r} but built a layer whose spec "
                            f"has kind {layer.spec.kind!r}; build the spec as "
                            f"make_spec({name!r}, ...) or register with kind="
                            f"{layer.spec.kind!r}")
        return layer

    _CONSTRUCTORS[name] = checked
    return checked


def registered_kinds() -> list[str]:
    """The names of every registered kind, sorted."""
    return sorted(_CONSTRUCTORS)


class UnknownKindError(ValueError):
    """A spec names a layer kind that no constructor was registered for."""


def rebuild(spec: Spec, wrap: Callable[[str, Spec, Layer], Layer] | None = None,
            path: str = "") -> Layer:
    """The layer `spec` describes, constructed again from its registered constructor.

    Combinators are rebuilt around rebuilt children, so params, state and random keys are laid
    out exactly as in the original. The twin's `apply` is the original's; its `init` may differ
    where the original was given an initializer function instead of a name (recorded as
    `"<name>"`): the twin then uses the default. Use it with the original's params.

    Args:
        spec: a `Spec`, e.g. `model.spec` or one of its children.
        wrap: optional `wrap(path, spec, layer) -> layer`, called on every rebuilt layer,
            children before their combinator, to swap or instrument it.
        path: the path of `spec` inside the model (`""` at the root).

    Returns:
        A `Layer` with the same spec (wrapped, if `wrap` is given).

    Raises:
        UnknownKindError: for a kind no constructor was registered for, naming it and its path.

    Examples:
        >>> dense = rebuild(model.spec.children[0])
        >>> y, _ = dense.apply(params["0_dense"], {}, x)
    """
    children = [rebuild(child, wrap, join(path, child_name(i, child)))
                for i, child in enumerate(spec.children)]
    if spec.kind not in _CONSTRUCTORS:
        raise UnknownKindError(
            f"cannot rebuild the layer {spec.kind!r} at {path or '<root>'} from its spec: no "
            f"constructor is registered for that kind; decorate its constructor with "
            f"@jdnn.register_layer (registered kinds: {', '.join(registered_kinds())})")
    from_spec = trait(spec, "from_spec")
    if from_spec is not None:
        layer = from_spec(spec, children)
    else:
        hparams = {name: value for name, value in spec.hparams
                   if not (isinstance(value, str) and value.startswith("<"))}
        layer = _CONSTRUCTORS[spec.kind](*children, **hparams)
    return wrap(path, spec, layer) if wrap is not None else layer


class Node(NamedTuple):
    """One layer of a model, as `walk` finds it.

    Attributes:
        path: its key path, `"1_serial/2_dense"`; `""` for the root.
        spec: its spec.
        key: the random key it receives when the model gets `key` (None without one).
    """

    path: str
    spec: Spec
    key: jax.Array | None


def join(path: str, name: str) -> str:
    """`path/name`, or `name` at the root."""
    return f"{path}/{name}" if path else name


def walk(spec: Spec, key: jax.Array | None = None, path: str = "") -> Iterator[Node]:
    """Every layer of the model `spec` describes, combinators and leaves, in data-flow
    (pre-)order, each with its path and the random key it receives.

    Keys are handed to children as each combinator's kind declares (`child_keys`; by default
    one split per child), so the key a `Dropout` deep inside sees is the one it draws with.

    Args:
        spec: the model's spec.
        key: the key the model's `apply` gets, or None.
        path: the path of `spec` (`""` at the root).

    Examples:
        >>> [node.path for node in walk(jdnn.serial(jdnn.Dense(3), jdnn.Relu()).spec)]
        ['', '0_dense', '1_relu']
    """
    yield Node(path, spec, key)
    for i, (child, child_key) in enumerate(zip(spec.children, child_keys(spec, key))):
        yield from walk(child, child_key, join(path, child_name(i, child)))


def _split_keys(spec: Spec, key: jax.Array) -> list[jax.Array]:
    return list(jax.random.split(key, len(spec.children)))


def child_keys(spec: Spec, key: jax.Array | None) -> list[jax.Array | None]:
    """The key each child of the combinator `spec` receives (see `walk`)."""
    if key is None:
        return [None] * len(spec.children)
    return list(trait(spec, "child_keys", _split_keys)(spec, key))


def input_layers(spec: Spec) -> list[Spec]:
    """The leaf layers that receive the input of the model `spec` describes: a combinator's
    `input_children` (all its children unless it declares otherwise), followed down.

    Examples:
        >>> input_layers(jdnn.serial(jdnn.Dense(3), jdnn.Relu()).spec)   # [Dense(...)]
    """
    if not spec.children:
        return [spec]
    children = trait(spec, "input_children", lambda s: s.children)(spec)
    return [leaf for child in children for leaf in input_layers(child)]


def output_layer(spec: Spec) -> Spec:
    """The spec of the layer that produces the output of the model `spec` describes: the
    `output_child` of each combinator that declares one, followed down; `spec` itself
    otherwise (a leaf, or a combinator such as `residual` whose output mixes its input in).

    Examples:
        >>> output_layer(jdnn.serial(jdnn.Dense(10), jdnn.Softmax()).spec)   # Softmax()
    """
    while (pick := trait(spec, "output_child")) is not None and (child := pick(spec)) is not None:
        spec = child
    return spec




# ---------------------------------------------------------------------------------------------
# Tree paths: a leaf of a params (or state, or optimizer state) tree is named by its keys joined
# with "/", e.g. "0_dense/w". Freezing, penalties, checkpoints and gradient reports all read
# these names.


def path_of(keypath: tuple[Any, ...]) -> str:
    """A readable path from a `jax.tree_util` key path, e.g. `"0_dense/w"`.

    Args:
        keypath: the key path of a leaf, as given by `jax.tree_util.tree_flatten_with_path`.

    Returns:
        The keys (dict keys, sequence indices, attribute names) joined with `/`; `""` for a
        bare leaf.

    Examples:
        >>> [path_of(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        ['0_dense/b', '0_dense/w']
    """
    parts = []
    for entry in keypath:
        if isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            parts.append(str(entry.key))
        else:
            parts.append(str(entry))
    return "/".join(parts)


def is_under(path: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    """Whether `path` is one of `prefixes` or lies below one: `"0_conv2d/w"` is under
    `"0_conv2d"`, but not under `"0_conv"`.

    Examples:
        >>> is_under("0_conv2d/w", ["0_conv2d"]), is_under("0_conv2d/w", ["0_conv"])
        (True, False)
    """
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in prefixes)
