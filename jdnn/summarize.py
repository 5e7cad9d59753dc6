"""summary: a model's layers as a table of shapes, parameter counts and FLOPs, from its spec.

Nothing runs: the parameter and state trees come from `jax.eval_shape(model.init, ...)`, and
every layer's input and output shapes are recorded by an abstract `init` of the model rebuilt
from its spec (`jdnn.core.rebuild`). Each kind states its own FLOPs (its `flops` trait, see
`jdnn.core.TRAITS`); a kind that states none shows `?` in its row and in the totals. Rows
are listed in the order data flows: every layer of the model, leaves and combinators alike,
nested combinators' children indented under them.

FLOPs convention (per example, inference, `train=False`):

- a multiply-add counts as 2 FLOPs; bias additions are not counted (the usual convention);
- `Dense`: `2 * in * out` (times the positions for inputs of rank > 2);
- `Conv2D`: `2 * kh * kw * cin * cout * Hout * Wout` (padded positions counted as real);
- `MaxPool2D` / `AvgPool2D`: one operation per window element per output, `wh * ww` each;
- elementwise activations (ReLU, sigmoid, tanh, ...) and `PRelu`: 1 per element;
  `Softmax`: 3 per element (exp, sum, divide);
- `BatchNorm`: 4 per element (subtract, multiply by `rsqrt(var + eps)`, scale, shift);
- `residual`: its inner layer's plus 1 per element for the addition;
- `Dropout` (the identity at inference) and `Flatten`: 0.

Sparsity. Given the trained `params` too (`summary(model, shape, params=...)`), each row
also counts the exact zeros among its weights (the kernels, `jdnn.regularizers.is_weight`;
a combinator: its children's together): a pruned model (`jdnn.compress`) shows how sparse
each layer is. The table gains a "Zero weights" column and a totals line only when some weight
is zero, so a dense model's table reads as before.

Examples:
    >>> print(jdnn.summary(jdnn.serial(jdnn.Dense(3), jdnn.Sigmoid(), jdnn.Dense(1)), (1, 2)))
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jdnn.core import (Layer, Shape, Spec, UnknownKindError, child_name, join,  # noqa: F401
                       output_shape, path_of, rebuild, trait, walk)
from jdnn.regularizers import is_weight

FLOPS_CONVENTION = ("per example at inference; a multiply-add is 2 FLOPs, bias additions not "
                    "counted; Dense 2*in*out, Conv2D 2*kh*kw*cin*cout*Hout*Wout, pooling wh*ww "
                    "per output, activations 1/element (softmax 3), BatchNorm 4/element, "
                    "residual add 1/element, Dropout and Flatten 0")


@dataclasses.dataclass(frozen=True)
class Row:
    """One layer of the table.

    Attributes:
        path: the layer's path in the params tree, e.g. `"2_residual/0_serial/1_gelu"`.
        kind: its spec kind, e.g. `"Dense"`.
        depth: 0 for the model's own layers, +1 per enclosing combinator.
        output_shape: with the batch axis of the summary's input shape; None if unknown.
        params: the number of trainable scalars (a combinator: its children's sum).
        state: the number of state scalars, never trained (batch-norm statistics, the rate of
            a `Dropout(..., rate_in_state=True)`).
        flops: FLOPs per example (see the module docstring); None if unknown.
        weights: the number of weight entries (kernels) in the layer (and its children),
            counted when `summary` is given params; None otherwise.
        zero_weights: how many of them are exactly 0; None without params.
    """

    path: str
    kind: str
    depth: int
    output_shape: Shape | None
    params: int
    state: int
    flops: int | None
    weights: int | None = None
    zero_weights: int | None = None

    @property
    def sparsity(self) -> float | None:
        """The fraction of the layer's weights that are 0; None without params or weights."""
        return self.zero_weights / self.weights if self.weights else None

    @property
    def name(self) -> str:
        """The last part of the path, e.g. `"1_gelu"`."""
        return self.path.rsplit("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class Summary:
    """The table `summary` returns: print it, or read `rows`, the totals, or `to_dict()`.

    Attributes:
        spec: the model's spec.
        input_shape: the input shape summarized, batch axis first.
        output_shape: the model's output shape.
        rows: one `Row` per layer, in data-flow order.
        params: trainable scalars in total; state: state scalars in total.
        param_bytes, state_bytes: their sizes in bytes (from the dtypes `init` gives).
        flops: FLOPs per example for the whole model (None if a layer's is unknown).
        weights, zero_weights: the model's weight entries and its zeros among them, when
            `summary` was given params (None otherwise).
    """

    spec: Spec
    input_shape: Shape
    output_shape: Shape
    rows: tuple[Row, ...]
    params: int
    state: int
    param_bytes: int
    state_bytes: int
    flops: int | None
    weights: int | None = None
    zero_weights: int | None = None

    @property
    def sparsity(self) -> float | None:
        """The fraction of all weights that are 0; None without params."""
        return self.zero_weights / self.weights if self.weights else None

    @property
    def total(self) -> int:
        """Parameters plus state: every scalar a checkpoint holds for the model."""
        return self.params + self.state

    @property
    def bytes(self) -> int:
        """Bytes of parameters plus state."""
        return self.param_bytes + self.state_bytes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: shapes, one dict per row, totals and the FLOPs convention."""
        return {
            "model": self.spec.to_dict(),
            "input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
            "layers": [{**dataclasses.asdict(row), "output_shape": None if row.output_shape
                        is None else list(row.output_shape)} for row in self.rows],
            "totals": {"params": self.params, "trainable": self.params, "state": self.state,
                       "total": self.total, "param_bytes": self.param_bytes,
                       "state_bytes": self.state_bytes, "bytes": self.bytes,
                       "flops": self.flops, "weights": self.weights,
                       "zero_weights": self.zero_weights, "sparsity": self.sparsity},
            "flops_convention": FLOPS_CONVENTION,
        }

    def __str__(self) -> str:
        sparse = bool(self.zero_weights)   # the column only when some weight is zero
        header = ("Layer", "Kind", "Output shape", "Params", "State", "FLOPs/example",
                  *(("Zero weights",) if sparse else ()))
        body = [("  " * row.depth + row.name, row.kind, _shape_text(row.output_shape),
                 f"{row.params:,}", f"{row.state:,}", _count_text(row.flops),
                 *((_percent_text(row.sparsity),) if sparse else ()))
                for row in self.rows]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        left = (True, True, True, False, False, False, False)

        def line(cells):
            return "  ".join(c.ljust(w) if lj else c.rjust(w)
                             for c, w, lj in zip(cells, widths, left)).rstrip()

        rule = "-" * len(line(header))
        totals = [
            f"Input {_shape_text(self.input_shape)} -> output {_shape_text(self.output_shape)}",
            f"Parameters (trainable): {self.params:,} ({_bytes_text(self.param_bytes)})",
            f"State (non-trainable):  {self.state:,} ({_bytes_text(self.state_bytes)})",
            f"Total:                  {self.total:,} ({_bytes_text(self.bytes)})",
            f"FLOPs per example:      {_count_text(self.flops)} (multiply-add = 2)",
        ]
        if sparse:
            totals.append(f"Zero weights:           {self.zero_weights:,} of {self.weights:,} "
                          f"({_percent_text(self.sparsity)})")
        return "\n".join([line(header), rule, *(line(cells) for cells in body), rule, *totals])

    __repr__ = __str__


def _shape_text(shape: Shape | None) -> str:
    return "?" if shape is None else str(tuple(shape))


def _count_text(count: int | None) -> str:
    return "?" if count is None else f"{count:,}"


def _percent_text(fraction: float | None) -> str:
    return "" if fraction is None else f"{100 * fraction:.1f}%"


def _bytes_text(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# ---------------------------------------------------------------------------------------------
# FLOPs of one layer, from its spec and its per-example input and output shapes.


def layer_flops(spec: Spec, input_shape: Shape, output_shape: Shape) -> int | None:
    """FLOPs per example of a layer itself (a combinator: what it adds to its children's), from
    its kind's `flops` trait; None for a kind that states none.

    Args:
        spec: the layer's spec.
        input_shape: its input shape, batch axis first (the batch size is divided out).
        output_shape: its output shape, batch axis first.

    Examples:
        >>> layer_flops(jdnn.Dense(10).spec, (1, 64), (1, 10))
        1280
    """
    count = trait(spec, "flops")
    return None if count is None else int(count(spec, input_shape, output_shape))


# ---------------------------------------------------------------------------------------------
# The walk: every layer's shapes from one abstract init, counts read off the trees.


def layer_shapes(spec: Spec, input_shape: Shape) -> dict[str, tuple[Shape, Shape]]:
    """`{path: (input_shape, output_shape)}` of every layer of the model `spec` describes,
    recorded during an abstract `init` of the model rebuilt from its spec; `{}` when a kind in
    it is not registered (see `jdnn.register_layer`)."""
    seen: dict[str, tuple[Shape, Shape]] = {}

    def record(path: str, spec: Spec, layer: Layer) -> Layer:
        def init(key, shape):
            out, params, state = layer.init(key, shape)
            seen[path] = (tuple(shape), tuple(out))
            return out, params, state

        return Layer(init, layer.apply, layer.spec)

    try:
        twin = rebuild(spec, record)
    except UnknownKindError:
        return {}
    output_shape(twin, input_shape)
    return seen


def _subtree(tree: Any, path: str) -> Any:
    for name in path.split("/") if path else ():
        tree = tree[name]
    return tree


def _size(tree: Any) -> tuple[int, int]:
    leaves = jax.tree.leaves(tree)
    return (sum(math.prod(leaf.shape) for leaf in leaves),
            sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in leaves))


def _flops(nodes: list, shapes: dict[str, tuple[Shape, Shape]]) -> dict[str, int | None]:
    """FLOPs per example of every layer, children summed into their combinator."""
    flops: dict[str, int | None] = {}
    for node in reversed(nodes):
        io = shapes.get(node.path)
        own = None if io is None else layer_flops(node.spec, *io)
        if node.spec.children:
            own = 0 if trait(node.spec, "flops") is None and io is not None else own
            parts = [own] + [flops[join(node.path, child_name(i, child))]
                             for i, child in enumerate(node.spec.children)]
            own = None if None in parts else sum(parts)
        flops[node.path] = own
    return flops


def _zeros(tree: Any) -> tuple[int, int]:
    """`(weights, zeros among them)` over the weight leaves (`is_weight`) of `tree`."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    kernels = [np.asarray(leaf) for keypath, leaf in leaves if is_weight(path_of(keypath))]
    return sum(k.size for k in kernels), sum(int(np.sum(k == 0)) for k in kernels)


def _check_params(given: Any, expected: Any) -> None:
    """Raises a ValueError unless `given` has the structure and shapes of `model.init`'s."""
    def shapes(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {path_of(k): tuple(np.shape(leaf)) for k, leaf in leaves}

    found, wanted = shapes(given), shapes(expected)
    if found != wanted:
        diff = sorted(set(found.items()) ^ set(wanted.items()))[:4]
        raise ValueError(f"summary: params do not fit the model: its init gives "
                         f"{len(wanted)} leaves, params have {len(found)}; first differences "
                         f"(path, shape): {diff}. Pass the params of this model (e.g. "
                         f"train_state.params)")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _input_shape(value: Any) -> Shape:
    """`summary`'s `input_shape` as a tuple of Python ints; an array gives its `.shape`."""
    hint = "pass the input shape with its batch axis, e.g. (1, 784), or x.shape for a batch x"
    if _is_int(value):
        raise TypeError(f"summary: input_shape must be a shape, got the int {int(value)}; {hint}")
    if isinstance(value, jax.ShapeDtypeStruct):
        dims = tuple(value.shape)
    elif isinstance(value, (np.ndarray, jax.Array)):
        if value.ndim == 1 and np.issubdtype(value.dtype, np.integer):
            raise TypeError(f"summary: input_shape is a 1-D integer array, "
                            f"{reprlib.repr(value)}, which could be a shape or a batch: pass "
                            f"tuple(a) if it holds the shape, or a.shape if it is a batch")
        dims = tuple(value.shape)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        dims = tuple(value)
    else:
        raise TypeError(f"summary: input_shape must be a tuple of ints, an array or a "
                        f"jax.ShapeDtypeStruct, got {type(value).__name__} "
                        f"{reprlib.repr(value)}; {hint}")
    if not all(_is_int(d) for d in dims):
        raise TypeError(f"summary: input_shape must hold ints, got {reprlib.repr(value)}; {hint}")
    if not dims or min(dims) < 1:
        raise ValueError(f"summary: input_shape needs a batch axis and dimensions >= 1, got "
                         f"{reprlib.repr(value)}; {hint}")
    return tuple(int(d) for d in dims)


def summary(model: Layer,
            input_shape: Shape | np.ndarray | jax.Array | jax.ShapeDtypeStruct, *,
            params: Any = None) -> Summary:
    """The layer table of `model` for inputs of `input_shape`: shapes, counts, FLOPs, and with
    `params` the zeros among each layer's weights.

    Computed from the spec and `jax.eval_shape(model.init, ...)`: no parameter is drawn and
    nothing is applied, so it is instant even for large models.

    Args:
        model: a jdnn `Layer`.
        input_shape: the input shape with its batch axis, as `model.init` takes it: a tuple
            (or list) of positive ints, NumPy ints included, e.g. `(1, 784)` or
            `(32, 28, 28, 1)`. An input batch itself (a NumPy or JAX array) or a
            `jax.ShapeDtypeStruct` is accepted too: its `.shape` is used. FLOPs are per example
            whatever the batch size.
        params: optional trained params of `model` (e.g. `train_state.params`, or a pruned
            copy): each row then counts its weights' zeros (`Row.sparsity`); the table shows a
            "Zero weights" column when any weight is zero.

    Returns:
        A `Summary`: `print` it for the table, or read its rows, totals and `to_dict()`.

    Raises:
        TypeError: if `input_shape` is neither a sequence of ints nor an array (e.g. a bare
            int, a string, a float dimension), or is a 1-D integer array, which could be a
            shape or a batch (pass `tuple(a)` or `a.shape`).
        ValueError: if it has no dimensions or one below 1.
        LayerError: if the model does not accept `input_shape` (from `model.init`).
        ValueError: if `params` do not have the paths and shapes of the model's params.

    Examples:
        >>> model = jdnn.serial(jdnn.Conv2D(8, 3), jdnn.Relu(), jdnn.Flatten(), jdnn.Dense(10))
        >>> print(jdnn.summary(model, (1, 8, 8, 1)))
        >>> print(jdnn.summary(model, (1, 8, 8, 1), params=jdnn.compress.prune(p, 0.8)[0]))
    """
    shape = _input_shape(input_shape)
    found = []

    def init(key):
        out, params, state = model.init(key, shape)
        found.append(tuple(out))
        return params, state

    params_shape, state = jax.eval_shape(init, jax.random.key(0))
    if params is not None:
        _check_params(params, params_shape)
    nodes = list(walk(model.spec))
    shapes = layer_shapes(model.spec, shape)
    shapes[""] = (shape, found[0])  # the model's own init knows, registered or not
    flops = _flops(nodes, shapes)
    if not model.spec.children:
        nodes = [nodes[0]._replace(path=model.spec.kind.lower())]
        flops[nodes[0].path], shapes[nodes[0].path] = flops[""], shapes[""]

    def counted(path: str) -> tuple[int | None, int | None]:
        return (None, None) if params is None else _zeros(_subtree(params, path))

    rows = tuple(Row(node.path, node.spec.kind, node.path.count("/"),
                     shapes.get(node.path, (None, None))[1],
                     _size(_subtree(params_shape, node.path if model.spec.children else ""))[0],
                     _size(_subtree(state, node.path if model.spec.children else ""))[0],
                     flops[node.path], *counted(node.path if model.spec.children else ""))
                 for node in nodes if node.path)
    (n_params, param_bytes), (n_state, state_bytes) = _size(params_shape), _size(state)
    return Summary(model.spec, shape, found[0], rows, n_params, n_state, param_bytes,
                   state_bytes, flops[""], *counted(""))
