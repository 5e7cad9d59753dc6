"""Mixed precision: which dtype each kind of array has in a step, and the casts that make it so.

A `Precision` policy names three dtypes (the three of DeepMind's `jmp` and Keras's
`mixed_bfloat16`):

    params    the master copy the optimizer updates, and so the optimizer state: float32
    compute   what the forward and backward passes run in: bfloat16 for speed, float32 for none
    output    what the model's outputs are cast to before the loss and metrics: float32

The step (`jdnn.train.step`) applies it in three places and nowhere else:

    apply(cast_to_compute((params, x)), state)  the float32 params and the inputs, cast
                                                once at the start of the forward pass; the
                                                cast's gradient casts back, so the gradients,
                                                the updates and the optimizer state are float32
    cast_to_output(outputs)                     before the loss: losses, metrics and their
                                                means are float32
    keep_dtypes(new_state, state)               layer state (batch-norm statistics) keeps the
                                                dtype it had, so a scanned epoch's carry is
                                                stable and statistics stay float32

Layers need no policy: they compute in the dtype of what they are given. Those that reduce
over many values to normalize (`BatchNorm`, `LayerNorm`) compute their statistics in float32
whatever the input's dtype, and return the input's dtype, as Flax's normalization layers do.

No loss scaling: bfloat16 has float32's 8 exponent bits, so small gradients do not underflow
(loss scaling exists for float16's 5). float16 compute is refused rather than given a silent
underflow. The default policy, `"float32"`, casts nothing: a step built with it is the step
built without one, and a float64 model (`jax_enable_x64`) stays float64.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["Precision", "cast_to_compute", "cast_to_output", "keep_dtypes", "resolve_precision"]

_COMPUTE = ("float32", "bfloat16")
_PARAMS = ("float32",)
_OUTPUT = ("float32", "bfloat16")


def _dtype_name(where: str, field: str, value: Any, allowed: tuple[str, ...]) -> str:
    """`value` (a name or a dtype) as one of the `allowed` dtype names, or a clear error."""
    try:
        name = jnp.dtype(value).name
    except TypeError:
        name = None
    if name in allowed:
        return name
    hint = (" (float16 would need loss scaling, which jdnn does not do: bfloat16 has float32's "
            "range and needs none)" if name == "float16" else "")
    if field == "params" and name is not None:
        hint = (" (the optimizer updates a float32 master copy; a bfloat16 one would lose every "
                "update smaller than 1/256 of its weight)")
    raise ValueError(f"{where}: Precision {field} must be one of {allowed}, got {value!r}{hint}")


@dataclasses.dataclass(frozen=True)
class Precision:
    """A mixed-precision policy: the dtype of the params, of the computation and of the outputs.

    Frozen and compared by value, so two fits with equal policies share a compiled program.

    Attributes:
        compute: the forward and backward passes' dtype, `"float32"` or `"bfloat16"`.
        params: the dtype the params and optimizer state are kept in: `"float32"`.
        output: the dtype the outputs are cast to before the loss, metrics and `predict`:
            `"float32"` (default) or `"bfloat16"`.

    Raises:
        ValueError: for a dtype outside those (float16 compute, bfloat16 params).

    Examples:
        >>> policy = jdnn.Precision(compute="bfloat16")     # params and output float32
        >>> jdnn.fit(model, (x, y), ..., precision=policy)   # same as precision="bfloat16"
    """

    compute: str = "float32"
    params: str = "float32"
    output: str = "float32"

    def __post_init__(self):
        for field, allowed in (("compute", _COMPUTE), ("params", _PARAMS), ("output", _OUTPUT)):
            name = _dtype_name("Precision", field, getattr(self, field), allowed)
            object.__setattr__(self, field, name)

    @property
    def casts(self) -> bool:
        """Whether the policy casts anything: False for the all-float32 default."""
        return self != Precision()


def resolve_precision(where: str, precision: Any) -> Precision:
    """The `Precision` that `precision=` names at the entry point `where`.

    Args:
        where: the entry point, for errors, e.g. `"fit"`.
        precision: `"float32"`, `"bfloat16"` (compute in bfloat16, params and outputs float32),
            a dtype of those, or a `Precision`.

    Raises:
        ValueError: for any other name, e.g. `"bf16"` or `"float16"`.
        TypeError: for something that is neither a name nor a `Precision`.
    """
    if isinstance(precision, Precision):
        return precision
    if isinstance(precision, (str, np.dtype, type)):
        try:
            name = jnp.dtype(precision).name
        except TypeError:
            name = None
        if name in _COMPUTE:
            return Precision(compute=name)
        raise ValueError(f"{where}: precision must be one of {_COMPUTE} or a jdnn.Precision, "
                         f"got {precision!r}; for mixed precision pass precision=\"bfloat16\" "
                         f"(compute in bfloat16, params and losses in float32)")
    raise TypeError(f"{where}: precision must be a dtype name ({', '.join(_COMPUTE)}) or a "
                    f"jdnn.Precision, got {type(precision).__name__} {precision!r:.40}")


def _cast_floating(tree: Any, dtype: str) -> Any:
    """`tree` with every floating-point leaf cast to `dtype`; integer leaves (labels, token ids,
    sequence lengths) and others as they are."""
    def cast(leaf):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)


def cast_to_compute(policy: Precision, tree: Any) -> Any:
    """`tree` (params and inputs) in the policy's compute dtype; unchanged for `"float32"`.

    Examples:
        >>> params, x = cast_to_compute(Precision("bfloat16"), (params, x))   # bfloat16 leaves
    """
    return _cast_floating(tree, policy.compute) if policy.casts else tree


def cast_to_output(policy: Precision, tree: Any) -> Any:
    """`tree` (a model's outputs, `(B, ...)` or a `jdnn.Padded`) in the policy's output dtype;
    unchanged for `"float32"`."""
    return _cast_floating(tree, policy.output) if policy.casts else tree


def keep_dtypes(policy: Precision, new_state: Any, state: Any) -> Any:
    """`new_state` with each leaf cast to the dtype of the same leaf of `state`: a layer that
    computes its state from bfloat16 activations still hands back float32 statistics, and the
    carry of a scanned epoch keeps its type. Unchanged for `"float32"`."""
    if not policy.casts:
        return new_state
    return jax.tree.map(lambda new, old: lax.convert_element_type(new, jnp.result_type(old)),
                        new_state, state)
